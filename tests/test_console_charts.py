"""Trial 12e, the Segment page's charts: revisions said as what happened, versions named, lines kept apart.

A history like the trial's: a canary (v2) judged against its stable version
(v1) in twelve 20-second windows, the feedback of its first window delivered
late in a trickle, judged again five times (3 -> 49 feedback events). Built
from rows of the history tables' own schemas and read by ``segment_view``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from core.settings import Settings
from curation.history import PARTITION_BY, SCHEMAS
from services.console.chart_labels import count_step, reference_label, revised_note
from services.console.reader import HistoryReader
from services.console.segment import SegmentView, segment_view
from services.console.views import DayRange
from streams.windows import Partial, Sample, Windows
from tests.test_window_marks import SPEC

SEGMENT = {"model": "hh", "model_version": "v2", "app": "trial", "route": "chat", "tenant": None}
KEY = "hh|v2|trial|chat|"
START = datetime(2026, 12, 2, 0, 41, 40, tzinfo=UTC)
WINDOW = timedelta(seconds=20)
WINDOWS = 12
STABLE = "stable:{kind}|hh|v1|trial|chat|@1:2026-12-02T00:41:40+00:00"
#: The trickle: revision n of window 0 counted these feedback events (the trial's own numbers).
TRICKLE = [3, 10, 12, 18, 38, 49]
RATES = {"current_rate": 0.0, "reference_rate": 0.0, "empty_response_rate": 0.0, "refusal_rate": 0.0}
LATENCY = {"p95.observed_ms": 900.0, "p99.observed_ms": 900.0, "p95.slo_ms": 2000.0, "p99.slo_ms": 2000.0}


def _detection(n: int, detector: str, measurements: dict[str, float], revision: int = 0) -> dict[str, Any]:
    start = START + n * WINDOW
    kind = "feedback" if detector == "quality.negative_feedback.v1" else "inference"
    value = {"threshold_of": "statistic", "statistic": 900.0, "threshold": 2000.0}
    if detector != "quality.latency.v1":
        value = {"threshold_of": "p_value", "statistic": 1.0, "p_value": 0.9, "threshold": 0.05}
    return {
        "day": start.date(),
        **SEGMENT,
        "segment": KEY,
        "window_start": start,
        "window_end": start + WINDOW,
        "detection_id": f"{detector}-{n}-r{revision}",
        "detector_id": detector,
        "config_id": detector.split(".")[1],
        "verdict": "ok",
        "current_size": int(measurements["window_events"]),
        "reference_size": 60,
        "measurements": json.dumps(measurements),
        "reference": STABLE.format(kind=kind),
        "detected_at": start + WINDOW + timedelta(seconds=2 + revision),
        "revision": revision,
        "judged": True,
        **value,
    }


def _window(n: int, kind: str, events: int, revision: int = 0) -> dict[str, Any]:
    start = START + n * WINDOW
    counts = {"events": events} if kind == "inference" else {"feedback_events": events}
    return {
        "day": start.date(),
        **SEGMENT,
        "segment": KEY,
        "window_start": start,
        "window_end": start + WINDOW,
        "sample_size": events,
        "kind": kind,
        "revision": revision,
        "outcome": "judged",
        **counts,
    }


def write_trickle_history(root: Path) -> None:
    """The trial's canary: 12 windows, window 0's feedback revised five times by one late trickle."""
    windows, detections = [], []
    for n in range(WINDOWS):
        windows.append(_window(n, "inference", 60))
        windows.append(
            _window(n, "feedback", TRICKLE[-1] if n == 0 else 40, len(TRICKLE) - 1 if n == 0 else 0)
        )
        detections.append(_detection(n, "quality.empty_refusal.v1", {**RATES, "window_events": 60}))
        detections.append(_detection(n, "quality.latency.v1", {**LATENCY, "window_events": 60}))
        for revision, events in enumerate(TRICKLE if n == 0 else [40]):
            detections.append(
                _detection(n, "quality.negative_feedback.v1", {"window_events": events}, revision)
            )
    for name, rows in (("windows", windows), ("detections", detections)):
        table = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
        write_deltalake(str(root / name), table, partition_by=PARTITION_BY[name])


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> SegmentView:
    """The canary's Segment page."""
    root = tmp_path_factory.mktemp("console-charts") / "history"
    write_trickle_history(root)
    day = START.date()
    return segment_view(HistoryReader(str(root)), KEY, DayRange(start=day, end=day))


def _series(view: SegmentView, detector: str) -> Any:
    return next(d for d in view.detectors if d.detector_id == detector)


def test_a_trickle_of_late_events_is_said_as_revisions_with_the_events_they_added(view: SegmentView) -> None:
    # "revised 5x" read as five separate late arrivals: the page says what happened and how much came.
    [noted] = [w for w in view.noted if w.revision]
    assert (noted.window_start, noted.note) == (START, "revised 5x")  # the API's short form stays
    assert noted.late == "revised 5 times as late events came in, +46 feedback events (3 → 49)"
    feedback = _series(view, "quality.negative_feedback.v1")
    assert feedback.revised_note[0] == "revised 5 times as late events came in, +46 events (3 → 49)"
    assert feedback.revised_note[1:] == [None] * (WINDOWS - 1)
    assert revised_note(1, [(50, 60)]) == "revised once as late events came in, +10 events (50 → 60)"
    assert revised_note(2) == "revised 2 times as late events came in"  # counts unknown: no number made up


