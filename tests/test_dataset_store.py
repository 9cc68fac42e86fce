"""Delta dataset tables in a temp folder: idempotent writes, time travel, tags, retention, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from curation.errors import DatasetError
from curation.rows import CuratedRow, ToxicityFlag, ToxicityVerdict
from curation.rules import curate
from curation.store import DatasetStore
from schemas.events import JoinedFeedback
from services import sample_data

from .test_curation_rules import fb, join, log

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 2, tzinfo=UTC)


def real_records(exchanges: list[sample_data.Exchange], start: int = 0) -> list[JoinedFeedback]:
    """Joined thumbs/rating feedback on real HH-RLHF and OASST1 exchanges."""
    records = []
    at = NOW - timedelta(days=1)
    for n, exchange in enumerate(exchanges):
        inference = log(
            exchange.request_id,
            exchange.response,
            prompt=exchange.prompt,
            version="v2" if exchange.request_id.endswith("rejected") else "v1",
            at=at + timedelta(seconds=n),
        )
        for k, event in enumerate(sample_data.feedback_events(exchange, at)):
            feedback = fb(exchange.request_id, event["kind"], event["value"], n=k)
            records.append(join(inference, feedback, start + 2 * n + k))
    return records


def count(store: DatasetStore, kind: str, version: int | None = None) -> int:
    """Rows of a table version."""
    return int(store.read(kind, version).num_rows)  # type: ignore[arg-type]


def row_ids(store: DatasetStore, kind: str, version: int | None = None) -> list[str]:
    """Sorted row ids of a table version."""
    return sorted(store.read(kind, version).column("row_id").to_pylist())  # type: ignore[arg-type]


@pytest.fixture
def rows(exchanges: list[sample_data.Exchange]) -> list[CuratedRow]:
    """Curated rows from real traffic, with one flagged request and one correction."""
    records = real_records(exchanges)
    first = exchanges[0]
    records.append(
        join(
            log("corr-1", "Sure, email me at bob@example.com", prompt=first.prompt),
            fb("corr-1", "correction", correction="I can't share that."),
            999,
        )
    )
    verdicts = {
        exchanges[1].request_id: ToxicityVerdict(
            request_id=exchanges[1].request_id,
            flags=(ToxicityFlag(target="response", label="toxicity", score=0.8),),
        )
    }
    return curate(records, verdicts=verdicts).rows


def test_write_then_replay_inserts_nothing(tmp_path: Path, rows: list[CuratedRow]) -> None:
    store = DatasetStore(tmp_path / "datasets")
    first = store.write(rows, now=NOW)
    expected = {kind: sum(r.kind == kind for r in rows) for kind in first.inserted}
    assert set(first.inserted) == {"sft", "preference", "golden", "safety_review"}
    assert first.inserted == expected
    again = store.write(rows, now=NOW)
    assert again.inserted == dict.fromkeys(expected, 0)
    assert again.versions == first.versions == store.latest_versions()
    for kind, n in expected.items():
        assert count(store, kind) == n
        assert row_ids(store, kind) == sorted(r.row_id for r in rows if r.kind == kind)


def test_half_replayed_batch_adds_only_the_new_rows(tmp_path: Path, rows: list[CuratedRow]) -> None:
    store = DatasetStore(tmp_path)
    golden = [r for r in rows if r.kind == "golden"]
    store.write(golden[:10], now=NOW)
    result = store.write(golden, now=NOW)
    assert result.inserted == {"golden": len(golden) - 10}
    assert row_ids(store, "golden") == sorted(r.row_id for r in golden)


def test_lineage_round_trips(tmp_path: Path, rows: list[CuratedRow]) -> None:
    store = DatasetStore(tmp_path)
    store.write(rows, now=NOW)
    (stored,) = store.read("sft").to_pylist()
    (row,) = [r for r in rows if r.kind == "sft"]
    assert stored["row_id"] == row.row_id and stored["request_id"] == "corr-1"
    assert stored["model"] == "support-assistant" and stored["date"] == "2026-03-01"
    assert [(s["role"], s["topic"], s["offset"]) for s in stored["sources"]] == [
        ("inference", "llm.inference.v1", 1099),
        ("feedback", "llm.feedback.v1", 1199),
    ]
    assert stored["feedback_event_ids"] == ["fb-correction-corr-1-0"]
    (safety,) = store.read("safety_review").to_pylist()
    assert [(t["label"], t["score"]) for t in safety["toxicity"]] == [("toxicity", 0.8)]
    (pair,) = [p for p in store.read("preference").to_pylist() if p["label"] == "correction_vs_original"]
    assert pair["rejected"] == "Sure, email me at [EMAIL]"
    assert pair["redactions"] == [{"kind": "EMAIL", "count": 1}]


def test_time_travel_returns_exactly_the_rows_of_that_version(
    tmp_path: Path, exchanges: list[sample_data.Exchange]
) -> None:
    store = DatasetStore(tmp_path)
    first = curate(real_records(exchanges[:40])).rows
    pinned = store.write(first, now=NOW).versions["golden"]
    at_pin = row_ids(store, "golden")
    store.write(curate(real_records(exchanges[40:], start=500)).rows, now=NOW)
    assert count(store, "golden") > len(at_pin)
    assert row_ids(store, "golden", pinned) == at_pin
    snapshot = store.snapshot("golden", "retrain-1", pinned)
    assert (snapshot.version, store.tags("golden")) == (pinned, {"retrain-1": pinned})
    assert store.resolve("golden", tag="retrain-1") == pinned
    store.write([], now=NOW)
    assert row_ids(store, "golden", store.resolve("golden", tag="retrain-1")) == at_pin


def test_the_training_ref_of_a_retrain_request_reads_back_the_same_rows_later(
    tmp_path: Path, exchanges: list[sample_data.Exchange]
) -> None:
    store = DatasetStore(tmp_path)
    assert store.training_ref() is None
    store.write(curate(real_records(exchanges[:40])).rows, now=NOW)
    ref = store.training_ref()
    assert ref is not None and ref["uri"] == store.uri(ref["table"])  # type: ignore[arg-type]
    table, version = str(ref["table"]), int(ref["version"])
    seen = row_ids(store, table, version)
    store.write(curate(real_records(exchanges[40:], start=500)).rows, now=NOW)
    assert count(store, table) > len(seen)
    assert row_ids(store, table, version) == seen


def test_snapshot_refuses_to_move_a_tag_and_unknown_versions(tmp_path: Path, rows: list[CuratedRow]) -> None:
    store = DatasetStore(tmp_path)
    store.write(rows[:5], now=NOW)
    store.write(rows, now=NOW)
    store.snapshot("golden", "v-a", 1)
    assert store.snapshot("golden", "v-a", 1).version == 1  # same pin again: fine
    with pytest.raises(DatasetError, match="already pins version 1"):
        store.snapshot("golden", "v-a", 2)
    with pytest.raises(DatasetError, match="no version 99"):
        store.snapshot("golden", "v-b", 99)
    with pytest.raises(DatasetError, match="no tag 'nope'"):
        store.resolve("golden", tag="nope")
    with pytest.raises(DatasetError, match="does not exist"):
        DatasetStore(tmp_path / "empty").read("golden")


def test_retention_drops_old_rows_at_write_and_expire_deletes_them(tmp_path: Path) -> None:
    old = [
        join(log(f"old{i}", f"reply {i}", at=NOW - timedelta(days=40)), fb(f"old{i}", "thumbs", True), i)
        for i in range(3)
    ]
    new = [
        join(log(f"new{i}", f"fresh {i}", at=NOW - timedelta(days=1)), fb(f"new{i}", "thumbs", True), 10 + i)
        for i in range(2)
    ]
    rows = curate(old + new).rows
    unbounded = DatasetStore(tmp_path)
    unbounded.write(rows, now=NOW)
    assert count(unbounded, "golden") == 5
    kept = DatasetStore(tmp_path, retention_days=30)
    before = kept.snapshot("golden", "before-expiry").version
    result = kept.expire(now=NOW)
    assert result.deleted == {"golden": 3}
    assert sorted(kept.read("golden").column("request_id").to_pylist()) == ["new0", "new1"]
    assert count(kept, "golden", before) == 5  # a pinned version still reads what it held
    fresh = DatasetStore(tmp_path / "other", retention_days=30).write(rows, now=NOW)
    assert (fresh.expired, fresh.inserted) == (3, {"golden": 2})


def test_vacuum_keeps_tagged_versions_readable(tmp_path: Path) -> None:
    records = [
        join(log(f"r{i}", f"reply {i}", at=NOW - timedelta(days=40)), fb(f"r{i}", "thumbs", True), i)
        for i in range(3)
    ]
    store = DatasetStore(tmp_path, retention_days=30)
    DatasetStore(tmp_path).write(curate(records).rows, now=NOW)
    tagged = store.snapshot("golden", "keep").version
    store.expire(now=NOW)
    store.vacuum(retention_hours=0)
    assert count(store, "golden", tagged) == 3
    assert count(store, "golden") == 0


_WRITER = """
import sys
from curation.rules import curate
from curation.store import DatasetStore
from tests.test_dataset_store import NOW, real_records
from services import sample_data
from core.settings import Settings
pairs = [e for _, p in zip(range(150), sample_data.hh_rlhf(Settings().sample_data)) for e in p]
records = real_records(pairs)
store = DatasetStore(sys.argv[1])
for start in range(0, len(records), 20):
    rows = curate(records[start : start + 20]).rows
    print("writing", start, flush=True)
    store.write(rows, now=NOW)
    print("wrote", start, flush=True)
"""


def test_kill_9_during_writes_then_replay_loses_and_duplicates_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    root = tmp_path / "datasets"
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "LOOPWATCH_SAMPLE_DATA": str(data_dir)},
    )
    assert process.stdout is not None
    # Let a few batches commit, then kill it once the next one is being written.
    lines = [process.stdout.readline() for _ in range(9)]
    assert [line.split()[0] for line in lines] == [b"writing", b"wrote"] * 4 + [b"writing"], lines
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    store = DatasetStore(root)
    pairs = [e for _, p in zip(range(150), sample_data.hh_rlhf(data_dir), strict=False) for e in p]
    expected = curate(real_records(pairs)).rows
    golden = sum(r.kind == "golden" for r in expected)
    assert 0 < count(store, "golden") < golden, "the writer was not killed in the middle"
    store.write(expected, now=NOW)  # the restart replays everything from the last committed offset (here: 0)
    for kind in ("golden", "preference"):
        ids = store.read(kind).column("row_id").to_pylist()
        assert len(ids) == len(set(ids)), "duplicates after replay"
        assert sorted(ids) == sorted(r.row_id for r in expected if r.kind == kind)
