"""When each window of a Segment page closed: how long after its end, what closed it, what it waited for.

The windows table keeps each WindowClosed's ``closed_at`` (wall clock), ``closed_by`` (``watermark``,
``idle_timeout``, ``revision``, ``timer``, ``count``) and ``waited_for`` (the input it waited for last).
Trial 12h: a canary's bad window ended at 03:31:00 and its verdict came at 03:31:21, and no page said
why; held-back feedback of the next window had kept the feedback watermark from passing its end. The
page now says it per window and kind: ``closed 21 s after its end by the watermark (...), waited for
llm.feedback.v1 partition 3 (...)``. Rows written before ``closed_by`` existed say only when; rows
known from detections only (no WindowClosed) say nothing.
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
    " the watermark moved on without it; a revision: late events, or its reference revised, judged it"
    " again (first judged: its first verdict waited for late events); the timer:"
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
_MICROS = pa.timestamp("us", "UTC")


def close_note(
    seconds: float,
    closed_by: str | None,
    waited_for: str | None,
    revision: int | None = None,
    closed_at: datetime | None = None,
) -> str:
    """``closed 21 s after its end by the watermark (...), waited for llm.feedback.v1 partition 3 (...)``.

    ``revision`` 0 with ``closed_by`` ``revision`` is a first verdict that waited for late events (trial
    12i: its feedback all came late): not "judged again". ``closed_at`` before the end (events stamped
    ahead of the wall clock) names the clock time and says why, instead of a plain "before its end".
    """
    first = closed_by == "revision" and revision == 0
    by = "" if first or not closed_by else f" {CLOSED_BY.get(closed_by, f'by {closed_by}')}"
    if seconds < 0 and closed_at is not None:
        said = (
            f"{by} at {closed_at:%H:%M:%S}, {duration(-seconds)} before its end in window time: its"
            " events' times run ahead of the wall clock"
        )
    elif seconds < 0:
        said = f" {duration(-seconds)} before its end{by}"
    else:
        said = f" {duration(seconds)} after its end" + (f", {FIRST_ON_LATE}" if first else by)
    said = ("first judged" if first else "closed") + said
    return f"{said}, waited for {waited_for}" if waited_for else said


def close_notes(rows: pa.Table) -> list[str | None]:
    """Per row of the windows table (``window_end``, ``closed_at``, ``closed_by``, ``waited_for``,
    ``revision``): its note.

    Null where ``closed_at`` is (a row known from detections only). A page's windows mostly read alike
    (closed 1 s after its end by the watermark): each distinct note is made once.
    """
    if rows.num_rows == 0:
        return []
    ends, closed = (pc.cast(pc.cast(rows[c], _MICROS), pa.int64()) for c in ("window_end", "closed_at"))
    late = pc.subtract(closed, ends).to_numpy(zero_copy_only=False)
    known = np.asarray(pc.is_valid(closed).to_numpy(zero_copy_only=False), dtype=bool)
    seconds = np.where(known, np.nan_to_num(late.astype(float)) / 1e6, 0.0).round().astype(int)
    revisions = rows["revision"].to_pylist() if "revision" in rows.column_names else [None] * rows.num_rows
    made: dict[tuple[int, str | None, str | None, int | None, datetime | None], str] = {}
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
        key = (at, by, waited, revision, clock)
        note = made.get(key)
        if note is None:
            note = made[key] = close_note(at, by, waited, revision, clock)
        out.append(note)
    return out


def first_on_late(windows: pa.Table) -> set[datetime]:
    """The windows whose first verdict waited for late events (a row closed by ``revision`` at revision 0)."""
    if windows.num_rows == 0 or "closed_by" not in windows.column_names:
        return set()
    first = pc.and_(pc.equal(windows["closed_by"], "revision"), pc.equal(windows["revision"], 0))
    return set(windows.filter(pc.fill_null(first, False))["window_start"].to_pylist())


def closes_by_kind(windows: pa.Table, starts: pa.Array | pa.ChunkedArray) -> dict[str, list[str | None]]:
    """Per window kind with a known close: per page window (``starts``, in the page's order), its note."""
    out: dict[str, list[str | None]] = {}
    for kind in KINDS:
        rows = windows.filter(pc.fill_null(pc.equal(windows["kind"], kind), False))
        rows = rows.filter(pc.is_valid(rows["closed_at"]))
        if rows.num_rows == 0:
            continue
        notes = close_notes(rows)
        at = pc.index_in(starts, value_set=rows["window_start"]).to_pylist()
        out[kind] = [None if i is None else notes[i] for i in at]
    return out


def kinds_said(closes: dict[str, list[str | None]], index: int) -> list[str]:
    """One window's notes, each naming its kind when the page has both: ``feedback: closed 21 s ...``."""
    said = [(kind, notes[index]) for kind, notes in closes.items() if notes[index]]
    return [f"{kind}: {note}" if len(closes) > 1 else str(note) for kind, note in said]
