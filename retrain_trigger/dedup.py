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

from pydantic import Field

from retrain_trigger.state import State


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
