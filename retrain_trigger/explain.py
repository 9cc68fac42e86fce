"""What a policy does, in words (``loopwatch policy check``) and over recorded detections (``backtest``)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from retrain_trigger.pipeline import Decider, DeciderState
from retrain_trigger.policy import Policy, Rule
from retrain_trigger.silence import Silences
from retrain_trigger.stable import StableVersions
from schemas.errors import ConfigError, LoopwatchError
from schemas.events import Detection

_S = TypeVar("_S", Silences, StableVersions)
_DOES = {"alert": "alert only", "retrain": "alert + retrain request", "rollback": "alert + rollback request"}


class DetectionsFileError(LoopwatchError):
    """A recorded detections file cannot be read; the message names the line."""


def describe_rule(rule: Rule, policy: Policy) -> str:
    """One rule in a sentence."""
    gates = rule.gates
    immediate = gates.immediate_p_value is not None and gates.for_windows > 1
    evidence = [f"{1 if immediate else gates.for_windows} consecutive window(s)"]
    if gates.min_samples:
        evidence.append(f">= {gates.min_samples} samples")
    if gates.min_effect_size is not None:
        evidence.append(f"|effect| >= {gates.min_effect_size}")
    weak = f"p < {gates.max_p_value:g}" if gates.max_p_value is not None else "its detector's verdict"
    if immediate:
        # Overwhelming evidence first: it is what fires at once.
        strong = f"p < {gates.immediate_p_value:g}"
        evidence.append(f"{strong}, or {gates.for_windows} consecutive ones with {weak}")
    elif gates.max_p_value is not None:
        evidence.append(weak)
    where = ", ".join(f"{k}={v}" for k, v in rule.match.segment.items()) or "any segment"
    text = (
        f"{rule.name}: {', '.join(rule.match.detectors)}"
        f" with verdict {'/'.join(rule.match.verdicts)} on {where}"
        f" -> {_DOES[rule.action]} ({rule.severity}) after {', '.join(evidence)};"
        f" resolves after {gates.resolve_windows} clear window(s)"
    )
    if rule.action != "alert":
        text += f"; cooldown {policy.cooldown_for(rule)}"
    if rule.runbook_url:
        text += f"; runbook {rule.runbook_url}"
    return text


def describe_verify(policy: Policy) -> str:
    """How a rollback is verified, in a sentence."""
    v = policy.verify
    alpha = f"{v.alpha:g}" if v.alpha is not None else "its detector's alpha"
    effect = f"{v.min_effect_size:g}" if v.min_effect_size is not None else "its detector's minimum effect"
    return (
        f"after a rollback: verified when every measure that triggered it is lower on the target with"
        f" {v.confidence:.0%} confidence (>= {v.min_samples} samples on each version); another measure"
        f" fails it only when worse at {alpha} after Benjamini-Hochberg and by at least {effect};"
        f" undecided after {v.within}: failed"
    )


def describe_promote(policy: Policy) -> list[str]:
    """When a challenger is promoted, in lines: the evidence it needs and each measure's margin."""
    p = policy.promote
    if not p.enabled:
        return ["promote: off (no promotion requests)"]
    return [
        f"promote: a challenger after {p.windows} window(s) with >= {p.min_samples} samples per measure on"
        f" each version, no alert fired for it, and every measure non-inferior at {p.confidence:.0%}"
        " confidence (challenger minus stable surely below the margin):",
        *(
            f"  {detector_id} {margin.measurement}: margin {margin.margin:g}"
            for detector_id, margin in sorted(p.margins.items())
        ),
    ]


def explain_policy(policy: Policy, detector_ids: Iterable[str]) -> list[str]:
    """The policy in lines a person can check: rules, mutes, and which known detectors lead where."""
    lines = [
        f"policy {policy.name!r}, mode {policy.mode}"
        + (" (actions are logged, not published)" if policy.mode == "dry-run" else ""),
        f"pages grouped by {', '.join(policy.group_by)}; repeat after {policy.repeat_interval};"
        f" an alert without detections resolves after {policy.resolve_timeout}",
        f"at most {policy.rate_limit.max_actions} actions of a kind per model per {policy.rate_limit.per}",
        describe_verify(policy),
        *describe_promote(policy),
        "rules (every matching rule applies):",
        *(f"  {describe_rule(rule, policy)}" for rule in policy.rules),
    ]
    if policy.inhibit:
        lines.append("mutes:")
        for rule in policy.inhibit:
            equal = f" with the same {', '.join(rule.equal)}" if rule.equal else ""
            lines.append(f"  while {_labels(rule.source)} fires, {_labels(rule.target)}{equal} is muted")
    lines.append("registered detectors:")
    for detector_id in sorted(detector_ids):
        rules = [r for r in policy.rules if r.match.matches_detector(detector_id)]
        does = ", ".join(f"{r.name} ({r.action})" for r in rules) if rules else "nothing (no rule matches)"
        lines.append(f"  {detector_id} -> {does}")
    return lines


