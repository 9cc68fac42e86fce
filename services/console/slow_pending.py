"""How many of a segment's windows each slow detector has not judged yet, from the history alone.

The slow detectors (embedding MMD) run in the background, one window at a time, well after the fast
ones judged the window: a minute after traffic ended a canary's page had no embedding chart and
nothing said why. A window counts as not judged yet by a slow detector when the windows table holds it
(of the kind the detector reads) as judged, not skipped nor pinned as the reference, and the detections
table has no row of that detector for it. Nothing else is assumed: the history holds no queue.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

#: The window kind a slow detector reads when the console was not told (the embedding ones: inference).
DEFAULT_KIND = "inference"
#: Why such windows have no verdict yet, said after their count.
PENDING_WHY = (
    "slow detectors run in the background of a running worker, one window at a time, and a restarted"
    " worker re-queues them; with no worker running they stay unjudged"
)
#: Said instead on a demo's console, served after the demo's worker stopped (trial 12i: no verdict comes).
DEMO_PENDING_WHY = "the demo's worker stopped with the demo: these stay unjudged"


class SlowPending(BaseModel):
    """One slow detector's windows of the segment that have no verdict of it yet (and were not skipped)."""

    detector_id: str
    windows: int = Field(description="Windows judged by the fast detectors that this one has not judged yet")
    note: str = Field(
        description="What the page says: 14 windows not judged yet by drift.embedding_mmd.v1 (...)"
    )


def slow_pending(
    windows: pa.Table, detections: pa.Table, slow: frozenset[str], kinds: Mapping[str, str] | None = None
) -> list[SlowPending]:
    """Per slow detector (``kinds`` names the window kind each reads), its windows with no verdict yet.

    ``windows`` and ``detections`` are one segment's rows (any revision).
    """
    out: list[SlowPending] = []
    if windows.num_rows == 0:
        return out
    for detector_id in sorted(slow):
        kind = (kinds or {}).get(detector_id, DEFAULT_KIND)
        waiting = _waiting_starts(windows, kind)
        judged = _judged_starts(detections, detector_id)
        n = len(waiting) - (pc.sum(pc.is_in(waiting, judged)).as_py() or 0)  # None: no window waits
        if n:
            out.append(SlowPending(detector_id=detector_id, windows=n, note=pending_note(detector_id, n)))
    return out


def pending_note(detector_id: str, n: int, why: str = PENDING_WHY) -> str:
    """``14 windows not judged yet by drift.embedding_mmd.v1 (slow detectors run ...)``."""
    return f"{n} window{'s' if n != 1 else ''} not judged yet by {detector_id} ({why})"


def no_worker(pending: list[SlowPending], why: str) -> list[SlowPending]:
    """The notes said again with ``why`` (no worker runs: none of them will be judged)."""
    return [p.model_copy(update={"note": pending_note(p.detector_id, p.windows, why)}) for p in pending]


def _waiting_starts(windows: pa.Table, kind: str) -> pa.Array:
    """The starts (distinct) of the windows of ``kind`` the fast detectors judged, none of whose rows says
    skipped or reference (the slow ones never run on those). Compared as Arrow arrays: a week of
    1-minute windows is 10,080 starts, too many to turn into Python datetimes on every page."""
    rows = windows.filter(pc.equal(windows["kind"], kind))
    judged = pc.unique(rows.filter(pc.equal(rows["outcome"], "judged"))["window_start"])
    never = rows.filter(pc.is_in(rows["outcome"], pa.array(["skipped", "reference"])))["window_start"]
    return judged.filter(pc.invert(pc.is_in(judged, never)))


def _judged_starts(detections: pa.Table, detector_id: str) -> pa.ChunkedArray:
    """The starts of the windows ``detector_id`` has a detection of (a verdict, or too few samples)."""
    return detections.filter(pc.equal(detections["detector_id"], detector_id))["window_start"]
