"""Drift between two files: read them, pick a test per column, correct, and summarise.

What ``loopwatch detect drift`` runs. Numeric columns get the KS test,
the others chi-square (both with a minimum effect size, see
:mod:`detectors.drift`); a text column gets the embedding tests of
:mod:`detectors.embedding`; then all p-values are corrected together
(:mod:`detectors.correction`) so twenty columns do not mean twenty chances
of a false alarm.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from detectors.base import Detector, Finding, Verdict
from detectors.correction import Method, correct
from detectors.drift import TEST_NAMES, categorical_detector, numeric_detector
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


class DriftTest(BaseModel):
    """One test of one column (or of the text column's embeddings)."""

    model_config = ConfigDict(frozen=True)

    column: str
    test: str
    detector_id: str
    statistic: float | None
    p_value: float | None
    p_value_adjusted: float | None
    effect_size: float | None
    alpha: float = Field(description="Level the adjusted p-value is compared with")
    min_effect_size: float | None = Field(description="Smallest effect that counts as drift (else a warning)")
    verdict: Verdict
    drift: bool
    reference_size: int
    current_size: int
    measurements: dict[str, float] = Field(default_factory=dict)


class DriftReport(BaseModel):
    """Every test between two frames; ``drift`` is true when any test's verdict is ``drift``."""

    model_config = ConfigDict(frozen=True)

    drift: bool
    alpha: float
    correction: Method
    reference_rows: int
    current_rows: int
    tests: list[DriftTest]
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


def _detector_for(reference: pd.Series, current: pd.Series, column: str, alpha: float) -> Detector[Any]:
    """KS when both sides hold numbers, chi-square otherwise."""
    if _is_numeric(reference) and _is_numeric(current):
        return numeric_detector(column, alpha)
    return categorical_detector(column, alpha)


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


def _as_test(column: str, finding: Finding, alpha: float) -> DriftTest:
    """A finding as one row of the report."""
    # The embedding tests put alpha in ``threshold`` and their minimum effect in the
    # measurements; KS and chi-square put the minimum effect in ``threshold``.
    min_effect = finding.measurements.get("min_effect_size", finding.threshold)
    return DriftTest(
        column=column,
        test=TEST_NAMES.get(finding.detector_id, finding.detector_id.split(".")[1]),
        detector_id=finding.detector_id,
        statistic=finding.statistic,
        p_value=finding.p_value,
        p_value_adjusted=finding.measurements.get("p_value_adjusted"),
        effect_size=finding.effect_size,
        alpha=alpha,
        min_effect_size=min_effect,
        verdict=finding.verdict,
        drift=finding.verdict == "drift",
        reference_size=finding.reference_size,
        current_size=finding.current_size,
        measurements=finding.measurements,
    )


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
    >>> report.drift, [(test.column, test.test, test.verdict) for test in report.tests]
    (True, [('x', 'ks', 'drift'), ('y', 'chi2', 'ok')])
    """
    chosen, skipped = _columns_to_test(reference, current, columns, text_column)
    if not chosen and text_column is None:
        raise DataFileError(_nothing_to_test(reference, current, skipped))
    labelled: list[tuple[str, Finding]] = []
    for column in chosen:
        detector = _detector_for(reference[column], current[column], column, alpha)
        detector.fit(reference)
        labelled.append((column, detector.detect(current)))
    if text_column is not None:
        labelled += [
            (text_column, finding) for finding in _text_findings(reference, current, text_column, seed)
        ]
    corrected = correct([finding for _, finding in labelled], method=correction, alpha=alpha)
    tests = [
        _as_test(column, finding, alpha) for (column, _), finding in zip(labelled, corrected, strict=True)
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
                _number(test.statistic),
                _number(test.p_value),
                _number(test.p_value_adjusted),
                _number(test.alpha),
                _number(test.effect_size),
                _number(test.min_effect_size),
                test.verdict.upper() if test.drift else test.verdict,
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
