"""Read the history and dataset tables for the console: cached table handles, only the partitions asked for.

A page names a range of days (and, for one segment, its model); the reader
opens only the data files of those partitions. Table handles are kept open
and brought up to date at most every ``refresh_seconds`` (reading only the
new log entries). Per table version the reader keeps its files by partition
(from the log's add actions, one Arrow table): a page then builds its scan
from a handful of file paths, where deltalake's own dataset costs about 5 ms
per file to build (a filter expression of every file's statistics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pa_fs

from curation.history import SCHEMAS
from schemas.errors import LoopwatchError


class ConsoleError(LoopwatchError):
    """A request the console cannot answer as asked (a bad parameter, a missing table or row)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Files:
    """One version of a table: its data files per day and model, and how to open them."""

    version: int
    #: day -> model (None: not partitioned by model, or a null model) -> file paths.
    by_day: dict[date, dict[str | None, list[str]]]
    by_model: bool
    schema: pa.Schema
    filesystem: pa_fs.FileSystem
    format: ds.ParquetFileFormat
    #: path -> its fragment, made on first read and kept: a fragment keeps the file's footer once read.
    made: dict[str, ds.Fragment] = field(default_factory=dict)


class _Handle:
    """One open Delta table, when it was last brought up to date, and its files at that version."""

    def __init__(self, table: Any, checked: float) -> None:
        self.table = table
        self.checked = checked
        self.files: _Files | None = None


