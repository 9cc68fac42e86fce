"""One window's counts for a detector that did not judge it, read from its detection row.

Moved out of :mod:`services.console.overview_judged` (its module size): the Overview pools these
counts over the windows a detector judged none of (``89 of 95 thumbs down (94%) in all``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowCounts:
    """One window's counts for a detector: each side's samples and hits (None: not in the history)."""

    current: int
    reference: int
    hits: int | None
    reference_hits: int | None
    reference_id: str | None

    @classmethod
    def of(cls, row: Mapping[str, object], part: str | None = None) -> WindowCounts:
        """A detection row's counts: the detector's own, else the window's rows for the samples.

        A detector of several checks keeps each check's counts under its name (``negative_feedback.``):
        those of ``part``, else of the check that decided (``decided_by.<check>``), are read.
        """
        measured = json.loads(str(row["measurements"] or "{}"))
        decided = next((k.removeprefix("decided_by.") for k in measured if k.startswith("decided_by.")), None)
        prefix = f"{part or decided}." if part or decided else ""
        return cls(
            current=_count(measured.get(f"{prefix}current_samples"), row["current_size"]),
            reference=_count(measured.get(f"{prefix}reference_samples"), row["reference_size"]),
            hits=_known(measured.get(f"{prefix}current_hits")),
            reference_hits=_known(measured.get(f"{prefix}reference_hits")),
            reference_id=str(row["reference"]) if row.get("reference") else None,
        )

    def merged(self, other: WindowCounts) -> WindowCounts:
        """Two configs of the detector on one window: each side's counts from the one with more samples."""
        current = other if other.current > self.current else self
        ref = other if other.reference > self.reference else self
        return WindowCounts(
            current.current, ref.reference, current.hits, ref.reference_hits, ref.reference_id
        )


def pooled_hits(windows: list[WindowCounts]) -> int | None:
    """This version's hits over all its windows, or None when a window has none written."""
    hits = [w.hits for w in windows]
    return None if not hits or None in hits else sum(h or 0 for h in hits)


def pooled_reference(windows: list[WindowCounts]) -> tuple[int, int, list[str | None]] | None:
    """(hits, samples, ids) of the references the windows were compared with, each counted once (one id
    with the same counts is one reference), or None when a window has no reference hits written."""
    seen: dict[tuple[str | None, int, int], None] = {}
    for w in windows:
        if w.reference_hits is None:
            return None
        seen[(w.reference_id, w.reference_hits, w.reference)] = None
    if not seen:
        return None
    return sum(k[1] for k in seen), sum(k[2] for k in seen), [k[0] for k in seen]


def _known(value: object) -> int | None:
    """A count the detector wrote, or None when it wrote none."""
    return int(value) if isinstance(value, int | float) else None


def _count(measured: object, size: object) -> int:
    """A side's samples: the detector's own count of them, else the window's rows."""
    value = measured if measured is not None else size
    return int(value) if isinstance(value, int | float) else 0
