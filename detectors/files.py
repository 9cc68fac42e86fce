"""Drift between two files: read them, pick a test per column, correct, and summarise.

What ``loopwatch detect drift`` runs. Numeric columns get the KS test,
the others chi-square (both with a minimum effect size, see
:mod:`detectors.drift`); a text column gets the embedding tests of
:mod:`detectors.embedding`; then all p-values are corrected together
(:func:`detectors.run.run_detectors`, with the stream's correction by
default) so twenty columns do not mean twenty chances of a false alarm.
Each test is a :class:`ColumnFinding`: the column, the level it was held to
and its :class:`~detectors.base.Finding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from detectors.base import Finding
from detectors.correction import Correction, Method
from detectors.drift import TEST_NAMES, ChiSquareDrift, KSDrift
from detectors.run import DetectorRun, Judged, run_detectors
from schemas.errors import ConfigError

#: Readers by file extension (before any ``.gz``).
READERS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
#: With ``columns=None``, a non-numeric column with more distinct values than this share of its rows
#: (and more than 50) is taken for an identifier or free text and skipped: chi-square on it means nothing.
MAX_DISTINCT_SHARE = 0.5


class DataFileError(ConfigError):
    """A data file cannot be used: missing, of an unknown kind, unreadable, or lacking a column."""


def read_frame(path: Path) -> pd.DataFrame:
    """A CSV, Parquet or JSONL file (optionally ``.gz``) as a DataFrame, chosen by extension."""
    path = Path(path)
    suffixes = [suffix.lower() for suffix in path.suffixes]
    kind = READERS.get(suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" else path.suffix.lower())
    if kind is None:
        raise DataFileError(f"{path}: unknown file kind; use one of {', '.join(READERS)} (optionally .gz)")
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    try:
        if kind == "csv":
            data = pd.read_csv(path)
        elif kind == "parquet":
            data = pd.read_parquet(path)
        else:
            data = pd.read_json(path, lines=True)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataFileError(f"{path}: cannot read it as {kind}: {exc}") from exc
    if kind == "csv" and _names_are_numbers(data.columns):
        first = ", ".join(map(str, data.columns[:5]))
        raise DataFileError(
            f"{path}: needs a header row naming its columns; its first line ({first}) looks like data"
        )
    if data.empty:
        raise DataFileError(f"{path}: no rows")
    return data


def _names_are_numbers(names: pd.Index) -> bool:
    """Every column name is a number: the first line was data (pandas renames a second ``1`` to ``1.1``)."""
    try:
        [float(name) for name in names]
    except (TypeError, ValueError):
        return False
    return True


class ColumnFinding(BaseModel):
    """One test of one column (or of the text column's embeddings): its Finding and the level it was held to.

    Serialised flat, one entry per test as ``detect drift`` prints it.
    """

    model_config = ConfigDict(frozen=True)

    column: str
    alpha: float = Field(description="Level the adjusted p-value is compared with")
    finding: Finding

    @property
    def test(self) -> str:
        """The short test name (``ks``, ``chi2``, ``embedding_mmd``...)."""
        detector_id = self.finding.detector_id
        return TEST_NAMES.get(detector_id, detector_id.split(".")[1])

    @property
    def p_value_adjusted(self) -> float | None:
        """The p-value after the correction, None when the test gave no p-value."""
        return self.finding.measurements.get("p_value_adjusted")

    @property
    def min_effect_size(self) -> float | None:
        """Smallest effect that counts as drift (else a warning)."""
        # The embedding tests put alpha in ``threshold`` and their minimum effect in the
        # measurements; KS and chi-square put the minimum effect in ``threshold``.
        return self.finding.measurements.get("min_effect_size", self.finding.threshold)

    @property
    def drift(self) -> bool:
        """The verdict is ``drift``."""
        return self.finding.verdict == "drift"

    @model_serializer
    def _flat(self) -> dict[str, Any]:
        finding = self.finding
        return {
            "column": self.column,
            "test": self.test,
            "detector_id": finding.detector_id,
            "statistic": finding.statistic,
            "p_value": finding.p_value,
            "p_value_adjusted": self.p_value_adjusted,
            "effect_size": finding.effect_size,
            "alpha": self.alpha,
            "min_effect_size": self.min_effect_size,
            "verdict": finding.verdict,
            "drift": self.drift,
            "reference_size": finding.reference_size,
            "current_size": finding.current_size,
            "measurements": finding.measurements,
        }


class DriftReport(BaseModel):
    """Every test between two frames; ``drift`` is true when any test's verdict is ``drift``."""

    model_config = ConfigDict(frozen=True)

    drift: bool
    alpha: float
    correction: Method
    reference_rows: int
    current_rows: int
    tests: list[ColumnFinding]
    skipped: dict[str, str] = Field(default_factory=dict, description="Columns not tested, and why")


def _is_numeric(series: pd.Series) -> bool:
    """Numbers (not booleans, which are categories)."""
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _looks_like_identifier(series: pd.Series) -> bool:
    """Almost every value distinct: ids, timestamps, free text."""
    distinct = series.nunique(dropna=True)
    return distinct > 50 and distinct > MAX_DISTINCT_SHARE * series.notna().sum()


def _columns_to_test(
    reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str] | None, text_column: str | None
) -> tuple[list[str], dict[str, str]]:
    """The columns to test and the ones skipped (with the reason)."""
    if columns is not None:
        for column in columns:
            for name, data in (("reference", reference), ("current", current)):
                if column not in data.columns:
                    raise DataFileError(f"{name} has no column {column!r}; it has: {', '.join(data.columns)}")
        return list(columns), {}
    chosen, skipped = [], {}
    for column in reference.columns:
        if column == text_column:
            continue
        if column not in current.columns:
            skipped[column] = "not in the current data"
        elif not _is_numeric(reference[column]) and _looks_like_identifier(reference[column]):
            skipped[column] = "almost every value distinct (an identifier or free text?)"
        else:
            chosen.append(column)
    return chosen, skipped


