"""The console's fast paths give what the plain ones did: boxed columns, partition listing, parsed rates."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
from deltalake import write_deltalake

from curation.history import PARTITION_BY, SCHEMAS
from services.console.columns import Times, boxed, iso_times, texts
from services.console.reader import HistoryReader
from services.console.series import _measurements
from services.console.views import is_rate

DAY = date(2026, 12, 1)
AT = datetime(2026, 12, 1, 12, tzinfo=UTC)


def test_boxed_columns_are_what_to_pylist_gives() -> None:
    columns = [
        pa.chunked_array([pa.array([1, None, 3]), pa.array([4])]),
        pa.array([0.5, None, float("nan"), 2.0]),
        pa.array([True, None, False]),
        pa.array([None, None], pa.int64()),
        pa.array(["a", None]),  # not a number: as to_pylist gives it
    ]
    for column in columns:
        assert repr(boxed(column)) == repr(column.to_pylist())
    verdicts = pa.chunked_array([pa.array(["ok", None, "drift"]), pa.array(["ok"]).slice(0, 1)])
    assert texts(verdicts) == ["ok", None, "drift", "ok"]


def test_times_are_parsed_once_and_shared_with_their_microseconds_and_nulls() -> None:
    at = pa.array([AT + timedelta(microseconds=7), None, AT], pa.timestamp("us", tz="UTC"))
    assert iso_times(at) == ["2026-12-01T12:00:00.000007Z", None, "2026-12-01T12:00:00.000000Z"]
    times = Times(at)
    first = times.of(at)
    assert first == at.to_pylist()
    assert times.of(at.slice(2))[0] is first[2]  # one object per timestamp of the page
    other = pa.array([AT - timedelta(days=1)], pa.timestamp("us", tz="UTC"))
    assert times.of(other) == [None]  # not one of the page's timestamps


def test_a_model_whose_partition_path_is_percent_encoded_is_read(tmp_path) -> None:
    # The log holds each file's path URI-encoded: the reader decodes it once, as the protocol says.
    models = ["org/model x%", "plain"]
    rows = [
        {"day": DAY, "model": m, "segment": f"{m}|v1|||", "window_start": AT, "window_end": AT, "events": n}
        for n, m in enumerate(models)
    ]
    table = pa.Table.from_pylist(rows, schema=SCHEMAS["windows"])
    write_deltalake(str(tmp_path / "windows"), table, partition_by=PARTITION_BY["windows"])
    reader = HistoryReader(str(tmp_path))
    for n, model in enumerate(models):
        read = reader.read("windows", [DAY], model=model, columns=["model", "events"]).to_pylist()
        assert read == [{"model": model, "events": n}]
    assert reader.read("windows", [DAY], columns=["model"]).num_rows == 2
    assert reader.read("windows", [DAY - timedelta(days=1)]).num_rows == 0


def test_rates_parsed_by_arrow_are_those_parsed_one_object_at_a_time() -> None:
    measurements = [
        json.dumps({"current_rate": 0.25, "current_samples": 40, "p95.observed_ms": 1200}),
        json.dumps({"current_rate": 1}),  # an integer among doubles
        "",
        None,
        json.dumps({"current_rate": 0.5, "error_rate.current_rate": 0.1}),
        json.dumps({"current_rate": 0.75}),  # not judged: nothing drawn
    ]
    judged = [True, True, True, True, True, False]
    group = pa.table({"judged": judged, "measurements": pa.array(measurements, pa.string())})
    expected: dict[str, list[float | None]] = {}
    loaded = [json.loads(m) if m and j else {} for m, j in zip(measurements, judged, strict=True)]
    for name in sorted({k for m in loaded for k in m if is_rate(k)}):
        expected[name] = [float(m[name]) if name in m else None for m in loaded]
    assert _measurements(group, is_rate) == expected
    # NaN (not what pyarrow's reader parses as a number everywhere) is null, as the slow path gives it.
    nan = pa.table({"judged": [True, True], "measurements": ['{"current_rate": NaN}', '{"current_rate": 2}']})
    assert _measurements(nan, is_rate) == {"current_rate": [None, 2.0]}
