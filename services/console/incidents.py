"""What followed each rollback request, for the Incidents page.

From the ``windows`` table, how long the rolled-back version kept serving after
its rollback request (the rollback was not in effect while it did), and from the
verification's data (or, for older ones, its reason) which windows of the target
it counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from retrain_trigger.actions import EVENT_TYPES

if TYPE_CHECKING:
    from services.console.reader import HistoryReader
    from services.console.views import ActionRow, DayRange


def hms(at: datetime | None) -> str:
    """``00:43:00`` (UTC): the page names the clock beside it."""
    return at.astimezone(UTC).strftime("%H:%M:%S") if at is not None else "?"


class CountedWindows(BaseModel):
    """Which of the target's windows a rollback's verification counted (from its outcome's data)."""

    windows: int | None = Field(None, description="How many target windows were counted")
    first_start: datetime | None = None
    last_end: datetime | None = None
    rolled_back_last_end: datetime | None = Field(
        None,
        description="End of the rolled-back version's last window after the request: counting began after it",
    )
    rolled_back_windows: int | None = Field(
        None, description="Windows it served after the request, as counted"
    )


class RollbackAfter(BaseModel):
    """What followed a rollback request: the rolled-back version's windows after it, and what was counted."""

    version: str = Field(description="The rolled-back version")
    request_window_end: datetime | None = Field(None, description="End of the window the request was made on")
    served_windows: int = Field(
        0, description="Windows of the rolled-back version starting at or after the request's window end"
    )
    served_first_start: datetime | None = None
    served_last_start: datetime | None = Field(None, description="Start of its last window after the request")
    served_last_end: datetime | None = None
    counted: CountedWindows | None = Field(None, description="From the verification's data, when it says")
    lines: list[str] = Field(default_factory=list, description="What the page says, one or two short lines")


def after_rollback(history: HistoryReader, span: DayRange, actions: Sequence[ActionRow]) -> None:
    """Give each rollback request its :class:`RollbackAfter` (``action.after``), from the windows table."""
    outcomes = {a.id.rsplit(".", 1)[0]: a for a in actions if a.verified is not None}
    for action in actions:
        if action.type != EVENT_TYPES["rollback"] or not action.model or not action.from_version:
            continue
        served = _served_after(history, span, action.model, action.from_version, action.window_end)
        after = RollbackAfter(version=action.from_version, request_window_end=action.window_end, **served)
        outcome = outcomes.get(action.id)
        if outcome is not None:
            after.counted = outcome.counted
        after.lines = _after_lines(after, action.target_version or "the target", outcome)
        action.after = after


def _served_after(
    history: HistoryReader, span: DayRange, model: str, version: str, since: datetime | None
) -> dict[str, Any]:
    """The rolled-back version's serving windows (inference) starting at or after ``since``."""
    if since is None:
        return {}
    columns = ["model_version", "kind", "events", "window_start", "window_end"]
    windows = history.read("windows", span.days(), model=model, columns=columns)
    # A version serves in its inference windows; a feedback window only rates replies it served before.
    serving = pc.or_(
        pc.fill_null(pc.equal(windows["kind"], "inference"), False),
        pc.and_(pc.is_null(windows["kind"]), pc.fill_null(pc.greater(windows["events"], 0), False)),
    )
    mask = pc.and_(
        pc.and_(pc.equal(windows["model_version"], version), serving),
        pc.greater_equal(
            windows["window_start"], pa.scalar(since, windows.schema.field("window_start").type)
        ),
    )
    after = windows.filter(mask)
    if after.num_rows == 0:
        return {"served_windows": 0}
    return {
        "served_windows": pc.count_distinct(after["window_start"]).as_py(),
        "served_first_start": pc.min(after["window_start"]).as_py(),
        "served_last_start": pc.max(after["window_start"]).as_py(),
        "served_last_end": pc.max(after["window_end"]).as_py(),
    }


def _time(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value if isinstance(value, datetime) else None


def counted_windows(data: dict[str, Any]) -> CountedWindows | None:
    """The target windows a verification counted and the rolled-back version's last window, from its data.

    Verifications published before the outcome carried them have none: the page then quotes the reason.
    """
    if "counted_window_count" not in data:
        return None
    counted = [w for w in data.get("counted_windows") or [] if isinstance(w, dict)]
    n = data.get("counted_window_count")
    last = data.get("rolled_back_last_window")
    return CountedWindows(
        windows=n if isinstance(n, int) else None,
        first_start=_time(counted[0].get("window_start")) if counted else None,
        # Only the first windows are listed: the last one's end is counted_until, or the list's when whole.
        last_end=_time(data.get("counted_until"))
        or (_time(counted[-1].get("window_end")) if counted and len(counted) == n else None),
        rolled_back_last_end=_time(last.get("window_end")) if isinstance(last, dict) else None,
        rolled_back_windows=data.get("rolled_back_windows_after_request"),
    )


def _after_lines(after: RollbackAfter, target: str, outcome: ActionRow | None) -> list[str]:
    """A line on what the rolled-back version did after the request, one on what the verification counted."""
    version, n = after.version, after.served_windows
    if after.request_window_end is None:
        lines = [f"when {version} stopped serving is unknown: the request names no window"]
    elif n == 0:
        lines = [f"{version} served no window after the request (none: it stopped at once)"]
    else:
        # One span, one clock: from the request's window end to the end of its last window, in window time.
        span = _seconds(after.request_window_end, after.served_last_end)
        lines = [
            f"{version} kept serving {count_of(n, 'window')} ({span} of window time) after the request:"
            f" {hms(after.request_window_end)}-{hms(after.served_last_end)}"
        ]
    if outcome is None:
        return lines
    done, counted = "verified" if outcome.verified else "not verified", after.counted
    if counted is not None and counted.windows:
        waited = counted.rolled_back_last_end or (after.served_last_end if n else None)
        since = f", after {version}'s last window (ended {hms(waited)})" if waited else ", after the request"
        bounds = f" {hms(counted.first_start)} → {hms(counted.last_end)}" if counted.last_end else ""
        lines.append(f"{done} on {count_of(counted.windows, 'window')} of {target}{bounds}{since}")
        return lines
    # An outcome published before it named its windows: its reason holds the samples it counted.
    numbers = (outcome.reason or "no reason given").split(": ", 1)[-1]
    since = (
        f"after {version}'s last window (ended {hms(after.served_last_end)})" if n else "after the request"
    )
    lines.append(f"{done} on {target}'s windows {since}: {numbers}")
    return lines


def count_of(n: int, what: str) -> str:
    """``1 window``, ``2 windows``."""
    return f"{n} {what}{'' if n == 1 else 's'}"


def _seconds(start: datetime | None, end: datetime | None) -> str:
    return duration(max(int((end - start).total_seconds()), 0) if start and end else 0)


def duration(seconds: float) -> str:
    """``21 s``, ``2 min 0 s`` (from 2 minutes), ``3 h 20 min`` (from 2 hours)."""
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class RollbackState(BaseModel):
    """Where a version's latest rollback stands, for its row on the Overview."""

    rollback_id: str = Field(description="The rollback request's CloudEvent id")
    state: str = Field(description="rolled back to s1 (verified), rollback requested, rollback failed")


def rollback_states(actions: Sequence[ActionRow]) -> dict[tuple[str, str], RollbackState]:
    """Per (model, rolled-back version): its latest rollback request and what its verification said."""
    outcomes = {a.id.rsplit(".", 1)[0]: a for a in actions if a.verified is not None}  # <id>.verified/.failed
    states: dict[tuple[str, str], RollbackState] = {}
    requests = [a for a in actions if a.type == EVENT_TYPES["rollback"] and a.model and a.from_version]
    for action in sorted(requests, key=lambda a: a.time or datetime.min.replace(tzinfo=UTC)):
        outcome = outcomes.get(action.id)
        target = action.target_version or "the stable version"
        if outcome is None:
            state = f"rollback to {target} requested (not verified yet)"
        elif outcome.verified:
            state = f"rolled back to {target} (verified)"
        else:
            state = f"rollback to {target} failed: {outcome.reason or 'no reason given'}"
        states[(action.model or "", action.from_version or "")] = RollbackState(
            rollback_id=action.id, state=state
        )
    return states


def breached_by(
    breaching: Sequence[pa.Table], named: Callable[[Mapping[str, set[str]]], Mapping[str, str]]
) -> str:
    """Which detectors breached, where: ``toxicity.profanity.v1 on v2's window 12:47:40`` (one window),
    ``drift.text_length.v1 on 3 windows of v2, from 12:47:40`` (several); ``named`` calls the segments."""
    rows = pa.concat_tables([d.select(["segment", "detector_id", "window_start"]) for d in breaching])
    per: dict[str, dict[str, set[Any]]] = {}
    for row in rows.to_pylist():
        per.setdefault(str(row["detector_id"]), {}).setdefault(str(row["segment"]), set()).add(
            row["window_start"]
        )
    names = named({segment: set() for found in per.values() for segment in found})
    said = []
    for detector, segments in sorted(per.items()):
        for segment, starts in sorted(segments.items()):
            first = min(starts)
            at = (
                first.strftime("%Y-%m-%d %H:%M:%S")
                if len({s.date() for s in starts}) > 1
                else f"{first:%H:%M:%S}"
            )
            where = (
                f"{names[segment]}'s window {at}"
                if len(starts) == 1
                else f"{len(starts)} windows of {names[segment]}, from {at}"
            )
            said.append(f"{detector} on {where}")
    return "; ".join(said)
