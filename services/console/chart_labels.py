"""What the Segment page's charts call things: what a series was compared with, and what a revision added.

A series names its reference in words (``reference (v1, stable)``; each measure's own words are
:mod:`services.console.measures`'). A window late events revised is said as what happened:
``revised 5 times as late events came in, +46 events (3 -> 49)``, not ``5x``, which reads as five
late arrivals.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

#: Per point or window: (revision 0's events, the latest revision's events) the detections counted.
EventCounts = tuple[int | None, int | None]
WindowKey = tuple[datetime, str, str]

_STABLE = re.compile(r"^stable:(?:inference|feedback)\|([^@]*)@")
_PINNED = re.compile(r"^pinned[:|](?:inference|feedback)\|([^@]*)(?:@(\d+))?")


def reference_label(references: Iterable[str | None]) -> str:
    """What a series was compared with, in words: ``reference (v1, stable)``, ``reference (file)``.

    >>> reference_label(["stable:feedback|bot|v1|app|chat|@1:2026-12-02T00:43:00+00:00"])
    'reference (v1, stable)'
    >>> reference_label(["pinned:inference|bot|v1|app|chat|@3:"])
    "reference (v1's first 3 windows)"
    """
    said: list[str] = []
    for reference in references:
        text = _reference_words(reference or "")
        if text and text not in said:
            said.append(text)
    return f"reference ({' / '.join(said)})" if said else "reference"


def _reference_words(reference: str) -> str:
    if reference == "file":
        return "file"
    if stable := _STABLE.match(reference):
        return f"{_version(stable.group(1))}, stable"
    if pinned := _PINNED.match(reference):
        windows = int(pinned.group(2) or 1)
        return f"{_version(pinned.group(1))}'s first {'window' if windows == 1 else f'{windows} windows'}"
    return reference.partition(":")[0]


def _version(segment_key: str) -> str:
    # Segment.key(): model|version|app|route|tenant.
    parts = segment_key.split("|")
    return parts[1] if len(parts) > 1 and parts[1] else segment_key


def revised_note(
    revision: int, counts: Iterable[EventCounts] = (), kinds: Mapping[int, str] | None = None
) -> str:
    """A revised window in words: ``revised 5 times as late events came in, +46 events (3 -> 49)``.

    ``counts``: the events counted at revision 0 and at the latest one (one pair per input the late
    events went to); ``kinds`` names an input by its latest count (``feedback events``).

    >>> revised_note(1, [(50, 60)])
    'revised once as late events came in, +10 events (50 → 60)'
    """
    times = "once" if revision == 1 else f"{revision} times"
    added = [
        f"+{after - before} {(kinds or {}).get(after, 'events')} ({before} → {after})"
        for before, after in sorted(set(counts), key=lambda c: (c[0] or 0, c[1] or 0))
        if before is not None and after is not None and after > before
    ]
    return f"revised {times} as late events came in" + (f", {', '.join(added)}" if added else "")


def window_events(measurements: str | None) -> int | None:
    """The events a detection's window counted (its ``window_events``), or None."""
    try:
        value = json.loads(measurements or "{}").get("window_events")
    except (ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int | float) else None


def first_counts(detections: pa.Table) -> dict[WindowKey, int | None]:
    """Per (window, detector, config) that late events revised: the events its revision 0 counted.

    Read from every revision's detections before only the latest are kept; only revised windows' rows
    are parsed (revisions are rare).
    """
    revision = pc.fill_null(detections["revision"], 0)
    revised = detections.filter(pc.greater(revision, 0))
    if revised.num_rows == 0:
        return {}
    keys = {_key(row) for row in revised.select(["window_start", "detector_id", "config_id"]).to_pylist()}
    starts = pa.array(sorted({k[0] for k in keys}), detections.schema.field("window_start").type)
    first = detections.filter(
        pc.and_(pc.equal(revision, 0), pc.is_in(detections["window_start"], value_set=starts))
    )
    rows = first.select(["window_start", "detector_id", "config_id", "measurements"]).to_pylist()
    return {_key(row): window_events(row["measurements"]) for row in rows if _key(row) in keys}


def _key(row: Mapping[str, Any]) -> WindowKey:
    return row["window_start"], str(row["detector_id"]), str(row["config_id"] or "")


class LineStyle(BaseModel):
    """How one line of a chart is drawn, so that lines of equal value stay apart (p95 on p99)."""

    symbol: str = Field(description="Plotly marker symbol (none for a bound)")
    size: int = Field(description="Marker size: each later line's is smaller, so an earlier one rings it")
    dash: str = Field(description="Plotly dash: solid, dash, dot, ... or a pattern (12px,8px)")


#: Marker symbols (open: one drawn over another does not cover it) and dashes, in turn, each smaller
#: marker inside the one before: lines drawn one over the other each show.
SYMBOLS = ("circle-open", "square-open", "diamond-open", "x-open", "triangle-up-open", "cross-open")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
#: A bound or threshold: long dashes with clear gaps (Plotly's "dash" read as solid at full width).
BOUND_DASHES = ("12px,8px", "4px,6px", "16px,4px,4px,4px")


def line_styles(names: Iterable[str], bounds: Iterable[str] = ()) -> dict[str, LineStyle]:
    """Per measurement of one chart (in drawing order): a marker and dash no other line of it has.

    >>> [s.dash for s in line_styles(["p95.observed_ms", "p99.observed_ms"]).values()]
    ['solid', 'dash']
    """
    bound = set(bounds)
    styles: dict[str, LineStyle] = {}
    for k, name in enumerate(names):
        if name in bound:
            styles[name] = LineStyle(symbol="none", size=0, dash=BOUND_DASHES[k % len(BOUND_DASHES)])
        else:
            symbol, dash = SYMBOLS[k % len(SYMBOLS)], DASHES[k % len(DASHES)]
            styles[name] = LineStyle(symbol=symbol, size=16 - 3 * (k % 4), dash=dash)
    return styles


#: How ``combine`` (``detectors.quality_checks``) names the check that decided a detector of several.
_DECIDED = r'"decided_by\.(?P<check>[^"]+)": 1'


def decided_by(measurements: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """Per detection of a detector of several checks: the check that decided it (``tokens``), else None.

    Trial 12n: ``quality.cost.v1`` read "1 drift" beside two identical flat cost lines; its tokens had
    drifted, and its p-value chart draws the deciding check's p.
    """
    found = pc.extract_regex(pc.fill_null(measurements, ""), _DECIDED)
    return [None if c is None else str(c) for c in pc.struct_field(found, [0]).to_pylist()]


def count_step(counts: Iterable[int | None]) -> int:
    """The tick step of a count axis: whole numbers only, about six ticks (never 0.5 for 1 letter).

    >>> [count_step(c) for c in ([1], [2, 0], [7], [60], [1300])]
    [1, 1, 2, 10, 500]
    """
    top = max((c for c in counts if c is not None), default=0)
    for power in range(10):
        for step in (1, 2, 5):
            if step * 10**power * 6 >= top:
                return step * 10**power
    return max(1, math.ceil(top / 6))
