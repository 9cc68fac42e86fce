"""Publish: what one decision step produced, for the stream layer to send (the pipeline never sends)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from retrain_trigger.actions import ROLLBACK_FAILED, ROLLBACK_REQUESTED, ROLLBACK_VERIFIED
from retrain_trigger.alerts import Notification
from schemas.events import Alert, CloudEvent

Stage = Literal["route", "gates", "inhibit", "silence", "dedup", "cooldown", "publish", "watch", "alerts"]


@dataclass(frozen=True)
class LogEntry:
    """Why one stage let a candidate through or stopped it (dry-run and backtest output)."""

    stage: Stage
    subject: str
    passed: bool
    reason: str

    def __str__(self) -> str:
        mark = "pass" if self.passed else "stop"
        return f"[{self.stage:<8}] {mark} {self.subject}: {self.reason}"


@dataclass
class Decision:
    """Everything one step decided: events to send, and the reasons.

    ``actions`` go to the retrain/rollback topics (see :func:`action_topic`);
    ``dry_run_actions`` are what ``mode: dry-run`` would have published (log them,
    never send them); ``alerts`` go to the alerts topic; ``notifications`` to the
    notifiers (at most one page per alert group per repeat interval).
    """

    alerts: list[Alert] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    actions: list[CloudEvent] = field(default_factory=list)
    dry_run_actions: list[CloudEvent] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)

    def extend(self, other: Decision) -> None:
        """Append another step's output (used when one call settles several models)."""
        self.alerts += other.alerts
        self.notifications += other.notifications
        self.actions += other.actions
        self.dry_run_actions += other.dry_run_actions
        self.log += other.log

    def empty(self) -> bool:
        """Nothing to send."""
        return not (self.alerts or self.notifications or self.actions)


def action_topic(event: CloudEvent) -> Literal["retrain", "rollback"]:
    """Which action topic an event goes to: rollback requests and their verification, or retrain."""
    return "rollback" if event.type in (ROLLBACK_REQUESTED, ROLLBACK_VERIFIED, ROLLBACK_FAILED) else "retrain"
