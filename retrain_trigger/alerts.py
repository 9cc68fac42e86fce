"""Alerts with Alertmanager semantics: fingerprints, firing then resolved, groups, repeat interval."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.policy import Rule, Severity
from retrain_trigger.state import State
from schemas.events import Alert, Detection, Segment

#: Detections kept per alert for the evidence of an action (the latest ones).
KEEP_DETECTIONS = 3
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


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

    def remember(self, detection: Detection) -> None:
        """Keep the latest detections as the evidence of this alert."""
        self.detections.append(detection)
        del self.detections[:-KEEP_DETECTIONS]

    def to_alert(
        self, status: Literal["firing", "resolved"], summary: str, ends_at: datetime | None
    ) -> Alert:
        """The Alert event for the alerts topic."""
        return Alert(
            fingerprint=self.fingerprint,
            status=status,
            severity=self.labels["severity"],
            summary=summary,
            labels=self.labels,
            starts_at=self.starts_at,
            ends_at=ends_at,
            detections=[d.detection_id for d in self.detections],
        )


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
