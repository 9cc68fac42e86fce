"""Dedup: every action has an idempotency key, deterministic from what it is about, never from the clock.

The key is a hash of the policy, the action, the incident's group labels and the
window start of the incident's first firing window, so replaying the same
detections after a crash (to a fresh Decider or one restored from older state)
yields the same key, and the consumer of the action topic (or the changelog-backed
table of published keys) can drop the repeat.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.alerts import group_key
from retrain_trigger.state import State

if TYPE_CHECKING:
    from retrain_trigger.context import Candidate, DecideContext

#: Published idempotency keys are kept this long (a replay older than that is not expected).
DEDUP_RETENTION = timedelta(days=7)


def idempotency_key(policy: str, action: str, group: dict[str, str], incident_start: datetime) -> str:
    """The CloudEvent id of the action for one incident."""
    parts = [policy, action, *(f"{k}={v}" for k, v in sorted(group.items())), incident_start.isoformat()]
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"lw-{action}-{digest}"


class DedupState(State):
    """Idempotency keys already published, with when; old keys are pruned after ``retention``."""

    published: dict[str, datetime] = Field(default_factory=dict)

    def seen(self, key: str) -> bool:
        """Was an action with this key already published?"""
        return key in self.published

    def record(self, key: str, at: datetime) -> None:
        """Remember a published key."""
        self.published[key] = at

    def prune(self, now: datetime, retention: timedelta) -> None:
        """Forget keys older than ``retention`` (incidents that old cannot be replayed any more)."""
        for key in [k for k, at in self.published.items() if now - at > retention]:
            del self.published[key]


class Incident(BaseModel):
    """One incident of one action kind for one group: it gets at most one action, with one key."""

    model_config = ConfigDict(extra="forbid")

    key: str
    action: str
    rule: str
    group: dict[str, str]
    opened_at: datetime
    alerts: list[str] = Field(default_factory=list)
    published: bool = False
    skipped: bool = Field(False, description="A rollback.skipped was recorded (no version to go back to)")


class DedupStage:
    """Dedup: an alert whose rule acts joins its incident; an incident already published stops here."""

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        """Open or join the incident; False for alert-only rules and for incidents whose key was published."""
        rule, record = candidate.rule, candidate.record
        if rule is None or rule.action == "alert":
            return False
        ms = ctx.state
        group = {name: record.labels.get(name, "") for name in ctx.policy.group_by}
        if rule.action == "rollback":
            # A rollback is about one bad version: another version going bad is another incident.
            group["model_version"] = record.labels["model_version"]
        action_key = group_key(group, sorted(group))
        incident_id = f"{rule.action}|{action_key}"
        incident = ms.incidents.get(incident_id)
        if incident is None:
            key = idempotency_key(ctx.policy.name, rule.action, group, record.starts_at)
            incident = Incident(
                key=key, action=rule.action, rule=rule.name, group=group, opened_at=record.starts_at
            )
            ms.incidents[incident_id] = incident
        if record.fingerprint not in incident.alerts:
            incident.alerts.append(record.fingerprint)
        candidate.incident, candidate.action_group, candidate.action_key = incident, group, action_key
        if incident.published:
            return False
        if ms.dedup.seen(incident.key):
            incident.published = True
            ctx.log("dedup", candidate.subject, False, f"{incident.key} already published")
            return False
        ctx.log("dedup", candidate.subject, True, f"new key {incident.key}")
        return True
