"""Where join states wait for their partner: on disk (RocksDB) or in RAM, with an on-disk expiry index.

The join table stays a changelog-backed faust table; only its local copy
moves. With ``join_store="rocksdb"`` (the default) it is faust's RocksDB
store (through ``rocksdict``), one database per partition, so a backlog of
millions of pending requests costs disk, not worker RAM: the issue that
motivated this measured 3.1 KB of RAM per entry in the memory store, about
256 GiB for a 24 h TTL at 1,000 requests/s (``bench/join_state_bench.py``).

The expiry sweep finds old entries through an index keyed by
``(partition, first_seen, request_id)`` in a RocksDB database of its own, so
it reads only what expired instead of every state, and keeps nothing per
entry in RAM. The index is not in the changelog: after recovery (or when a
rebalance brings partitions) it is rebuilt from the states' headers.

The local copy is a cache of the changelog: each worker process takes a
fresh directory under ``<data_dir>/joins`` and recovers into it. Reusing an
old one would be faster but unsafe: a state written there just before a
``kill -9`` may never have reached the changelog, and the worker would then
hold an entry that no other worker can recover. Directories left by dead
processes are removed at start (a held ``flock`` marks a live one), and the
write-ahead log is off, since nothing is read back after a crash.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import rocksdict
from faust.stores.rocksdb import RocksDBOptions

from streams.join import stored_first_seen, stored_partition

StoreKind = Literal["rocksdb", "memory"]

#: RocksDB sizes per partition database. faust's defaults (64 MB write
#: buffers, a 2 GiB block cache per database) are for servers with RAM to
#: spare; these keep a worker's join state within a few tens of MB of RAM
#: whatever the backlog.
ROCKSDB_OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "write_buffer_size": 8 << 20,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 << 20,
    "target_file_size_base": 32 << 20,
}

_INDEX = struct.Struct(">Hq")  # partition, first_seen in ms: big-endian, so keys sort by time
#: Index entries the sweep collects at a time, and index entries written per yield while rebuilding.
SWEEP_CHUNK = 10_000
#: Keys read without a state that are remembered until their first write (see JoinStore._missing).
_MAX_MISSING = 100_000


def _no_wal() -> rocksdict.WriteOptions:
    options = rocksdict.WriteOptions()
    # A property at run time; rocksdict's stub calls it a method.
    options.disable_wal = True  # type: ignore[method-assign,assignment]
    return options


class _Options(RocksDBOptions):
    """faust's RocksDB options, with the write-ahead log off (the changelog is the durable copy)."""

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        """Open one partition's database, writing without a log."""
        db = super().open(path, read_only=read_only)
        db.set_write_options(_no_wal())
        return db


