"""Settle and resolve: when the time-based rest of a step runs, and which alerts end in it.

Alerts resolve in the gates (enough clear windows) or here, when their segment
sent no detection for ``resolve_timeout``; either way this stage takes them out
of their incidents and emits the resolved events of the announced ones.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from retrain_trigger.alerts import group_key
from retrain_trigger.dedup import DEDUP_RETENTION

if TYPE_CHECKING:
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


class ResolveStage:
    """Resolve: stale alerts resolve; resolved alerts leave their incidents and announce their end."""

    def run(self, ctx: DecideContext) -> bool:
        """Resolve alerts past ``resolve_timeout``, then record every alert resolved in this step."""
        ms, now, policy = ctx.state, ctx.now, ctx.policy
        alerts = ms.book.alerts
        for fp in [fp for fp, r in alerts.items() if now - r.last_seen >= policy.resolve_timeout]:
            record = alerts.pop(fp)
            ctx.resolved.append((record, now))
            ctx.log("gates", record.rule, True, f"no detection for {policy.resolve_timeout}: resolved")
        for record, ends_at in ctx.resolved:
            for incident_id in [i for i, inc in ms.incidents.items() if record.fingerprint in inc.alerts]:
                incident = ms.incidents[incident_id]
                incident.alerts.remove(record.fingerprint)
                if not incident.alerts:
                    del ms.incidents[incident_id]
            if record.announced:
                alert = ctx.index.alert(record, "resolved", ends_at)
                ctx.decision.alerts.append(alert)
                ctx.resolved_by_group.setdefault(group_key(record.labels, policy.group_by), []).append(alert)
        return True
