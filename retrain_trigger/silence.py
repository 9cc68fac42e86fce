"""Silences: maintenance windows that mute matching alerts and their actions between start and end."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrain_trigger.alerts import Notification, fingerprint
from retrain_trigger.state import State
from schemas.events import Alert

if TYPE_CHECKING:
    from retrain_trigger.context import Candidate, DecideContext

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
# A regex that accepts both accepts about anything a (non-empty) label holds.
_PROBES = ("x", "Zq7 loopwatch-probe/9.0_~")


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

    def narrows(self) -> bool:
        """Does this matcher pick some alerts out, rather than accept about any value?

        Negative matchers and ``name=`` (empty: the label is absent) let almost
        everything through; so does a regex that accepts arbitrary text.
        """
        if self.op == "=":
            return self.value != ""
        if self.op == "=~":
            return not all(re.fullmatch(self.value, probe) for probe in _PROBES)
        return False

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
    #: Set by ``silence add --force``: allowed to match everything or to outlast the maximum.
    force: bool = False

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

    def needs_force(self, max_duration: timedelta) -> tuple[Literal["too_broad", "too_long"], str] | None:
        """Why this silence may only be applied with ``force`` (None when it is an ordinary one)."""
        if self.force:
            return None
        if not any(m.narrows() for m in self.matchers):
            matchers = ",".join(str(m) for m in self.matchers)
            return "too_broad", f"{matchers} matches every alert"
        if self.ends_at - self.starts_at > max_duration:
            return "too_long", f"it lasts {self.ends_at - self.starts_at}, longer than {max_duration}"
        return None

    def announcement(self, now: datetime) -> Notification:
        """The info alert that makes this silence visible: firing while it lasts, resolved once it ended."""
        matchers = ",".join(str(m) for m in self.matchers)
        labels = {"alertname": "silence", "severity": "info", "silence_id": self.id, "matchers": matchers}
        labels |= {m.name: m.value for m in self.matchers if m.op == "=" and m.name == "model"}
        ended = self.ends_at <= now
        summary = (
            f"silence {self.id} by {self.created_by} mutes {matchers}"
            f" from {self.starts_at.isoformat()} to {self.ends_at.isoformat()}: {self.comment}"
        )
        alert = Alert(
            fingerprint=fingerprint(labels),
            status="resolved" if ended else "firing",
            severity="info",
            summary=summary if not ended else f"silence {self.id} ended ({matchers})",
            labels=labels,
            starts_at=self.starts_at,
            ends_at=self.ends_at,
            resolved_by=f"silence {self.id} ended" if ended else None,
        )
        group = {name: labels[name] for name in ("alertname", "silence_id", "model") if name in labels}
        return Notification(
            group_key="{" + ",".join(f'{k}="{v}"' for k, v in group.items()) + "}",
            group_labels=group,
            status=alert.status,
            severity="info",
            alerts=[alert],
            annotations={alert.fingerprint: {"summary": alert.summary}},
            sent_at=now,
        )


class Silences(State):
    """All silences by id (a compacted topic keyed by id holds the same thing)."""

    items: dict[str, Silence] = Field(default_factory=dict)

    def add(self, silence: Silence) -> Silence:
        """Add a silence, or move an existing one's end earlier; return the silence now held.

        An end never moves later: replaying an old copy of a silence does not
        bring it back after it was expired.
        """
        current = self.items.get(silence.id)
        if current is not None and current.ends_at <= silence.ends_at:
            return current
        self.items[silence.id] = silence
        return silence

    def expire(self, silence_id: str, now: datetime) -> Silence:
        """End a silence now (kept, with its end moved, so its history stays readable)."""
        silence = self.items[silence_id]
        ended = silence.model_copy(update={"ends_at": max(now, silence.starts_at)})
        self.items[silence_id] = ended
        return ended

    def announce(self, announced: dict[str, datetime], now: datetime) -> list[Notification]:
        """Info alerts for silences not yet announced (or whose end moved), and for announced ones that ended.

        ``announced`` (silence id -> announced end) is updated in place; a silence
        that had already ended when it was first seen is not announced.
        """
        notices = []
        for silence in self.items.values():
            if silence.ends_at > now and announced.get(silence.id) != silence.ends_at:
                announced[silence.id] = silence.ends_at
                notices.append(silence.announcement(now))
            elif silence.ends_at <= now and silence.id in announced:
                del announced[silence.id]
                notices.append(silence.announcement(now))
        return notices

    def muting(self, labels: dict[str, str], now: datetime) -> Silence | None:
        """The first silence muting these labels at ``now``, if any."""
        return next((s for s in self.items.values() if s.mutes(labels, now)), None)

    def match_prefix(self, prefix: str) -> Silence:
        """The one silence whose id starts with ``prefix`` (KeyError when none or several)."""
        found = [s for key, s in self.items.items() if key.startswith(prefix)]
        if len(found) != 1:
            raise KeyError(prefix)
        return found[0]


class SilenceStage:
    """Silence: a firing alert that an active silence matches stops here (no page, no action)."""

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        """False (and a log line naming the silence) when a silence mutes this alert now."""
        silence = ctx.silences.muting(candidate.record.labels, ctx.now)
        if silence is None:
            return True
        reason = f"silenced by {silence.id} until {silence.ends_at.isoformat()} ({silence.comment})"
        ctx.log("silence", candidate.subject, False, reason)
        return False
