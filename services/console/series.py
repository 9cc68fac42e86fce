"""The Segment page's series: one per detector and config, each point with its config and verdict.

A detector can run with several configs on one segment (``drift.text_length.v1``
on the prompt and on the response): each config is its own series, labelled
with what sets its config apart, so two measures are never drawn as one line.
Each point is the latest revision of its window's verdict; a window its
detector had too few samples for is "not judged" and has no value to draw.
Each series is drawn on its threshold's scale: the p-value against alpha, the
effect size against the minimum effect, the statistic against an SLO.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from curation.history import config_id
from services.console.chart_labels import (
    LineStyle,
    WindowKey,
    decided_by,
    line_styles,
    reference_label,
    revised_note,
    window_events,
)
from services.console.columns import Times, boxed, texts
from services.console.judged import (
    MEASURED,
    judged_mask,
    not_judged_note,
    short_side,
    slow_never_judged,
    verdict_ranks,
    window_note,
)
from services.console.measures import (
    is_bound,
    is_rate,
    measure_labels,
    measure_words,
    measurement_unit,
    quality_measurements,
)
from services.console.p_values import (
    ADJUSTED_NOTE,
    ASSUMED_NOTE,
    RAW_ALPHA_LABEL,
    adjusted_p,
    correction_alphas,
    correction_label,
    log_floor,
    verdict_p,
)
from services.console.scales import THRESHOLD_LABELS, Shown, ThresholdKind, axis_title, scale

# Re-exported: the pages and the tests read them here.
__all__ = [
    "ADJUSTED_NOTE",
    "MEASURED",
    "axis_title",
    "is_bound",
    "is_rate",
    "judged_mask",
    "measurement_unit",
    "not_judged_note",
    "short_side",
    "slow_never_judged",
    "verdict_p",
    "verdict_ranks",
    "window_note",
]
_measurements = quality_measurements  # the name tests/test_console_columns.py reads

Verdict = Literal["ok", "warning", "drift"]
#: What a window's slow detectors (embeddings) did when their queue was full: the fast ones still judged it.
SLOW_SKIPPED = "slow detectors skipped (queue full)"


class ReportLink(BaseModel):
    """A window's Evidently report."""

    window_start: datetime
    detection_id: str


class DetectorSeries(BaseModel):
    """One detector config's results over the windows of a segment, oldest first."""

    detector_id: str
    config_ids: list[str] = Field(description="The config of this series (none: no id in the history)")
    config_label: str = Field("", description="What sets this config apart, e.g. column=prompt_chars")
    config_id: list[str | None] = Field(default_factory=list, description="Per point: its config id")
    window_start: list[datetime]
    statistic: list[float | None]
    value: list[float | None] = Field(
        default_factory=list,
        description="Per point: what the threshold bounds (value_label); null: not judged",
    )
    value_label: str = Field("statistic", description="What value is: p-value, effect size, statistic, ...")
    value_note: str | None = Field(
        None,
        description="On a p-value chart of corrected windows, the legend's title (the rule): value is then"
        " the Benjamini-Hochberg adjusted p (null: not corrected) against correction_alpha, p_value the raw p"
        " against threshold (the detector's alpha)",
    )
    correction_alpha: list[float | None] = Field(
        default_factory=list,
        description="Per point: the alpha its adjusted p had to beat (null: not corrected)",
    )
    correction_label: str = Field("", description="The correction's line in the legend (empty: none)")
    correction_note: str | None = Field(
        None, description="Why correction_alpha is assumed (not in the history)"
    )
    decided_by: list[str | None] = Field(
        default_factory=list,
        description="Per point of a detector of several checks (tokens and cost): the check that decided it",
    )
    drift_by: dict[str, int] = Field(default_factory=dict, description="Drift windows per deciding check")
    threshold: list[float | None]
    threshold_kind: ThresholdKind = Field(
        "threshold",
        description="min_effect_size: the statistic is the effect size and the line its minimum, not a"
        " breach line (a point above it is ok when its p-value is not significant)",
    )
    threshold_label: str = "threshold"
    p_value: list[float | None]
    effect_size: list[float | None]
    verdict: list[Shown] = Field(description="Per point: its verdict, or not judged (too few samples)")
    note: list[str | None] = Field(
        default_factory=list, description="Per point: not judged (24 < 30 samples), revised 2x, or null"
    )
    revision: list[int] = Field(
        default_factory=list, description="Per point: its verdict's revision (0: first)"
    )
    revised_note: list[str | None] = Field(
        default_factory=list,
        description="Per point: a revision in words (revised 5 times as late events came in, +46 events"
        " (3 → 49)), or null",
    )
    windows: int = Field(0, description="Distinct windows with a point (judged or not)")
    drift_windows: int = Field(0, description="Distinct windows with a drift verdict")
    warning_windows: int = Field(0, description="Distinct windows whose worst verdict is a warning")
    not_judged_windows: int = Field(0, description="Distinct windows with too few samples to judge")
    revised_windows: int = Field(0, description="Distinct windows whose verdict late events revised")
    measurements: dict[str, list[float | None]] = Field(
        default_factory=dict, description="Quality rates and percentiles, per name"
    )
    units: dict[str, str] = Field(
        default_factory=dict,
        description="Per measurement: its unit (share, milliseconds, USD, tokens); one chart per unit",
    )
    bounds: list[str] = Field(
        default_factory=list, description="Measurements that are a bound (an SLO), drawn as a line"
    )
    reference_label: str = Field("reference", description="What the windows were compared with, in words")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Per measurement: its legend entry in words, naming whose it is (v2 refusal rate,"
        " reference (v1, stable) rate, v2 share of requests above the p95 latency SLO), a bound as"
        " p95 latency SLO (bound)",
    )
    styles: dict[str, LineStyle] = Field(
        default_factory=dict, description="Per measurement: its marker and dash, none shared on its chart"
    )
    reports: list[ReportLink] = Field(
        default_factory=list,
        description="The Evidently reports of its drift and warning windows (the page lists each once)",
    )
    axis_title: str = Field("statistic", description="The chart's y axis: what value is, in its unit")
    slow: bool = Field(False, description="Run by the slow detectors, which skip windows when busy")
    kind: str | None = Field(
        None, description="The window kind it reads (inference, feedback): its points' closes (null: unknown)"
    )
    skipped: list[datetime] = Field(
        default_factory=list, description="Windows this (slow) detector skipped: its queue was full"
    )
    floor: float | None = Field(
        None,
        description="On a log (p-value) axis: where a p of exactly 0 is drawn, labelled p < floor (a log"
        " axis cannot draw 0: a permutation test's p = 0 left the chart empty)",
    )
    floored_windows: int = Field(0, description="Judged windows whose p is 0, drawn at the floor")


