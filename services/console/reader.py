"""Read the history and dataset tables for the console: cached table handles, only the partitions asked for.

A page names a range of days (and, for one segment, its model); the reader
turns that into a Delta partition filter, so only those files are opened.
Table handles are kept open and brought up to date at most every
``refresh_seconds`` (reading only the new log entries), which keeps a page
from replaying the whole Delta log on every request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from curation.history import SCHEMAS
from schemas.errors import LoopwatchError

#: Partition listings kept (a page's days and model at one table version), least recently used dropped.
MAX_DATASETS = 256


class ConsoleError(LoopwatchError):
    """A request the console cannot answer as asked (a bad parameter, a missing table or row)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Handle:
    """One open Delta table, and when it was last brought up to date."""

    def __init__(self, table: Any, checked: float) -> None:
        self.table = table
        self.checked = checked
        self.days: tuple[int, list[date]] | None = None  # (version, days) of the last listing


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
        self._datasets: OrderedDict[tuple[Any, ...], ds.Dataset] = OrderedDict()
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

    def missing(self) -> list[str]:
        """The history tables not (yet) under the root: the history stage writes each on its first batch."""
        return [name for name in SCHEMAS if self._handle(name) is None]

    def days(self, name: str) -> list[date]:
        """The days ``name`` holds rows for, oldest first (from the table's metadata, no data read)."""
        handle = self._handle(name)
        if handle is None:
            return []
        version = handle.table.version()
        if handle.days is None or handle.days[0] != version:
            values = {part["day"] for part in handle.table.partitions() if part.get("day")}
            handle.days = (version, sorted(date.fromisoformat(v) for v in values))
        return handle.days[1]

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
    ) -> pa.Table:
        """The rows of ``name`` on ``days`` (and of ``model``) whose columns equal ``match``.

        Only the files of those partitions are opened.
        """
        schema = SCHEMAS[name]
        wanted = list(columns) if columns is not None else schema.names
        handle = self._handle(name)
        present = set(self.days(name)) if handle is not None else set()
        chosen = sorted(d.isoformat() for d in days if d in present)
        if handle is None or not chosen:
            return schema.empty_table().select(wanted)
        match = dict(match or {})
        read = wanted + [c for c in match if c not in wanted]
        table = self._dataset(name, handle, tuple(chosen), model).to_table(columns=read)
        if match:
            # Filtered here, not in the scan: files the history stage merges hold string_view
            # columns, and pyarrow has no kernel to compare their statistics with a string.
            mask = None
            for column, value in match.items():
                equal = pc.equal(table[column], value)
                mask = equal if mask is None else pc.and_(mask, equal)
            table = table.filter(mask).select(wanted)
        return table

    def _dataset(self, name: str, handle: _Handle, days: tuple[str, ...], model: str | None) -> ds.Dataset:
        """The files of these partitions at the table's version; kept, since listing them costs 20-60 ms."""
        key = (name, handle.table.version(), days, model)
        with self._lock:
            dataset = self._datasets.get(key)
            if dataset is not None:
                self._datasets.move_to_end(key)
                return dataset
        partitions: list[tuple[str, str, Any]] = [("day", "in", list(days))]
        if model is not None:
            partitions.append(("model", "=", model))
        dataset = handle.table.to_pyarrow_dataset(partitions=partitions)
        with self._lock:
            self._datasets[key] = dataset
            while len(self._datasets) > MAX_DATASETS:
                self._datasets.popitem(last=False)
        return dataset


def day_range(end: date, days: int) -> list[date]:
    """The ``days`` days ending on ``end``, oldest first."""
    return [end - timedelta(days=n) for n in range(days - 1, -1, -1)]