def claim_directory(root: Path) -> tuple[Path, int]:
    """A new directory under ``root`` for this process, and the descriptor of its held lock.

    Directories whose lock nobody holds belong to processes that are gone and are removed.
    """
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        try:
            fd = os.open(old / "lock", os.O_RDWR)  # no O_CREAT: a directory just made has none yet
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live worker holds it
        finally:
            os.close(fd)
        shutil.rmtree(old, ignore_errors=True)
    mine = Path(tempfile.mkdtemp(dir=root, prefix="worker-"))
    fd = os.open(mine / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return mine, fd


def table_options(kind: StoreKind, directory: Path) -> dict[str, Any]:
    """Keyword arguments for ``app.Table`` that put the join table in the chosen store."""
    if kind == "memory":
        return {"store": "memory://"}
    # An absolute path in the URL puts the partition databases in this process's directory.
    return {"store": f"rocksdb://{directory / 'joins'}", "options": dict(ROCKSDB_OPTIONS)}


class JoinStore:
    """The join table's local states by partition, and the index of when each was first seen."""

    def __init__(self, table: Any, kind: StoreKind, directory: Path) -> None:
        self.table = table
        self.kind = kind
        self.store = table.data
        if kind == "rocksdb":
            self.store.rocksdb_options = _Options(**ROCKSDB_OPTIONS)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(4 << 20)
        self.index = rocksdict.Rdict(str(directory / "expiry-index"), options=options)
        self.index.set_write_options(_no_wal())
        #: Partitions whose entries are all in the index (cleared by every rebalance).
        self.indexed: set[int] = set()
        #: Entries per partition: counted when a partition is indexed, then kept up to date.
        self.entries: dict[int, int] = {}
        #: Index writes not applied yet: one RocksDB write per SWEEP_CHUNK of them, not one per
        #: state (each write pays RocksDB's per-call cost); applied before the index is read.
        self._index_writes = rocksdict.WriteBatch(raw_mode=True)
        #: Keys that :meth:`get` found without a state: the runtime's :meth:`apply` of their
        #: first write, which follows at once, needs no second read to know they are new.
        self._missing: set[bytes] = set()

    # -- states ------------------------------------------------------------------

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The stored state of ``key``, or None."""
        stored = self._read(partition, key)
        if stored is None:
            if len(self._missing) >= _MAX_MISSING:  # reads that no write followed (a failed batch)
                self._missing.clear()
            self._missing.add(key)
        return stored

    def _read(self, partition: int, key: bytes) -> bytes | None:
        if self.kind == "memory":
            return cast(bytes | None, self.store.data.get(key))
        return cast(bytes | None, self.store._db_for_partition(partition).get(key))

    @property
    def changelog(self) -> str:
        """The join table's changelog topic."""
        return cast(str, self.table.changelog_topic.get_topic_name())

    def apply(self, key: bytes, value: bytes | None, partition: int) -> None:
        """A state write from the runtime: keep ``value`` as ``key``'s state, or forget it (None)."""
        if value is not None and key in self._missing:
            self._missing.discard(key)
            self.put(partition, key, value, new=True)
            return
        old = self._read(partition, key)
        if value is not None:
            self.put(partition, key, value, new=old is None)
        elif old is not None:
            self.delete(partition, key, old)

    def put(self, partition: int, key: bytes, stored: bytes, *, new: bool) -> None:
        """Keep a state (its changelog record is the caller's) and index when it was first seen.

        ``new`` says that ``key`` had no state before (it counts one more entry).
        """
        if self.kind == "memory":
            self.store.data[key] = stored
        else:
            self.store._db_for_partition(partition)[key] = stored
        if new:  # an update keeps its first_seen, and so its index entry
            self.entries[partition] = self.entries.get(partition, 0) + 1
            self._index_writes.put(_index_key(partition, stored_first_seen(stored), key), b"")
            if len(self._index_writes) >= SWEEP_CHUNK:
                self._write_index()

    def delete(self, partition: int, key: bytes, stored: bytes) -> None:
        """Forget a state (after its tombstone reached the changelog) and its index entry."""
        self.entries[partition] = max(self.entries.get(partition, 0) - 1, 0)
        if self.kind == "memory":
            self.store.data.pop(key, None)
        else:
            self.store._db_for_partition(partition).delete(key)
        self._index_writes.delete(_index_key(partition, stored_first_seen(stored), key))
        if len(self._index_writes) >= SWEEP_CHUNK:
            self._write_index()

    def _write_index(self) -> None:
        """Apply the index writes queued so far (a written batch is spent: a new one takes the next)."""
        if len(self._index_writes):
            self.index.write(self._index_writes)
            self._index_writes = rocksdict.WriteBatch(raw_mode=True)

    def count(self, partitions: Iterable[int]) -> int:
        """Entries of ``partitions`` (RocksDB has no exact count short of a scan, so they are counted)."""
        return sum(self.entries.get(partition, 0) for partition in partitions)

    # -- expiry ------------------------------------------------------------------

    def on_rebalance(self) -> None:
        """Partitions may have moved: index them again once they are recovered."""
        self.indexed.clear()
        self._missing.clear()  # recovery may have brought states for them

    async def reindex(self, partitions: Iterable[int]) -> int:
        """Index the entries of ``partitions`` not indexed yet (recovered from the changelog); how many."""
        added = 0
        self._write_index()  # a queued delete must not remove what is indexed now
        for partition in sorted(set(partitions) - self.indexed):
            n = 0
            for n, (key, stored) in enumerate(self._items(partition), 1):
                self.index[_index_key(partition, stored_first_seen(stored), key)] = b""
                if n % SWEEP_CHUNK == 0:
                    await asyncio.sleep(0)  # a large partition must not hold up the stream
            self.entries[partition] = n
            self.indexed.add(partition)
            added += n
        return added

    def expired(self, partitions: Iterable[int], before: float) -> Iterator[tuple[int, bytes, bytes]]:
        """``(partition, key, stored)`` of states first seen before ``before``, oldest first per partition.

        Index entries whose state is gone (swept, or recreated later) are dropped on the way.
        """
        self._write_index()
        for partition in sorted(partitions):
            start = _INDEX.pack(partition, 0)
            end = _INDEX.pack(partition, _ms(before))
            stale = []
            try:
                for index_key in cast(Iterator[bytes], self.index.keys(from_key=start)):
                    if index_key[:2] != start[:2] or index_key[: _INDEX.size] >= end:
                        break
                    key = index_key[_INDEX.size :]
                    stored = self._read(partition, key)
                    if stored is None or _index_key(partition, stored_first_seen(stored), key) != index_key:
                        stale.append(index_key)
                        continue
                    yield partition, key, stored
            finally:
                for index_key in stale:
                    self.index.delete(index_key)

    def _items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        if self.kind == "memory":
            # One dict for every partition: the partition is in each state's header.
            for key, stored in list(self.store.data.items()):
                if stored and stored_partition(stored) == partition:
                    yield key, stored
            return
        offset_key = self.store.offset_key
        for key, stored in self.store._db_for_partition(partition).items():
            if key != offset_key:
                yield key, stored


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)


def _index_key(partition: int, first_seen: float, key: bytes) -> bytes:
    return _INDEX.pack(partition, _ms(first_seen)) + key
