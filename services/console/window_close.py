"""When each window of a Segment page closed: how long after its end, what closed it, what it waited for.

The windows table keeps each WindowClosed's ``closed_at`` (wall clock), ``closed_by`` (``watermark``,
``idle_timeout``, ``revision``, ``timer``, ``count``) and ``waited_for`` (the input it waited for last).
Trial 12h: a canary's bad window ended at 03:31:00 and its verdict came at 03:31:21, and no page said
why; held-back feedback of the next window had kept the feedback watermark from passing its end. The
page now says it per window and kind: ``closed 21 s after its end by the watermark (...), waited for
llm.feedback.v1 partition 3 (...)``. Rows written before ``closed_by`` existed say only when; rows
known from detections only (no WindowClosed) say nothing.

Trial 12k: a canary's windows read "revised once as late events came in" though every event came on
time: they were judged again when the stable window of their time closed after them (``closed_by``
``reference``, older histories say ``revision``). Such a close reads ``judged again 1 min 5 s after
its end, when its reference (v1, stable) window closed``. A replay of backdated traffic (the demo's)
closes every window minutes after its end in window time; when a segment's windows closed by their
watermarks all that far after their end, its events were read that long after their times, not held
back, and the note says so: ``closed 9 min 58 s after its end in window time (the segment's events were
stamped a median ~10 min before they were read) by the watermark``.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.console.columns import texts
from services.console.incidents import duration

#: The window kinds a segment's windows table has a row of, in the order the page names them.
KINDS = ("inference", "feedback")
#: What closed a window, in words (the WindowClosed's ``closed_by``).
CLOSED_BY = {
    "watermark": "by the watermark",
    "idle_timeout": "by the idle timeout (an input went quiet)",
    "revision": "by a revision",  # at revision 0 a first verdict that waited for late events: FIRST_ON_LATE
    "timer": "by the timer",
    "count": "by its count",
}
#: What each of them means, said once above the page's table of closes.
CLOSED_BY_MEANS = (
    "the watermark: every input's event time passed its end; the idle timeout: an input went quiet and"
    " the watermark moved on without it; a revision: late events judged it again (first judged: its"
    " first verdict waited for late events; in histories before 'judged again when its reference',"
    " also a re-judgement against its reference); judged again when its reference closed: the stable"
    " window of its time closed or was revised after it was judged, none of its own events late; the timer:"
    " LOOPWATCH_WINDOW_CLOSE=timer; its count: LOOPWATCH_WINDOW_EVENTS"
)
#: A first verdict closed by the revision path: late events opened the window (none had come when the
#: watermarks passed its end), and it was judged once they went quiet.
FIRST_ON_LATE = (
    "once its late events went quiet (none of its events had come when a later window closed or the"
    " watermarks passed its end; see LOOPWATCH_WINDOW_REVISION_QUIET_SECONDS)"
)
#: The table's legend for those, beside CLOSED_BY_MEANS.
FIRST_ON_LATE_NOTE = "first verdict on late events"
#: A segment whose windows closed by their watermarks this long after their end (the median) reads its
#: events' times as behind the wall clock: minutes, not the seconds a grace or a slow input takes.
BEHIND_SECONDS = 60.0
#: The closes that show how far the event times run behind the wall clock: a window's own first close,
#: not one that waited for late events (those are late by what they waited for).
_ON_TIME_CLOSES = ("watermark", "idle_timeout", "timer")
_MICROS = pa.timestamp("us", "UTC")


def reference_words(reference: str | None) -> str:
    """``when its reference (v1, stable) window closed`` (``was revised``: its name ends ``/r<n>``).

    ``reference`` is the windows row's, e.g. ``stable:feedback|m|v1|app|route|tenant@1:<end>/r1``; one
    not of that shape (or not read) is not named.

    >>> reference_words("stable:feedback|m|v1|app|chat|t@1:2027-01-15T08:02:00+00:00/r1")
    'when its reference (v1, stable) window was revised'
    """
    parts = (reference or "").split("@", 1)[0].split("|")
    if not (reference or "").startswith("stable:") or len(parts) < 3 or not parts[2]:
        return "when its reference (the stable version's window of its time) closed or was revised"
    revised = "/r" in (reference or "").rsplit("@", 1)[-1]
    return f"when its reference ({parts[2]}, stable) window {'was revised' if revised else 'closed'}"


def behind_note(behind: float | None) -> str:
    """`` in window time (the segment's events were stamped a median ~10 min before they were read)``,
    or "" (not behind): the segment's, not each window's own (trial 12u read it as the window's)."""
    if behind is None:
        return ""
    about = f"{round(behind / 3600)} h" if behind >= 5400 else f"{max(1, round(behind / 60))} min"
    return f" in window time (the segment's events were stamped a median ~{about} before they were read)"


def events_behind(windows: pa.Table) -> float | None:
    """How far a segment's event times run behind the wall clock (seconds), or None: not that far.

    The median of ``closed_at`` minus the end over the windows' first closes by the watermark, the idle
    timeout or the timer, when at least BEHIND_SECONDS: every window closing that long after its end
    means its events were read that long after their times (a backdated replay), not that some were
    held back (those windows wait alone: the median does not move).
    """
    if windows.num_rows == 0 or "closed_by" not in windows.column_names:
        return None
    first = pc.and_(
        pc.is_in(windows["closed_by"], pa.array(_ON_TIME_CLOSES)), pc.equal(windows["revision"], 0)
    )
    rows = windows.filter(pc.fill_null(first, False))
    if rows.num_rows == 0:
        return None
    ends, closed = (pc.cast(pc.cast(rows[c], _MICROS), pa.int64()) for c in ("window_end", "closed_at"))
    median = float(np.median(pc.subtract(closed, ends).to_numpy(zero_copy_only=False))) / 1e6
    return median if median >= BEHIND_SECONDS else None


def rejudged_by_reference(windows: pa.Table) -> dict[datetime, str]:
    """Per window whose latest revision was a re-judgement against its reference: it in words.

    ``judged again when its reference (v1, stable) window closed``, for the Segment page's revision
    column instead of "revised once as late events came in" (none of its events came late, unless its
    counts say more came in an earlier revision). A kind of the window revised by late events last
    leaves it out: the windows table keeps each kind's latest revision only.
    """
    if windows.num_rows == 0 or "closed_by" not in windows.column_names:
        return {}
    revised = windows.filter(pc.fill_null(pc.greater(windows["revision"], 0), False))
    references = revised["reference"].to_pylist() if "reference" in revised.column_names else None
    said: dict[datetime, str] = {}
    late: set[datetime] = set()
    for n, (start, by) in enumerate(
        zip(revised["window_start"].to_pylist(), texts(revised["closed_by"]), strict=True)
    ):
        if by == "reference":
            said[start] = "judged again " + reference_words(references[n] if references else None)
        else:
            late.add(start)
    return {start: words for start, words in said.items() if start not in late}


def close_note(
    seconds: float,
    closed_by: str | None,
    waited_for: str | None,
    revision: int | None = None,
    closed_at: datetime | None = None,
    *,
    reference: str | None = None,
    behind: float | None = None,
) -> str:
    """``closed 21 s after its end by the watermark (...), waited for llm.feedback.v1 partition 3 (...)``.

    ``revision`` 0 with ``closed_by`` ``revision`` is a first verdict that waited for late events (trial
    12i: its feedback all came late): not "judged again". ``closed_by`` ``reference`` is a re-judgement
    against ``reference``, the stable window of its time (trial 12k): ``judged again 5 s after its end,
    when its reference (v1, stable) window closed``. ``closed_at`` before the end (events stamped ahead
    of the wall clock) names the clock time and says why, instead of a plain "before its end";
    ``behind`` (:func:`events_behind`) says a close that far after its end is the events' times.
    """
    first = closed_by == "revision" and revision == 0
    again = closed_by == "reference"
    by = "" if first or again or not closed_by else f" {CLOSED_BY.get(closed_by, f'by {closed_by}')}"
    if seconds < 0 and closed_at is not None:
        said = (
            f"{by} at {closed_at:%H:%M:%S}, {duration(-seconds)} before its end in window time: its"
            " events' times run ahead of the wall clock"
        )
    elif seconds < 0:
        said = f" {duration(-seconds)} before its end{by}"
    else:
        said = f" {duration(seconds)} after its end"
        said += behind_note(behind if behind is not None and seconds >= behind / 2 else None)
        said += f", {FIRST_ON_LATE}" if first else by
    said = ("first judged" if first else "judged again" if again else "closed") + said
    said += f", {reference_words(reference)}" if again else ""
    return f"{said}, waited for {waited_for}" if waited_for else said


def close_notes(rows: pa.Table, behind: float | None = None) -> list[str | None]:
    """Per row of the windows table (``window_end``, ``closed_at``, ``closed_by``, ``waited_for``,
    ``revision``, and ``reference`` when read): its note; ``behind``: :func:`events_behind`.

    Null where ``closed_at`` is (a row known from detections only). A page's windows mostly read alike
    (closed 1 s after its end by the watermark): each distinct note is made once.
    """
    if rows.num_rows == 0:
        return []
    ends, closed = (pc.cast(pc.cast(rows[c], _MICROS), pa.int64()) for c in ("window_end", "closed_at"))
    late = pc.subtract(closed, ends).to_numpy(zero_copy_only=False)
    known = np.asarray(pc.is_valid(closed).to_numpy(zero_copy_only=False), dtype=bool)
    seconds = np.where(known, np.nan_to_num(late.astype(float)) / 1e6, 0.0).round().astype(int)
    nothing = [None] * rows.num_rows
    revisions = rows["revision"].to_pylist() if "revision" in rows.column_names else nothing
    references = texts(rows["reference"]) if "reference" in rows.column_names else nothing
    made: dict[tuple[int, str | None, str | None, int | None, datetime | None, str | None], str] = {}
    out: list[str | None] = []
    for at, ok, by, waited, revision, n in zip(
        seconds.tolist(),
        known.tolist(),
        texts(rows["closed_by"]),
        texts(rows["waited_for"]),
        revisions,
        range(rows.num_rows),
        strict=True,
    ):
        if not ok:
            out.append(None)
            continue
        # Only a close before the end names its clock time: the rest share their notes.
        clock = rows["closed_at"][n].as_py().replace(microsecond=0) if at < 0 else None
        reference = references[n] if by == "reference" else None
        key = (at, by, waited, revision, clock, reference)
        note = made.get(key)
        if note is None:
            note = close_note(at, by, waited, revision, clock, reference=reference, behind=behind)
            made[key] = note
        out.append(note)
    return out


def first_on_late(windows: pa.Table) -> set[datetime]:
    """The windows whose first verdict waited for late events (a row closed by ``revision`` at revision 0)."""
    if windows.num_rows == 0 or "closed_by" not in windows.column_names:
        return set()
    first = pc.and_(pc.equal(windows["closed_by"], "revision"), pc.equal(windows["revision"], 0))
    return set(windows.filter(pc.fill_null(first, False))["window_start"].to_pylist())


def closes_by_kind(windows: pa.Table, starts: pa.Array | pa.ChunkedArray) -> dict[str, list[str | None]]:
    """Per window kind with a known close: per page window (``starts``, in the page's order), its note.

    How far the events' times run behind the wall clock is the segment's, from both kinds' closes.
    """
    out: dict[str, list[str | None]] = {}
    behind = events_behind(windows.filter(pc.is_valid(windows["closed_at"])))
    for kind in KINDS:
        rows = windows.filter(pc.fill_null(pc.equal(windows["kind"], kind), False))
        rows = rows.filter(pc.is_valid(rows["closed_at"]))
        if rows.num_rows == 0:
            continue
        notes = close_notes(rows, behind)
        at = pc.index_in(starts, value_set=rows["window_start"]).to_pylist()
        out[kind] = [None if i is None else notes[i] for i in at]
    return out


def kinds_said(closes: dict[str, list[str | None]], index: int) -> list[str]:
    """One window's notes, each naming its kind when the page has both: ``feedback: closed 21 s ...``."""
    said = [(kind, notes[index]) for kind, notes in closes.items() if notes[index]]
    return [f"{kind}: {note}" if len(closes) > 1 else str(note) for kind, note in said]
