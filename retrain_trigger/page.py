"""Page: alerts grouped into notifications (Alertmanager's group, repeat interval and resolved page)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from retrain_trigger.alerts import GroupState, Notification, describe_value, worst_severity
from schemas.events import Alert

if TYPE_CHECKING:
    from retrain_trigger.context import DecideContext


def notification(
    key: str,
    group_by: list[str],
    status: Literal["firing", "resolved"],
    alerts: list[Alert],
    now: datetime,
    repeat: bool,
) -> Notification:
    """The page of one group: its alerts, with summary, numbers and runbook as annotations."""
    annotations: dict[str, dict[str, str]] = {}
    for alert in alerts:
        notes = {"summary": alert.summary}
        if alert.values:
            notes["description"] = "; ".join(describe_value(v) for v in alert.values)
        if alert.runbook_url:
            notes["runbook_url"] = alert.runbook_url
        annotations[alert.fingerprint] = notes
    first = alerts[0].labels
    return Notification(
        group_key=key,
        group_labels={name: first.get(name, "") for name in group_by},
        status=status,
        severity=worst_severity(alerts),
        alerts=alerts,
        annotations=annotations,
        repeat=repeat,
        sent_at=now,
    )


class PageStage:
    """Page: a group is paged when it starts firing, again after the repeat interval, and once resolved."""

    def run(self, ctx: DecideContext) -> bool:
        """Add the pages due now to the decision and update the groups' page state."""
        now, policy = ctx.now, ctx.policy
        groups = ctx.state.book.groups
        active = ctx.active
        for key in set(groups) | set(active):
            group = groups.setdefault(key, GroupState())
            records = active.get(key, [])
            if records and (not group.active or now - (group.last_notified or now) >= policy.repeat_interval):
                repeat = group.active
                group.active, group.last_notified = True, now
                alerts = [ctx.index.alert(r, "firing", None) for r in records]
                ctx.decision.notifications.append(
                    notification(key, policy.group_by, "firing", alerts, now, repeat)
                )
                ctx.log("alerts", key, True, "repeat page" if repeat else "page")
            elif not records and key not in ctx.firing_groups:
                resolved = ctx.resolved_by_group.get(key)
                if group.active and resolved:
                    ctx.decision.notifications.append(
                        notification(key, policy.group_by, "resolved", resolved, now, False)
                    )
                    ctx.log("alerts", key, True, "resolved page")
                del groups[key]
        return True
