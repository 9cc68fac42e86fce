"""Curated rows in Delta Lake: one table per dataset kind, idempotent batched writes, versions and tags.

Layout: ``<root>/<kind>`` for each kind in :data:`~curation.rows.DATASET_KINDS`,
partitioned by ``model`` and ``date`` (the inference date). ``root`` is a local
path or an object-store URI (``s3://``, ``gs://``, ``az://``; credentials through
``storage_options``); nothing else changes.

Crash safety. A batch inserts only the rows whose ``content_hash`` is not in
the table yet: the hashes are looked up in the table's snapshot, and the new
rows are appended in one commit. The rules and the redaction are
deterministic, so a replayed event yields the same row id and the same
content hash: replaying a batch after a crash (the stream layer commits Kafka
offsets only after :meth:`DatasetStore.write` returns) inserts nothing twice,
and a Delta commit is atomic, so nothing is half-written. Keying on the
content hash rather than the row id also de-duplicates identical content
that arrives in different batches.

Several writers. Workers that share the root append at once. Each commit
names the hash buckets of its rows (the first :data:`BUCKET_CHARS` hex digits
of each ``content_hash``) as Delta app transactions, and Delta fails a commit
whose app ids a concurrent commit also wrote: two writers that may insert the
same row always conflict, and the loser looks its rows up again in the new
snapshot (:func:`retry_conflicts`). Commits with no bucket in common, nearly all
of them, are rebased by delta-rs without an error. A ``MERGE`` on the content
hash, as earlier versions wrote, reads the whole table, so any two concurrent
writes conflicted.

Tags. ``snapshot`` records ``loopwatch.tag.<TAG> = <version>`` as a Delta table
property (a metadata-only commit, so it travels with the table to any object
store); :meth:`DatasetStore.vacuum` keeps the files of every tagged version.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from curation.errors import DatasetError
from curation.rows import DATASET_KINDS, CuratedRow, DatasetKind

log = logging.getLogger("loopwatch.curation")
T = TypeVar("T")

TAG_PREFIX = "loopwatch.tag."
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PARTITION_BY = ["model", "date"]
#: Hex digits of a content hash that name its bucket: 4096 buckets, so two
#: concurrent batches of 20 new rows share one about one time in ten.
BUCKET_CHARS = 3

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_SOURCE = pa.struct(
    [
        ("role", pa.string()),
        ("event_id", pa.string()),
        ("request_id", pa.string()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)
_TOXICITY = pa.struct(
    [
        ("request_id", pa.string()),
        ("detector_id", pa.string()),
        ("target", pa.string()),
        ("label", pa.string()),
        ("score", pa.float64()),
    ]
)
_REDACTION = pa.struct([("kind", pa.string()), ("count", pa.int64())])

#: The columns of every dataset table (one schema for all kinds keeps readers simple).
SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("rejected_model_version", pa.string()),
        pa.field("date", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("written_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(_MESSAGE)),
        pa.field("response", pa.string()),
        pa.field("chosen", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("feedback_event_ids", pa.list_(pa.string())),
        pa.field("sources", pa.list_(_SOURCE)),
        pa.field("toxicity", pa.list_(_TOXICITY)),
        pa.field("user_hashes", pa.list_(pa.string())),
        pa.field("redactions", pa.list_(_REDACTION)),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one :meth:`DatasetStore.write` did, per table."""

    versions: dict[DatasetKind, int]
    inserted: dict[DatasetKind, int]
    expired: int = 0  # rows older than the retention, not written


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A pinned table version: what a retrain request names."""

    table: DatasetKind
    version: int
    tag: str


@dataclass(frozen=True, slots=True)
class ExpireResult:
    """Rows deleted for being older than the retention, per table, and the new versions."""

    deleted: dict[DatasetKind, int] = field(default_factory=dict)
    versions: dict[DatasetKind, int] = field(default_factory=dict)


def table_kind(name: str) -> DatasetKind:
    """The dataset kind a table name stands for, or a clear error."""
    for kind in DATASET_KINDS:
        if name == kind:
            return kind
    raise DatasetError(f"unknown dataset table {name!r}; the tables are {', '.join(DATASET_KINDS)}")


def to_record(row: CuratedRow, written_at: datetime) -> dict[str, Any]:
    """A curated row as one Arrow-ready record of :data:`SCHEMA`."""
    record = row.model_dump()
    record["date"] = row.event_time.astimezone(UTC).date().isoformat()
    record["written_at"] = written_at
    record["redactions"] = [{"kind": k, "count": n} for k, n in row.redactions.items()]
    return record


def to_arrow(rows: Sequence[CuratedRow], written_at: datetime) -> pa.Table:
    """Rows as an Arrow table of :data:`SCHEMA`."""
    return pa.Table.from_pylist([to_record(row, written_at) for row in rows], schema=SCHEMA)


class DeltaRoot:
    """Delta tables under one root, each opened once for writing and reused across batches."""

    def __init__(
        self,
        root: str | Path,
        *,
        retention_days: int | None = None,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        self.root = str(root).rstrip("/")
        self.retention_days = retention_days
        self.storage_options = dict(storage_options) if storage_options else None
        self._writers: dict[str, Any] = {}  # open tables, reused across batches

    def uri(self, table: str) -> str:
        """Where ``table`` lives."""
        return f"{self.root}/{table}"

    def exists(self, table: str) -> bool:
        """True when ``table`` has been created."""
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(self.uri(table), storage_options=self.storage_options))

    def _writable(self, table: str) -> Any:
        """The table to write, created on first use; later writes read only the new log entries."""
        opened = self._writers.get(table)
        if opened is None:
            opened = self._writers[table] = self._create(table)
        else:
            opened.update_incremental()  # another worker may have committed since our last write
        return opened

    def _create(self, table: str) -> Any:
        raise NotImplementedError


class DatasetStore(DeltaRoot):
    """The dataset tables under one root; what the stream layer and the CLI use.

    >>> import tempfile
    >>> store = DatasetStore(tempfile.mkdtemp())
    >>> store.latest_versions()
    {}
    """

    def _table(self, kind: DatasetKind, version: int | None = None) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(kind), version=version, storage_options=self.storage_options)
        except TableNotFoundError as exc:
            raise DatasetError(f"dataset table {kind!r} does not exist under {self.root}") from exc
        except Exception as exc:
            # deltalake raises a bare exception for a version that is not in the log.
            if version is not None and "version" in str(exc).lower():
                raise DatasetError(f"dataset table {kind!r} has no version {version}") from exc
            raise

    def _create(self, kind: str) -> Any:
        return create_table(
            self.uri(kind),
            SCHEMA,
            PARTITION_BY,
            f"loopwatch_{kind}",
            f"loopwatch curated dataset: {kind}",
            self.storage_options,
        )

    def cutoff(self, now: datetime) -> datetime | None:
        """Rows whose inference is older than this are expired (None: kept forever)."""
        return None if self.retention_days is None else now - timedelta(days=self.retention_days)

    def write(
        self,
        rows: Sequence[CuratedRow],
        *,
        now: datetime | None = None,
        commit_metadata: Mapping[str, str] | None = None,
        conflicts: ConflictLog | None = None,
    ) -> WriteResult:
        """Insert a batch's new rows into their tables; replaying the same batch inserts nothing.

        Rows older than the retention are dropped first. ``commit_metadata``
        (e.g. the Kafka offsets the batch ends at) is stored in each Delta commit.
        A commit that lost a race with another writer's is made again on the
        new snapshot, as often as it takes, and counted in ``conflicts``.
        Returns the table versions after the write.
        """
        now = now or datetime.now(UTC)
        cutoff = self.cutoff(now)
        fresh = [row for row in rows if cutoff is None or row.event_time >= cutoff]
        conflicts = conflicts or ConflictLog("dataset write")
        versions: dict[DatasetKind, int] = {}
        inserted: dict[DatasetKind, int] = {}
        metadata = {"loopwatch.rows": str(len(fresh)), **(commit_metadata or {})}
        for kind in DATASET_KINDS:
            batch = _unique([row for row in fresh if row.kind == kind])
            if batch:
                insert = partial(self._insert, kind, batch, now, metadata)
                inserted[kind], versions[kind] = retry_conflicts(insert, conflicts)
        return WriteResult(versions, inserted, expired=len(rows) - len(fresh))

    def _insert(
        self, kind: DatasetKind, batch: list[CuratedRow], now: datetime, metadata: Mapping[str, str]
    ) -> tuple[int, int]:
        """Append the rows the table's snapshot lacks, in one commit: (rows inserted, table version)."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        table = self._writable(kind)
        present = _present(table, {row.content_hash for row in batch})
        new = [row for row in batch if row.content_hash not in present]
        if new:
            stamp = int(now.timestamp() * 1000)
            buckets = sorted({_bucket(kind, row.content_hash) for row in new})
            write_deltalake(
                table,
                to_arrow(new, now),
                mode="append",
                commit_properties=CommitProperties(
                    custom_metadata=dict(metadata),
                    app_transactions=[Transaction(bucket, stamp) for bucket in buckets],
                ),
            )
        return len(new), int(table.version())

    def latest_versions(self) -> dict[DatasetKind, int]:
        """The current version of every table that exists."""
        return {kind: self._table(kind).version() for kind in DATASET_KINDS if self.exists(kind)}

    def training_ref(self) -> dict[str, str | int] | None:
        """The table and version a retrain requested now should train on (None: no data yet).

        Corrections (``sft``) first, then ``preference`` pairs, then ``golden``
        examples: the first table that exists. The version pins the rows, so
        the training is reproducible however much is appended later.
        """
        versions = self.latest_versions()
        for kind in ("sft", "preference", "golden"):
            if kind in versions:
                return {"table": kind, "uri": self.uri(kind), "version": versions[kind]}
        return None

    def resolve(self, kind: DatasetKind, version: int | None = None, tag: str | None = None) -> int:
        """A version number from an explicit version, a tag, or the latest."""
        if version is not None and tag is not None:
            raise DatasetError("give a version or a tag, not both")
        if tag is not None:
            tags = self.tags(kind)
            if tag not in tags:
                raise DatasetError(f"table {kind!r} has no tag {tag!r}; its tags: {sorted(tags) or 'none'}")
            return tags[tag]
        latest = int(self._table(kind).version())
        if version is not None and not 0 <= version <= latest:
            raise DatasetError(f"dataset table {kind!r} has no version {version} (latest is {latest})")
        return latest if version is None else version

    def read(self, kind: DatasetKind, version: int | None = None) -> pa.Table:
        """The rows of a table as they were at ``version`` (latest by default)."""
        return self._table(kind, version).to_pyarrow_table()

    def scan(self, kind: DatasetKind, version: int | None = None) -> Any:
        """A pyarrow dataset over a table version, for streaming large tables in batches."""
        return self._table(kind, version).to_pyarrow_dataset()

    def history(self, kind: DatasetKind, limit: int | None = None) -> list[dict[str, Any]]:
        """The Delta commit log of a table, newest first (operations, metrics, commit metadata)."""
        return list(self._table(kind).history(limit))

    def tags(self, kind: DatasetKind) -> dict[str, int]:
        """Tag -> version, from the table properties."""
        configuration = self._table(kind).metadata().configuration
        return {
            key.removeprefix(TAG_PREFIX): int(value)
            for key, value in configuration.items()
            if key.startswith(TAG_PREFIX) and value is not None
        }

    def snapshot(self, kind: DatasetKind, tag: str, version: int | None = None) -> Snapshot:
        """Pin ``version`` (latest by default) under ``tag``; retagging a tag to a new version is refused."""
        if not _TAG.match(tag):
            raise DatasetError(f"tag {tag!r}: use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit")
        pinned = self.resolve(kind, version)
        existing = self.tags(kind).get(tag)
        if existing is not None and existing != pinned:
            raise DatasetError(f"tag {tag!r} already pins version {existing} of {kind!r}")
        if existing is None:
            self._table(kind).alter.set_table_properties(
                {TAG_PREFIX + tag: str(pinned)}, raise_if_not_exists=False
            )
        return Snapshot(kind, pinned, tag)

    def expire(self, now: datetime | None = None) -> ExpireResult:
        """Delete rows older than the retention (a new version; tagged versions still read them)."""
        cutoff = self.cutoff(now or datetime.now(UTC))
        if cutoff is None:
            return ExpireResult()
        deleted: dict[DatasetKind, int] = {}
        versions: dict[DatasetKind, int] = {}
        literal = cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for kind in DATASET_KINDS:
            if not self.exists(kind):
                continue
            table = self._table(kind)
            metrics = table.delete(f"event_time < '{literal}'")
            deleted[kind] = int(metrics.get("num_deleted_rows", 0))
            versions[kind] = table.version()
        return ExpireResult(deleted, versions)

    def vacuum(self, retention_hours: int = 168, *, dry_run: bool = False) -> dict[DatasetKind, list[str]]:
        """Delete data files no version newer than ``retention_hours`` needs, keeping tagged versions."""
        removed: dict[DatasetKind, list[str]] = {}
        for kind in DATASET_KINDS:
            if self.exists(kind):
                table = self._table(kind)
                removed[kind] = list(
                    table.vacuum(
                        retention_hours=retention_hours,
                        dry_run=dry_run,
                        enforce_retention_duration=False,
                        keep_versions=sorted(set(self.tags(kind).values())),
                    )
                )
        return removed


