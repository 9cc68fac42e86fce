"""``loopwatch dataset``: the curated feedback datasets (Delta tables)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from services.commands.common import settings_from_flags

if TYPE_CHECKING:
    from curation.export import TableStats
    from curation.store import DatasetStore

_DATASET_TABLES = ["sft", "preference", "golden", "safety_review"]
_ROOT_OPTION = click.option(
    "--root",
    default=None,
    help="Dataset root: a folder or object-store URI [default: LOOPWATCH_DATASETS_ROOT, <data_dir>/datasets]",
)


def _dataset_store(root: str | None, retention_days: int | None = None) -> DatasetStore:
    """The dataset store under --root, else where the workers write it (the settings' datasets_uri)."""
    from curation.store import DatasetStore

    root = root or settings_from_flags().datasets_uri()
    return DatasetStore(root, retention_days=retention_days)


@click.group()
def dataset() -> None:
    """Curated feedback datasets (Delta tables): export, stats, snapshot.

    \b
    Tables: sft (corrections), preference (chosen/rejected pairs),
    golden (positively rated replies), safety_review (toxicity-flagged).
    Versions are Delta versions; a tag pins one for a retrain request.
    """


@dataset.command(name="export")
@click.option("--table", "table", type=click.Choice(_DATASET_TABLES), required=True, help="Dataset table")
@click.option("--version", type=int, default=None, help="Delta version [default: latest]")
@click.option("--tag", default=None, help="Export the version a snapshot tag pins (instead of --version)")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="File to write"
)
@_ROOT_OPTION
def dataset_export(
    table: str, version: int | None, tag: str | None, fmt: str, output: Path, root: str | None
) -> None:
    """Write one table version as chat fine-tuning JSONL or Parquet.

    JSONL lines are {"messages": [...]} (sft, golden, safety_review) or
    {"prompt": [...], "chosen": [...], "rejected": [...]} (preference), each
    validated before it is written. Parquet keeps every column and the lineage.
    """
    from curation.export import export
    from curation.store import table_kind

    result = export(
        _dataset_store(root),
        table_kind(table),
        output,
        fmt="parquet" if fmt == "parquet" else "jsonl",
        version=version,
        tag=tag,
    )
    skipped = f" ({result.skipped} without a reply skipped)" if result.skipped else ""
    click.echo(f"exported {result.rows} rows of {table}@{result.version} to {result.path}{skipped}")


@dataset.command(name="stats")
@click.argument("name", type=click.Choice(_DATASET_TABLES), required=False)
@click.option("--version", type=int, default=None, help="Delta version [default: latest]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text")
@_ROOT_OPTION
def dataset_stats(name: str | None, version: int | None, as_json: bool, root: str | None) -> None:
    """Counts by table, model, model version and label, and redactions per kind (all tables without NAME)."""
    store = _dataset_store(root)
    reports = table_stats(store, name, version)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in reports], indent=2))
        return
    if not reports:
        click.echo(f"no dataset tables under {store.root}")
    for line in stats_lines(reports):
        click.echo(line)


def table_stats(store: DatasetStore, name: str | None, version: int | None) -> list[TableStats]:
    """The counts of table ``name``, or of every table the store holds when it is None."""
    from curation.export import stats
    from curation.store import table_kind

    names = [name] if name else [t for t in _DATASET_TABLES if store.exists(table_kind(t))]
    return [stats(store, table_kind(n), version) for n in names]


def stats_lines(reports: list[TableStats]) -> Iterator[str]:
    """Each table's counts as text: a title line, then one line per breakdown."""
    for report in reports:
        yield f"{report.table}@{report.version}: {report.rows} rows"
        for title, counts in (
            ("by model", report.by_model),
            ("by model version", report.by_model_version),
            ("by label", report.by_label),
            ("redactions", report.redactions),
            ("tags", report.tags),
        ):
            yield f"  {title}: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "none")


@dataset.command(name="snapshot")
@click.option("--table", "table", type=click.Choice(_DATASET_TABLES), required=True, help="Dataset table")
@click.option("--version", type=int, default=None, help="Delta version to pin [default: latest]")
@click.option("--tag", required=True, help="Name of the pin, e.g. retrain-2026-03-01")
@_ROOT_OPTION
def dataset_snapshot(table: str, version: int | None, tag: str, root: str | None) -> None:
    """Pin and tag a table version, so a retrain request can name (table, version) for good.

    The tag is a Delta table property (loopwatch.tag.<TAG>); vacuum keeps tagged versions.
    """
    from curation.store import table_kind

    snapshot = _dataset_store(root).snapshot(table_kind(table), tag, version)
    click.echo(f"tagged {snapshot.table}@{snapshot.version} as {snapshot.tag}")


@dataset.command(name="expire")
@click.option("--retention-days", type=int, required=True, help="Delete rows whose inference is older")
@click.option("--vacuum-hours", type=int, default=None, help="Then delete unreferenced files older than this")
@_ROOT_OPTION
def dataset_expire(retention_days: int, vacuum_hours: int | None, root: str | None) -> None:
    """Delete expired rows (a new version); optionally vacuum old files, keeping tagged versions."""
    for line in expire_tables(_dataset_store(root, retention_days), vacuum_hours):
        click.echo(line)


def expire_tables(store: DatasetStore, vacuum_hours: int | None) -> Iterator[str]:
    """Expire every table's old rows, then vacuum when asked, saying what each step did as it goes."""
    result = store.expire()
    for table, deleted in result.deleted.items():
        yield f"{table}: deleted {deleted} expired rows (now version {result.versions[table]})"
    if vacuum_hours is not None:
        removed = store.vacuum(retention_hours=vacuum_hours)
        yield f"vacuum removed {sum(len(files) for files in removed.values())} files"
