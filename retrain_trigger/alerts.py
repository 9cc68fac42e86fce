"""Alerts with Alertmanager semantics: fingerprints, firing then resolved, groups, repeat interval."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.policy import Rule, Severity
from retrain_trigger.revisions import same_window
from retrain_trigger.state import State
from schemas.events import Alert, AlertValue, Detection, Segment

#: Detections kept per alert for the evidence of an action (the latest ones).
KEEP_DETECTIONS = 3
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
#: (reference, current) measurement pairs a detector may judge, most specific first.
_JUDGED_PAIRS = (
    ("reference_rate", "current_rate"),
    ("rate_reference", "rate_current"),
    ("reference_mean", "current_mean"),
    ("stable_rate", "canary_rate"),
    ("stable_mean", "canary_mean"),
    ("slo_ms", "observed_ms"),
    ("slo", "current_mean"),
)
#: The pairs whose "reference" is an SLO the current value is held to, not a reference window's value.
_SLO_PAIRS = {("slo_ms", "observed_ms"), ("slo", "current_mean")}


def fingerprint(labels: dict[str, str]) -> str:
    """A stable id of an alert: a hash of its sorted labels (as Alertmanager does)."""
    text = "\x1f".join(f"{k}\x1e{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def alert_labels(rule: Rule, detector_id: str, segment: Segment) -> dict[str, str]:
    """The labels that identify one alert: the rule, the detector and the segment."""
    labels = {
        "alertname": rule.name,
        "action": rule.action,
        "severity": rule.severity,
        "detector": detector_id,
        "model": segment.model,
        "model_version": segment.model_version,
    }
    for name in ("app", "route", "tenant"):
        value = getattr(segment, name)
        if value is not None:
            labels[name] = value
    return labels


def group_key(labels: dict[str, str], group_by: list[str]) -> str:
    """The key of the notification group an alert belongs to, e.g. ``{model="chat"}``."""
    return "{" + ",".join(f'{name}="{labels.get(name, "")}"' for name in group_by) + "}"


class AlertRecord(BaseModel):
    """One alert's state: counters of the gates, whether it fires, and whether it was announced."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str
    rule: str
    labels: dict[str, str]
    status: Literal["pending", "firing"] = "pending"
    breaches: int = 0
    clears: int = 0
    starts_at: datetime
    last_seen: datetime
    announced: bool = False
    detections: list[Detection] = Field(default_factory=list)
    resolved_by: str | None = Field(None, description="Why it resolved, once it did")

    def remember(self, detection: Detection) -> None:
        """Keep the latest detections as the evidence of this alert."""
        self.detections.append(detection)
        del self.detections[:-KEEP_DETECTIONS]

    def revise(self, detection: Detection) -> bool:
        """Put a corrected verdict in place of its window's earlier one; False when none was kept."""
        for i, kept in enumerate(self.detections):
            if same_window(kept, detection):
                self.detections[i] = detection
                return True
        return False

    def to_alert(
        self,
        status: Literal["firing", "resolved"],
        summary: str,
        ends_at: datetime | None,
        runbook_url: str | None = None,
    ) -> Alert:
        """The Alert event for the alerts topic, with the numbers of its detections."""
        return Alert(
            fingerprint=self.fingerprint,
            status=status,
            severity=self.labels["severity"],
            summary=summary,
            labels=self.labels,
            starts_at=self.starts_at,
            ends_at=ends_at,
            detections=[d.detection_id for d in self.detections],
            values=[alert_value(d) for d in self.detections],
            runbook_url=runbook_url,
            resolved_by=self.resolved_by if status == "resolved" else None,
        )


def _judged(detection: Detection) -> tuple[str, float | None, float | None, bool] | None:
    """(measurement, reference value or SLO, current value, whether it is an SLO) of what the detector
    judged, when it says."""
    m = detection.measurements
    # Several checks in one detector: the deciding one's measurements carry its name as a prefix.
    prefix = next((k.removeprefix("decided_by.") + "." for k in m if k.startswith("decided_by.")), "")
    found = [(reference, current) for reference, current in _JUDGED_PAIRS if prefix + current in m]
    if found:
        # A pair with both its measures first: a mean held to an SLO has no reference_mean.
        pair = next((p for p in found if prefix + p[0] in m), found[0])
        return prefix + pair[1], m.get(prefix + pair[0]), m[prefix + pair[1]], pair in _SLO_PAIRS
    worst = next((k.removeprefix("worst.") for k in m if k.startswith("worst.")), None)
    if worst is not None and f"rate.{worst}" in m:  # per-label rates: the worst label decides
        return f"rate.{worst}", m.get(f"baseline_rate.{worst}"), m[f"rate.{worst}"], False
    return None


