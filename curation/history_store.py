"""Writes the monitoring history (:mod:`curation.history`) to Delta: batched, idempotent, compacted, expired.

``root`` is a local path or an object-store URI (``s3://``, ``gs://``, ``az://``;
credentials through ``storage_options``), as for the dataset tables.

Idempotent under redelivery. Every table but ``deadletters`` is written with
one Delta ``MERGE`` on its unique key (:data:`~curation.history.UNIQUE_BY`)
that inserts only rows not there yet (a table an older worker created first
gains the columns added since); a ``windows`` row also takes what a later
revision of its WindowClosed says, and the earlier detection time (before
its WindowClosed, the larger counts its detections saw), so slow detectors
and late corrections complete their window's row. A batch replayed after a crash (the
stream acks its offsets only after :meth:`HistoryStore.write` returns) adds
nothing. Workers that share the root merge into the same tables: a merge
that lost the race for a commit is merged again on the new snapshot, which
the unique keys make safe. Dead letters are *counted*, and a replayed batch may be cut at other
offsets than the first time, so a merge on the row alone could count some
twice: each commit to ``deadletters`` also records, per dead-letter topic
partition, the last offset it counted (a Delta transaction id, written
atomically with the rows, as kafka-delta-ingest does), and the next write skips
what is at or below it.

Maintenance (:meth:`HistoryStore.maintain`): rows of days older than the
retention are deleted, small files are compacted (``optimize``), and files no
version of the last ``vacuum_hours`` needs are removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import pyarrow as pa

from curation.history import (
    CLOSED_COLUMNS,
    PARTITION_BY,
    SCHEMAS,
    UNIQUE_BY,
    Letter,
    deadletter_rows,
    merge_windows,
)
from curation.store import ConflictLog, DeltaRoot, create_table, retry_conflicts

#: Tables whose rows the stream derives from events one by one (dead letters are counted apart).
EVENT_TABLES = ("windows", "detections", "alerts", "actions")

# Columns that may be null in a unique key: compared null-safely.
_NULLABLE_KEYS = {"model", "source_topic", "kind"}


@dataclass
class HistoryBatch:
    """The history rows of one unit of stream work, per table, and its dead letters by topic."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in EVENT_TABLES})
    #: Dead-letter topic -> the dead letters read from it.
    letters: dict[str, list[Letter]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(map(len, self.rows.values())) + sum(map(len, self.letters.values()))


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one :meth:`HistoryStore.maintain` did, per table."""

    deleted: dict[str, int]
    compacted: dict[str, int]  # files removed by compaction (replaced by fewer, larger ones)
    vacuumed: dict[str, int]


class HistoryStore(DeltaRoot):
    """The history tables under one root.

    >>> import tempfile
    >>> HistoryStore(tempfile.mkdtemp()).exists("detections")
    False
    """

    def read(self, table: str) -> pa.Table:
        """Every row of ``table`` now."""
        from deltalake import DeltaTable

        return DeltaTable(self.uri(table), storage_options=self.storage_options).to_pyarrow_table()

    def _create(self, table: str) -> Any:
        delta = create_table(
            self.uri(table),
            SCHEMAS[table],
            PARTITION_BY[table],
            f"loopwatch_history_{table}",
            f"loopwatch monitoring history: {table}",
            self.storage_options,
        )
        # A table written by an older worker lacks the columns added since: add them (null in its old rows).
        have = set(delta.schema().to_arrow().names)
        missing = [column for column in SCHEMAS[table] if column.name not in have]
        if missing:
            from deltalake import Schema

            delta.alter.add_columns(list(Schema.from_arrow(pa.schema(missing)).fields))
            delta.update_incremental()
        return delta

    def first_day(self, now: datetime) -> date | None:
        """Rows of days before this are expired (None: kept forever)."""
        if self.retention_days is None:
            return None
        return (now.astimezone(UTC) - timedelta(days=self.retention_days)).date()

    def write(
        self,
        batch: HistoryBatch,
        *,
        now: datetime | None = None,
        commit_metadata: Mapping[str, str] | None = None,
        conflicts: ConflictLog | None = None,
    ) -> dict[str, int]:
        """Merge a batch into its tables (rows past the retention dropped); rows inserted per table.

        A merge that lost a race with another writer's commit is merged again
        on the new snapshot, as often as it takes, and counted in ``conflicts``.
        """
        first = self.first_day(now or datetime.now(UTC))
        metadata = dict(commit_metadata or {})
        conflicts = conflicts or ConflictLog("history write")
        inserted: dict[str, int] = {}
        for table, rows in batch.rows.items():
            fresh = [row for row in rows if first is None or row["day"] >= first]
            if fresh:
                inserted[table] = retry_conflicts(partial(self._merge, table, fresh, metadata), conflicts)
        for topic, letters in batch.letters.items():
            count_letters = partial(self._count_letters, topic, letters, first, metadata)
            count = retry_conflicts(count_letters, conflicts)
            if count:
                inserted["deadletters"] = inserted.get("deadletters", 0) + count
        return inserted

    def _merge(
        self, table: str, rows: list[dict[str, Any]], metadata: Mapping[str, str], transactions: Any = None
    ) -> int:
        from deltalake import CommitProperties

        rows = merge_windows(rows) if table == "windows" else _unique(table, rows)
        delta = self._writable(table)
        merger = delta.merge(
            pa.Table.from_pylist(rows, schema=SCHEMAS[table]),
            predicate=" AND ".join(_equal(column) for column in UNIQUE_BY[table]),
            source_alias="s",
            target_alias="t",
            commit_properties=CommitProperties(custom_metadata=dict(metadata), app_transactions=transactions),
        )
        if table == "windows":
            merger = merger.when_matched_update(updates=_CLOSED_UPDATES, predicate=_CLOSED_NEWER)
            merger = merger.when_matched_update(updates=_WINDOW_UPDATES, predicate=_WINDOW_CHANGED)
        metrics = merger.when_not_matched_insert_all().execute()
        return int(metrics["num_target_rows_inserted"])

    def _count_letters(
        self, topic: str, letters: Sequence[Letter], first: date | None, metadata: Mapping[str, str]
    ) -> int:
        """Count the dead letters not counted yet (by offset per partition), offsets in the same commit."""
        from deltalake import Transaction

        delta = self._writable("deadletters")
        done = {p: delta.transaction_version(_app_id(topic, p)) for p in {i.partition for i in letters}}
        new = [i for i in letters if done[i.partition] is None or i.offset > done[i.partition]]
        if not new:
            return 0
        last: dict[int, int] = {}
        for item in new:
            last[item.partition] = max(last.get(item.partition, -1), item.offset)
        transactions = [Transaction(_app_id(topic, p), offset) for p, offset in sorted(last.items())]
        rows = [row for row in deadletter_rows(new) if first is None or row["day"] >= first]
        if not rows:
            return 0  # all past the retention: a replay skips them again, as cheaply
        self._merge("deadletters", rows, metadata, transactions)
        return len(new)

    def maintain(self, now: datetime | None = None, *, vacuum_hours: float = 24) -> Maintenance:
        """Delete days past the retention, compact small files, vacuum files older than ``vacuum_hours``."""
        first = self.first_day(now or datetime.now(UTC))
        deleted: dict[str, int] = {}
        compacted: dict[str, int] = {}
        vacuumed: dict[str, int] = {}
        for table in SCHEMAS:
            if not self.exists(table):
                continue
            delta = self._writable(table)
            if first is not None:
                metrics = delta.delete(f"day < '{first.isoformat()}'")
                deleted[table] = int(metrics.get("num_deleted_rows", 0))
            compacted[table] = int(delta.optimize.compact().get("numFilesRemoved", 0))
            removed = delta.vacuum(
                retention_hours=int(vacuum_hours),
                dry_run=False,
                enforce_retention_duration=False,
            )
            vacuumed[table] = len(removed)
        return Maintenance(deleted, compacted, vacuumed)


def _app_id(topic: str, partition: int) -> str:
    return f"loopwatch.history.{topic}.{partition}"


def _equal(column: str) -> str:
    if column in _NULLABLE_KEYS:
        return f"(t.{column} IS NOT DISTINCT FROM s.{column})"  # binds looser than AND otherwise
    return f"t.{column} = s.{column}"


def _larger(column: str) -> str:
    bigger = f"coalesce(s.{column}, -1) > coalesce(t.{column}, -1)"
    return f"CASE WHEN {bigger} THEN s.{column} ELSE t.{column} END"


def _unless_closed(expression: str, column: str) -> str:
    # A row its WindowClosed wrote keeps that window's counts: detections only add their time.
    return f"CASE WHEN t.outcome IS NULL THEN {expression} ELSE t.{column} END"


_EARLIER = (
    "CASE WHEN t.first_detected_at IS NULL OR s.first_detected_at < t.first_detected_at"
    " THEN coalesce(s.first_detected_at, t.first_detected_at) ELSE t.first_detected_at END"
)
# What merge_windows does to two rows of one window, as the merge's updates (the first that matches):
# a newer WindowClosed replaces what the row says...
_CLOSED_NEWER = "s.outcome IS NOT NULL AND (t.outcome IS NULL OR s.revision > t.revision)"
_CLOSED_UPDATES = {column: f"s.{column}" for column in CLOSED_COLUMNS} | {"first_detected_at": _EARLIER}
# ...else larger counts (until a WindowClosed came) or an earlier detection complete it.
_WINDOW_UPDATES = {
    "events": _unless_closed(_larger("events"), "events"),
    "feedback_events": _unless_closed(_larger("feedback_events"), "feedback_events"),
    "sample_size": _unless_closed(_larger("sample_size"), "sample_size"),
    "first_detected_at": _EARLIER,
}
_WINDOW_CHANGED = (
    "(t.outcome IS NULL AND (coalesce(s.events, -1) > coalesce(t.events, -1)"
    " OR coalesce(s.feedback_events, -1) > coalesce(t.feedback_events, -1)"
    " OR coalesce(s.sample_size, -1) > coalesce(t.sample_size, -1)))"
    " OR s.first_detected_at < t.first_detected_at"
    " OR (t.first_detected_at IS NULL AND s.first_detected_at IS NOT NULL)"
)


def _unique(table: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # MERGE inserts every unmatched source row, so copies inside one batch must go first.
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for row in rows:
        key = tuple(row[column] for column in UNIQUE_BY[table])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique
