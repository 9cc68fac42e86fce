"""The Datasets page: each curated table, its versions with row counts, a preview, the export command."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_serializer

from curation.errors import DatasetError
from curation.rows import DATASET_KINDS
from curation.store import DatasetStore, table_kind
from services.console.reader import ConsoleError

MAX_VERSIONS = 30
PREVIEW_COLUMNS = ["request_id", "model", "model_version", "label", "event_time", "prompt", "response"]
PREVIEW_COLUMNS += ["chosen", "rejected"]


class TableVersion(BaseModel):
    """One Delta version of a dataset table."""

    version: int
    written_at: datetime | None = None
    operation: str | None = None
    rows: int | None = Field(None, description="Rows in the table at this version")
    inserted: int = 0

    @field_serializer("written_at", when_used="json")
    def _to_the_millisecond(self, at: datetime | None) -> str | None:
        """Delta's commit times are whole milliseconds: ``16:55:49.166Z``, not ``16:55:49.166000Z``."""
        return None if at is None else at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DatasetTable(BaseModel):
    """A curated table: where it is, its versions (newest first), its tags and how to export it."""

    table: str
    uri: str
    version: int
    rows: int
    versions: list[TableVersion]
    versions_written: int = Field(
        0, description="Versions the table has had, 0 to version (only the newest MAX_VERSIONS are listed)"
    )
    tags: dict[str, int]
    export: str


class Datasets(BaseModel):
    """The Datasets page: every table that exists under the root."""

    root: str
    tables: list[DatasetTable]
    missing: list[str] = Field(description="Kinds with no table yet")


class Preview(BaseModel):
    """The first rows of one table version, long texts cut."""

    table: str
    version: int
    rows: list[dict[str, Any]]


def datasets_view(store: DatasetStore) -> Datasets:
    """Every dataset table with its recent versions, row counts and export command."""
    tables = []
    missing = []
    for kind in DATASET_KINDS:
        if not store.exists(kind):
            missing.append(kind)
            continue
        versions = _versions(store, kind)
        latest = versions[0]
        tables.append(
            DatasetTable(
                table=kind,
                uri=store.uri(kind),
                version=latest.version,
                rows=latest.rows or 0,
                versions=versions,
                versions_written=latest.version + 1,
                tags=store.tags(kind),
                export=f"loopwatch dataset export --root {store.root} --table {kind}"
                f" --version {latest.version} --output {kind}-v{latest.version}.jsonl",
            )
        )
    return Datasets(root=store.root, tables=tables, missing=missing)


def preview_view(store: DatasetStore, table: str, version: int | None, limit: int) -> Preview:
    """The first ``limit`` rows of ``table`` at ``version`` (latest by default)."""
    try:
        kind = table_kind(table)
        if not store.exists(kind):
            raise ConsoleError(f"dataset table {table!r} does not exist under {store.root}", 404)
        pinned = store.resolve(kind, version)
        rows = store.scan(kind, pinned).head(limit, columns=PREVIEW_COLUMNS).to_pylist()
    except DatasetError as exc:
        raise ConsoleError(str(exc), 404) from exc
    return Preview(table=kind, version=pinned, rows=[_short(row) for row in rows])


def _versions(store: DatasetStore, kind: Any) -> list[TableVersion]:
    """Recent versions, newest first; row counts walked back from the current count through the log."""
    rows = int(store.scan(kind).count_rows())
    versions = []
    for commit in store.history(kind, MAX_VERSIONS):
        metrics = commit.get("operationMetrics") or {}
        inserted = int(metrics.get("num_target_rows_inserted", metrics.get("num_added_rows", 0)) or 0)
        deleted = int(metrics.get("num_deleted_rows", 0) or 0)
        stamp = commit.get("timestamp")
        versions.append(
            TableVersion(
                version=int(commit["version"]),
                written_at=datetime.fromtimestamp(stamp / 1000, UTC) if stamp else None,
                operation=commit.get("operation"),
                rows=rows,
                inserted=inserted,
            )
        )
        rows = rows - inserted + deleted  # what the version before held
    return versions


def _short(row: dict[str, Any], limit: int = 300) -> dict[str, Any]:
    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return value[:limit] + "…"
        if isinstance(value, list):
            return [cut(v) for v in value]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return {k: cut(v) for k, v in row.items()}
