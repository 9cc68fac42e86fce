"""Whether a detection judged its window, and why a window has no verdict when none did.

A detection can carry a verdict it did not reach: too few samples (``judged`` false), or an
``ok`` that measured nothing (older rows that did not say so). Every page that counts windows
(the Overview, the Segment page, the policy's explanation) asks these helpers, so they agree.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: The numbers a judged detection shows; an ``ok`` with none of them measured nothing.
MEASURED = ("p_value", "statistic", "effect_size", "score")


def not_judged_note(
    samples: Any, min_samples: Any, reference_size: Any = None, current_size: Any = None
) -> str:
    """Why a window has no verdict, and which side is short: ``not judged (reference 24 < 30 samples)``."""
    if _missing(samples) or _missing(min_samples):
        return "not judged (too few samples)"
    side = short_side(samples, reference_size, current_size)
    return f"not judged ({side}{int(samples)} < {int(min_samples)} samples)"


def short_side(samples: Any, reference_size: Any, current_size: Any) -> str:
    """``reference `` when the reference's size (not this window's) is the count that fell short, else ``""``.

    A window compared with a reference (the stable version's window) is short on either side: a bare
    count reads as this window's own, so the reference's is named (27 < 30 while the window held 32).
    """
    if not _missing(current_size) and int(current_size) == int(samples):
        return ""
    if not _missing(reference_size) and int(reference_size) == int(samples):
        return "reference "
    return ""


def window_note(unjudged: pa.Table) -> str:
    """One window's note from its not-judged detections, each shortfall as its detector's series says it.

    The most common ``samples < min_samples`` leads (``not judged (13 < 30 samples)``); the others
    follow with their detectors (``0 < 30 for quality.rating.v1``), so table and charts agree.
    """
    groups: dict[str, list[str]] = {}
    sizes = [c for c in ("reference_size", "current_size") if c in unjudged.column_names]
    for row in unjudged.select(["detector_id", "samples", "min_samples", *sizes]).to_pylist():
        note = not_judged_note(
            row["samples"], row["min_samples"], row.get("reference_size"), row.get("current_size")
        )
        groups.setdefault(note, []).append(row["detector_id"])
    if not groups:
        return not_judged_note(None, None)
    ordered = sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))
    lead, *rest = ordered
    others = [
        f"{n.removeprefix('not judged (').removesuffix(')')} for {', '.join(sorted(set(d)))}" for n, d in rest
    ]
    return lead[0] if not others else f"{lead[0]}; {'; '.join(others)}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def judged_mask(detections: pa.Table) -> pa.Array | pa.ChunkedArray:
    """Per detection: did it judge its window (enough samples, and an ``ok`` with a number to show)?"""
    judged = pc.fill_null(detections["judged"], True)  # null: written before, judged
    present = [c for c in MEASURED if c in detections.column_names]
    if not present:
        return judged
    # A detector that tested nothing but did not say so (older rows) must not make its window read "ok".
    measured = functools.reduce(pc.or_, [pc.is_valid(_finite(detections[c])) for c in present])
    return pc.and_(judged, pc.or_(measured, pc.fill_null(pc.not_equal(detections["verdict"], "ok"), True)))


def slow_never_judged(windows: pa.Table, detections: pa.Table, slow: frozenset[str]) -> dict[str, list[str]]:
    """Per segment with windows the slow queue skipped: the slow detectors with no judged window."""
    skipped = windows.filter(pc.equal(windows["outcome"], "skipped"))
    if not slow or skipped.num_rows == 0:
        return {}
    judged = detections.filter(
        pc.and_(judged_mask(detections), pc.is_in(detections["detector_id"], pa.array(sorted(slow))))
    )
    seen: dict[str, set[str]] = {}
    for row in judged.group_by(["segment", "detector_id"]).aggregate([]).to_pylist():
        seen.setdefault(row["segment"], set()).add(row["detector_id"])
    segments = pc.unique(skipped["segment"]).to_pylist()
    return {key: sorted(slow - seen.get(key, set())) for key in segments if slow - seen.get(key, set())}


def verdict_ranks(detections: pa.Table) -> pa.Array:
    """Each detection's verdict as a rank: 2 drift, 1 warning, 0 ok, -1 not judged (too few samples)."""
    verdict = detections["verdict"]
    rank = pc.if_else(pc.equal(verdict, "drift"), 2, pc.if_else(pc.equal(verdict, "warning"), 1, 0))
    return pc.if_else(judged_mask(detections), rank, -1)


def _finite(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # NaN and infinities (a detector that could not decide) measured nothing.
    numbers = pc.cast(column, pa.float64())
    return pc.if_else(pc.is_finite(numbers), numbers, pa.scalar(None, pa.float64()))
