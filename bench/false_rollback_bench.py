"""False rollbacks of healthy canaries, and how fast a bad one is rolled back: new default policy vs old.

Usage: ``python bench/false_rollback_bench.py [--canaries 4] [--hours 0.5] [--bad 5] [--requests 300]``

Real replies (Anthropic HH-RLHF harmless-base test) served in 10 s windows of
``--requests`` requests per version, a fifth of them with a thumbs feedback:

- a stable version serving the replies people chose, 15% thumbs-down;
- ``--canaries`` healthy canaries, each of its own model beside that stable
  version, serving chosen replies at the same 15% (the trial's r2 and r3), for
  ``--hours`` of windows each;
- ``--bad`` bad canaries serving the replies people *rejected*, 70% thumbs-down,
  for 18 windows each (the trial's r4).

Every window goes through the real detect code (``streams.detect.Judge``: the
built-in fast detectors against the stable version's latest window, corrected
with Benjamini-Hochberg, as the stream does) and every Detection through the
real decide pipeline (``retrain_trigger.pipeline.Decider``), once per policy,
on the same detections: the old default (one window of one detector at its own
alpha), two single changes, and the new default (``default_policy.yaml``).
Printed per policy: rollbacks of healthy canaries per version-hour, the share
of healthy windows that breach the rollback rule, the bad canaries' delay (the
judged window whose detections published the rollback: 1 = its first) and how
often their alerts fired (each firing pages).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from detectors.frame import describe, feedback_row, log_row  # noqa: E402
from retrain_trigger.actions import ROLLBACK_REQUESTED  # noqa: E402
from retrain_trigger.gates import judge  # noqa: E402
from retrain_trigger.pipeline import Decider  # noqa: E402
from retrain_trigger.policy import DEFAULT_POLICY, Policy, parse_policy  # noqa: E402
from retrain_trigger.stable import StableVersionMarked  # noqa: E402
from schemas.events import Detection, Feedback, InferenceLog, JoinedFeedback, SourceRef  # noqa: E402
from services import sample_data  # noqa: E402
from streams.detect import DEFAULT_SPECS, Judge, References, to_detection  # noqa: E402
from streams.windows import ClosedWindow  # noqa: E402

WINDOW = timedelta(seconds=10)
WINDOWS_PER_HOUR = 360
BAD_WINDOWS = 18
HEALTHY_NEGATIVE, BAD_NEGATIVE = 0.15, 0.70
T0 = datetime(2026, 12, 1, tzinfo=UTC)
STABLE = "stable"
ROLLBACK_RULE = "bad-replies"
_SOURCE = SourceRef(topic="llm.inference.v1", partition=0, offset=0)

#: The rollback rule of the default policy before this change: one window of one detector at its alpha.
OLD_RULE: dict[str, Any] = {
    "detectors": [
        "quality.negative_feedback.v1",
        "toxicity.detoxify.v1",
        "toxicity.profanity.v1",
        "quality.canary.v1",
    ],
    "gates": {"min_samples": 30, "for_windows": 1, "resolve_windows": 2},
}


def _policy(name: str, rule: dict[str, Any] | None = None) -> Policy:
    """The default policy, with the rollback rule's detectors and gates replaced by ``rule``'s."""
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data["name"] = name
    if rule is not None:
        for found in data["rules"]:
            if found["name"] == ROLLBACK_RULE:
                found["match"]["detectors"] = rule["detectors"]
                found["gates"] = rule["gates"]
    return parse_policy(yaml.safe_dump(data), name)


def policies() -> dict[str, Policy]:
    """The policies compared, the old default first and the new one last."""
    old_gates = OLD_RULE["gates"]
    return {
        "old default (1 window, detector alpha)": _policy("old", OLD_RULE),
        "old + for_windows 2": _policy("for2", {**OLD_RULE, "gates": {**old_gates, "for_windows": 2}}),
        "old + max_p_value 0.001": _policy(
            "alpha", {**OLD_RULE, "gates": {**old_gates, "max_p_value": 0.001}}
        ),
        "new default (default_policy.yaml)": _policy("default"),
    }


class _Traffic:
    """Windows of real HH-RLHF replies with thumbs feedback, as ingest and the join would build them."""

    def __init__(self, requests: int, feedback_share: float, seed: int) -> None:
        self.pairs = list(sample_data.hh_rlhf(Settings().sample_data))
        self.requests, self.feedback_share = requests, feedback_share
        self.rng = random.Random(seed)

    def windows(self, model: str, version: str, t: int, bad: bool) -> tuple[ClosedWindow, ClosedWindow]:
        """One version's inference and feedback windows number ``t``."""
        start = T0 + t * WINDOW
        negative = BAD_NEGATIVE if bad else HEALTHY_NEGATIVE
        rng, inference, feedback = self.rng, [], []
        for i in range(self.requests):
            chosen, rejected = rng.choice(self.pairs)
            exchange = dataclasses.replace(
                rejected if bad else chosen, request_id=f"{model}-{version}-{t}-{i}"
            )
            at = start + WINDOW * (i / self.requests)
            event = sample_data.inference_event(exchange, at, rng, version=version)
            event["model"]["name"] = model
            log = InferenceLog.model_validate(event)
            inference.append(log_row(log, describe(log), 1000))
            if rng.random() < self.feedback_share:
                thumbs = dataclasses.replace(exchange, thumbs_up=rng.random() >= negative)
                joined = JoinedFeedback(
                    request_id=log.request_id,
                    inference=log,
                    feedback=Feedback.model_validate(sample_data.feedback_events(thumbs, at)[0]),
                    inference_source=_SOURCE,
                    feedback_source=_SOURCE,
                    joined_at=at,
                )
                feedback.append(feedback_row(joined))
        segment: dict[str, str | None] = {
            "model": model,
            "model_version": version,
            "app": "support-bot",
            "route": "chat",
            "tenant": "hh-rlhf",
        }
        end = start + WINDOW
        return (
            ClosedWindow(segment, "inference", start, end, len(inference), inference),
            ClosedWindow(segment, "feedback", start, end, len(feedback), feedback),
        )