def create_table(
    uri: str,
    schema: pa.Schema,
    partition_by: list[str],
    name: str,
    description: str,
    storage_options: Mapping[str, str] | None,
) -> Any:
    """The Delta table at ``uri``, created empty when it does not exist yet (another writer may race us)."""
    from deltalake import DeltaTable

    return DeltaTable.create(
        uri,
        schema,
        mode="ignore",
        partition_by=partition_by,
        name=name,
        description=description,
        storage_options=dict(storage_options) if storage_options else None,
    )


class ConflictLog:
    """Counts the commits that lost a race with another writer; one INFO line a minute says how many.

    A conflict is expected when several workers share a root: it costs a look
    at the new snapshot and a retry, so it is counted (``on_conflict``, e.g. a
    metric) rather than warned about each time.
    """

    def __init__(
        self, what: str, on_conflict: Callable[[], None] | None = None, every_seconds: float = 60.0
    ) -> None:
        self.what = what
        self.on_conflict = on_conflict
        self.every_seconds = every_seconds
        self.total = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def record(self) -> None:
        """Count one conflict; log the count when the last line is a minute old."""
        self.total += 1
        self._unlogged += 1
        if self.on_conflict is not None:
            self.on_conflict()
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self.every_seconds:
            log.info(
                "%s: %d commit conflicts with other writers of the same tables since the last line"
                " (%d since start), each retried on a fresh snapshot",
                self.what,
                self._unlogged,
                self.total,
            )
            self._unlogged = 0
            self._logged_at = now


