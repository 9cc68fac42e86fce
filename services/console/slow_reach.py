"""How far a slow detector got on a segment's windows: what the Overview says after its count.

Trial 12o: the Overview said ``1 of 10 windows by drift.embedding_mmd.v1 (slow: the 10 windows it
reached so far; the rest still queued)`` while the Segment page listed v3's other 6 windows as
``slow detectors skipped (queue full)`` and none pending: a skipped window is never judged, so "still
queued" was wrong. The windows still queued are counted as the Segment page counts them
(:func:`services.console.slow_pending.slow_pending`), the skipped ones as the windows table marks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from services.console.slow_pending import DEFAULT_KIND, slow_pending


@dataclass(frozen=True)
class SlowReach:
    """One slow detector's windows of a segment it has no detection of: still queued, or skipped."""

    pending: int
    skipped: int


def windows_said(n: int, kind: str = "") -> str:
    """``1 window``, ``3 windows``; of a kind: ``4 inference windows``."""
    return f"{n} {kind + ' ' if kind else ''}window{'' if n == 1 else 's'}"


def slow_reach(
    windows: pa.Table,
    detections: pa.Table,
    segment: str,
    slow: frozenset[str],
    kinds: Mapping[str, str] | None = None,
) -> dict[str, SlowReach]:
    """Per slow detector, ``segment``'s windows it has not reached (``windows``, ``detections``: any
    segments, any revision; ``kinds``: the window kind each slow detector reads)."""
    windows = windows.filter(pc.equal(windows["segment"], segment))
    detections = detections.filter(pc.equal(detections["segment"], segment))
    pending = {p.detector_id: p.windows for p in slow_pending(windows, detections, slow, kinds)}
    skipped = windows.filter(pc.equal(windows["outcome"], "skipped"))
    out = {}
    for detector_id in sorted(slow):
        kind = (kinds or {}).get(detector_id, DEFAULT_KIND)
        mine = skipped.filter(pc.equal(skipped["kind"], kind))["window_start"].to_pylist()
        reached = detections.filter(pc.equal(detections["detector_id"], detector_id))["window_start"]
        out[detector_id] = SlowReach(pending.get(detector_id, 0), len(set(mine) - set(reached.to_pylist())))
    return out


def reach_said(reached: int, reach: SlowReach | None) -> str:
    """`` (slow: the 10 windows it reached; 6 skipped (queue full))``; ``still queued`` only for the
    windows :func:`slow_pending` counts; "so far" when some are (or, not knowing, may be) queued."""
    so_far = " so far" if reach is None or reach.pending else ""
    parts = [f"slow: the {windows_said(reached)} it reached{so_far}"]
    if reach is not None and reach.skipped:
        parts.append(f"{reach.skipped} skipped (queue full)")
    if reach is not None and reach.pending:
        parts.append(f"{reach.pending} still queued")
    return f" ({'; '.join(parts)})"
