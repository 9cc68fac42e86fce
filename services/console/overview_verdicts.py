"""The Overview's verdicts per segment: its worst, its last window's, and the windows drifted or warned.

Only the latest revision of each window's verdict counts, and a detection with too few samples
(``judged`` false) is no verdict: a window with only those is not judged, never ok.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.console.series import Verdict, judged_mask, verdict_ranks, window_note
from services.console.unjudged import never_judged_ids, worth_naming

#: What a window shows when it has no verdict: why (a reference, waiting, skipped), or not judged.
WindowShown = Literal["ok", "warning", "drift", "not judged", "reference", "waiting", "skipped"]


_VERDICTS: dict[int, Verdict] = {0: "ok", 1: "warning", 2: "drift"}


def segment_verdicts(
    detections: pa.Table, per_segment: pa.Table
) -> dict[str, tuple[Verdict | None, WindowShown | None, int, int, int, str | None]]:
    """Per segment: worst verdict, the last window's, windows drifted, warned and not judged, the last's note.

    ``detections`` holds the latest revision of each window's verdict (:func:`latest_revision_rows`);
    a detection with too few samples (``judged`` false) is no verdict: a window with only those is not
    judged, never ok.
    """
    rank = verdict_ranks(detections)
    per_window = (
        detections.select(["segment", "window_start", "samples", "min_samples"])
        .append_column("rank", rank)
        .group_by(["segment", "window_start"])
        .aggregate([("rank", "max"), ("samples", "min"), ("min_samples", "max")])
    )
    worst = (
        per_window.append_column("drift", pc.cast(pc.equal(per_window["rank_max"], 2), pa.int64()))
        .append_column("warning", pc.cast(pc.equal(per_window["rank_max"], 1), pa.int64()))
        .append_column("unjudged", pc.cast(pc.equal(per_window["rank_max"], -1), pa.int64()))
    )
    totals = worst.group_by("segment").aggregate(
        [("rank_max", "max"), ("drift", "sum"), ("warning", "sum"), ("unjudged", "sum")]
    )
    lasts = per_segment.select(["segment", "window_start_max"]).rename_columns(["segment", "window_start"])
    joined = per_window.join(lasts, ["segment", "window_start"], join_type="inner").to_pylist()
    last = {r["segment"]: r for r in joined}
    out: dict[str, tuple[Verdict | None, WindowShown | None, int, int, int, str | None]] = {}
    for r in totals.to_pylist():
        key = r["segment"]
        at = last.get(key)
        shown: WindowShown | None = None
        note = None
        if at is not None:
            shown = "not judged" if at["rank_max"] == -1 else _VERDICTS[at["rank_max"]]
            note = last_note(detections, key, at["window_start"]) if shown == "not judged" else None
        top = r["rank_max_max"]
        out[key] = (_VERDICTS.get(top), shown, r["drift_sum"], r["warning_sum"], r["unjudged_sum"], note)
    return out


def last_note(detections: pa.Table, segment: str, start: datetime) -> str:
    """A not-judged window's note, as the Segment page's table and charts say it (and as it, without the
    detectors never judged on any of the segment's windows)."""
    mine = detections.filter(pc.equal(detections["segment"], segment))
    rows = mine.filter(pc.equal(mine["window_start"], start))
    return window_note(worth_naming(rows.filter(pc.invert(judged_mask(rows))), never_judged_ids(mine)))


def last_judged(detections: pa.Table) -> dict[str, tuple[datetime, Verdict]]:
    """Per segment: its newest window with a verdict, and that window's worst one (``detections``: the
    latest revisions).

    A canary's last window often holds trailing feedback only, too little to judge: its headline then
    said "not judged" while seven windows before it drifted.
    """
    if detections.num_rows == 0:
        return {}
    ranked = detections.select(["segment", "window_start"]).append_column("rank", verdict_ranks(detections))
    judged = ranked.filter(pc.greater_equal(ranked["rank"], 0))
    per_window = judged.group_by(["segment", "window_start"], use_threads=False).aggregate([("rank", "max")])
    newest = per_window.group_by("segment", use_threads=False).aggregate([("window_start", "max")])
    rows = per_window.join(
        newest.rename_columns(["segment", "window_start"]),
        ["segment", "window_start"],
        join_type="inner",
        use_threads=False,
    )
    return {r["segment"]: (r["window_start"], _VERDICTS[r["rank_max"]]) for r in rows.to_pylist()}


def latest_revision_rows(
    detections: pa.Table, keys: tuple[str, ...] = ("segment", "window_start", "detector_id", "config_id")
) -> pa.Table:
    """The rows of the latest revision of each window's verdict (per detector config: ``keys``, which
    hold ``window_start``)."""
    names = list(keys)
    detections = detections.set_column(
        detections.schema.get_field_index("config_id"), "config_id", pc.fill_null(detections["config_id"], "")
    )
    revision = pc.fill_null(detections["revision"], 0)
    revised = pc.greater(revision, 0)
    # Revisions are rare: only rows sharing a revised row's window start can be superseded. Their latest
    # revision per key is joined back on the keys and row numbers alone (hash built on the revised rows);
    # every other row is its window's only revision.
    maybe = pc.is_in(detections["window_start"], pc.unique(pc.filter(detections["window_start"], revised)))
    rows = pa.array(np.arange(detections.num_rows, dtype=np.int64))
    keyed = pa.table({**{name: detections[name] for name in names}, "revision": revision, "row": rows})
    keyed = keyed.filter(maybe)
    top = keyed.filter(pc.greater(keyed["revision"], 0)).group_by(names, use_threads=False)
    joined = keyed.join(
        top.aggregate([("revision", "max")]), names, join_type="left outer", use_threads=False
    )
    latest = pc.fill_null(pc.equal(joined["revision"], joined["revision_max"]), True)
    # Built from the chunks: given two ChunkedArrays, pa.chunked_array iterates them value by value.
    kept = pa.chunked_array([*pc.filter(rows, pc.invert(maybe)).chunks, *joined.filter(latest)["row"].chunks])
    return detections.take(pc.take(kept, pc.sort_indices(kept)))  # in the table's order


def one_per_detection(detections: pa.Table) -> pa.Table:
    """The rows with each ``detection_id`` once (its first row kept); rows without an id all kept.

    A worker killed by ``kill -9`` just after publishing verdicts leaves its input uncommitted, and
    the worker taking over publishes them again under the same id (trial 17j: 11 repeats). The
    history's merge on (day, model, detection_id, revision) keeps one of them, but a table that
    holds both (copied, appended by hand, or merged by a writer without that key) must not draw
    each point twice. Costs one hash aggregation when nothing repeats.
    """
    if "detection_id" not in detections.column_names or detections.num_rows < 2:
        return detections
    ids = detections["detection_id"]
    rows = pa.array(np.arange(detections.num_rows, dtype=np.int64))
    # One hash pass: fewer groups than rows is the (rare) repeat; Arrow's count_distinct costs more.
    firsts = (
        pa.table({"detection_id": ids, "row": rows})
        .group_by("detection_id", use_threads=False)
        .aggregate([("row", "min")])
    )
    if firsts.num_rows == detections.num_rows:
        return detections
    named = firsts.filter(pc.is_valid(firsts["detection_id"]))["row_min"]
    kept = pa.chunked_array([*named.chunks, *pc.filter(rows, pc.is_null(ids)).chunks], pa.int64())
    return detections.take(pc.take(kept, pc.sort_indices(kept)))  # in the table's order


def last_outcomes(windows: pa.Table, per_segment: pa.Table) -> dict[str, WindowShown]:
    """Per segment: its last window's outcome when the detect stage did not judge it (reference, ...)."""
    unjudged = windows.filter(pc.is_in(windows["outcome"], pa.array(["reference", "waiting", "skipped"])))
    if unjudged.num_rows == 0:
        return {}
    lasts = per_segment.select(["segment", "window_start_max"]).rename_columns(["segment", "window_start"])
    rows = unjudged.select(["segment", "window_start", "outcome"]).join(lasts, ["segment", "window_start"])
    return {r["segment"]: r["outcome"] for r in rows.to_pylist()}


#: The detectors a paged engineer reads first, in this order: the quality rates of what users got
#: (errors, empty or refusal replies, latency, thumbs down...), then the statistical drift tests.
READ_FIRST = (
    "quality.error_rate.v1",
    "quality.empty_refusal.v1",
    "quality.latency.v1",
    "quality.negative_feedback.v1",
    "quality.canary.v1",
    "quality.rating.v1",
    "quality.correction_rate.v1",
    "quality.cost.v1",
    "toxicity.profanity.v1",
    "toxicity.detoxify.v1",
)


def reading_order(detector_id: str) -> tuple[int, str]:
    """Where a detector comes in what the Overview lists: :data:`READ_FIRST`'s order, then the rest by
    id (trial s18: the empty/refusal drift hid behind ``1 more`` after three drift tests)."""
    order = {d: n for n, d in enumerate(READ_FIRST)}
    return order.get(detector_id, len(order)), detector_id


def worst_named(detections: pa.Table, worst: dict[str, Verdict | None]) -> dict[str, str]:
    """Per segment whose worst is drift or warning, that verdict with what gave it:
    ``drift: toxicity.profanity.v1 on 8 windows, drift.embedding_mmd.v1 on 3``.

    The on-call reads what drifted off the Overview, not only that something did (trial 12n): every
    detector is named (none hidden behind ``1 more``), the quality rates first (:func:`reading_order`).
    ``detections`` holds the latest revision of each window's verdict.
    """
    wanted = {key: verdict for key, verdict in worst.items() if verdict in ("drift", "warning")}
    if not wanted or not detections.num_rows:
        return {}
    rows = detections.select(["segment", "detector_id", "window_start", "verdict"]).filter(
        pc.and_(judged_mask(detections), pc.is_in(detections["segment"], pa.array(sorted(wanted))))
    )
    counts = (
        rows.group_by(["segment", "detector_id", "verdict"], use_threads=False)
        .aggregate([("window_start", "count_distinct")])
        .to_pylist()
    )
    per_segment: dict[str, list[tuple[int, str]]] = {}
    for r in counts:
        if r["verdict"] == wanted[r["segment"]]:
            per_segment.setdefault(r["segment"], []).append(
                (r["window_start_count_distinct"], r["detector_id"])
            )
    out = {}
    for key, found in per_segment.items():
        ranked = sorted(found, key=lambda item: reading_order(item[1]))
        said = [
            f"{detector} on {n} window{'s' if n != 1 else ''}" if i == 0 else f"{detector} on {n}"
            for i, (n, detector) in enumerate(ranked)
        ]
        out[key] = f"{wanted[key]}: {', '.join(said)}"
    return out