def _labels(patterns: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in patterns.items()) + "}"


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"not a Detection: {where}: {first['msg']}" if where else f"not a Detection: {first['msg']}"


def _in_time_order(detections: list[Detection]) -> list[Detection]:
    return sorted(detections, key=lambda d: (d.detected_at, d.window_end))


def read_detections(path: Path) -> list[Detection]:
    """Detections from a JSON-lines file (blank lines skipped), in time order (``detected_at``)."""
    detections = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        detections.append(Detection.model_validate_json(line))
                    except ValidationError as exc:
                        raise DetectionsFileError(f"{path}:{number}: {_problem(exc)}") from exc
    except OSError as exc:
        raise DetectionsFileError(f"{path}: cannot read: {exc}") from exc
    return _in_time_order(detections)


def parse_detections(values: Iterable[tuple[str, bytes]]) -> tuple[list[Detection], list[str]]:
    """Detections from message values (each with where it was read), in time order, and the unreadable.

    A topic may hold what an external detector got wrong: such records are
    skipped and described (``where: why``), as the decide stage dead-letters them.
    """
    detections, skipped = [], []
    for where, value in values:
        try:
            detections.append(Detection.model_validate_json(value))
        except ValidationError as exc:
            skipped.append(f"{where}: {_problem(exc)}")
    return _in_time_order(detections), skipped


@dataclass(frozen=True)
class TimelineEntry:
    """One thing the policy would have done."""

    at: datetime
    kind: str
    what: str
    subject: str
    id: str


@dataclass
class BacktestReport:
    """Counts and timing of the alerts, pages and actions a policy would have produced."""

    detections: int = 0
    timeline: list[TimelineEntry] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    first_detection: datetime | None = None
    last_detection: datetime | None = None


def backtest(
    policy: Policy,
    detections: list[Detection],
    stable: StableVersions | None = None,
    silences: Silences | None = None,
) -> BacktestReport:
    """Run a fresh Decider over detections in time order (each decided at its ``detected_at``)."""
    state = DeciderState(stable=stable or StableVersions(), silences=silences or Silences())
    decider = Decider(policy, state, explain=False)
    report = BacktestReport(detections=len(detections))
    for detection in detections:
        now = detection.detected_at
        report.first_detection = report.first_detection or now
        report.last_detection = now
        decision = decider.decide(detection, now)
        for alert in decision.alerts:
            what = f"alert {alert.status} {alert.labels.get('alertname', '')}"
            report.timeline.append(TimelineEntry(now, "alert", what, alert.summary, alert.fingerprint))
            report.counts[f"alerts {alert.status}"] += 1
        for page in decision.notifications:
            what = f"page {page.status}" + (" (repeat)" if page.repeat else "")
            report.timeline.append(
                TimelineEntry(now, "page", what, page.group_key, f"{len(page.alerts)} alert(s)")
            )
            report.counts["pages"] += 1
        for label, events in (("action", decision.actions), ("dry-run action", decision.dry_run_actions)):
            for event in events:
                detail = event.type
                if "target_version" in event.data:
                    detail += f" {event.data['from_version']} -> {event.data['target_version']}"
                report.timeline.append(TimelineEntry(now, label, detail, event.subject or "", event.id))
                report.counts[f"{label}s {event.type.removeprefix('io.loopwatch.')}"] += 1
    return report


# --------------------------------------------------------------------------
# Local state files of the CLI (the stream layer keeps the same models in compacted topics)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def load_silences(path: Path) -> Silences:
    """Silences from a local JSON file (empty when it does not exist)."""
    return _load(path, Silences)


def save_silences(path: Path, silences: Silences) -> None:
    """Write silences to a local JSON file atomically."""
    _write_atomic(path, silences.to_json())


def load_stable(path: Path) -> StableVersions:
    """Stable versions from a local JSON file (empty when it does not exist)."""
    return _load(path, StableVersions)


def save_stable(path: Path, stable: StableVersions) -> None:
    """Write stable versions to a local JSON file atomically."""
    _write_atomic(path, stable.to_json())


def _load(path: Path, model: type[_S]) -> _S:
    if not path.exists():
        return model()
    try:
        return model.from_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"{path}: cannot read the state file: {exc}") from exc
