"""A rate detector's window too small to judge keeps its hit counts, not only its sample counts (issue 12).

Trial 12k: a canary's 95 thumbs (89 down) came over 9 windows, each under the feedback detectors' 30,
so every detection was ``too_few_samples`` with sample counts only, and the Overview could not say
``89 of 95 thumbs down``. The verdict stays ``ok`` and not judged: only the counts are new.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest

from detectors import frame
from detectors.base import Finding
from detectors.feedback import CorrectionRateConfig, CorrectionRateDetector, NegativeFeedbackDetector
from detectors.quality_checks import RateDetector
from detectors.serving import EmptyRefusalDetector, ErrorRateDetector
from schemas.events import Detection
from streams.detect import DetectorSpec, Judge, Reference, to_detection
from streams.windows import ClosedWindow

from .console_verdicts_fixture import KEY, MINUTE, SEGMENT, START, _thumbs

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "jsonschema" / "detection.v1.json"

#: What else each rate's rows need to be counted (a feedback row has a kind; a reply its empty flag).
_OTHER: dict[str, dict[str, object]] = {
    frame.NEGATIVE: {frame.FEEDBACK_KIND: "thumbs"},
    frame.CORRECTION: {frame.NEGATIVE: False},
    frame.REFUSAL: {frame.EMPTY_RESPONSE: False},
}


def _rows(column: str, hits: int, total: int, prefix: str) -> pd.DataFrame:
    """``total`` rows, the first ``hits`` of them with ``column`` true (and what else the rate needs)."""
    columns = _OTHER.get(column, {})
    return pd.DataFrame(
        {frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(total)], column: [i < hits for i in range(total)]}
        | {name: [value] * total for name, value in columns.items()}
    )


def _detected(
    detector: RateDetector[Any], column: str, reference: tuple[int, int], current: tuple[int, int]
) -> Finding:
    detector.fit(_rows(column, *reference, "ref"))
    return detector.detect(_rows(column, *current, "cur"))


@pytest.mark.parametrize(
    ("detector", "column"),
    [
        (NegativeFeedbackDetector(NegativeFeedbackDetector.Config()), frame.NEGATIVE),
        (CorrectionRateDetector(CorrectionRateConfig()), frame.CORRECTION),
        (ErrorRateDetector(ErrorRateDetector.Config()), frame.ERROR),
        (EmptyRefusalDetector(EmptyRefusalDetector.Config()), frame.REFUSAL),
    ],
    ids=lambda v: getattr(v, "id", v),
)
def test_a_window_too_small_keeps_its_hits_beside_its_samples(
    detector: RateDetector[Any], column: str
) -> None:
    finding = _detected(detector, column, (4, 40), (26, 28))
    assert finding.verdict == "ok" and finding.p_value is None and finding.statistic is None
    assert finding.request_ids == []
    assert finding.measurements == {
        "too_few_samples": 1.0,
        "min_samples": 30.0,
        "reference_samples": 40.0,
        "current_samples": 28.0,
        "reference_hits": 4.0,
        "current_hits": 26.0,
    }


def test_a_reference_too_small_keeps_the_counts_too() -> None:
    finding = _detected(
        NegativeFeedbackDetector(NegativeFeedbackDetector.Config()), frame.NEGATIVE, (2, 12), (5, 60)
    )
    assert finding.verdict == "ok" and finding.measurements["too_few_samples"] == 1.0
    assert (finding.measurements["reference_hits"], finding.measurements["current_hits"]) == (2.0, 5.0)


def test_a_judged_window_s_measurements_are_unchanged() -> None:
    finding = _detected(
        NegativeFeedbackDetector(NegativeFeedbackDetector.Config()), frame.NEGATIVE, (4, 40), (26, 40)
    )
    assert finding.verdict == "drift"
    assert set(finding.measurements) == {
        "reference_rate",
        "current_rate",
        "ci_low",
        "ci_high",
        "reference_samples",
        "current_samples",
    }


def test_the_detection_the_detect_stage_publishes_carries_the_counts_and_fits_its_schema() -> None:
    """The window of trial 12k with the most thumbs: 26 down of 28, under 30, against 4 of 40."""
    spec = DetectorSpec(NegativeFeedbackDetector.id, "feedback")
    rows = _thumbs(26, 28, "w1")
    window = ClosedWindow(
        SEGMENT.model_dump(), "feedback", START + MINUTE, START + 2 * MINUTE, len(rows), rows
    )
    pinned = Reference(f"pinned|feedback|{KEY}", pd.DataFrame(_thumbs(4, 40, "ref")), 40)
    [judgement] = Judge([spec]).run(window, pinned, [spec])
    detection = to_detection(judgement, window, pinned)
    assert detection.verdict == "ok" and detection.measurements["too_few_samples"] == 1.0
    assert (detection.measurements["current_hits"], detection.measurements["current_samples"]) == (26.0, 28.0)
    assert (detection.measurements["reference_hits"], detection.measurements["reference_samples"]) == (
        4.0,
        40.0,
    )
    sent = json.loads(detection.model_dump_json())
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(sent)
    assert Detection.model_validate(sent).measurements == detection.measurements
    assert np.isclose(sent["measurements"]["current_hits"] / sent["measurements"]["current_samples"], 26 / 28)
