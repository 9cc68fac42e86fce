"""Quality per model version of a file: load joined feedback, compare each version with a baseline, render.

What ``loopwatch detect quality`` runs. The detectors themselves live by
family: what users say in :mod:`detectors.feedback` (negative feedback,
corrections, ratings), what the serving stack says in
:mod:`detectors.serving` (errors, empty/refusal, latency SLOs, tokens and
cost), canary vs stable in :mod:`detectors.canary`, and what they share in
:mod:`detectors.quality_checks`. :func:`compare_versions` runs them per
model version against a baseline version through
:func:`detectors.run.run_detectors`, with the stream's correction.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from detectors import frame
from detectors.base import Detector, Finding, Verdict
from detectors.canary import CanaryDetector
from detectors.correction import DEFAULT_CORRECTION, Correction
from detectors.feedback import CorrectionRateDetector, NegativeFeedbackDetector, RatingDetector
from detectors.quality_checks import SEVERITY
from detectors.run import DetectorRun, fit_detector, run_detectors
from detectors.serving import (
    CostDetector,
    EmptyRefusalDetector,
    ErrorRateDetector,
    LatencyConfig,
    LatencyDetector,
)
from schemas.errors import LoopwatchError
from schemas.events import EnrichedInference, JoinedFeedback

_BOOL_COLUMNS = (frame.NEGATIVE, frame.CORRECTION, frame.ERROR, frame.EMPTY_RESPONSE, frame.REFUSAL)


class QualityInputError(LoopwatchError):
    """A file given to ``loopwatch detect quality`` cannot be read as quality rows."""


# --------------------------------------------------------------------------
# Files of joined feedback, and one report per model version
# --------------------------------------------------------------------------


def joined_row(joined: JoinedFeedback) -> dict[str, Any]:
    """One window row for one joined feedback event: the feedback plus its request's serving facts."""
    enriched = EnrichedInference(
        inference=joined.inference,
        descriptors=frame.describe(joined.inference),
        source=joined.inference_source,
    )
    return {**frame.inference_row(enriched), **frame.feedback_row(joined)}


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows from a JSONL file of JoinedFeedback events; a bad line stops with its number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield joined_row(JoinedFeedback.model_validate_json(line))
            except ValidationError as exc:
                problem = exc.errors()[0]
                where = ".".join(str(p) for p in problem["loc"]) or "line"
                raise QualityInputError(
                    f"{path}:{number}: not a JoinedFeedback event ({where}: {problem['msg']})"
                ) from exc


def _as_bool(value: Any) -> bool | None:
    """A flag read from a file: bools, 0/1 and true/false/yes/no; missing stays missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_ | int | np.integer | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "t", "1.0"):
        return True
    if text in ("false", "0", "no", "f", "0.0"):
        return False
    raise ValueError(f"not a true/false value: {value!r}")


def load_quality_window(path: Path) -> pd.DataFrame:
    """Rows from a JSONL(.gz) file of JoinedFeedback events, or a CSV/Parquet file with the frame columns.

    Raises :class:`QualityInputError` with a reason when the file cannot be used.
    """
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            window = pd.DataFrame(list(_jsonl_rows(path)))
        elif name.endswith(".csv"):
            window = pd.read_csv(path)
        elif name.endswith(".parquet"):
            window = pd.read_parquet(path)
        else:
            raise QualityInputError(f"{path}: expected a .jsonl, .jsonl.gz, .csv or .parquet file")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QualityInputError(f"{path}: cannot be read ({exc})") from exc
    if window.empty:
        raise QualityInputError(f"{path}: no rows")
    if frame.MODEL_VERSION not in window.columns:
        raise QualityInputError(f"{path}: no {frame.MODEL_VERSION!r} column to group the rows by")
    for column in _BOOL_COLUMNS:
        if column in window.columns:
            try:
                window[column] = window[column].map(_as_bool).astype(object)
            except ValueError as exc:
                raise QualityInputError(f"{path}: column {column!r}: {exc}") from exc
    window[frame.MODEL_VERSION] = window[frame.MODEL_VERSION].astype(str)
    return window


class VersionReport(BaseModel):
    """Every quality detector's finding for one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    rows: int
    requests: int
    is_baseline: bool
    findings: dict[str, Finding]


