"""Several workers writing one datasets root at once: no write gives up, every row lands once."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from curation import store as store_module
from curation.rows import CuratedRow
from curation.rules import curate
from curation.store import ConflictLog, DatasetStore, WriteResult, with_retries
from services import sample_data

from .test_dataset_store import NOW, real_records

ROUNDS = 8


def _hashes(store: DatasetStore) -> Counter[tuple[str, str]]:
    """(kind, content hash) -> how many rows of the tables hold it."""
    held: Counter[tuple[str, str]] = Counter()
    for kind in store.latest_versions():
        held.update((kind, h) for h in store.read(kind).column("content_hash").to_pylist())
    return held


def _write(store: DatasetStore, rows: list[CuratedRow], conflicts: ConflictLog) -> WriteResult:
    # attempts=1: a conflict that used up an attempt, as any other failure does, would raise here.
    return with_retries(
        lambda: store.write(rows, now=NOW, conflicts=conflicts),
        "dataset write",
        attempts=1,
        conflicts=conflicts,
    )


@pytest.fixture
def rows(exchanges: list[sample_data.Exchange]) -> list[CuratedRow]:
    """Curated rows (golden, preference, sft) of real HH-RLHF and OASST1 traffic."""
    return curate(real_records(exchanges)).rows


def test_two_writers_racing_for_many_rounds_write_every_row_once_and_replays_insert_nothing(
    tmp_path: Path, rows: list[CuratedRow]
) -> None:
    root = tmp_path / "datasets"
    # Each round both writers get the round's shared rows (as a redelivered batch) and rows of their own.
    chunks = [rows[n::ROUNDS] for n in range(ROUNDS)]
    batches: list[list[list[CuratedRow]]] = [[], []]
    for chunk in chunks:
        third = len(chunk) // 3
        shared, only_a, only_b = chunk[:third], chunk[third : 2 * third], chunk[2 * third :]
        batches[0].append(shared + only_a)
        batches[1].append(only_b + shared)
    start = threading.Barrier(2)
    conflicts = [ConflictLog("dataset write"), ConflictLog("dataset write")]
    inserted = [0, 0]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        own = DatasetStore(root)  # a worker of its own: its own open tables
        try:
            for batch in batches[n]:
                start.wait(timeout=30)
                inserted[n] += sum(_write(own, batch, conflicts[n]).inserted.values())
        except BaseException as exc:  # handed to the test thread, which fails with it
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sum(log.total for log in conflicts) > 0  # the writers did race for commits (shared rows conflict)
    assert not any(thread.is_alive() for thread in threads)

    store = DatasetStore(root)
    held = _hashes(store)
    assert held == Counter({(row.kind, row.content_hash): 1 for row in rows})  # every row, exactly once
    assert sum(inserted) == len(rows)
    for n in (0, 1):  # each writer replays all it wrote: nothing is inserted, nothing is committed
        before = store.latest_versions()
        assert all(sum(_write(store, batch, conflicts[n]).inserted.values()) == 0 for batch in batches[n])
        assert store.latest_versions() == before
    assert _hashes(store) == held


def test_a_lost_race_is_counted_and_written_again_on_the_new_snapshot(
    tmp_path: Path, rows: list[CuratedRow], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    golden = [row for row in rows if row.kind == "golden"][:9]
    first, second = golden[:6], golden[3:]  # three rows in both
    root = tmp_path / "datasets"
    winner, loser = DatasetStore(root), DatasetStore(root)
    winner.write(golden[:1], now=NOW)
    loser.latest_versions()  # both have the table open
    real_present = store_module._present
    raced: list[int] = []

    def present_then_race(table: Any, hashes: set[str]) -> set[str]:
        found = real_present(table, hashes)
        if not raced:  # the winner commits between the loser's look-up and its commit
            raced.append(0)  # first: the winner's own write looks up through here too
            raced[0] = winner.write(first, now=NOW).inserted["golden"]
        return found

    monkeypatch.setattr(store_module, "_present", present_then_race)
    counted: list[int] = []
    conflicts = ConflictLog("dataset write", on_conflict=lambda: counted.append(1))
    with caplog.at_level(logging.INFO, logger=store_module.log.name):
        result = _write(loser, second, conflicts)

    assert raced == [5]
    assert result.inserted == {"golden": 3}  # only the rows the winner had not written
    assert (conflicts.total, counted) == (1, [1])
    assert Counter(_hashes(DatasetStore(root)).values()) == Counter({1: 9})
    lines = [r for r in caplog.records if r.name == store_module.log.name]
    assert [r.levelno for r in lines] == [logging.INFO]
    assert "1 commit conflicts" in lines[0].getMessage()


def test_conflicts_are_logged_once_a_minute_with_their_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = iter([0.0, 1.0, 2.0, 61.0])
    monkeypatch.setattr(store_module.time, "monotonic", lambda: next(clock))
    conflicts = ConflictLog("history write")
    with caplog.at_level(logging.INFO, logger=store_module.log.name):
        for _ in range(4):
            conflicts.record()
    messages = [r.getMessage() for r in caplog.records if r.name == store_module.log.name]
    assert len(messages) == 2 and all(r.levelno == logging.INFO for r in caplog.records)
    assert "1 commit conflicts" in messages[0] and "(1 since start)" in messages[0]
    assert "3 commit conflicts" in messages[1] and "(4 since start)" in messages[1]
