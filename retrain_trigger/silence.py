"""Silences: maintenance windows that mute matching alerts and their actions between start and end."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrain_trigger.state import State

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class Matcher(BaseModel):
    """A label matcher, as in Alertmanager: ``name=value``, ``!=``, ``=~`` regex, ``!~``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: str

    @model_validator(mode="after")
    def _regex_compiles(self) -> Matcher:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"bad regex {self.value!r}: {exc}") from exc
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        """Does this matcher accept the labels (a missing label is the empty string)?"""
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = re.fullmatch(self.value, value) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matcher(text: str) -> Matcher:
    """``"model=chat"`` (or ``!=``, ``=~``, ``!~``) as a Matcher."""
    match = _MATCHER.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a matcher: use name=value, name!=value, name=~regex or name!~regex"
        )
    return Matcher(name=match.group(1), op=match.group(2), value=match.group(3))


class Silence(BaseModel):
    """A maintenance window: alerts matching every matcher are muted from ``starts_at`` to ``ends_at``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    matchers: list[Matcher] = Field(min_length=1)
    starts_at: datetime
    ends_at: datetime
    created_by: str = "loopwatch"
    comment: str = ""

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("silence times must carry a timezone")
        return value

    @model_validator(mode="after")
    def _ends_after_start(self) -> Silence:
        if self.ends_at <= self.starts_at:
            raise ValueError("a silence must end after it starts")
        return self

    def active(self, now: datetime) -> bool:
        """Is the window open at ``now``?"""
        return self.starts_at <= now < self.ends_at

    def mutes(self, labels: dict[str, str], now: datetime) -> bool:
        """Does this silence mute an alert with these labels at ``now``?"""
        return self.active(now) and all(m.matches(labels) for m in self.matchers)


class Silences(State):
    """All silences by id (a compacted topic keyed by id holds the same thing)."""

    items: dict[str, Silence] = Field(default_factory=dict)

    def add(self, silence: Silence) -> Silence:
        """Add or replace a silence."""
        self.items[silence.id] = silence
        return silence

    def expire(self, silence_id: str, now: datetime) -> Silence:
        """End a silence now (kept, with its end moved, so its history stays readable)."""
        silence = self.items[silence_id]
        ended = silence.model_copy(update={"ends_at": max(now, silence.starts_at)})
        self.items[silence_id] = ended
        return ended

    def muting(self, labels: dict[str, str], now: datetime) -> Silence | None:
        """The first silence muting these labels at ``now``, if any."""
        return next((s for s in self.items.values() if s.mutes(labels, now)), None)

    def match_prefix(self, prefix: str) -> Silence:
        """The one silence whose id starts with ``prefix`` (KeyError when none or several)."""
        found = [s for key, s in self.items.items() if key.startswith(prefix)]
        if len(found) != 1:
            raise KeyError(prefix)
        return found[0]