def is_conflict(exc: BaseException) -> bool:
    """True for a Delta commit that lost a race with a concurrent commit (retrying it is always safe)."""
    from deltalake.exceptions import CommitFailedError

    return isinstance(exc, CommitFailedError)


def retry_conflicts(write: Callable[[], T], conflicts: ConflictLog) -> T:
    """Run a Delta write again, without end, each time its commit lost a race with another writer's.

    ``write`` must re-read the table (its snapshot is stale after a conflict).
    It never gives up: each conflict means another writer committed, so the
    writers as a whole progress. The pause is 0.05 s doubling up to 2 s while
    conflicts follow one another, each drawn between half and all of it, so
    the writers do not retry in step. Other failures are raised.
    """
    in_a_row = 0
    while True:
        try:
            return write()
        except Exception as exc:
            if not is_conflict(exc):
                raise
            conflicts.record()
            in_a_row += 1
            time.sleep(min(0.025 * 2**in_a_row, 2.0) * random.uniform(0.5, 1.0))


def with_retries(
    write: Callable[[], T], what: str, attempts: int = 10, conflicts: ConflictLog | None = None
) -> T:
    """Run a Delta write until it commits: conflicts retried without end, other failures ``attempts`` times.

    Runs in the stream runtime's thread, so a pause blocks no event loop.
    Conflicts are retried by :func:`retry_conflicts` and only counted
    (``conflicts``); they use up no attempt. Any other failure pauses 0.4 s
    doubling up to 5 s (about 30 s in all), logs one line per retry, and the
    last one is raised: the worker's restart replays the batch.
    """
    conflicts = conflicts or ConflictLog(what)
    for attempt in range(1, attempts + 1):
        try:
            return retry_conflicts(write, conflicts)
        except Exception as exc:
            if attempt == attempts:
                raise
            pause = min(0.2 * 2**attempt, 5.0) * random.uniform(0.5, 1.0)
            why = " ".join(str(exc).split())[:300]
            log.warning(
                "%s failed (attempt %d of %d: %s: %s); retrying in %.1fs",
                what,
                attempt,
                attempts,
                type(exc).__name__,
                why,
                pause,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")


def _bucket(kind: str, content_hash: str) -> str:
    """The app transaction id of a row's hash bucket: writers of one bucket conflict."""
    return f"loopwatch.dataset.{kind}.{content_hash[:BUCKET_CHARS]}"


def _present(table: Any, hashes: set[str]) -> set[str]:
    """Which of ``hashes`` the table's snapshot already holds (a scan of its content_hash column)."""
    import pyarrow.dataset as ds

    wanted = pa.array(sorted(hashes), pa.string())  # typed: an empty set is no null-typed array
    found = table.to_pyarrow_dataset().to_table(
        columns=["content_hash"], filter=ds.field("content_hash").isin(wanted)
    )
    return set(found.column("content_hash").to_pylist())


def _unique(rows: Sequence[CuratedRow]) -> list[CuratedRow]:
    # MERGE inserts every unmatched source row, so copies inside one batch must go first.
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row.content_hash not in seen:
            seen.add(row.content_hash)
            unique.append(row)
    return unique
