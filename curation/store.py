"""Curated rows in Delta Lake: one table per dataset kind, idempotent batched writes, versions and tags.

Layout: ``<root>/<kind>`` for each kind in :data:`~curation.rows.DATASET_KINDS`,
partitioned by ``model`` and ``date`` (the inference date). ``root`` is a local
path or an object-store URI (``s3://``, ``gs://``, ``az://``; credentials through
``storage_options``); nothing else changes.

Crash safety. A batch is written with one Delta ``MERGE`` per table that inserts
only the rows whose ``content_hash`` is not in the table yet. The rules and the
redaction are deterministic, so a replayed event yields the same row id and the
same content hash: replaying a batch after a crash (the stream layer commits
Kafka offsets only after :meth:`DatasetStore.write` returns) inserts nothing
twice, and a Delta commit is atomic, so nothing is half-written. Merging on the
content hash rather than the row id also de-duplicates identical content
that arrives in different batches; an equality join keeps the merge a hash
join (an ``OR`` of both keys made it ten times slower).

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
    ) -> WriteResult:
        """Merge a batch into its tables; replaying the same batch inserts nothing.

        Rows older than the retention are dropped first. ``commit_metadata``
        (e.g. the Kafka offsets the batch ends at) is stored in each Delta commit.
        Returns the table versions after the write.
        """
        from deltalake import CommitProperties

        now = now or datetime.now(UTC)
        cutoff = self.cutoff(now)
        fresh = [row for row in rows if cutoff is None or row.event_time >= cutoff]
        versions: dict[DatasetKind, int] = {}
        inserted: dict[DatasetKind, int] = {}
        metadata = {"loopwatch.rows": str(len(fresh)), **(commit_metadata or {})}
        for kind in DATASET_KINDS:
            batch = _unique([row for row in fresh if row.kind == kind])
            if not batch:
                continue
            table = self._writable(kind)
            metrics = (
                table.merge(
                    to_arrow(batch, now),
                    predicate="t.content_hash = s.content_hash",
                    source_alias="s",
                    target_alias="t",
                    commit_properties=CommitProperties(custom_metadata=metadata),
                )
                .when_not_matched_insert_all()
                .execute()
            )
            inserted[kind] = int(metrics["num_target_rows_inserted"])
            versions[kind] = table.version()
        return WriteResult(versions, inserted, expired=len(rows) - len(fresh))

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


def with_retries(write: Callable[[], T], what: str, attempts: int = 10) -> T:
    """Run a Delta write, again after a failure (most often a commit conflicting with another worker's).

    Runs in the stream runtime's thread, so the backoff blocks no event loop. The
    pause doubles from 0.4 s up to 5 s, each drawn between half and all of it, so
    two workers that conflicted do not retry in step (about 30 s in all). Each
    retry logs one line; the last failure is raised, and the worker's restart
    replays the batch.
    """
    for attempt in range(1, attempts + 1):
        try:
            return write()
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


def _unique(rows: Sequence[CuratedRow]) -> list[CuratedRow]:
    # MERGE inserts every unmatched source row, so copies inside one batch must go first.
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row.content_hash not in seen:
            seen.add(row.content_hash)
            unique.append(row)
    return unique
