"""Stable versions: the version of each model a rollback goes back to (the last one marked stable)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.state import State


class StableVersionMarked(BaseModel):
    """A deployment event (or ``loopwatch model mark-stable``): this version of the model is known good."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = "1"
    model: str = Field(min_length=1)
    version: str = Field(min_length=1)
    marked_at: datetime
    marked_by: str = "loopwatch"


class StableVersions(State):
    """The last version marked stable, per model."""

    models: dict[str, StableVersionMarked] = Field(default_factory=dict)

    def apply(self, event: StableVersionMarked) -> None:
        """Record a mark-stable event; an older event never overrides a newer one (replays are safe)."""
        current = self.models.get(event.model)
        if current is None or event.marked_at >= current.marked_at:
            self.models[event.model] = event

    def target(self, model: str) -> str | None:
        """The version a rollback of ``model`` goes back to, if one was ever marked stable."""
        marked = self.models.get(model)
        return marked.version if marked else None
