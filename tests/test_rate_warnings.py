"""Trial 12n: ``loopwatch up`` logged 24 scipy ``RuntimeWarning: divide by zero`` naming no detector.

The trial's traffic: v1 (stable) served HH-RLHF's chosen replies with 0% thumbs down, v2 (canary) the
rejected ones and, for a third of its requests, a Jigsaw toxic comment, with 100% thumbs down; feedback
windows of ~17. Every built-in detector judges such windows without a RuntimeWarning, with the verdicts
below. The warnings came from the Evidently drift report rendered for a window whose ``response`` column
drifted (toxicity.profanity.v1): Evidently compares that free text as categories with scipy's chi-square,
dividing by the reference's count (0) of every reply the reference never had.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import random
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.settings import Settings
from detectors import frame
from schemas.events import InferenceLog
from services.sample_data import hh_rlhf, inference_event
from streams.detect import DEFAULT_SPECS, Judge, Reference
from streams.windows import ClosedWindow, WindowKind

from .console_verdicts_fixture import _thumbs

DATA = Settings().sample_data
START = datetime(2026, 12, 3, 12, 46, tzinfo=UTC)
SEGMENT: dict[str, str | None] = {
    "model": "forum-helper",
    "model_version": "v2",
    "app": "forum",
    "route": "draft-reply",
}
FEEDBACK = [s for s in DEFAULT_SPECS if s.kind == "feedback"]
INFERENCE = [s for s in DEFAULT_SPECS if s.kind == "inference" and not s.slow]


def _runtime_warnings(run: Callable[[], Any]) -> tuple[Any, list[str]]:
    """What ``run`` returns, and the RuntimeWarnings it emitted (each, even when already seen)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, [f"{w.message} ({w.filename}:{w.lineno})" for w in caught if w.category is RuntimeWarning]


def _judge(
    kind: WindowKind, specs: list[Any], reference: list[dict[str, Any]], current: list[dict[str, Any]]
) -> tuple[Any, list[str]]:
    """The findings of ``specs`` on a 20 s window of ``current`` against ``reference``, and the warnings."""
    window = ClosedWindow(
        SEGMENT, kind, START, START + timedelta(seconds=20), len(current), current, revision=0
    )
    pinned = Reference(f"stable:{kind}|forum-helper|v1", pd.DataFrame(reference), len(reference))
    return _runtime_warnings(lambda: Judge(specs).run(window, pinned, specs))


@pytest.mark.parametrize(
    ("stable_down", "canary_down", "thumbs", "verdict"),
    [
        (0, 17, 17, "ok"),  # the trial's windows: too few to judge (< 30), no test run
        (0, 40, 40, "drift"),  # 0% against 100%, judged
        (0, 100, 100, "drift"),
        (0, 0, 40, "ok"),  # no hit on either side
        (40, 40, 40, "ok"),  # all hits on both
        (40, 0, 40, "ok"),  # better, not worse
    ],
)
def test_rate_tests_on_no_or_all_hits_judge_without_a_runtime_warning(
    stable_down: int, canary_down: int, thumbs: int, verdict: str
) -> None:
    judged, said = _judge(
        "feedback", FEEDBACK, _thumbs(stable_down, thumbs, "v1"), _thumbs(canary_down, thumbs, "v2")
    )
    assert said == []
    verdicts = {j.finding.detector_id: j.finding.verdict for j in judged}
    # No ratings nor corrections sent: those two have nothing to judge.
    assert verdicts == {
        "quality.negative_feedback.v1": verdict,
        "quality.canary.v1": verdict,
        "quality.rating.v1": "ok",
        "quality.correction_rate.v1": "ok",
    }


def _inference(version: str, n: int, skip: int) -> list[dict[str, Any]]:
    """Window rows of the trial's traffic: v1 chosen replies, v2 rejected ones, every third toxic."""
    with (DATA / "jigsaw" / "train.5k.csv").open(newline="") as rows:
        toxic = [r["comment_text"] for r in csv.DictReader(rows) if r["is_bad"] == "True"]
    rng, out = random.Random(skip), []
    for i, (chosen, rejected) in enumerate(itertools.islice(hh_rlhf(DATA), skip, skip + n)):
        served = chosen if version == "v1" else rejected
        if version == "v2" and i % 3 == 0:
            served = dataclasses.replace(rejected, response=toxic[i])
        event = InferenceLog.model_validate(inference_event(served, START, rng, version=version))
        out.append(frame.log_row(event, frame.describe(event)))
    return out


def test_the_trial_s_inference_windows_are_judged_without_a_runtime_warning() -> None:
    judged, said = _judge("inference", INFERENCE, _inference("v1", 60, 0), _inference("v2", 60, 100))
    assert said == []
    drifted = sorted(j.finding.detector_id for j in judged if j.finding.verdict == "drift")
    assert drifted == ["toxicity.profanity.v1"]  # the toxic replies
    assert len(judged) == len(INFERENCE)


def test_the_drift_report_of_the_drifted_text_column_warns_nothing(tmp_path: Path) -> None:
    # Trial 12n: 24 scipy "divide by zero" warnings in the log, from Evidently's chi-square on replies.
    from detectors.report import render_drift_report

    reference, current = pd.DataFrame(_inference("v1", 60, 0)), pd.DataFrame(_inference("v2", 60, 100))
    path, said = _runtime_warnings(
        lambda: render_drift_report(reference, current, ["response"], tmp_path / "report.html")
    )
    assert path.exists()
    assert said == []
