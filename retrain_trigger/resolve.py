"""Settle and resolve: when the time-based rest of a step runs, and which alerts end in it.

Alerts resolve in the gates (enough clear windows), here when their segment
sent no detection for ``resolve_timeout``, or when the rollback they caused is
verified (:func:`resolve_rollback`: every alert of the rolled-back version, which
no longer serves, so its clear windows would never come). Either way :func:`end_alerts` takes
them out of their incidents and emits the resolved events of the announced
ones, each saying why it resolved (``resolved_by``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from retrain_trigger.alerts import AlertRecord, group_key
from retrain_trigger.dedup import DEDUP_RETENTION

if TYPE_CHECKING:
    from retrain_trigger.actions import RollbackOutcome
    from retrain_trigger.context import DecideContext

#: Time-based work (stale alerts, silences ending, cooldowns, repeat pages) runs at most this often per model.
SETTLE_EVERY = timedelta(seconds=10)


class SettleStage:
    """Settle: the rest of a detection's step runs when an alert changed, or at most every SETTLE_EVERY."""

    def run(self, ctx: DecideContext) -> bool:
        """Stop a quiet step early; otherwise stamp the settle time and forget old published keys."""
        ms = ctx.state
        # A tick is time-based work itself: it always settles.
        quiet = ctx.detection is not None and not ctx.changed
        if quiet and ms.settled_at is not None and ctx.now - ms.settled_at < SETTLE_EVERY:
            return False
        ms.settled_at = ctx.now
        ms.dedup.prune(ctx.now, DEDUP_RETENTION)
        return True


def resolve_rollback(ctx: DecideContext, outcome: RollbackOutcome) -> list[AlertRecord]:
    """A verified rollback: every alert of the rolled-back version resolves now (returned).

    The verification waited for that version's last window, so it no longer
    serves: the clear windows its alerts would need never come.
    """
    alerts = ctx.state.book.alerts
    why = f"rollback {outcome.rollback_id} verified: {outcome.target_version} serves and is better"
    ended = []
    for fp in [fp for fp, r in alerts.items() if r.labels.get("model_version") == outcome.from_version]:
        record = alerts.pop(fp)
        record.resolved_by = why
        ended.append(record)
        ctx.log("gates", record.rule, True, f"{record.labels['detector']}: resolved, {why}")
    return ended


def _clear_windows(count: int) -> str:
    return f"{count} clear window" if count == 1 else f"{count} clear windows"


def end_alerts(ctx: DecideContext, resolved: Sequence[tuple[AlertRecord, datetime]]) -> None:
    """Resolved alerts leave their incidents; the announced ones emit their resolved event and page."""
    ms, policy = ctx.state, ctx.policy
    for record, ends_at in resolved:
        if record.resolved_by is None:
            # The gates resolve an alert on its clear windows and leave saying so to this stage.
            record.resolved_by = _clear_windows(record.clears)
        for incident_id in [i for i, inc in ms.incidents.items() if record.fingerprint in inc.alerts]:
            incident = ms.incidents[incident_id]
            incident.alerts.remove(record.fingerprint)
            if not incident.alerts:
                del ms.incidents[incident_id]
        if record.announced:
            alert = ctx.index.alert(record, "resolved", ends_at)
            ctx.decision.alerts.append(alert)
            ctx.resolved_by_group.setdefault(group_key(record.labels, policy.group_by), []).append(alert)


class ResolveStage:
    """Resolve: stale alerts resolve; resolved alerts leave their incidents and announce their end."""

    def run(self, ctx: DecideContext) -> bool:
        """Resolve alerts past ``resolve_timeout``, then record every alert resolved in this step."""
        ms, now, policy = ctx.state, ctx.now, ctx.policy
        alerts = ms.book.alerts
        for fp in [fp for fp, r in alerts.items() if now - r.last_seen >= policy.resolve_timeout]:
            record = alerts.pop(fp)
            record.resolved_by = f"no detection for {policy.resolve_timeout}"
            ctx.resolved.append((record, now))
            ctx.log("gates", record.rule, True, f"no detection for {policy.resolve_timeout}: resolved")
        end_alerts(ctx, ctx.resolved)
        return True
