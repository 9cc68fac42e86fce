"""The monitoring history without a broker: rows from events, idempotent writes, retention, compaction."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from curation.history import (
    SAMPLE_VALUE_BYTES,
    SCHEMAS,
    Letter,
    action_row,
    alert_row,
    config_id,
    deadletter_rows,
    detection_row,
    window_row,
)
from curation.history_store import HistoryBatch, HistoryStore
from schemas.events import Alert, CloudEvent, DeadLetter, DeadLetterReason, Detection, Segment, SourceRef

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def detection(n: int, *, window: int = 0, size: int = 100, at: datetime | None = None) -> Detection:
    """A detection of window ``window`` (one minute each) of the canary segment."""
    start = T0 + timedelta(minutes=window)
    return Detection(
        detection_id=f"d-{n}",
        detector_id="quality.negative_feedback.v1",
        detector_version="v1",
        config={"min_samples": 30, "alpha": 0.05},
        segment=Segment(model="helpdesk", model_version="v2", app="support"),
        window_start=start,
        window_end=start + timedelta(minutes=1),
        reference_size=80,
        current_size=size,
        statistic=2.5,
        p_value=0.01,
        threshold=0.05,
        effect_size=0.4,
        verdict="drift",
        measurements={"window_events": 150.0, "current_rate": 0.8},
        reference="pinned",
        detected_at=at or start + timedelta(minutes=1, seconds=1),
    )


def alert(status: str = "firing") -> Alert:
    """A firing (or resolved) alert of the canary."""
    return Alert(
        fingerprint="fp1",
        status=status,  # type: ignore[arg-type]
        severity="critical",
        summary="negative feedback up",
        labels={"model": "helpdesk", "model_version": "v2", "alertname": "quality", "severity": "critical"},
        starts_at=T0,
        ends_at=T0 + timedelta(minutes=5) if status == "resolved" else None,
        detections=["d-1"],
    )


def action(n: int = 1) -> CloudEvent:
    """A rollback request."""
    return CloudEvent(
        id=f"a-{n}",
        source="loopwatch",
        type="io.loopwatch.rollback.requested",
        subject="helpdesk",
        time=T0 + timedelta(minutes=2),
        data={"model": "helpdesk", "from_version": "v2", "target_version": "v1"},
    )


def letter(offset: int, *, partition: int = 0, reason: str = "malformed_json", seconds: int = 0) -> Letter:
    """A dead letter of a 5,000-byte message, read at ``partition``/``offset``."""
    value = b"{" * 5000
    return Letter(
        partition,
        offset,
        DeadLetter(
            reason=DeadLetterReason(reason),
            error="not JSON",
            source=SourceRef(topic="llm.inference.v1", partition=1, offset=offset),
            value_b64=base64.b64encode(value).decode(),
            value_bytes=len(value),
            value_sha256="0" * 64,
            received_at=T0 + timedelta(seconds=seconds),
        ),
    )


def batch(**tables: list[dict[str, Any]]) -> HistoryBatch:
    """A HistoryBatch with these rows."""
    out = HistoryBatch()
    out.rows.update(tables)
    return out


def test_rows_follow_the_table_schemas() -> None:
    rows = {
        "windows": [window_row(detection(1))],
        "detections": [detection_row(detection(1))],
        "alerts": [alert_row(alert()), alert_row(alert("resolved"))],
        "actions": [action_row(action(), "loopwatch.rollback-requests.v1")],
        "deadletters": deadletter_rows([letter(0)]),
    }
    for table, table_rows in rows.items():
        assert set(table_rows[0]) == set(SCHEMAS[table].names), table
    d = rows["detections"][0]
    assert (d["segment"], d["verdict"], d["config_id"]) == (
        "helpdesk|v2|support||",
        "drift",
        config_id(detection(1).config),
    )
    assert json.loads(d["measurements"]) == {"window_events": 150.0, "current_rate": 0.8}
    assert rows["windows"][0]["events"] == 150 and rows["windows"][0]["sample_size"] == 100
    firing, resolved = rows["alerts"]
    assert firing["changed_at"] == T0 and resolved["changed_at"] == T0 + timedelta(minutes=5)
    assert rows["actions"][0]["model"] == "helpdesk"
    assert config_id({"b": 1, "a": 2}) == config_id({"a": 2, "b": 1})


def test_dead_letters_are_counted_per_minute_reason_and_source_with_bounded_samples() -> None:
    letters = [letter(n, seconds=n) for n in range(5)] + [letter(5, reason="oversize"), letter(6, seconds=61)]
    rows = {(r["minute"], r["reason"]): r for r in deadletter_rows(letters)}
    assert {key: row["count"] for key, row in rows.items()} == {
        (T0, "malformed_json"): 5,
        (T0, "oversize"): 1,
        (T0 + timedelta(minutes=1), "malformed_json"): 1,
    }
    samples = json.loads(rows[(T0, "malformed_json")]["samples"])
    assert len(samples) == 3  # SAMPLES_PER_ROW
    kept = DeadLetter.model_validate(samples[0])
    assert len(base64.b64decode(kept.value_b64)) == SAMPLE_VALUE_BYTES and kept.value_bytes == 5000
    # The same dead letters give the same rows: the row a replay merges on.
    assert deadletter_rows(list(reversed(letters))) == deadletter_rows(letters)


def test_a_replayed_batch_adds_no_row(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    detections = [detection(n, window=n % 3) for n in range(6)]
    first = batch(
        windows=[window_row(d) for d in detections],
        detections=[detection_row(d) for d in detections],
        alerts=[alert_row(alert()), alert_row(alert())],  # a copy on the topic, in one batch
        actions=[action_row(action(), "rb")],
    )
    assert store.write(first, now=T0) == {"windows": 3, "detections": 6, "alerts": 1, "actions": 1}
    again = store.write(first, now=T0)
    assert again == {"windows": 0, "detections": 0, "alerts": 0, "actions": 0}
    store.write(batch(alerts=[alert_row(alert("resolved"))], actions=[action_row(action(), "rb")]), now=T0)
    assert store.read("detections").num_rows == 6 and store.read("windows").num_rows == 3
    assert sorted(store.read("alerts").column("status").to_pylist()) == ["firing", "resolved"]
    assert store.read("actions").num_rows == 1


def test_a_window_row_takes_the_most_rows_and_the_first_detection_however_it_is_batched(
    tmp_path: Path,
) -> None:
    store = HistoryStore(tmp_path)
    late_slow = detection(2, size=400, at=T0 + timedelta(minutes=3))
    store.write(batch(windows=[window_row(detection(1, size=100))]), now=T0)
    store.write(batch(windows=[window_row(late_slow)]), now=T0)
    store.write(batch(windows=[window_row(detection(1, size=100))]), now=T0)  # a replay of the first
    (row,) = store.read("windows").to_pylist()
    assert (row["sample_size"], row["events"]) == (400, 150)
    assert row["first_detected_at"] == detection(1).detected_at


def test_dead_letters_replayed_in_other_cuts_are_counted_once(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    letters = [letter(n, partition=n % 2, seconds=n) for n in range(10)]

    def write(items: list[Letter]) -> int:
        out = HistoryBatch(letters={"dl": items})
        return store.write(out, now=T0).get("deadletters", 0)

    assert write(letters[:4]) == 4
    # After a crash the replay starts earlier and ends later than the first write did.
    assert write(letters[:8]) == 4
    assert write(letters) == 2
    assert write(letters) == 0
    assert sum(store.read("deadletters").column("count").to_pylist()) == 10


def test_maintenance_expires_old_days_compacts_and_vacuums(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path, retention_days=30)
    old = detection(1, window=0)
    for n in range(4):  # four commits: four small files of the same partition
        store.write(batch(detections=[detection_row(detection(10 + n, window=40 * 24 * 60))]), now=T0)
    store.write(batch(detections=[detection_row(old)]), now=T0)
    now = T0 + timedelta(days=40)
    assert store.write(batch(detections=[detection_row(detection(99))]), now=now) == {}  # too old to write
    done = store.maintain(now, vacuum_hours=0)
    assert done.deleted["detections"] == 1
    assert done.compacted["detections"] == 4 and done.vacuumed["detections"] >= 4
    assert sorted(store.read("detections").column("detection_id").to_pylist()) == [
        "d-10",
        "d-11",
        "d-12",
        "d-13",
    ]


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_tables_read_with_pandas_after_a_write(tmp_path: Path, table: str) -> None:
    store = HistoryStore(tmp_path)
    rows = {
        "windows": [window_row(detection(1))],
        "detections": [detection_row(detection(1))],
        "alerts": [alert_row(alert())],
        "actions": [action_row(action(), "rb")],
    }
    out = (
        HistoryBatch(letters={"dl": [letter(0)]}) if table == "deadletters" else batch(**{table: rows[table]})
    )
    store.write(out, now=T0)
    from deltalake import DeltaTable

    frame = DeltaTable(store.uri(table)).to_pandas(partitions=[("day", "=", "2026-12-01")])
    assert list(frame.columns) == SCHEMAS[table].names or set(frame.columns) == set(SCHEMAS[table].names)
    assert len(frame) == 1


DOC = Path(__file__).resolve().parent.parent / "docs" / "history.md"


def test_the_doc_names_every_column_and_its_pandas_example_runs(tmp_path: Path) -> None:
    text = DOC.read_text()
    for table, schema in SCHEMAS.items():
        section = text.split(f"### `{table}`", 1)[1].split("\n### ", 1)[0]
        for column in schema.names:
            assert f"`{column}`" in section, f"docs/history.md does not describe {table}.{column}"
    store = HistoryStore(tmp_path)
    store.write(batch(detections=[detection_row(detection(1))]), now=T0)
    store.write(HistoryBatch(letters={"dl": [letter(0), letter(1, reason="oversize")]}), now=T0)
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(example.replace('".loopwatch/history"', repr(str(tmp_path))), namespace)
    assert list(namespace["drifted"].segment) == ["helpdesk|v2|support||"]
    assert namespace["per_reason"].to_dict() == {"malformed_json": 1, "oversize": 1}