def test_rates_drawn_beside_a_reference_name_the_version_each_was_measured_on(view: SegmentView) -> None:
    rates = _series(view, "quality.empty_refusal.v1")
    assert rates.reference_label == "reference (v1, stable)"
    assert rates.labels == {
        "current_rate": "v2 empty or refusal rate",
        "empty_response_rate": "v2 empty response rate",
        "reference_rate": "reference (v1, stable) empty or refusal rate",
        "refusal_rate": "v2 refusal rate",
    }
    # Latency has no reference's measure on its charts: its legend still names the version in words.
    latency_labels = _series(view, "quality.latency.v1").labels
    assert latency_labels["p95.observed_ms"] == "v2 p95 latency"
    assert latency_labels["p95.slo_ms"] == "p95 latency SLO (bound)"
    assert reference_label(["pinned:inference|hh|v1|trial|chat|@3:"]) == "reference (v1's first 3 windows)"
    assert reference_label(["file"]) == "reference (file)"
    assert reference_label([None]) == "reference"


def test_lines_of_equal_value_each_get_their_own_marker_and_dash(view: SegmentView) -> None:
    # p95 equals p99 and every rate is 0 here: drawn alike, the later line hid the earlier one.
    for detector in ("quality.latency.v1", "quality.empty_refusal.v1"):
        series = _series(view, detector)
        for unit in set(series.units.values()):
            names = [n for n in series.measurements if series.units[n] == unit]
            looks = {(series.styles[n].symbol, series.styles[n].dash) for n in names}
            assert len(looks) == len(names), (detector, unit, series.styles)
    latency = _series(view, "quality.latency.v1").styles
    assert latency["p95.observed_ms"].size > latency["p99.observed_ms"].size  # the first rings the second
    # Bounds are dashed lines with gaps, no markers, and two equal SLOs are two dash patterns.
    assert latency["p95.slo_ms"].symbol == latency["p99.slo_ms"].symbol == "none"
    assert latency["p95.slo_ms"].dash != latency["p99.slo_ms"].dash
    assert all("px," in latency[n].dash for n in ("p95.slo_ms", "p99.slo_ms"))


def test_the_time_axis_fits_the_windows_with_a_small_padding(view: SegmentView) -> None:
    # Four minutes of traffic were drawn on a ten-minute axis, in its middle 40%.
    first, last = START, START + WINDOWS * WINDOW
    pad = (last - first) * 0.03
    assert view.x_range == [first - pad, last + pad]
    assert view.count_step == 10  # whole events on the traffic axis (at most 60 a window)


def test_counts_tick_on_whole_numbers() -> None:
    assert [count_step(c) for c in ([1], [1, 2], [None, 7], [60], [1_300])] == [1, 1, 2, 10, 500]


def test_a_late_delivery_sent_a_batch_a_second_is_one_revision_with_the_default_settings() -> None:
    # Ingest reads a batch a second 1-2 s apart: with the old 1 s quiet each gap was a revision.
    quiet = Settings.model_fields["window_revision_quiet_seconds"].default
    windows = Windows(dataclasses.replace(SPEC, revision_quiet_seconds=quiet))
    [first] = windows.add(_partial(3, 62.0), now=0.0, partition=3)
    assert first.revision == 0
    revised, now, arrivals = [], 10.0, iter([1.0, 2.0] * 7)
    for _ in range(14):  # 14 batches over about 20 s, each of 3 events
        windows.add(_partial(3), now=now, partition=3)
        until = now + next(arrivals)
        while now < until:  # the detect stage's tick, every 0.1 s
            now = round(now + 0.1, 1)
            revised += windows.revisions(now)
    revised += windows.revisions(now + quiet)
    assert [(r.revision, r.seen) for r in revised] == [(1, 3 + 14 * 3)]


def _partial(events: int, progress: float | None = None) -> Partial:
    """A batch's partial of window 0; ``progress``: the watermark it carries (62 s closes window 0)."""
    rng = random.Random(events)
    sample = Sample(200)
    for i in range(events):
        sample.offer({"i": i}, rng)
    marks = {"a": progress} if progress is not None else {}
    return Partial(dict(SEGMENT), "inference", 0, 0.0, 59.0, sample, progress=marks)


def test_the_console_bench_prints_ratios_to_two_significant_digits() -> None:
    path = Path(__file__).resolve().parent.parent / "bench" / "console_bench.py"
    spec = importlib.util.spec_from_file_location("console_bench", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The trial's segment api: 42 ms against a 36 ms baseline printed "1x", hiding that it was slower.
    assert bench.ratio_text(0.036 / 0.042) == "0.86x"
    assert [bench.ratio_text(r) for r in (0.012, 5.44, 42.3, 1234.0)] == ["0.012x", "5.4x", "42x", "1234x"]
