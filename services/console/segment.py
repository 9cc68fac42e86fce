"""The Segment page: a segment's windows (judged or not, revised or not) and each detector's series.

Every window the history holds is on the page: the windows table has a row
per segment, kind and window, so a pinned reference window and a
feedback-only window of late feedback too small to judge are counted and
listed (with why they have no verdict), not left out. All charts of the page
share one time axis (:attr:`SegmentView.x_range`), so their windows line up.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, TypeAdapter

from services.console.chart_labels import EventCounts, count_step, first_counts, revised_note, window_events
from services.console.columns import Times, boxed, texts
from services.console.overview_verdicts import one_per_detection
from services.console.policy_gates import PolicyGate
from services.console.reader import ConsoleError, HistoryReader
from services.console.report_links import WindowReport, window_reports
from services.console.rollback_marks import RollbackMark, rollback_marks
from services.console.series import (
    SLOW_SKIPPED,
    DetectorSeries,
    detector_series,
    judged_mask,
    not_judged_note,
    verdict_ranks,
    window_note,
)
from services.console.slow_pending import SlowPending, slow_pending
from services.console.unjudged import never_judged_ids, worth_naming
from services.console.views import (
    DayRange,
    WindowShown,
    action_rows,
    is_rate,
    latest_revision_rows,
    parse_segment,
)
from services.console.window_close import (
    FIRST_ON_LATE_NOTE,
    closes_by_kind,
    first_on_late,
    kinds_said,
    rejudged_by_reference,
)

_WINDOW_COLUMNS = ["window_start", "window_end", "kind", "events", "feedback_events", "outcome", "revision"]
_WINDOW_COLUMNS += ["closed_at", "closed_by", "waited_for", "reference"]  # reference: names the stable one
# window_end: a history of detections only takes its windows' bounds from them.
_SERIES_COLUMNS = [
    "detector_id",
    "config_id",
    "window_start",
    "window_end",
    "verdict",
    "statistic",
    "threshold",
]
_SERIES_COLUMNS += ["p_value", "effect_size", "score", "measurements", "report_path", "detection_id"]
_SERIES_COLUMNS += [
    "revision",
    "judged",
    "samples",
    "min_samples",
    "threshold_of",
    "reference_size",
    "current_size",
    "reference",
    "p_value_adjusted",
]
#: At most this many windows are listed in the page's table of windows without a plain verdict.
MAX_NOTED = 500
_SHOWN: dict[int, WindowShown] = {-1: "not judged", 0: "ok", 1: "warning", 2: "drift"}
#: A ``skipped`` window with a verdict: judged, only the slow detectors did not run on it.
SKIPPED_NOTE = f"judged by the fast detectors; {SLOW_SKIPPED}"
#: An axis around a few windows spans at least this much (Plotly zooms one point to microseconds).
MIN_AXIS = timedelta(minutes=1)
#: The axis's padding on each side, as a share of the time its windows span.
AXIS_PAD = 0.03


class NotedWindow(BaseModel):
    """One window of the segment, and what the page says of it when it has no plain first verdict."""

    window_start: datetime
    window_end: datetime
    events: int | None = Field(None, description="Inference events")
    feedback_events: int | None = None
    shown: WindowShown | None = Field(None, description="Its verdict, or why it has none")
    note: str | None = Field(
        None, description="What the page says: reference, not judged (24 < 30 samples), revised 2x"
    )
    revision: int = 0
    late: str | None = Field(
        None,
        description="A revision in words: revised 5 times as late events came in, +46 feedback events"
        " (3 → 49); one late delivery read over several seconds may take several revisions",
    )
    closed: list[str] = Field(
        default_factory=list,
        description="When it closed (per kind when both): closed 21 s after its end by the watermark (...),"
        " waited for llm.feedback.v1 partition 3 (...)",
    )


_NOTED_LIST = TypeAdapter(list[NotedWindow])


class SegmentView(BaseModel):
    """The Segment page: the segment's traffic and each detector's statistic over windows."""

    segment: str
    model: str
    model_version: str
    range: DayRange
    window_start: list[datetime]
    events: list[int | None] = Field(
        description="Inference events per window; null when it held feedback only"
    )
    feedback_events: list[int | None] = Field(
        default_factory=list, description="Feedback events per window; null when it held inference only"
    )
    shown: list[WindowShown | None] = Field(
        default_factory=list, description="Per window: its worst verdict, or why it has none"
    )
    x_range: list[datetime] = Field(
        default_factory=list, description="The time axis every chart of the page shares: [start, end]"
    )
    count_step: int = Field(1, description="The traffic chart's tick step: whole events")
    closed: dict[str, list[str | None]] = Field(
        default_factory=dict,
        description="Per window kind (inference, feedback), per window: when it closed, how long after its"
        " end (wall clock minus window end), what closed it and what it waited for last; null: not known"
        " (known from detections only). Kinds with no close known are left out",
    )
    window_seconds: float | None = Field(
        None, description="The shortest window's length: a lone window's bar is as wide as its window"
    )
    noted: list[NotedWindow] = Field(
        default_factory=list, description=f"Windows not plainly judged, newest first (at most {MAX_NOTED})"
    )
    noted_total: int = 0
    skipped: list[datetime] = Field(
        default_factory=list, description="Window starts the slow detectors skipped (queue full)"
    )
    never_judged: list[str] = Field(
        default_factory=list, description="Slow detectors with no verdict on any window: all were skipped"
    )
    pending: list[SlowPending] = Field(
        default_factory=list,
        description="Per slow detector: the windows it has not judged yet (not skipped, no detection of it)",
    )
    gates: list[PolicyGate] = Field(
        default_factory=list,
        description="The policy's rollback and retrain p-value gates on this segment's p-value charts",
    )
    unfed: list[str] = Field(
        default_factory=list,
        description="Detectors this segment never fed: no verdict, 0 samples in windows with events (no"
        " ratings sent); not called not judged",
    )
    rollbacks: list[RollbackMark] = Field(
        default_factory=list, description="Rollback requests from this version: its charts mark each"
    )
    reports: list[WindowReport] = Field(
        default_factory=list,
        description="Each window's Evidently report once, newest first, with what drifted or warned in it",
    )
    detectors: list[DetectorSeries]


def segment_view(
    history: HistoryReader,
    segment: str,
    span: DayRange,
    labels: Mapping[str, str] | None = None,
    slow: frozenset[str] = frozenset(),
    slow_kinds: Mapping[str, str] | None = None,
    kinds: Mapping[str, str] | None = None,
) -> SegmentView:
    """One segment's windows and, per detector config (``labels`` names them), its statistic and verdicts.

    ``slow`` names the detectors the slow queue runs (``slow_kinds``: the window kind each reads): only
    their charts mark the windows it skipped, and the page counts the windows each has not judged yet.
    ``kinds``: the window kind every detector reads (its points' hovers say when that kind closed).
    """
    model, version = parse_segment(segment)
    days = span.days()
    only = {"segment": segment}
    windows = history.read("windows", days, model=model, columns=_WINDOW_COLUMNS, match=only)
    read = history.read("detections", days, model=model, columns=_SERIES_COLUMNS, match=only)
    detections = one_per_detection(read)  # a verdict repeated after a kill -9 is one point
    if windows.num_rows == 0 and detections.num_rows == 0:
        raise ConsoleError(f"segment {segment!r} has no windows from {span.start} to {span.end}", 404)
    firsts: dict[tuple[datetime, str, str], int | None] = {}
    if detections.num_rows and pc.max(detections["revision"]).as_py():
        firsts = first_counts(detections)
        detections = latest_revision_rows(detections, ("window_start", "detector_id", "config_id"))
    per_window = _per_window(windows, detections)
    times = Times(per_window["window_start"], per_window["window_end"], detections["window_start"])
    series = detector_series(detections, labels or {}, is_rate, times, firsts, version)
    # The verdict's name, else why there is none (reference, waiting, skipped): computed per column.
    ranked = pc.take(pa.array([_SHOWN[r] for r in range(-1, 3)]), pc.add(per_window["rank"], 1))
    shown_column = pc.if_else(pc.is_valid(per_window["rank"]), ranked, per_window["outcome"])
    shown: list[WindowShown | None] = texts(shown_column)
    noted, noted_total = _noted(
        per_window, shown_column, times, detections, first_on_late(windows), held_in_one_kind(windows)
    )
    _say_revisions(
        noted, _revised_counts(detections, firsts), _revised_kinds(windows), rejudged_by_reference(windows)
    )
    starts = times.of(per_window["window_start"])
    closed = closes_by_kind(windows, per_window["window_start"]) if windows.num_rows else {}
    if closed:
        index = {start: i for i, start in enumerate(starts)}
        for window in noted:
            window.closed = kinds_said(closed, index[window.window_start])
    skipped = per_window.filter(per_window["skipped"])
    skipped_at = times.of(skipped["window_start"])
    never = never_judged(series, slow) if skipped_at else []
    for s in series:
        s.kind = (kinds or {}).get(s.detector_id) or (slow_kinds or {}).get(s.detector_id)
        if s.detector_id in slow:
            drawn = set(s.window_start)
            s.slow, s.skipped = True, [t for t in skipped_at if t is not None and t not in drawn]
    return SegmentView(
        segment=segment,
        model=model,
        model_version=version,
        range=span,
        window_start=starts,
        events=boxed(per_window["events"]),
        feedback_events=boxed(per_window["feedback_events"]),
        shown=shown,
        x_range=x_range(span, per_window),
        count_step=count_step([*boxed(per_window["events"]), *boxed(per_window["feedback_events"])]),
        closed=closed,
        window_seconds=_shortest_us(per_window["window_start"], per_window["window_end"]) / 1e6 or None,
        noted=noted,
        noted_total=noted_total,
        skipped=skipped_at,
        never_judged=never,
        pending=slow_pending(windows, detections, slow, slow_kinds),
        # A slow detector whose queue skipped its windows was fed, not run: its section says why no chart.
        unfed=sorted(never_judged_ids(detections) - set(never)) if detections.num_rows else [],
        rollbacks=rollback_marks(action_rows(history.read("actions", days, model=model)), model, version),
        reports=window_reports(series),
        detectors=series,
    )


def _noted(
    per_window: pa.Table,
    shown: pa.Array | pa.ChunkedArray,
    times: Times,
    detections: pa.Table,
    late_first: set[datetime],
    held: Mapping[datetime, dict[str, str | None]] | None = None,
) -> tuple[list[NotedWindow], int]:
    """The windows without a plain first verdict, newest first (at most MAX_NOTED), and how many.

    Only the candidates (no verdict, revised, skipped, first judged on late events: ``late_first``, or
    pinned as the reference in one kind and judged in the other: ``held``) are looked at one by one:
    the rest have no note.
    """
    held = held or {}
    plain = pc.fill_null(pc.is_in(shown, value_set=pa.array(["ok", "warning", "drift"])), False)
    revised = pc.fill_null(pc.greater(per_window["revision"], 0), False)
    flagged = pc.or_(pc.or_(pc.invert(plain), revised), per_window["skipped"])
    for starts in (late_first, held):
        if starts:
            at = pa.array(list(starts), per_window["window_start"].type)
            flagged = pc.or_(flagged, pc.is_in(per_window["window_start"], value_set=at))
    candidates = pc.indices_nonzero(flagged).to_pylist()
    candidates_at = pa.array(candidates, pa.int64())
    counts = per_window.select(["window_start", "revision", "skipped"]).take(candidates_at).to_pylist()
    said = shown.take(candidates_at).to_pylist()
    unjudged = _unjudged(
        detections, [c["window_start"] for c, s in zip(counts, said, strict=True) if s == "not judged"]
    )
    notes = [
        (i, note, s, c["revision"] or 0)
        for i, s, c in zip(candidates, said, counts, strict=True)
        if (
            note := _note(
                s,
                unjudged.get(c["window_start"]),
                c["revision"],
                c["skipped"],
                c["window_start"] in late_first,
                held.get(c["window_start"]),
            )
        )
    ][::-1]
    listed = per_window.take(pa.array([i for i, *_ in notes[:MAX_NOTED]], pa.int64()))
    columns = {
        "window_start": times.of(listed["window_start"]),
        "window_end": times.of(listed["window_end"]),
        "events": boxed(listed["events"]),
        "feedback_events": boxed(listed["feedback_events"]),
    }
    rows = [
        {"note": note, "shown": as_shown, "revision": revision, **{k: v[n] for k, v in columns.items()}}
        for n, (_, note, as_shown, revision) in enumerate(notes[:MAX_NOTED])
    ]
    return _NOTED_LIST.validate_python(rows), len(notes)


def _revised_counts(
    detections: pa.Table, firsts: Mapping[tuple[datetime, str, str], int | None]
) -> dict[datetime, set[EventCounts]]:
    """Per revised window: the (revision 0, latest) events counted, one pair per input its detectors read.

    Detectors of one input count the same events, so the pairs of a window are one per input revised.
    """
    if not firsts:
        return {}
    revised = detections.filter(pc.fill_null(pc.greater(detections["revision"], 0), False))
    columns = ["window_start", "detector_id", "config_id", "measurements"]
    counts: dict[datetime, set[EventCounts]] = {}
    for row in revised.select(columns).to_pylist():
        before = firsts.get((row["window_start"], str(row["detector_id"]), str(row["config_id"] or "")))
        counts.setdefault(row["window_start"], set()).add((before, window_events(row["measurements"])))
    return counts


def _revised_kinds(windows: pa.Table) -> dict[datetime, set[str]]:
    """Per revised window: the kinds (inference, feedback) whose rows late events revised."""
    revised = windows.filter(pc.fill_null(pc.greater(windows["revision"], 0), False))
    kinds: dict[datetime, set[str]] = {}
    for row in revised.select(["window_start", "kind"]).to_pylist():
        kinds.setdefault(row["window_start"], set()).add(str(row["kind"]))
    return kinds


def _say_revisions(
    noted: list[NotedWindow],
    counts: Mapping[datetime, set[EventCounts]],
    late_kinds: Mapping[datetime, set[str]],
    rejudged: Mapping[datetime, str],
) -> None:
    """Each revised window's revision in words, naming the input (feedback events) the late events went to.

    The windows table says which kind's row was revised; only when it does not (a history of detections
    only, or both kinds revised) is the input told by its count: 80 late-completed feedback events of a
    window of 80 inference events were said as plain "events", read as late inference traffic.
    A window judged again only because its reference changed (``rejudged``) says that instead: none of
    its events came late (trial 12k read "revised once as late events came in").
    """
    for window in noted:
        if window.revision:
            pairs = counts.get(window.window_start, set())
            kind = late_kinds.get(window.window_start, set())
            if len(kind) == 1:
                named = {after: f"{next(iter(kind))} events" for _, after in pairs if after is not None}
            else:
                named = {n: "feedback events" for n in (window.feedback_events,) if n and n != window.events}
            window.late = revised_note(window.revision, pairs, named)
            again = rejudged.get(window.window_start)
            if again and not any(b is not None and a is not None and a > b for b, a in pairs):
                window.late = again
            elif again:
                window.late += f"; {again}"


def _per_window(windows: pa.Table, detections: pa.Table) -> pa.Table:
    """One row per window (its kinds' rows summed), oldest first: counts, its detections' worst rank
    (-1: none had enough samples) and why, its outcome when no detection judged it, its revision."""
    if windows.num_rows:
        counted = windows.group_by("window_start", use_threads=False).aggregate(
            [("window_end", "max"), ("events", "sum"), ("feedback_events", "sum"), ("revision", "max")]
        )
    else:  # a history with detections only
        counted = detections.group_by("window_start", use_threads=False).aggregate([("window_end", "max")])
        for column in ("events_sum", "feedback_events_sum", "revision_max"):
            counted = counted.append_column(column, pa.nulls(counted.num_rows, pa.int64()))
    counted = counted.rename_columns(["window_start", "window_end", "events", "feedback_events", "revision"])
    # A window pinned as a reference (or waiting, skipped) in one kind says so, unless detections judged it.
    unjudged = windows.filter(pc.is_in(windows["outcome"], pa.array(["reference", "waiting", "skipped"])))
    # Skipped in any kind is said even when the inline detectors judged the window.
    unjudged = unjudged.append_column("skipped", pc.equal(unjudged["outcome"], "skipped"))
    outcomes = unjudged.group_by("window_start", use_threads=False).aggregate(
        [("outcome", "min"), ("skipped", "any")]
    )
    joined = counted.join(outcomes, "window_start", join_type="left outer", use_threads=False)
    joined = joined.rename_columns([*counted.column_names, "outcome", "skipped"])
    joined = joined.set_column(joined.num_columns - 1, "skipped", pc.fill_null(joined["skipped"], False))
    judged = _window_verdicts(detections)
    if judged is not None:
        joined = joined.join(judged, "window_start", join_type="left outer", use_threads=False)
        revision = pc.max_element_wise(
            pc.fill_null(joined["revision"], 0), pc.fill_null(joined["revised"], 0)
        )
        joined = joined.set_column(joined.schema.get_field_index("revision"), "revision", revision)
    else:
        for column, kind in (("rank", pa.int64()), ("samples", pa.int64()), ("min_samples", pa.int64())):
            joined = joined.append_column(column, pa.nulls(joined.num_rows, kind))
    return joined.sort_by("window_start")


def _window_verdicts(detections: pa.Table) -> pa.Table | None:
    """Per window: the worst rank of its (latest) detections, the fewest samples and most needed, revision."""
    if detections.num_rows == 0:
        return None
    aggregated = (
        detections.select(["window_start", "samples", "min_samples", "revision"])
        .append_column("rank", verdict_ranks(detections))
        .group_by("window_start", use_threads=False)
        .aggregate([("rank", "max"), ("samples", "min"), ("min_samples", "max"), ("revision", "max")])
    )
    return aggregated.rename_columns(["window_start", "rank", "samples", "min_samples", "revised"])


def _unjudged(detections: pa.Table, starts: list[datetime]) -> dict[datetime, str]:
    """Per not-judged window: its note, from its detections as their series say it (one source)."""
    if not starts or detections.num_rows == 0:
        return {}
    rows = detections.filter(
        pc.and_(
            pc.invert(judged_mask(detections)),
            pc.is_in(
                detections["window_start"],
                value_set=pa.array(starts, detections.schema.field("window_start").type),
            ),
        )
    )
    by_start = rows.group_by("window_start", use_threads=False).aggregate([]).column(0).to_pylist()
    never = never_judged_ids(detections)
    return {
        start: window_note(
            worth_naming(
                rows.filter(pc.equal(rows["window_start"], pa.scalar(start, rows["window_start"].type))),
                never,
            )
        )
        for start in by_start
    }


def _note(
    shown: str | None,
    unjudged: str | None,
    revision: int | None,
    skipped: bool,
    late_first: bool = False,
    kinds: Mapping[str, str | None] | None = None,
) -> str | None:
    """The windows table's text for a window, None when it has a plain first verdict.

    ``kinds``: a window pinned as the reference (or waiting) in one kind and judged in the other says
    each (``inference: ok; feedback: reference``), its verdict being the judged kind's only.
    """
    parts = [FIRST_ON_LATE_NOTE] if late_first else []
    verdict = (unjudged or not_judged_note(None, None)) if shown == "not judged" else shown
    if kinds and shown in ("ok", "warning", "drift", "not judged"):  # judged in a kind: it has detections
        parts.append("; ".join(f"{kind}: {held or verdict}" for kind, held in kinds.items()))
    elif shown == "not judged":
        parts.append(str(verdict))
    elif shown in ("reference", "waiting"):
        parts.append(str(shown))
    if shown == "skipped" or skipped:
        parts.append(SKIPPED_NOTE if shown in ("ok", "warning", "drift") else SLOW_SKIPPED)
    if revision:
        parts.append(f"revised {revision}x")
    return ", ".join(parts) or None


#: The outcomes of a window's row that say why that kind has no verdict (skipped ones are said apart).
_HELD = ("reference", "waiting")


def held_in_one_kind(windows: pa.Table) -> dict[datetime, dict[str, str | None]]:
    """Per window pinned as the reference (or waiting) in one kind and judged in another: each kind, in
    the order inference, feedback, and why it has no verdict (None: judged).

    Trial 12n: v1's third feedback window was the reference while its inference was judged ok; the
    Segment page listed it as ok only, 2 reference windows where the Overview said "first 3 windows".
    Only the held windows' rows are read one by one (a few per segment).
    """
    if windows.num_rows == 0:
        return {}
    held = windows.filter(pc.is_in(windows["outcome"], pa.array(_HELD)))
    if held.num_rows == 0:
        return {}
    rows = windows.filter(pc.is_in(windows["window_start"], value_set=pc.unique(held["window_start"])))
    per_window: dict[datetime, dict[str, str | None]] = {}
    for row in rows.select(["window_start", "kind", "outcome"]).to_pylist():
        outcome = row["outcome"] if row["outcome"] in _HELD else None
        per_window.setdefault(row["window_start"], {})[str(row["kind"])] = outcome
    return {
        start: dict(sorted(kinds.items(), key=lambda item: (item[0] != "inference", item[0])))
        for start, kinds in per_window.items()
        if None in kinds.values() and len(kinds) > 1
    }


def never_judged(series: list[DetectorSeries], slow: frozenset[str]) -> list[str]:
    """The slow detectors with no verdict on any window of the segment (each window skipped, or too small)."""
    judged = {s.detector_id for s in series if s.windows > s.not_judged_windows}
    return sorted(slow - judged)


def x_range(span: DayRange, per_window: pa.Table) -> list[datetime]:
    """The page's shared time axis: its windows, padded by a little (at least a minute), in its day range.

    Fitted to the windows (a padding of AXIS_PAD of their span, at least a quarter window, so the first
    point is not cut at the edge): four minutes of traffic on a ten-minute axis filled its middle 40%.
    """
    first = datetime.combine(span.start, time(), UTC)
    last = datetime.combine(span.end, time(), UTC) + timedelta(days=1)
    if per_window.num_rows == 0:
        return [first, last]
    start = pc.min(per_window["window_start"]).as_py()
    end = pc.max(per_window["window_end"]).as_py()
    window = timedelta(microseconds=_shortest_us(per_window["window_start"], per_window["window_end"]))
    pad = max((end - start) * AXIS_PAD, window / 4, (MIN_AXIS - (end - start)) / 2, timedelta(0))
    return [max(first, start - pad), min(last, end + pad)]


def _shortest_us(starts: pa.ChunkedArray, ends: pa.ChunkedArray) -> int:
    """The shortest window's length in microseconds (pyarrow's min has no kernel for durations); 0: none."""
    if len(starts) == 0:
        return 0
    micros = pa.timestamp("us", "UTC")
    begin, end = (pc.cast(pc.cast(times, micros), pa.int64()) for times in (starts, ends))
    lengths = pc.subtract(end, begin)
    return int(pc.min(lengths).as_py() or 0)
