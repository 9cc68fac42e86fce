"""Decide-pipeline throughput: detections per second through the Decider, against JSON parsing alone.

Usage: ``python bench/decide_bench.py [--models 40] [--minutes 120] [--seed 7]``

The stream is what the detect stage emits: every model (two versions each,
with app and route set) gets one detection per detector per one-minute
window from 11 detectors (drift, toxicity, quality), mostly ``ok``, a few
random ``warning``/``drift`` verdicts, and one incident per ten models (a
version whose negative feedback and toxicity drift for 15 windows), decided
with the default policy (``mode: auto``, one stable version per model).

Timed over the same stream in one run:
(a) baseline: ``Detection.model_validate_json`` of every message (what the
    stream layer pays anyway before it can decide);
(b) ``Decider.decide`` with the reason log on (``explain=True``, the default);
(c) ``Decider.decide`` with ``explain=False``.
It prints detections/s for each and the ratios to the baseline. Goal: (b) >= 10,000/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retrain_trigger.pipeline import Decider  # noqa: E402
from retrain_trigger.policy import load_policy  # noqa: E402
from retrain_trigger.stable import StableVersionMarked  # noqa: E402
from schemas.events import Detection, Evidence, Segment  # noqa: E402

DETECTORS = [
    "drift.ks.v1",
    "drift.psi.v1",
    "drift.text_length.v1",
    "drift.script_mix.v1",
    "drift.embedding_mmd.v1",
    "toxicity.detoxify.v1",
    "toxicity.profanity.v1",
    "quality.negative_feedback.v1",
    "quality.error_rate.v1",
    "quality.latency.v1",
    "quality.canary.v1",
]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def stream(models: int, minutes: int, seed: int) -> list[bytes]:
    """The detections of every window, as the JSON messages the detections topic carries."""
    rng = random.Random(seed)
    bad = {f"model-{m}": rng.randrange(minutes // 2) for m in range(0, models, 10)}
    messages = []
    for minute in range(minutes):
        start = T0 + timedelta(minutes=minute)
        for m in range(models):
            model = f"model-{m}"
            for version in ("v1", "v2"):
                incident = version == "v2" and model in bad and bad[model] <= minute < bad[model] + 15
                for detector in DETECTORS:
                    roll = rng.random()
                    verdict = "drift" if roll < 0.01 else "warning" if roll < 0.04 else "ok"
                    if incident and detector in ("quality.negative_feedback.v1", "toxicity.detoxify.v1"):
                        verdict = "drift"
                    detection = Detection(
                        detection_id=f"{model}-{version}-{detector}-{minute}",
                        detector_id=detector,
                        detector_version="v1",
                        config={"alpha": 0.05, "min_effect_size": 0.1},
                        segment=Segment(model=model, model_version=version, app="chat", route="/v1/chat"),
                        window_start=start,
                        window_end=start + timedelta(minutes=1),
                        reference_size=2000,
                        current_size=rng.randrange(150, 2000),
                        statistic=rng.random(),
                        p_value=0.001 if verdict != "ok" else rng.random(),
                        effect_size=rng.random() * 0.4,
                        verdict=verdict,
                        measurements={"current_rate": rng.random() * 0.3, "window_events": 500.0},
                        reference="pinned:first-window",
                        detected_at=start + timedelta(minutes=1, seconds=2),
                        evidence=Evidence(request_ids=[f"req-{minute}-{i}" for i in range(5)]),
                    )
                    messages.append(detection.model_dump_json().encode())
    return messages


def main() -> None:
    """Run the three timings and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    messages = stream(args.models, args.minutes, args.seed)
    policy = load_policy()

    started = time.perf_counter()
    detections = [Detection.model_validate_json(m) for m in messages]
    parse_s = time.perf_counter() - started

    results = {}
    for explain in (True, False):
        decider = Decider(policy, explain=explain)
        for m in range(args.models):
            decider.mark_stable(StableVersionMarked(model=f"model-{m}", version="v1", marked_at=T0))
        actions = alerts = 0
        started = time.perf_counter()
        for detection in detections:
            decision = decider.decide(detection, detection.detected_at)
            actions += len(decision.actions)
            alerts += len(decision.alerts)
        results[explain] = (time.perf_counter() - started, actions, alerts)

    n = len(detections)
    print(
        f"{n} detections ({args.models} models x 2 versions x {len(DETECTORS)} detectors"
        f" x {args.minutes} windows)"
    )
    print(f"(a) baseline, parse JSON only : {n / parse_s:>10,.0f} detections/s")
    for explain, label in ((True, "(b) decide, explain=True     "), (False, "(c) decide, explain=False    ")):
        seconds, actions, alerts = results[explain]
        print(
            f"{label}: {n / seconds:>10,.0f} detections/s  ({parse_s / seconds:.2f}x the parse rate;"
            f" {alerts} alert events, {actions} actions)"
        )
    goal = n / results[True][0] >= 10_000
    print(f"goal >= 10,000 detections/s with explain=True: {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