def config_labels(specs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """``config_id`` -> what sets it apart from its detector's other configs (``column=prompt_chars``)."""
    from detectors.registry import create
    from schemas.errors import LoopwatchError

    full: dict[str, list[dict[str, Any]]] = {}
    for detector_id, given in specs:
        try:
            # The id the history holds hashes the config with its defaults, as the detect stage built it.
            config = create(detector_id, dict(given)).config.model_dump(mode="json")
        except LoopwatchError:
            continue  # a detector this console cannot build: its series keeps the bare id
        full.setdefault(detector_id, []).append(config)
    labels: dict[str, str] = {}
    for configs in full.values():
        keys = sorted({k for c in configs for k in c})
        differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        for config in configs:
            shown = differing or [k for k in ("column",) if k in config]
            labels[config_id(config)] = ", ".join(f"{k}={config.get(k)}" for k in shown)
    return labels


def detector_series(
    detections: pa.Table,
    labels: Mapping[str, str],
    is_rate: Callable[[str], bool],
    times: Times | None = None,
    firsts: Mapping[WindowKey, int | None] | None = None,
    version: str = "",
) -> list[DetectorSeries]:
    """One series per (detector, config) of a segment's detections (columns of the history table).

    ``detections`` holds the latest revision of each window's verdict per config only
    (:func:`services.console.views.latest_revision_rows`); ``times`` boxes the page's window
    starts once for all series; ``firsts``: what revision 0 of each revised point counted
    (:func:`services.console.chart_labels.first_counts`); ``version``: the segment's. Every column
    is computed with pyarrow and boxed with numpy (:mod:`services.console.columns`): a 7-day page
    has 10,000 windows per series.
    """
    if detections.num_rows == 0:
        return []
    table = _filled(detections).sort_by(
        [("detector_id", "ascending"), ("config_id", "ascending"), ("window_start", "ascending")]
    )
    # Sorted, so each (detector, config) is one slice; single-threaded group_by keeps that order.
    groups = table.group_by(["detector_id", "config_id"], use_threads=False).aggregate([([], "count_all")])
    keys = list(zip(*(groups[c].to_pylist() for c in ("detector_id", "config_id", "count_all")), strict=True))
    per_detector = Counter(str(d) for d, _, _ in keys)
    starts = (times or Times(table["window_start"])).of(table["window_start"])
    series: list[DetectorSeries] = []
    offset = 0
    for detector_id, config, rows in keys:
        group = table.slice(offset, rows)
        label = labels.get(str(config), "")
        if not label and per_detector[str(detector_id)] > 1:
            label = f"config {config}"  # unknown to this console, but still told apart
        drawn = _series(group, str(detector_id), str(config), label, starts[offset : offset + rows], is_rate)
        _name_versions(drawn, group, version)
        drawn.revised_note = _revised_notes(group, str(detector_id), str(config), firsts or {})
        series.append(drawn)
        offset += rows
    return series


def _name_versions(series: DetectorSeries, group: pa.Table, version: str) -> None:
    """Say what the series was compared with, whose each of its compared measures is, and how each of
    its measures' lines is drawn (on its unit's chart, in the order the page draws them)."""
    if "reference" in group.column_names:
        series.reference_label = reference_label(pc.unique(group["reference"]).to_pylist())
    # Every measure drawn has its words: a raw key (p95.share_above_slo) reached the legend (trial 18).
    series.labels = measure_labels(
        series.detector_id, series.measurements, version, series.reference_label, series.bounds
    )
    by_unit: dict[str, list[str]] = {}
    for name in series.measurements:
        by_unit.setdefault(series.units[name], []).append(name)
    for names in by_unit.values():
        series.styles.update(line_styles(names, series.bounds))
    _name_the_deciding_check(series)


def _name_the_deciding_check(series: DetectorSeries) -> None:
    """A detector of several checks that one check decided in every window says which: its chart read
    "statistic" against "threshold" where it drew the p95 latency against its SLO (trial 12u)."""
    checks = {c for c in series.decided_by if c}
    if series.threshold_kind != "threshold" or len(checks) != 1:
        return
    check = checks.pop() + "."
    bounds = [b for b in series.bounds if b.startswith(check)]
    if len(bounds) != 1:
        return
    [bound] = bounds
    drawn = [
        name
        for name, values in series.measurements.items()
        if name.startswith(check)
        and name != bound
        and series.units[name] == series.units[bound]
        and all(s is None or v == s for v, s in zip(values, series.statistic, strict=True))
    ]
    if len(drawn) != 1:
        return
    series.value_label = series.labels[drawn[0]]
    series.threshold_label = measure_words(series.detector_id, bound)[0]
    series.axis_title = f"{measure_words(series.detector_id, drawn[0])[0]} ({series.units[bound]})"


def _revised_notes(
    group: pa.Table, detector_id: str, config: str, firsts: Mapping[WindowKey, int | None]
) -> list[str | None]:
    """Per point: its revision in words, with the events late ones added; only revised rows are read."""
    notes: list[str | None] = [None] * group.num_rows
    flagged = pc.indices_nonzero(pc.greater(group["revision"], 0)).to_pylist()
    if not flagged:
        return notes
    columns = ["window_start", "revision", "measurements"]
    for index, row in zip(flagged, group.select(columns).take(flagged).to_pylist(), strict=True):
        before = firsts.get((row["window_start"], detector_id, config))
        notes[index] = revised_note(row["revision"], [(before, window_events(row["measurements"]))])
    return notes


def _filled(detections: pa.Table) -> pa.Table:
    """The columns a series reads, with the defaults of rows written before them."""
    columns = {
        "config_id": pc.fill_null(detections["config_id"], ""),
        "revision": pc.fill_null(detections["revision"], 0),
        "judged": judged_mask(detections),
        "p_value_adjusted": adjusted_p(detections),
        "p_verdict": verdict_p(detections),
    }
    for name, column in columns.items():
        at = detections.schema.get_field_index(name)
        detections = (
            detections.append_column(name, column) if at < 0 else detections.set_column(at, name, column)
        )
    return detections


def _series(
    group: pa.Table,
    detector_id: str,
    config: str,
    label: str,
    starts: list[datetime | None],
    is_rate: Callable[[str], bool],
) -> DetectorSeries:
    """One detector config's series from its rows, oldest first."""
    judged = group["judged"]
    kind, value_label, values = scale(group)
    rows = group.num_rows
    worst = (
        group.select(["window_start"])
        .append_column("rank", verdict_ranks(group))
        .group_by("window_start", use_threads=False)
        .aggregate([("rank", "max")])["rank_max"]
    )
    corrected = kind == "alpha" and group["p_value_adjusted"].null_count < rows
    alphas, recorded = correction_alphas(group) if corrected else (pa.nulls(rows, pa.float64()), False)
    raw = _finite(group["p_value"])
    if corrected:  # the adjusted p on the p-value scale (against the correction's alpha); raw p apart
        on_p = pc.fill_null(pc.equal(group["threshold_of"], "p_value"), False)
        values = pc.if_else(on_p, _finite(group["p_value_adjusted"]), values)
    # A raw p is never above its adjusted one: the floor sits under both.
    lowest = pc.min_element_wise(values, raw) if corrected else values
    floor, floored = log_floor(kind, lowest, judged, group["threshold"])
    deciders = decided_by(group["measurements"])
    verdicts = texts(pc.if_else(judged, group["verdict"], "not judged"))
    revised = group.filter(pc.greater(group["revision"], 0))
    measurements = quality_measurements(group, is_rate) if detector_id.startswith("quality.") else {}
    return DetectorSeries(
        detector_id=detector_id,
        config_ids=[config] if config else [],
        config_label=label,
        config_id=[config or None] * group.num_rows,
        window_start=starts,
        statistic=_judged(_finite(group["statistic"]), judged),
        value=_judged(values, judged),
        value_label=value_label,
        value_note=ADJUSTED_NOTE if corrected else None,
        correction_alpha=boxed(alphas),
        correction_label=correction_label(pc.max(alphas).as_py(), recorded) if corrected else "",
        correction_note=ASSUMED_NOTE if corrected and not recorded else None,
        decided_by=deciders,
        drift_by=dict(Counter(c for c, v in zip(deciders, verdicts, strict=True) if c and v == "drift")),
        threshold=boxed(_finite(group["threshold"])),
        threshold_kind=kind,
        threshold_label=RAW_ALPHA_LABEL if corrected else THRESHOLD_LABELS[kind],
        p_value=boxed(raw),
        effect_size=boxed(_finite(group["effect_size"])),
        verdict=verdicts,
        note=_notes(group),
        revision=boxed(group["revision"]),
        windows=len(worst),
        drift_windows=_count(pc.equal(worst, 2)),
        warning_windows=_count(pc.equal(worst, 1)),
        not_judged_windows=_count(pc.equal(worst, -1)),
        revised_windows=pc.count_distinct(revised["window_start"]).as_py() if revised.num_rows else 0,
        measurements=measurements,
        units={name: measurement_unit(name, detector_id) for name in measurements},
        bounds=[name for name in measurements if is_bound(name)],
        reports=_reports(group),
        axis_title=axis_title(kind, [measurement_unit(n, detector_id) for n in measurements if is_bound(n)]),
        floor=floor,
        floored_windows=floored,
    )


def _count(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _finite(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # Strict JSON out: NaN and infinities (a detector that could not decide) become null.
    numbers = pc.cast(column, pa.float64())
    return pc.if_else(pc.is_finite(numbers), numbers, pa.scalar(None, pa.float64()))


def _judged(values: pa.Array | pa.ChunkedArray, judged: pa.ChunkedArray) -> list[float | None]:
    """The values of judged windows; null where the detector had too few samples (nothing to draw)."""
    return boxed(pc.if_else(judged, values, pa.scalar(None, pa.float64())))


def _notes(group: pa.Table) -> list[str | None]:
    """Per point: not judged (24 < 30 samples), revised 2x, or null; only the few such rows are boxed."""
    judged, revision = group["judged"], group["revision"]
    notes: list[str | None] = [None] * group.num_rows
    flagged = pc.indices_nonzero(pc.or_(pc.invert(judged), pc.greater(revision, 0))).to_pylist()
    if not flagged:
        return notes
    sizes = [c for c in ("reference_size", "current_size") if c in group.column_names]
    rows = group.select(["judged", "revision", "samples", "min_samples", *sizes]).take(flagged).to_pylist()
    for index, row in zip(flagged, rows, strict=True):
        note = not_judged_note(
            row["samples"], row["min_samples"], row.get("reference_size"), row.get("current_size")
        )
        if row["revision"]:
            notes[index] = f"revised {row['revision']}x{'' if row['judged'] else f', {note}'}"
        else:
            notes[index] = note
    return notes


def _reports(group: pa.Table) -> list[ReportLink]:
    """The reports of this series' drift and warning windows: where they help (trial 18: every series
    listed every report of the segment's windows, under detectors whose windows were all ok)."""
    # Only the few windows with a report: boxing every window's timestamp costs more than the page.
    flagged = pc.and_(group["judged"], pc.is_in(group["verdict"], pa.array(["drift", "warning"])))
    has_report = pc.greater(pc.utf8_length(group["report_path"]), 0)
    linked = group.filter(pc.fill_null(pc.and_(flagged, has_report), False))
    return [
        ReportLink(window_start=row["window_start"], detection_id=str(row["detection_id"]))
        for row in linked.select(["window_start", "detection_id"]).to_pylist()
    ]
