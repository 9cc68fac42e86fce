"""The Overview's columnar paths (trial 22: a p95 of 1.4 s on the console bench) give what row-by-row
Python gave: the latest revision of each window, the pooled rates, the slow detectors' pending windows."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from services.console.overview_rates import quality_rates, with_measured
from services.console.overview_verdicts import latest_revision_rows
from services.console.slow_pending import slow_pending

T0 = datetime(2026, 12, 1, tzinfo=UTC)
UTC_US = pa.timestamp("us", tz="UTC")


def test_latest_revision_rows_keeps_what_a_python_loop_keeps() -> None:
    rng = random.Random(7)
    rows = []
    for i in range(3000):
        rows.append(
            {
                "segment": f"m|v{rng.randint(1, 4)}",
                "window_start": T0 + timedelta(minutes=rng.randint(0, 60)),
                "detector_id": rng.choice(["a", "b"]),
                "config_id": rng.choice(["c1", None]),
                "revision": rng.choice([0, 0, 0, 0, 0, 0, 1, 2, None]),
                "row": i,
            }
        )
    table = pa.Table.from_pylist(rows, schema=_schema())
    latest: dict[tuple[object, ...], int] = {}
    for r in rows:
        key = (r["segment"], r["window_start"], r["detector_id"], r["config_id"] or "")
        latest[key] = max(latest.get(key, 0), r["revision"] or 0)
    expected = [
        r["row"]
        for r in rows
        if (r["revision"] or 0)
        == latest[(r["segment"], r["window_start"], r["detector_id"], r["config_id"] or "")]
    ]
    kept = latest_revision_rows(table)
    assert kept["row"].to_pylist() == expected  # the same rows, in the table's order
    assert None not in kept["config_id"].to_pylist()  # a missing config id reads as ""
    assert 0 < len(expected) < len(rows)


def test_pooled_rates_read_hits_rates_and_sizes_like_the_json_says() -> None:
    own = _rate_rows(
        [
            {"current_hits": 3, "current_samples": 10},  # too small to judge: its hits
            {"current_rate": 0.25, "current_samples": 8},  # judged: its rate times its samples
            {"current_rate": 0.5},  # no current_samples: the row's current_size (4)
            {"negative_feedback_rate": 0.3},  # neither: not pooled
        ],
        sizes=[10, 8, 4, 99],
    )
    (rate,) = quality_rates(own, None, None)
    assert (rate.samples, rate.value) == (22, (3 + 2 + 2) / 22)
    assert rate.said == "thumbs down 32% (7 of 22 in 3 windows)"
    # Parsed once for every segment (the Overview's with_measured) or per call: the same numbers.
    assert quality_rates(with_measured(own), None, None) == [rate]


def test_pooled_rates_skip_what_is_no_number_instead_of_failing() -> None:
    # Arrow's JSON parser refuses NaN and a string where a number goes; the rows are then read one by one.
    texts = [
        '{"current_hits": 2, "current_samples": 5}',
        '{"current_rate": "high", "current_samples": 7}',
        '{"current_rate": NaN, "current_samples": 3}',
    ]
    (rate,) = quality_rates(_rate_rows([], sizes=[5, 7, 3], texts=texts), None, None)
    assert (rate.samples, rate.value) == (5, 0.4)


def test_slow_pending_counts_judged_windows_the_slow_detector_has_no_row_for() -> None:
    starts = [T0 + timedelta(minutes=m) for m in range(6)]
    windows = pa.table(
        {
            "window_start": pa.array([*starts, starts[0]], UTC_US),
            "kind": ["inference"] * 7,
            # Window 4 skipped, window 5 the reference: the slow detector never runs on them.
            "outcome": ["judged", "judged", "judged", "judged", "skipped", "reference", "judged"],
        }
    )
    detections = pa.table(
        {
            "window_start": pa.array([starts[1], starts[1], starts[2]], UTC_US),
            "detector_id": ["drift.embedding_mmd.v1", "drift.embedding_mmd.v1", "quality.error_rate.v1"],
        }
    )
    (pending,) = slow_pending(windows, detections, frozenset({"drift.embedding_mmd.v1"}))
    assert pending.windows == 3  # windows 0, 2 and 3 (window 0 counted once)
    assert slow_pending(windows.slice(0, 0), detections, frozenset({"drift.embedding_mmd.v1"})) == []
    empty = detections.slice(0, 0)
    assert slow_pending(windows, empty, frozenset({"drift.embedding_mmd.v1"}))[0].windows == 4


def _schema() -> pa.Schema:
    return pa.schema(
        [
            ("segment", pa.string()),
            ("window_start", UTC_US),
            ("detector_id", pa.string()),
            ("config_id", pa.string()),
            ("revision", pa.int64()),
            ("row", pa.int64()),
        ]
    )


def _rate_rows(
    measured: list[dict[str, object]], sizes: list[int], texts: list[str] | None = None
) -> pa.Table:
    texts = texts if texts is not None else [json.dumps(m) for m in measured]
    return pa.table(
        {
            "detector_id": ["quality.negative_feedback.v1"] * len(texts),
            "measurements": pa.array(texts, pa.string()),
            "current_size": pa.array(sizes or [None] * len(texts), pa.int64()),
        }
    )
