"""Evidence for a drifted window: an Evidently data drift report saved as HTML.

Rendering takes a second or more, so it runs off the hot path, only for
windows a detector already judged drifted; the verdict itself comes from
:mod:`detectors.drift`, not from this report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from detectors.files import DataFileError


def _definition_columns(reference: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The numeric and the categorical columns among ``columns`` (booleans count as categories)."""
    numeric: list[str] = []
    categorical: list[str] = []
    for column in columns:
        series = reference[column]
        is_number = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        (numeric if is_number else categorical).append(column)
    return numeric, categorical


def render_drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], path: Path
) -> Path:
    """Write Evidently's DataDriftPreset report of ``columns`` to ``path`` (HTML) and return the path."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    for name, data in (("reference", reference), ("current", current)):
        missing = [column for column in columns if column not in data.columns]
        if missing:
            raise DataFileError(f"{name} has no column(s) {', '.join(map(repr, missing))}")
    numeric, categorical = _definition_columns(reference, columns)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    # Categories compared as text: a column read as ints on one side and as strings on the other agrees.
    frames = [data[columns].astype({column: str for column in categorical}) for data in (reference, current)]
    datasets = [Dataset.from_pandas(data, data_definition=definition) for data in frames]
    # Evidently's chi-square divides by a reference count of 0 for every category the reference never
    # saw (a text column's replies): scipy warned 3 times a report, naming no detector (trial 12n).
    # The report is the same without the warning (p = 0).
    with np.errstate(divide="ignore"):
        snapshot = Report([DataDriftPreset(columns=list(columns))]).run(
            current_data=datasets[1], reference_data=datasets[0]
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a reader that sees the path (a Detection links it) sees the whole report.
    partial = path.with_name(f".{path.name}.partial")
    snapshot.save_html(str(partial))
    partial.replace(path)
    return path
