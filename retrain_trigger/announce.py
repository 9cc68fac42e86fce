"""Announce: a firing, unmuted alert's first firing event; it joins its group's page."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrain_trigger.context import Candidate, DecideContext


class AnnounceStage:
    """Announce: the first time an unmuted alert fires, its firing event; every time, a place on the page."""

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        """Emit the firing event once per alert and add the alert to its group's page."""
        record = candidate.record
        if not record.announced:
            record.announced = True
            ctx.decision.alerts.append(ctx.index.alert(record, "firing", None))
            ctx.log("alerts", candidate.subject, True, "firing")
        ctx.active.setdefault(candidate.page_group, []).append(record)
        return True
