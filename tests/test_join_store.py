"""Join states on disk: the stored form, the expiry index, and per-process store directories."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import rocksdict
from pydantic_core import to_json

from streams import join
from streams.join_store import JoinStore, claim_directory


def _state(partition: int, first_seen: float, text: str = "hello") -> join.JoinState:
    state = join._new_state(partition, first_seen)
    state["inference"] = to_json({"request_id": "r", "response": text * 50}).decode()
    state["inference_source"] = ("llm.inference.v1", partition, 7)
    state["seen"] = ["fb-1"]
    return state


def test_a_stored_state_is_compressed_and_decodes_to_the_same_state() -> None:
    state = _state(3, 1_700_000_000.25)
    stored = join.encode(state)
    assert len(stored) < len(to_json(state)) / 2
    decoded = join.decode(stored)
    assert {**decoded, "inference_source": tuple(decoded["inference_source"] or ())} == state
    assert join.stored_first_seen(stored) == 1_700_000_000.25
    assert join.stored_partition(stored) == 3


def test_states_written_as_plain_json_by_earlier_versions_still_decode() -> None:
    legacy = to_json(_state(1, 50.0))
    assert join.decode(legacy)["first_seen"] == 50.0
    assert join.stored_first_seen(legacy) == 50.0
    assert join.stored_partition(legacy) == 1


class _RocksStore:
    """The parts of faust's RocksDB store that JoinStore uses, over real databases."""

    offset_key = b"__faust\0offset__"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dbs: dict[int, Any] = {}
        self.rocksdb_options: Any = None

    def _db_for_partition(self, partition: int) -> Any:
        if partition not in self._dbs:
            options = rocksdict.Options(raw_mode=True)
            options.create_if_missing(True)
            self._dbs[partition] = rocksdict.Rdict(str(self.path / f"p{partition}"), options=options)
        return self._dbs[partition]


def _stores(tmp_path: Path) -> list[JoinStore]:
    memory = JoinStore(SimpleNamespace(data=SimpleNamespace(data={})), "memory", tmp_path / "m")
    rocks = JoinStore(SimpleNamespace(data=_RocksStore(tmp_path)), "rocksdb", tmp_path / "r")
    return [memory, rocks]


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_the_expiry_index_finds_the_old_states_of_given_partitions(tmp_path: Path, kind: str) -> None:
    store = next(s for s in _stores(tmp_path) if s.kind == kind)
    for i in range(6):
        partition = i % 2
        store.put(partition, f"k{i}".encode(), join.encode(_state(partition, 100.0 + i)), new=True)
    # An update keeps its first_seen: still one index entry.
    store.put(0, b"k0", join.encode(_state(0, 100.0, "changed")), new=False)
    assert store.count([0, 1]) == 6
    expired = list(store.expired([0], before=104.0))
    assert [(p, k) for p, k, _ in expired] == [(0, b"k0"), (0, b"k2")]
    assert join.decode(expired[0][2])["inference"] and b"k4" not in {k for _, k, _ in expired}
    for partition, key, stored in expired:
        store.delete(partition, key, stored)
    assert list(store.expired([0], before=104.0)) == []
    assert store.get(0, b"k0") is None and store.get(0, b"k4") is not None
    assert store.count([0, 1]) == 4


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_states_recovered_without_the_index_are_indexed_and_counted(tmp_path: Path, kind: str) -> None:
    store = next(s for s in _stores(tmp_path) if s.kind == kind)
    for i in range(5):  # as faust's recovery writes them: straight into the store
        stored = join.encode(_state(1, 10.0 + i))
        if kind == "memory":
            store.store.data[f"r{i}".encode()] = stored
        else:
            store.store._db_for_partition(1)[f"r{i}".encode()] = stored
    if kind == "rocksdb":
        store.store._db_for_partition(1)[store.store.offset_key] = b"41"  # faust's own entry, not a state
    assert list(store.expired([1], before=1e9)) == []
    assert asyncio.run(store.reindex([1])) == 5
    assert store.count([1]) == 5
    assert [k for _, k, _ in store.expired([1], before=12.5)] == [b"r0", b"r1", b"r2"]
    assert asyncio.run(store.reindex([1])) == 0  # already indexed until the next rebalance
    store.on_rebalance()
    assert asyncio.run(store.reindex([1])) == 5


def test_a_process_gets_a_fresh_store_directory_and_dead_ones_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "joins"
    first, first_lock = claim_directory(root)
    (first / "data").write_bytes(b"x")
    second, second_lock = claim_directory(root)
    assert first != second and first.exists()  # the first one's lock is held: a live worker
    os.close(first_lock)  # its process died
    third, third_lock = claim_directory(root)
    assert not first.exists() and second.exists() and third.exists()
    with pytest.raises(OSError):
        fd = os.open(third / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    os.close(second_lock)
    os.close(third_lock)