class _Detect:
    """The stream's detect code over one model: references per segment, fast detectors, correction."""

    def __init__(self, model: str) -> None:
        self.store: dict[str, bytes] = {}
        self.references = References(self.store, stable_versions={model: STABLE})
        self.judge = Judge(list(DEFAULT_SPECS))

    def __call__(self, window: ClosedWindow) -> list[Detection]:
        reference = self.references.for_window(window)
        self.store.update(self.references.observe(window))
        if reference is None:
            return []  # the stable version's first window: pinned as its reference
        specs = self.judge.specs_for(window.kind, slow=False)
        return [to_detection(j, window, reference) for j in self.judge.run(window, reference, specs)]


def _relabel(detections: list[Detection], model: str) -> list[Detection]:
    """The shared stable version's detections as another model's (each canary has a model of its own)."""
    return [
        d.model_copy(
            update={
                "detection_id": f"{model}:{d.detection_id}",
                "segment": d.segment.model_copy(update={"model": model}),
            }
        )
        for d in detections
    ]


@dataclasses.dataclass
class _Run:
    """One model's detections, window by window: the stable version's, then the canary's."""

    model: str
    bad: bool
    windows: list[tuple[list[Detection], list[Detection]]]


@dataclasses.dataclass
class _Result:
    rollbacks: int = 0
    healthy_windows: int = 0
    breaching: int = 0
    immediate: int = 0
    firings: Counter[str] = dataclasses.field(default_factory=Counter)
    delays: list[int | None] = dataclasses.field(default_factory=list)
    bad_firings: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def simulate(args: argparse.Namespace) -> list[_Run]:
    """Every model's windows through the detect code (the expensive part, done once)."""
    traffic = _Traffic(args.requests, args.feedback, args.seed)
    windows = round(args.hours * WINDOWS_PER_HOUR)
    bad_starts = [3 + i * 7 for i in range(args.bad)]
    total = max([windows + 1, *(s + BAD_WINDOWS for s in bad_starts)])
    detect = _Detect("shared")
    stable = []
    for t in range(total):
        found: list[Detection] = []
        for window in traffic.windows("shared", STABLE, t, bad=False):
            found += detect(window)
        stable.append(found)
    runs = []
    plans = [(f"healthy-{n}", False, 1, windows + 1) for n in range(args.canaries)]
    plans += [(f"bad-{n}", True, s, s + BAD_WINDOWS) for n, s in enumerate(bad_starts)]
    for model, bad, first, last in plans:
        # The canary is judged against the shared stable version's latest window, as a canary of "shared".
        run = _Run(model, bad, [])
        for t in range(first, last):
            found = []
            for window in traffic.windows("shared", f"canary-{model}", t, bad):
                found += detect(window)
            run.windows.append((_relabel(stable[t], model), _relabel(found, model)))
        runs.append(run)
    return runs


def decide(runs: list[_Run], policy: Policy) -> _Result:
    """Every run's detections through the decide pipeline under ``policy``."""
    result = _Result()
    rule = next(r for r in policy.rules if r.name == ROLLBACK_RULE)
    for run in runs:
        decider = Decider(policy, explain=False)
        decider.mark_stable(StableVersionMarked(model=run.model, version=STABLE, marked_at=T0))
        delay, firings = None, Counter[str]()
        for n, (stable, canary) in enumerate(run.windows, start=1):
            if not run.bad:
                result.healthy_windows += 1
                evidence = [judge(rule, d) for d in canary if rule.match.matches_detector(d.detector_id)]
                result.breaching += any(e.outcome == "breach" for e in evidence)
                result.immediate += any(e.immediate for e in evidence)
            for detection in stable + canary:
                decision = decider.decide(detection, detection.window_end + timedelta(seconds=1))
                for alert in decision.alerts:
                    if alert.status == "firing" and alert.labels["model_version"] != STABLE:
                        if run.bad:
                            firings[alert.fingerprint] += 1
                        else:
                            result.firings[alert.labels["alertname"]] += 1
                for event in decision.actions:
                    if event.type == ROLLBACK_REQUESTED:
                        result.rollbacks += not run.bad
                        delay = n if delay is None else delay
        if run.bad:
            result.delays.append(delay)
            result.bad_firings.append((len(firings), sum(firings.values())))
    return result


def main() -> None:
    """Simulate once, decide under each policy, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=4, help="healthy canaries (one model each)")
    parser.add_argument("--hours", type=float, default=0.5, help="hours of 10 s windows per healthy canary")
    parser.add_argument("--bad", type=int, default=5, help="bad canaries, 18 windows each")
    parser.add_argument("--requests", type=int, default=300, help="requests per version and window")
    parser.add_argument("--feedback", type=float, default=0.2, help="share of requests with a thumbs")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    runs = simulate(args)
    version_hours = args.canaries * args.hours
    print(
        f"{len(runs)} models simulated in {time.perf_counter() - started:.0f} s:"
        f" {args.canaries} healthy canaries x {args.hours:g} h ({version_hours:g} version-hours),"
        f" {args.bad} bad canaries x {BAD_WINDOWS} windows; {args.requests} requests per window,"
        f" {args.feedback:.0%} with feedback; negative {HEALTHY_NEGATIVE:.0%} healthy, {BAD_NEGATIVE:.0%} bad"
    )
    baseline: float | None = None
    for label, policy in policies().items():
        r = decide(runs, policy)
        rate = r.rollbacks / version_hours if version_hours else 0.0
        baseline = rate if baseline is None else baseline
        delays = [d for d in r.delays if d is not None]
        missed = len(r.delays) - len(delays)
        share = r.breaching / r.healthy_windows if r.healthy_windows else 0.0
        print(f"{label}:")
        print(
            f"  healthy canaries: {r.rollbacks} rollbacks = {rate:.3g} per version-hour"
            f" ({rate / baseline:.2f}x the old default)"
            if baseline
            else f"  healthy canaries: {r.rollbacks} rollbacks"
        )
        print(
            f"    windows breaching the rollback rule {r.breaching}/{r.healthy_windows} ({share:.2%}),"
            f" immediate {r.immediate}; alerts fired: {dict(r.firings) or 0}"
        )
        shown = ", ".join(str(d) for d in sorted(delays)) or "-"
        alerts = sum(a for a, _ in r.bad_firings)
        refired = sum(f - a for a, f in r.bad_firings)
        mean = f"{statistics.mean(delays):.2f}" if delays else "-"
        print(
            f"  bad canaries: rolled back on judged window {shown} (mean {mean}), missed {missed};"
            f" {alerts} alerts fired, {refired} fired again after resolving (each firing pages)"
        )


if __name__ == "__main__":
    main()