class QualityReport(BaseModel):
    """Per-version quality against a baseline version, and the versions that are worse."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_version: str
    versions: list[VersionReport]
    worse: list[str] = Field(description="Versions with drift against the baseline")
    warnings: list[str] = Field(description="Versions with only warnings against the baseline")
    slo_breaches: list[str] = Field(description="Versions (baseline included) with latency drift")


# Detectors compared with the baseline version, in report order; latency runs on every version alone.
COMPARED = (
    CanaryDetector,
    NegativeFeedbackDetector,
    RatingDetector,
    CorrectionRateDetector,
    ErrorRateDetector,
    EmptyRefusalDetector,
    CostDetector,
)


def compare_versions(
    window: pd.DataFrame,
    baseline_version: str | None = None,
    latency: LatencyConfig | None = None,
    correction: Correction | None = DEFAULT_CORRECTION,
) -> QualityReport:
    """Run the quality detectors on every model version of ``window`` against a baseline version.

    The baseline is ``baseline_version`` or else the version with the most
    requests. Each version's findings are corrected together, as the stream
    corrects a window's (Benjamini-Hochberg by default). Raises
    :class:`QualityInputError` for an unknown baseline.
    """
    versions = window.groupby(frame.MODEL_VERSION, sort=True)
    traffic = {str(v): _requests(rows) for v, rows in versions}
    baseline = baseline_version or max(sorted(traffic), key=lambda v: traffic[v])
    if baseline not in traffic:
        raise QualityInputError(
            f"baseline version {baseline!r} not in the file; versions: {', '.join(traffic)}"
        )
    reference = window[window[frame.MODEL_VERSION] == baseline]
    compared = [DetectorRun(cls.id) for cls in COMPARED]
    slos = DetectorRun(LatencyDetector.id, (latency or LatencyConfig()).model_dump())
    fitted: dict[str, Detector[Any]] = {}

    def fit_once(spec: DetectorRun, baseline_rows: pd.DataFrame) -> Detector[Any]:
        # Every version is compared with the same baseline: fit each detector on it once.
        if spec.detector_id not in fitted:
            fitted[spec.detector_id] = fit_detector(spec, baseline_rows)
        return fitted[spec.detector_id]

    reports = []
    for version, rows in versions:
        specs = [slos] if version == baseline else [*compared, slos]
        judged = run_detectors(specs, reference, rows, correction, fit=fit_once)
        reports.append(
            VersionReport(
                version=str(version),
                rows=len(rows),
                requests=traffic[str(version)],
                is_baseline=version == baseline,
                findings={item.finding.detector_id: item.finding for item in judged},
            )
        )
    return QualityReport(
        baseline_version=baseline,
        versions=reports,
        worse=[r.version for r in reports if _worst_compared(r) == "drift"],
        warnings=[r.version for r in reports if _worst_compared(r) == "warning"],
        slo_breaches=[r.version for r in reports if r.findings[LatencyDetector.id].verdict == "drift"],
    )


def _requests(rows: pd.DataFrame) -> int:
    """Distinct requests in a window (rows, when there is no request id)."""
    return int(rows[frame.REQUEST_ID].nunique()) if frame.REQUEST_ID in rows.columns else len(rows)


def _worst_compared(report: VersionReport) -> Verdict:
    """The worst verdict of the detectors that compare a version with the baseline."""
    verdicts = [f.verdict for i, f in report.findings.items() if i != LatencyDetector.id]
    return max(verdicts, key=lambda v: SEVERITY[v], default="ok")


def _number(value: float | None, digits: int = 3) -> str:
    """A number for the text table, '-' when absent."""
    return "-" if value is None else f"{value:.{digits}g}"


def render_text(report: QualityReport) -> str:
    """The report as a table a person can read in a terminal."""
    lines = [f"baseline version: {report.baseline_version}", ""]
    header = f"{'version':<16} {'detector':<30} {'verdict':<8} {'effect':>9} {'p-value':>9} {'score':>7}"
    lines += [header, "-" * len(header)]
    for version in report.versions:
        label = version.version + (" (base)" if version.is_baseline else "")
        for detector_id, f in version.findings.items():
            note = "  too few samples" if any(k.endswith("too_few_samples") for k in f.measurements) else ""
            lines.append(
                f"{label:<16} {detector_id:<30} {f.verdict:<8} {_number(f.effect_size):>9} "
                f"{_number(f.p_value):>9} {_number(f.score):>7}{note}"
            )
            label = ""
    lines += [
        "",
        f"worse than {report.baseline_version}: {', '.join(report.worse) or 'none'}",
        f"warnings: {', '.join(report.warnings) or 'none'}",
        f"latency SLO breached: {', '.join(report.slo_breaches) or 'none'}",
    ]
    return "\n".join(lines)
