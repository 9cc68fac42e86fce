"""Where a rolled-back version's charts mark the rollback request: a vertical line at its window's end.

The Incidents page says when the rollback was requested; the canary's charts did not, so the engineer
cross-checked the two by eye. The mark is at the end of the window the request was decided on (window
time, the charts' own axis), read from the actions table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, Field

from services.console.views import ROLLBACK_REQUESTED, ActionRow


class RollbackMark(BaseModel):
    """A rollback request of this version, drawn on each of its charts."""

    rollback_id: str
    at: datetime = Field(description="End of the window it was decided on (window time), else its event time")
    target_version: str | None = None


def rollback_marks(actions: Sequence[ActionRow], model: str, version: str) -> list[RollbackMark]:
    """The requests to roll ``model`` back from ``version``, oldest first."""
    marks = [
        RollbackMark(rollback_id=a.id, at=at, target_version=a.target_version)
        for a in actions
        if a.type == ROLLBACK_REQUESTED
        and a.model == model
        and a.from_version == version
        and (at := a.window_end or a.time) is not None
    ]
    return sorted(marks, key=lambda m: m.at)