def _spec_for(reference: pd.Series, current: pd.Series, column: str, alpha: float) -> DetectorRun:
    """KS when both sides hold numbers, chi-square otherwise (each with its default minimum effect size)."""
    detector_id = KSDrift.id if _is_numeric(reference) and _is_numeric(current) else ChiSquareDrift.id
    return DetectorRun(detector_id, {"column": column, "alpha": alpha})


def _text_findings(
    reference: pd.DataFrame, current: pd.DataFrame, text_column: str, seed: int
) -> list[Finding]:
    """Embedding drift (MMD, LSDD) of the text column; imported here because it loads torch."""
    from detectors.embedding import text_drift

    for name, data in (("reference", reference), ("current", current)):
        if text_column not in data.columns:
            raise DataFileError(f"{name} has no text column {text_column!r}")
    texts = [data[text_column].dropna().astype(str).tolist() for data in (reference, current)]
    return text_drift(texts[0], texts[1], seed=seed)


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str] | None = None,
    text_column: str | None = None,
    alpha: float = 0.05,
    correction: Method = "bh",
    seed: int = 0,
) -> DriftReport:
    """Test every chosen column (all shared ones when ``columns`` is None) and the text column, corrected.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> before = pd.DataFrame({"x": rng.normal(0, 1, 500), "y": rng.choice(["a", "b"], 500)})
    >>> after = pd.DataFrame({"x": rng.normal(1, 1, 500), "y": rng.choice(["a", "b"], 500)})
    >>> report = drift_report(before, after)
    >>> report.drift, [(test.column, test.test, test.finding.verdict) for test in report.tests]
    (True, [('x', 'ks', 'drift'), ('y', 'chi2', 'ok')])
    """
    chosen, skipped = _columns_to_test(reference, current, columns, text_column)
    if not chosen and text_column is None:
        raise DataFileError(_nothing_to_test(reference, current, skipped))
    specs = [_spec_for(reference[column], current[column], column, alpha) for column in chosen]
    # The embedding tests read the text column without its missing values, so they run apart.
    labels, computed = list(chosen), []
    if text_column is not None:
        for finding in _text_findings(reference, current, text_column, seed):
            labels.append(text_column)
            computed.append(Judged({"column": text_column}, finding))
    judged = run_detectors(specs, reference, current, Correction(correction, alpha), computed=computed)
    tests = [
        ColumnFinding(column=column, alpha=alpha, finding=item.finding)
        for column, item in zip(labels, judged, strict=True)
    ]
    return DriftReport(
        drift=any(test.drift for test in tests),
        alpha=alpha,
        correction=correction,
        reference_rows=len(reference),
        current_rows=len(current),
        tests=tests,
        skipped=skipped,
    )


def _nothing_to_test(reference: pd.DataFrame, current: pd.DataFrame, skipped: dict[str, str]) -> str:
    """Why no column can be tested, with what would fix it."""
    if not set(reference.columns) & set(current.columns):
        names = [", ".join(map(str, data.columns[:10])) for data in (reference, current)]
        return (
            f"no column to test: the two files share no column name (reference: {names[0]}; "
            f"current: {names[1]}). Each file needs a header row naming its columns, the same in both"
        )
    reasons = "; ".join(f"{column}: {reason}" for column, reason in skipped.items())
    return f"no column to test: every shared column was skipped ({reasons}); name some with --columns"


def format_table(report: DriftReport) -> str:
    """The report as a plain-text table a person can read in a terminal."""
    header = ("column", "test", "statistic", "p_value", "p_adj", "alpha", "effect", "min_effect", "verdict")
    rows = [header]
    for test in report.tests:
        rows.append(
            (
                test.column,
                test.test,
                _number(test.finding.statistic),
                _number(test.finding.p_value),
                _number(test.p_value_adjusted),
                _number(test.alpha),
                _number(test.finding.effect_size),
                _number(test.min_effect_size),
                test.finding.verdict.upper() if test.drift else test.finding.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    summary = "DRIFT" if report.drift else "no drift"
    lines.append("")
    lines.append(
        f"{summary}: {sum(t.drift for t in report.tests)} of {len(report.tests)} tests drifted "
        f"(reference {report.reference_rows} rows, current {report.current_rows} rows, "
        f"alpha {report.alpha}, {report.correction} correction)"
    )
    lines += [f"skipped {column}: {reason}" for column, reason in report.skipped.items()]
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float | None) -> str:
    """A number in a short form, ``-`` for none."""
    return "-" if value is None else f"{value:.4g}"
