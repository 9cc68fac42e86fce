"""Publish: the action of an incident, and what one decision step produced for the stream layer to send.

The pipeline never sends anything itself: :class:`Decision` holds the events
and :func:`action_topic` says where the stream layer sends an action.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

from retrain_trigger import watch as rollback_watch
from retrain_trigger.actions import (
    EVENT_TYPES,
    PROMOTION_REQUESTED,
    ROLLBACK_FAILED,
    ROLLBACK_REQUESTED,
    ROLLBACK_SKIPPED,
    ROLLBACK_VERIFIED,
    RetrainRequest,
    RollbackRequest,
    RollbackSkipped,
    cloud_event,
)
from retrain_trigger.alerts import AlertRecord, Notification
from schemas.events import Alert, CloudEvent

if TYPE_CHECKING:
    from retrain_trigger.context import Candidate, DecideContext
    from retrain_trigger.dedup import Incident
    from retrain_trigger.policy import Rule

#: Detections at most in an action's evidence (the latest ones).
MAX_EVIDENCE = 10

Stage = Literal[
    "route", "gates", "inhibit", "silence", "dedup", "cooldown", "publish", "watch", "alerts", "promote"
]


class LogEntry(NamedTuple):
    """Why one stage let a candidate through or stopped it (dry-run and backtest output)."""

    # A NamedTuple rather than a frozen dataclass: immutable all the same, and about
    # three times cheaper to build (one or more per detection with explain on).

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


def action_topic(event: CloudEvent) -> Literal["retrain", "rollback", "promotion"]:
    """Which action topic an event goes to: rollbacks and their verification, promotions, or retrain."""
    if event.type == PROMOTION_REQUESTED:
        return "promotion"
    rollback = (ROLLBACK_REQUESTED, ROLLBACK_VERIFIED, ROLLBACK_FAILED, ROLLBACK_SKIPPED)
    return "rollback" if event.type in rollback else "retrain"


def action_event(ctx: DecideContext, rule: Rule, record: AlertRecord, incident: Incident) -> CloudEvent | str:
    """The incident's CloudEvent (``rollback.skipped``: a champion with none before it), or why none."""
    ms = ctx.state
    records = [ms.book.alerts[fp] for fp in incident.alerts if fp in ms.book.alerts] or [record]
    detections = sorted((d for r in records for d in r.detections), key=lambda d: d.window_end)[
        -MAX_EVIDENCE:
    ]
    model = record.labels["model"]
    policy = ctx.policy
    common = {
        "reason": "; ".join(sorted({ctx.index.summary(r) for r in records})),
        "policy": policy.name,
        "rule": rule.name,
        "mode": policy.mode,
        "model": model,
        "incident_start": incident.opened_at,
        "window_start": min(d.window_start for d in detections),
        "window_end": max(d.window_end for d in detections),
        "detections": detections,
        "sources": [s for d in detections for s in d.evidence.sources],
    }
    data: RetrainRequest | RollbackRequest | RollbackSkipped
    event_id, event_type = incident.key, EVENT_TYPES[rule.action]
    if rule.action == "rollback":
        bad = record.labels["model_version"]
        target = ctx.stable.rollback_target(model, bad)
        if target is None and ctx.stable.target(model) != bad:
            return f"no stable version of {model} to roll back to (mark one: loopwatch model mark-stable)"
        if target is None and model not in ctx.stable.registry:
            return f"the failing version {bad} is the one marked stable: nothing to roll back to"
        if target is None:
            because = (
                f"the failing version {bad} is the registry's stable version of {model} and has no"
                " previous version (no loopwatch.previous_champion tag, no other version marked"
                " stable): nothing to roll back to"
            )
            data = RollbackSkipped(**common, from_version=bad, skipped_because=because)
            event_id, event_type = f"{incident.key}.skipped", ROLLBACK_SKIPPED
        else:
            data = RollbackRequest(**common, from_version=bad, target_version=target)
    else:
        data = RetrainRequest(**common)
    return cloud_event(
        event_id=event_id,
        source=policy.source,
        event_type=event_type,
        subject=model,
        # The latest evidence's window end, not the clock: a replay rebuilds the same event.
        time=data.window_end,
        data=data,
    )


class PublishStage:
    """Publish: the incident's CloudEvent goes on the decision (dry-run: logged); rollbacks are watched."""

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        """Build and record the action once per incident; False when it cannot be built or in dry-run."""
        rule, incident, record = candidate.rule, candidate.incident, candidate.record
        assert rule is not None and incident is not None, "the publish stage runs after dedup"
        ms, now, policy = ctx.state, ctx.now, ctx.policy
        event = action_event(ctx, rule, record, incident)
        if isinstance(event, str):
            ctx.log("publish", candidate.subject, False, event)
            return False
        if event.type == ROLLBACK_SKIPPED:
            # Recorded once per incident; a version to go back to, known later, still rolls back.
            if not incident.skipped:
                incident.skipped = True
                dry_run = policy.mode == "dry-run"
                (ctx.decision.dry_run_actions if dry_run else ctx.decision.actions).append(event)
            ctx.log("publish", candidate.subject, False, event.data["skipped_because"])
            return False
        ms.dedup.record(incident.key, now)
        ms.cooldown.record(rule.action, candidate.action_key, now, policy.rate_limit)
        incident.published = True
        if policy.mode == "dry-run":
            ctx.decision.dry_run_actions.append(event)
            ctx.log("publish", candidate.subject, False, f"dry-run: would publish {event.type} {event.id}")
            return False
        ctx.decision.actions.append(event)
        ctx.log("publish", candidate.subject, True, f"{event.type} {event.id}")
        if isinstance(event.data.get("target_version"), str):
            rollback_watch.start(
                ms.watch,
                policy.verify,
                event.id,
                record.labels["model"],
                record.labels["model_version"],
                event.data["target_version"],
                record.detections[-1].window_end if record.detections else now,
                # What triggered it is what the target must be better on.
                [d for fp in incident.alerts if fp in ms.book.alerts for d in ms.book.alerts[fp].detections],
                opened_at=now,
                await_applied=ctx.await_applied,
            )
        return True
