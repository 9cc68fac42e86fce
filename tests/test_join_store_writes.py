"""The join store's cheaper writes (issue 16): no second read for a new key, index writes in batches.

A state the handler just read as missing is written as new without reading
it again, but a delete always reads; queued index writes, deletes included,
are applied before anything reads the index.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams import join
from streams.join_store import SWEEP_CHUNK

from .test_join_store import _state, _stores


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_a_key_read_as_missing_is_written_new_and_found_by_the_sweep(tmp_path: Path, kind: str) -> None:
    store = next(s for s in _stores(tmp_path) if s.kind == kind)
    stored = join.encode(_state(0, 100.0))
    assert store.get(0, b"k") is None
    store.apply(b"k", stored, 0)
    store.apply(b"k", join.encode(_state(0, 100.0, "changed")), 0)  # an update: read, not counted again
    assert store.count([0]) == 1
    assert [k for _, k, _ in store.expired([0], before=101.0)] == [b"k"]


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_a_delete_reads_the_store_even_after_a_read_that_found_nothing(tmp_path: Path, kind: str) -> None:
    store = next(s for s in _stores(tmp_path) if s.kind == kind)
    assert store.get(1, b"r") is None
    stored = join.encode(_state(1, 5.0))
    store.put(1, b"r", stored, new=True)  # as if recovered meanwhile
    store.apply(b"r", None, 1)
    assert store.get(1, b"r") is None
    assert store.count([1]) == 0
    assert list(store.expired([1], before=1e9)) == []


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_queued_index_writes_and_deletes_apply_in_order_before_the_index_is_read(
    tmp_path: Path, kind: str
) -> None:
    store = next(s for s in _stores(tmp_path) if s.kind == kind)
    count = SWEEP_CHUNK + 5  # more than one batch of index writes
    for i in range(count):
        store.put(i % 2, f"k{i}".encode(), join.encode(_state(i % 2, float(i))), new=True)
    gone = join.encode(_state(0, 0.0))
    store.delete(0, b"k0", gone)
    expired = {k for _, k, _ in store.expired([0, 1], before=1e9)}
    assert len(expired) == count - 1 and b"k0" not in expired
    store.on_rebalance()
    assert asyncio.run(store.reindex([0, 1])) == count - 1
