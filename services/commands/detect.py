"""``loopwatch detect``: the detectors run on files (backfills and threshold checks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

    from detectors.files import DriftReport


@click.group()
def detect() -> None:
    """Run the detectors on files (CSV, Parquet or JSONL): backfills and threshold checks."""


@detect.command("quality")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL of JoinedFeedback events (as on loopwatch.feedback-joined.v1), or CSV/Parquet rows",
)
@click.option("--baseline-version", default=None, help="Version to compare with [default: most traffic]")
@click.option("--slo-p95-ms", type=float, default=None, help="SLO of the p95 latency [default: 2000]")
@click.option("--format", "output", type=click.Choice(["json", "text"]), default="json", show_default=True)
def detect_quality(
    input_path: Path, baseline_version: str | None, slo_p95_ms: float | None, output: str
) -> None:
    """Compare model versions on feedback, ratings, errors, refusals, latency and cost.

    Groups the rows by model version and judges every version against the
    baseline (canary vs stable). Exits 0 whatever the verdicts, 2 on bad input.
    """
    from detectors.quality import LatencyConfig, compare_versions, load_quality_window, render_text

    latency = LatencyConfig() if slo_p95_ms is None else LatencyConfig(slo_p95_ms=slo_p95_ms)
    report = compare_versions(load_quality_window(input_path), baseline_version, latency)
    click.echo(report.model_dump_json(indent=2) if output == "json" else render_text(report))


@detect.command("drift")
@click.option(
    "--reference", "reference_path", required=True, type=click.Path(path_type=Path), help="Reference file"
)
@click.option(
    "--current", "current_path", required=True, type=click.Path(path_type=Path), help="Current file"
)
@click.option("--columns", default=None, help="Comma-separated columns to test [default: all shared columns]")
@click.option("--text-column", default=None, help="Text column to test with sentence embeddings (MMD, LSDD)")
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Significance level, after correction",
)
@click.option(
    "--correction",
    type=click.Choice(["bh", "bonferroni"]),
    default="bh",
    show_default=True,
    help="Benjamini-Hochberg (false discovery rate) or Bonferroni",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="JSON for machines, a table for people",
)
@click.option(
    "--html-report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="When drift is found, also write Evidently's HTML drift report of the tested columns here",
)
def detect_drift(
    reference_path: Path,
    current_path: Path,
    columns: str | None,
    text_column: str | None,
    alpha: float,
    correction: str,
    output_format: str,
    html_report: Path | None,
) -> None:
    """Compare two files (CSV, Parquet, JSONL) column by column: is the current data drifting?

    Numeric columns get the KS test, the others chi-square; --text-column
    adds embedding tests. p-values are corrected together (Benjamini-Hochberg
    by default) and a column counts as drifted only when its shift is also
    large enough (KS D or Cramér's V >= 0.1), so big files do not alarm on
    trivia. Prints JSON (top-level "drift" and one entry per test) or a table.

    Exit code 0 whether or not drift was found (read "drift" in the output);
    2 on bad input (missing file, unknown extension, missing column).
    """
    from detectors.files import drift_report, format_table, read_frame

    reference, current = read_frame(reference_path), read_frame(current_path)
    report = drift_report(
        reference,
        current,
        columns=split_columns(columns),
        text_column=text_column,
        alpha=alpha,
        correction="bonferroni" if correction == "bonferroni" else "bh",
    )
    click.echo(report.model_dump_json(indent=2) if output_format == "json" else format_table(report))
    if html_report is not None and write_html_report(reference, current, report, text_column, html_report):
        click.echo(f"Evidently drift report written to {html_report}", err=True)


def split_columns(columns: str | None) -> list[str] | None:
    """The names of a comma-separated --columns, or None (all shared columns) when it is absent."""
    return [name.strip() for name in columns.split(",") if name.strip()] if columns else None


def write_html_report(
    reference: pd.DataFrame, current: pd.DataFrame, report: DriftReport, text_column: str | None, path: Path
) -> bool:
    """Evidently's HTML report of the tested tabular columns, written only when they drifted."""
    tabular = [test.column for test in report.tests if test.column != text_column]
    if not (report.drift and tabular):
        return False
    from detectors.report import render_drift_report

    render_drift_report(reference, current, list(dict.fromkeys(tabular)), path)
    return True
