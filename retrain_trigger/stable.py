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
    """The last version marked stable, per model; a model registry's stable alias comes first."""

    models: dict[str, StableVersionMarked] = Field(default_factory=dict)
    #: The registry's stable alias per model, as last read (the marks are the fallback).
    registry: dict[str, str] = Field(default_factory=dict, exclude=True)
    #: The stable version that the registry's one replaced, per model (from its tag), as last read.
    previous: dict[str, str] = Field(default_factory=dict, exclude=True)

    def use_registry(
        self, versions: dict[str, str | None], previous: dict[str, str | None] | None = None
    ) -> None:
        """Take the stable aliases (and the versions they replaced) just read from the registry."""
        for read, into in ((versions, self.registry), (previous or {}, self.previous)):
            for model, version in read.items():
                if version:
                    into[model] = version
                else:  # None: the model has none there
                    into.pop(model, None)

    def apply(self, event: StableVersionMarked) -> None:
        """Record a mark-stable event; an older event never overrides a newer one (replays are safe)."""
        current = self.models.get(event.model)
        if current is None or event.marked_at >= current.marked_at:
            self.models[event.model] = event

    def target(self, model: str) -> str | None:
        """The stable version of ``model``: the registry's alias, else the last mark."""
        if model in self.registry:
            return self.registry[model]
        marked = self.models.get(model)
        return marked.version if marked else None

    def rollback_target(self, model: str, bad: str) -> str | None:
        """The version a rollback of ``bad`` goes back to; never ``bad`` itself (None: there is none).

        A bad canary goes back to the registry's stable version; a bad stable
        version to the one it replaced; else to the last mark.
        """
        stable, mark = self.registry.get(model), self.models.get(model)
        candidates = (self.previous.get(model) if stable == bad else stable, mark.version if mark else None)
        return next((version for version in candidates if version and version != bad), None)