class HistoryReader:
    """The history tables under one root (a path or an object-store URI), read-only."""

    def __init__(
        self,
        root: str,
        *,
        storage_options: Mapping[str, str] | None = None,
        refresh_seconds: float = 2.0,
    ) -> None:
        self.root = str(root).rstrip("/")
        self.storage_options = dict(storage_options) if storage_options else None
        self.refresh_seconds = refresh_seconds
        self._handles: dict[str, _Handle] = {}
        self._lock = threading.Lock()  # pages are served from a thread pool

    def uri(self, name: str) -> str:
        """Where the history table ``name`` lives."""
        return f"{self.root}/{name}"

    def _handle(self, name: str) -> _Handle | None:
        from deltalake import DeltaTable

        now = time.monotonic()
        with self._lock:
            handle = self._handles.get(name)
            if handle is None:
                if not DeltaTable.is_deltatable(self.uri(name), storage_options=self.storage_options):
                    return None  # not written yet: the page shows it empty
                table = DeltaTable(self.uri(name), storage_options=self.storage_options)
                handle = self._handles[name] = _Handle(table, now)
            elif now - handle.checked >= self.refresh_seconds:
                handle.table.update_incremental()  # the history stage may have committed since
                handle.checked = now
            return handle

    def _files(self, name: str) -> _Files | None:
        """The table's files at its current version (listed again only when the version changed)."""
        handle = self._handle(name)
        if handle is None:
            return None
        with self._lock:
            version = handle.table.version()
            if handle.files is None or handle.files.version != version:
                files = self._list(name, handle.table, version)
                if handle.files is not None:  # data files never change: keep those still in the table
                    kept = {p for parts in files.by_day.values() for paths in parts.values() for p in paths}
                    files.made.update((p, f) for p, f in handle.files.made.items() if p in kept)
                handle.files = files
            return handle.files

    def _list(self, name: str, table: Any, version: int) -> _Files:
        from deltalake.fs import DeltaStorageHandler

        actions = pa.table(table.get_add_actions(flatten=True))
        # A log path is a URI-encoded relative path (Delta protocol); the storage handler takes it decoded.
        paths = [unquote(p) for p in actions["path"].to_pylist()]
        days = actions["partition.day"].to_pylist()
        by_model = "partition.model" in actions.column_names
        models = actions["partition.model"].to_pylist() if by_model else [None] * len(paths)
        by_day: dict[date, dict[str | None, list[str]]] = {}
        for path, day, model in zip(paths, days, models, strict=True):
            by_day.setdefault(day, {}).setdefault(model, []).append(path)
        sizes = dict(zip(paths, actions["size_bytes"].to_pylist(), strict=True))
        handler = DeltaStorageHandler(self.uri(name), self.storage_options, sizes)
        return _Files(
            version=version,
            by_day=by_day,
            by_model=by_model,
            schema=pa.schema(table.schema().to_arrow()),
            filesystem=pa_fs.PyFileSystem(handler),
            format=ds.ParquetFileFormat(
                default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True)
            ),
        )

    def day_files(self, name: str, day: date) -> tuple[str, ...]:
        """The data files of ``name`` on ``day``, sorted: they change only when rows of the day are added."""
        files = self._files(name)
        parts = files.by_day.get(day, {}) if files is not None else {}
        return tuple(sorted(p for paths in parts.values() for p in paths))

    def missing(self) -> list[str]:
        """The history tables not (yet) under the root: the history stage writes each on its first batch."""
        return [name for name in SCHEMAS if self._handle(name) is None]

    def days(self, name: str) -> list[date]:
        """The days ``name`` holds rows for, oldest first (from the table's log, no data read)."""
        files = self._files(name)
        return sorted(day for day in files.by_day if day is not None) if files is not None else []

    def latest_day(self, names: Sequence[str] = ("windows", "alerts", "deadletters")) -> date | None:
        """The newest day any of ``names`` holds rows for."""
        newest = [days[-1] for days in (self.days(name) for name in names) if days]
        return max(newest) if newest else None

    def read(
        self,
        name: str,
        days: Sequence[date],
        *,
        model: str | None = None,
        columns: Sequence[str] | None = None,
        match: Mapping[str, str] | None = None,
        models: Collection[str] | None = None,
    ) -> pa.Table:
        """The rows of ``name`` on ``days`` (and of ``model``, or ``models``) whose columns equal ``match``.

        Only the files of those partitions are opened, in one scan.
        """
        schema = SCHEMAS[name]
        wanted = list(columns) if columns is not None else schema.names
        files = self._files(name)
        wanted_models = {model} if model is not None else models
        fragments = _fragments(files, days, wanted_models) if files is not None else []
        if files is None or not fragments:
            return schema.empty_table().select(wanted)
        match = dict(match or {})
        read = wanted + [c for c in match if c not in wanted]
        dataset = ds.FileSystemDataset(fragments, files.schema, files.format, files.filesystem)
        have = set(files.schema.names)
        # One thread: pages are served from a thread pool on a machine the workers share.
        table = dataset.to_table(columns=[c for c in read if c in have], use_threads=False)
        for column in read:
            if column not in have:  # a table an older worker wrote, not yet given the column
                absent = schema.field(column)
                table = table.append_column(absent, pa.nulls(table.num_rows, absent.type))
        if match:
            # Filtered here, not in the scan: files the history stage merges hold string_view
            # columns, and pyarrow has no kernel to compare their statistics with a string.
            mask = None
            for column, value in match.items():
                equal = pc.equal(table[column], value)
                mask = equal if mask is None else pc.and_(mask, equal)
            table = table.filter(mask)
        return table.select(wanted)


def _fragments(files: _Files, days: Sequence[date], models: Collection[str] | None) -> list[ds.Fragment]:
    """The files of these days (and models), each told its partition values (the columns it lacks)."""
    fragments = []
    for day in sorted(set(days)):
        for part, paths in files.by_day.get(day, {}).items():
            if models is not None and files.by_model and part not in models:
                continue
            where = ds.field("day") == pa.scalar(day, pa.date32())
            if files.by_model:
                where &= ds.field("model").is_null() if part is None else ds.field("model") == part
            for path in paths:
                fragment = files.made.get(path)
                if fragment is None:
                    fragment = files.format.make_fragment(
                        path, filesystem=files.filesystem, partition_expression=where
                    )
                    files.made[path] = fragment
                fragments.append(fragment)
    return fragments


def day_range(end: date, days: int) -> list[date]:
    """The ``days`` days ending on ``end``, oldest first.

    A range reaching before 0001-01-01 is the request's mistake (a 400 saying so), not an OverflowError's 500.
    """
    if (end - date.min).days < days - 1:
        raise ConsoleError(
            f"day={end.isoformat()} with days={days} starts before 0001-01-01:"
            f" ask for at most days={(end - date.min).days + 1} or a later day"
        )
    return [end - timedelta(days=n) for n in range(days - 1, -1, -1)]
