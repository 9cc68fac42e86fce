"""Which not-judged detections a window's note names: not those of detectors the segment never fed.

An app that sends thumbs but no ratings has ``quality.rating.v1`` at ``0 < 30 samples`` on every window:
named in every not-judged note, it is noise. A detector never judged on any window of the segment, that
found 0 samples in windows that held events (``current_size``), reads nothing this app sends: it is left
out of the note (the Segment page's charts still show it), unless it is all the note could say. One
whose windows held no events at all (no feedback came) is still named: more may come.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from services.console.series import judged_mask


def never_judged_ids(segment_rows: pa.Table) -> set[str]:
    """The detectors with no verdict on any of the segment's windows and 0 samples of windows with events."""
    if segment_rows.num_rows == 0:
        return set()
    judged = set(pc.unique(segment_rows.filter(judged_mask(segment_rows))["detector_id"]).to_pylist())
    per_detector = segment_rows.group_by("detector_id", use_threads=False).aggregate(
        [("samples", "max"), ("current_size", "max")]
    )
    return {
        row["detector_id"]
        for row in per_detector.to_pylist()
        if row["detector_id"] not in judged and not row["samples_max"] and (row["current_size_max"] or 0) > 0
    }


def worth_naming(unjudged: pa.Table, never: set[str]) -> pa.Table:
    """A window's not-judged rows without those of ``never`` (detectors never judged), unless none is left."""
    if not never or unjudged.num_rows == 0:
        return unjudged
    kept = unjudged.filter(pc.invert(pc.is_in(unjudged["detector_id"], pa.array(sorted(never), pa.string()))))
    return kept if kept.num_rows else unjudged


def worse_rate(hits: int | None, samples: int | None, ref_hits: int | None, ref_samples: int | None) -> bool:
    """Whether ``hits`` of ``samples`` is a worse rate than the reference's (none: any hit at all).

    Cross-multiplied: 3 of 10 vs 30 of 100 is no worse, whatever the floating point says.
    """
    if not hits or not samples:
        return False
    return not ref_samples or hits * ref_samples > (ref_hits or 0) * samples
