"""Follow-up of published rollbacks as stages: each detection is evidence, each settle checks deadlines.

The judging itself is ``watch.py``; the publish stage starts a watch. These two
stages turn the watch's outcomes into ``rollback.verified`` / ``rollback.failed``
CloudEvents on the decision; :func:`settle_rollback` does the same for the act
stage's result (with an act stage, a watch counts only windows after
``rollback.applied``, and ``rollback.rejected`` fails it). A verification
that a later window of the rolled-back version withdraws is a
``rollback.failed`` too (:mod:`retrain_trigger.evidence`). A verification
resolves every alert of the rolled-back version
(:func:`~retrain_trigger.resolve.resolve_rollback`), once: a
withdrawal leaves them resolved, and the next breach fires them again as
usual. Until then, ratings of the rolled-back version's old replies (its
feedback windows) are no evidence for its alerts: they would page again
for a version that no longer serves.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from retrain_trigger import evidence
from retrain_trigger import watch as rollback_watch
from retrain_trigger.actions import ROLLBACK_FAILED, ROLLBACK_VERIFIED, RollbackOutcome, cloud_event
from retrain_trigger.resolve import end_alerts, resolve_rollback

if TYPE_CHECKING:
    from retrain_trigger.act import MoveResult
    from retrain_trigger.context import DecideContext


def record_outcome(ctx: DecideContext, outcome: RollbackOutcome, at: datetime) -> None:
    """Add the CloudEvent of a rollback's outcome (verified or failed, at ``at``) to the decision."""
    suffix, event_type = ("verified", ROLLBACK_VERIFIED) if outcome.verified else ("failed", ROLLBACK_FAILED)
    event = cloud_event(
        event_id=f"{outcome.rollback_id}.{suffix}",
        source=ctx.policy.source,
        event_type=event_type,
        subject=outcome.model,
        time=at,
        data=outcome,
    )
    ctx.decision.actions.append(event)
    ctx.log("watch", outcome.model, outcome.verified, outcome.reason)
    if outcome.verified:
        ended = resolve_rollback(ctx, outcome)
        ctx.resolved += [(record, at) for record in ended]
        # The resolve stage announces them: the step must reach it even without another change.
        ctx.changed = ctx.changed or bool(ended)


class WatchStage:
    """Watch: a detection of a rolled-back model is evidence for its pending rollback watches."""

    def run(self, ctx: DecideContext) -> bool:
        """Judge the watches on the detection (before routing: it counts whether a rule matches or not)."""
        detection = ctx.detection
        if detection is not None:
            watches, verify = ctx.state.watch, ctx.policy.verify
            notes: list[str] | None = [] if ctx.explain else None
            for outcome in rollback_watch.observe(watches, verify, detection, ctx.window, notes):
                # The window's end, not the clock: a replay rebuilds the same event.
                record_outcome(ctx, outcome, detection.window_end)
            for note in notes or ():
                ctx.log("watch", detection.segment.model, False, note)
            feedback = detection.window_kind == "feedback"
            gone = evidence.in_force(watches.verified, detection, verify.within) if feedback else None
            if gone is not None:
                segment = detection.segment
                ctx.log(
                    "watch",
                    f"{detection.detector_id} {segment.model}/{segment.model_version}",
                    False,
                    f"{gone.outcome.rollback_id} verified: ratings of {segment.model_version}'s old"
                    " replies are no evidence for its alerts",
                )
                # The rest of the step is the model's time-based work only, as on a tick.
                ctx.detection = None
        return True


def settle_rollback(ctx: DecideContext, result: MoveResult, at: datetime) -> None:
    """The act stage's result of a watched rollback: applied arms its watch, rejected fails it."""
    outcome = rollback_watch.applied(ctx.state.watch, ctx.policy.verify, result, at)
    if outcome is not None:
        record_outcome(ctx, outcome, at)
    elif result.applied:
        ctx.log("watch", result.model, True, f"{result.request_id} applied at {at.isoformat()}: watching")


class WatchDeadlineStage:
    """Watch deadline: a rollback not shown better within ``verify.within`` fails."""

    def run(self, ctx: DecideContext) -> bool:
        """Conclude the watches whose time is up (after the resolve stage: it ends what they resolve)."""
        before = len(ctx.resolved)
        for outcome in rollback_watch.expire(ctx.state.watch, ctx.policy.verify, ctx.now):
            record_outcome(ctx, outcome, ctx.now)
        end_alerts(ctx, ctx.resolved[before:])
        return True
