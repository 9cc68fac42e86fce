"""One window's counts for a detector that did not judge it, read from its detection row.

Moved out of :mod:`services.console.overview_judged` (its module size): the Overview pools these
counts over the windows a detector judged none of (``89 of 95 thumbs down (94%) in all``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.console.chart_labels import reference_label


@dataclass(frozen=True)
class WindowCounts:
    """One window's counts for a detector: each side's samples and hits (None: not in the history)."""

    current: int
    reference: int
    hits: int | None
    reference_hits: int | None
    reference_id: str | None
    total: float | None = None
    reference_total: float | None = None

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
            total=_sum(measured, prefix, "current"),
            reference_total=_sum(measured, prefix, "reference"),
        )

    def merged(self, other: WindowCounts) -> WindowCounts:
        """Two configs of the detector on one window: each side's counts from the one with more samples."""
        current = other if other.current > self.current else self
        ref = other if other.reference > self.reference else self
        return WindowCounts(
            current.current,
            ref.reference,
            current.hits,
            ref.reference_hits,
            ref.reference_id,
            current.total,
            ref.reference_total,
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


def pooled_mean(windows: list[WindowCounts]) -> tuple[float, float | None] | None:
    """(this version's mean, its references' mean) of a mean detector (ratings) over the windows, or
    None when a window kept no sum nor mean of its values (a too-small rating window keeps its count
    only: the detector would need to write ``current_sum`` and ``reference_sum`` there)."""
    if not windows or any(w.total is None for w in windows):
        return None
    samples = sum(w.current for w in windows)
    if not samples:
        return None
    seen = {(w.reference_id, w.reference_total, w.reference): None for w in windows}
    if any(total is None for _, total, _ in seen):
        return sum(w.total or 0 for w in windows) / samples, None
    ref_n = sum(n for _, _, n in seen)
    ref = sum(total or 0 for _, total, _ in seen) / ref_n if ref_n else None
    return sum(w.total or 0 for w in windows) / samples, ref


def _sum(measured: Mapping[str, object], prefix: str, side: str) -> float | None:
    """A side's sum of values (ratings): written as such, else its mean times its samples."""
    total, mean = measured.get(f"{prefix}{side}_sum"), measured.get(f"{prefix}{side}_mean")
    samples = measured.get(f"{prefix}{side}_samples")
    if isinstance(total, int | float):
        return float(total)
    if isinstance(mean, int | float) and isinstance(samples, int | float):
        return float(mean) * float(samples)
    return None


def _known(value: object) -> int | None:
    """A count the detector wrote, or None when it wrote none."""
    return int(value) if isinstance(value, int | float) else None


def _count(measured: object, size: object) -> int:
    """A side's samples: the detector's own count of them, else the window's rows."""
    value = measured if measured is not None else size
    return int(value) if isinstance(value, int | float) else 0


def of_kind(references: list[str | None], kind: str) -> str:
    """``reference (v1's first 3 feedback windows)``: the Segment page lists a window a kind pinned but
    another judged with that verdict (trial 12n: 3 windows said, 2 listed)."""
    label = reference_label(references)
    return re.sub(r"first (\d+ )?window", lambda m: f"first {m.group(1) or ''}{kind} window", label)


def percent(hits: int, samples: int) -> str:
    """``94%``; ``<1%`` and ``>99%`` where rounding would say none or all."""
    share = hits / samples
    if 0 < share < 0.005:
        return "<1%"
    if 0.995 <= share < 1:
        return ">99%"
    return f"{share:.0%}"


def shortfall_said(side: str, most: int | None, need: int | None) -> str:
    """``too few samples in each window, at most 28 < 30``; the reference's count when it was short."""
    if need is None or most is None:
        return "too few samples in each window"
    said = {"this version": "too few samples in each window", "its reference": "its reference too small"}
    return f"{said.get(side, 'too few samples, its own or its reference')}, at most {most} < {need}"


def short_side(currents: list[int], references: list[int], need: int | None) -> tuple[str, int | None]:
    """Which side fell short in every window, and its most samples: this version's, the reference's."""
    if not currents or need is None:
        return "this version", max(currents, default=None)
    if all(c < need for c in currents):
        return "this version", max(currents)
    if all(r < need for r in references):
        return "its reference", max(references)
    return "this version or its reference", max(min(c, r) for c, r in zip(currents, references, strict=True))