def alert_value(detection: Detection) -> AlertValue:
    """The numbers of one detection: the judged measure on both windows, effect, p-value, sizes, window.

    >>> from datetime import UTC, datetime
    >>> d = Detection(detection_id="d1", detector_id="quality.negative_feedback.v1", detector_version="v1",
    ...     config={}, segment=Segment(model="chat", model_version="v2"), window_start=datetime(2026, 1, 1),
    ...     window_end=datetime(2026, 1, 1, 0, 1), reference_size=400, current_size=62, p_value=2e-9,
    ...     effect_size=0.67, verdict="drift", measurements={"reference_rate": 0.2, "current_rate": 0.871},
    ...     reference="stable:chat", detected_at=datetime(2026, 1, 1, 0, 1))
    >>> v = alert_value(d); v.measurement, v.reference_value, v.current_value
    ('current_rate', 0.2, 0.871)
    """
    judged = _judged(detection)
    measurement, reference, current, is_slo = judged if judged else (None, None, detection.statistic, False)
    return AlertValue(
        detection_id=detection.detection_id,
        detector_id=detection.detector_id,
        measurement=measurement,
        reference_value=reference,
        reference_is_slo=is_slo,
        current_value=current,
        effect_size=detection.effect_size,
        p_value=detection.measurements.get("p_value_adjusted", detection.p_value),
        threshold=detection.threshold,
        reference_size=detection.reference_size,
        current_size=detection.current_size,
        window_start=detection.window_start,
        window_end=detection.window_end,
        verdict=detection.verdict,
    )


def _number(value: float | None) -> str:
    # Three significant digits; a latency of 3504.9 ms reads 3,505, not 3.5e+03 (trial 12u).
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def describe_value(value: AlertValue) -> str:
    """One detection's numbers in a phrase: ``current_rate 0.2 -> 0.871, effect 0.67, p 2e-09, n 400/62``;
    held to an SLO: ``p95.observed_ms 3,505 vs SLO 2,000, ..., n 50`` (there is no reference window)."""
    name = value.measurement or "statistic"
    if value.reference_is_slo:
        compared = f"{_number(value.current_value)} vs SLO {_number(value.reference_value)}"
        sizes = f"{value.current_size}"
    else:
        compared = f"{_number(value.reference_value)} -> {_number(value.current_value)}"
        sizes = f"{value.reference_size}/{value.current_size}"
    return (
        f"{value.detector_id} {name} {compared}, effect {_number(value.effect_size)},"
        f" p {_number(value.p_value)}, n {sizes},"
        f" window {value.window_start.isoformat()}..{value.window_end.isoformat()} {value.verdict}"
    )


def transition_line(alert: Alert) -> str:
    """The one log line of an alert turning firing or resolved: who, how bad, what, and the numbers."""
    labels = alert.labels
    where = f"{labels.get('model', '')}/{labels.get('model_version', '')}"
    line = f"alert {alert.status} {alert.fingerprint} {where} {alert.severity}: {alert.summary}"
    if alert.values:
        # The latest detection: the one that made it fire (or the last breach before it resolved).
        line += f" | {describe_value(alert.values[-1])}"
    if alert.runbook_url:
        line += f" | runbook {alert.runbook_url}"
    return line


def firing_counts(books: Iterable[AlertBook]) -> Counter[tuple[str, str, str]]:
    """Alerts announced as firing (and not resolved since), by (severity, model, alertname)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for book in books:
        for record in book.alerts.values():
            if record.status == "firing" and record.announced:
                labels = record.labels
                counts[(labels["severity"], labels["model"], labels["alertname"])] += 1
    return counts


class Notification(BaseModel):
    """One page for one alert group: what the notifiers send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_key: str
    group_labels: dict[str, str]
    status: Literal["firing", "resolved"]
    severity: Severity
    alerts: list[Alert]
    annotations: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per alert fingerprint: summary, runbook_url"
    )
    repeat: bool = False
    sent_at: datetime


def worst_severity(alerts: list[Alert]) -> Severity:
    """The highest severity among alerts."""
    return max((a.severity for a in alerts), key=_SEVERITY_RANK.__getitem__, default="info")


class GroupState(BaseModel):
    """When a group was last paged; an active group is not paged again before the repeat interval."""

    model_config = ConfigDict(extra="forbid")

    active: bool = False
    last_notified: datetime | None = None


class AlertBook(State):
    """Every alert of one model, and its notification groups."""

    alerts: dict[str, AlertRecord] = Field(default_factory=dict)
    groups: dict[str, GroupState] = Field(default_factory=dict)
