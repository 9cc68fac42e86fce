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
    "revision": "by a revision",
    "timer": "by the timer",
    "count": "by its count",
}
#: What each of them means, said once above the page's table of closes.
CLOSED_BY_MEANS = (
    "the watermark: every input's event time passed its end; the idle timeout: an input went quiet and"
    " the watermark moved on without it; a revision: late events, or its reference revised, judged it"
    " again; the timer: LOOPWATCH_WINDOW_CLOSE=timer; its count: LOOPWATCH_WINDOW_EVENTS"
)
_MICROS = pa.timestamp("us", "UTC")


def close_note(seconds: float, closed_by: str | None, waited_for: str | None) -> str:
    """``closed 21 s after its end by the watermark (...), waited for llm.feedback.v1 partition 3 (...)``."""
    when = f"{duration(seconds)} after its end" if seconds >= 0 else f"{duration(-seconds)} before its end"
    said = f"closed {when}"
    if closed_by:
        said += f" {CLOSED_BY.get(closed_by, f'by {closed_by}')}"
    return f"{said}, waited for {waited_for}" if waited_for else said


def close_notes(rows: pa.Table) -> list[str | None]:
    """Per row of the windows table (``window_end``, ``closed_at``, ``closed_by``, ``waited_for``): its note.

    Null where ``closed_at`` is (a row known from detections only). A page's windows mostly read alike
    (closed 1 s after its end by the watermark): each distinct note is made once.
    """
    if rows.num_rows == 0:
        return []
    ends, closed = (pc.cast(pc.cast(rows[c], _MICROS), pa.int64()) for c in ("window_end", "closed_at"))
    late = pc.subtract(closed, ends).to_numpy(zero_copy_only=False)
    known = np.asarray(pc.is_valid(closed).to_numpy(zero_copy_only=False), dtype=bool)
    seconds = np.where(known, np.nan_to_num(late.astype(float)) / 1e6, 0.0).round().astype(int)
    made: dict[tuple[int, str | None, str | None], str] = {}
    out: list[str | None] = []
    for at, ok, by, waited in zip(
        seconds.tolist(), known.tolist(), texts(rows["closed_by"]), texts(rows["waited_for"]), strict=True
    ):
        if not ok:
            out.append(None)
            continue
        key = (at, by, waited)
        note = made.get(key)
        if note is None:
            note = made[key] = close_note(at, by, waited)
        out.append(note)
    return out


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
