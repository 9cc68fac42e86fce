"""A stable window revised by late feedback re-judges the canary windows judged against it (trial 12h).

The trial held back all feedback of one window of the stable version t1 and the
canary t2: both closed with 2 feedback events and were revised to 63, but the
canary's quality detectors stayed "not judged (reference 2 < 30 samples)": its
revision was compared with the stable window as it was before its own revision,
and nothing judged it again after. Here the stable version serves the replies
HH-RLHF's annotators preferred and the canary the rejected ones, with the thumbs
those preferences give. Each closed window also says what closed it and what it
waited for (trial problem 2).
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import to_json

from detectors.frame import feedback_row
from retrain_trigger.actions import ROLLBACK_REQUESTED
from retrain_trigger.pipeline import Decider
from retrain_trigger.stable import StableVersionMarked
from schemas.events import Detection, Feedback, InferenceLog, JoinedFeedback, SourceRef, WindowClosed
from services.sample_data import MODEL, feedback_events, hh_rlhf, inference_event
from streams.detect_stage import DetectStage
from streams.watermarks import Marks
from streams.windows import Partial, Sample, Windows, WindowSpec
from tests.test_decide_pipeline import policy
from tests.test_open_windows import MINUTE, T, _apply, detect_stage
from tests.test_revisions import firing, run, types
from tests.test_window_marks import _batch, _out

QUALITY = [
    {"detector_id": "quality.negative_feedback.v1", "kind": "feedback"},
    {"detector_id": "quality.canary.v1", "kind": "feedback"},
]
START = MINUTE * 60.0  # the window every delivery here is for
PAST = START + 60 + 5  # past its end plus the grace
SEGMENT = {"app": "support-bot", "route": "chat", "tenant": "hh_rlhf"}


def _stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DetectStage:
    """A detect stage of one-minute windows closed by watermarks; t1 is the stable version."""
    return detect_stage(
        tmp_path,
        monkeypatch,
        QUALITY,
        reference_file=False,
        window_grace_seconds=1,
        stable_versions={MODEL: "t1"},
    )


def _feedback(data_dir: Path, version: str, first: int, pairs: int) -> list[dict[str, Any]]:
    """Feedback rows of real replies: t1 serves the preferred one of each pair, t2 the rejected one.

    The thumbs follow the human preference, flipped for 15% of requests (users disagree).
    """
    rng = random.Random(first)
    at = datetime.fromtimestamp(START + 1, UTC)
    rows = []
    for n, (chosen, rejected) in enumerate(islice(hh_rlhf(data_dir), first, first + pairs)):
        exchange = chosen if version == "t1" else rejected
        inference = InferenceLog.model_validate(inference_event(exchange, at, rng, version=version))
        for feedback in feedback_events(exchange, at):
            if rng.random() < 0.15:
                feedback["value"] = not feedback["value"]
            joined = JoinedFeedback(
                request_id=exchange.request_id,
                inference=inference,
                feedback=Feedback.model_validate(feedback),
                inference_source=SourceRef(topic="llm.inference.v1", partition=0, offset=first + n),
                feedback_source=SourceRef(topic="llm.feedback.v1", partition=0, offset=first + n),
                joined_at=at,
            )
            rows.append(json.loads(to_json(feedback_row(joined))))  # as ingest publishes it
    return rows


def _partial(
    stage: DetectStage, version: str, rows: list[dict[str, Any]], progress: float, window: int = 0
) -> Partial:
    """One feedback partial of the window (or the ``window``-th after it), all watermarks at ``progress``."""
    rng = random.Random(len(rows))
    sample = Sample(500)
    for row in rows:
        sample.offer(row, rng)
    segment: dict[str, str | None] = {"model": MODEL, "model_version": version, **SEGMENT}
    marks = dict.fromkeys(stage.windows.spec.sources, progress)
    start = START + 60 * window
    return Partial(segment, "feedback", MINUTE + window, start, start + 59, sample, progress=marks)


def _canary(detections: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The canary's detections by detector."""
    return {d["detector_id"]: d for d in detections if d["segment"]["model_version"] == "t2"}


def _both_closed_small(stage: DetectStage, data_dir: Path) -> tuple[list[dict[str, Any]], list[WindowClosed]]:
    """Both versions' window closes with 2 feedback events each: all the others are held back."""
    early = (
        _partial(stage, "t1", _feedback(data_dir, "t1", 0, 2), PAST),
        _partial(stage, "t2", _feedback(data_dir, "t2", 0, 2), PAST),
    )
    first = asyncio.run(stage.handle(_batch(stage, (1, early[0]), (2, early[1])), T))
    out = _out(stage, first)
    _apply(stage, first)
    return out


def _late(stage: DetectStage, data_dir: Path, version: str, offset: int, now: float) -> Any:
    """The held-back feedback of ``version``'s window: 61 more events."""
    late = _partial(stage, version, _feedback(data_dir, version, 2, 61), PAST + 30)
    effects = asyncio.run(stage.handle(_batch(stage, (offset, late)), now))
    return effects


def _decided(detections: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The canary's detections through the decide pipeline: the alerts that fired, the actions."""
    decider = Decider(policy())
    decider.mark_stable(StableVersionMarked(model=MODEL, version="t1", marked_at=datetime.now(UTC)))
    decision = run(decider, [Detection.model_validate(d) for d in detections])
    return firing(decision), types(decision)


def test_a_stable_window_revised_after_the_canarys_revision_judges_the_canary_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    stage = _stage(tmp_path, monkeypatch)
    detections, closed = _both_closed_small(stage, data_dir)
    first = _canary(detections)
    assert first["quality.negative_feedback.v1"]["measurements"]["too_few_samples"] == 1.0
    assert {c.closed_by for c in closed} == {"watermark"}
    # The canary's held-back feedback comes first: its stable window still holds 2 events.
    canary_late = _late(stage, data_dir, "t2", 3, T + 1)
    revised, [reclosed] = _out(stage, canary_late)
    assert _canary(revised)["quality.negative_feedback.v1"]["reference_size"] == 2
    assert (reclosed.revision, reclosed.closed_by) == (1, "revision")
    _apply(stage, canary_late)
    # Then the stable version's: the canary's window is judged again, against all 63 stable events.
    stable_late = _late(stage, data_dir, "t1", 4, T + 2)
    again, windows = _out(stage, stable_late)
    judged = _canary(again)
    negative, canary = judged["quality.negative_feedback.v1"], judged["quality.canary.v1"]
    assert (negative["revision"], negative["reference_size"], negative["current_size"]) == (2, 63, 63)
    assert "too_few_samples" not in negative["measurements"] and negative["verdict"] == "drift"
    assert canary["revision"] == 2 and canary["verdict"] == "drift"
    assert negative["reference"].endswith("/r1")  # the stable window's first revision
    canary_closed = [w for w in windows if w.segment.model_version == "t2"]
    assert [(w.revision, w.outcome, w.closed_by, w.events) for w in canary_closed] == [
        (2, "judged", "reference", 63)
    ]
    # One piece of evidence, corrected twice: one alert, one rollback.
    assert _decided([*detections, *revised, *again]) == (["bad-replies"], [ROLLBACK_REQUESTED])


def test_a_canarys_revision_after_its_stable_windows_is_judged_against_the_revised_stable_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    stage = _stage(tmp_path, monkeypatch)
    detections, _ = _both_closed_small(stage, data_dir)
    # The stable version's held-back feedback first: the canary's window (still 2 events) is judged again.
    stable_late = _late(stage, data_dir, "t1", 3, T + 1)
    again, _ = _out(stage, stable_late)
    rejudged = _canary(again)["quality.negative_feedback.v1"]
    assert (rejudged["revision"], rejudged["reference_size"], rejudged["current_size"]) == (1, 63, 2)
    _apply(stage, stable_late)
    # Then the canary's: compared with the stable window as it is now, not as it was at the first verdict.
    canary_late = _late(stage, data_dir, "t2", 4, T + 2)
    revised, _ = _out(stage, canary_late)
    negative = _canary(revised)["quality.negative_feedback.v1"]
    assert (negative["revision"], negative["reference_size"], negative["current_size"]) == (2, 63, 63)
    assert negative["verdict"] == "drift"
    assert _decided([*detections, *again, *revised]) == (["bad-replies"], [ROLLBACK_REQUESTED])


def test_both_late_deliveries_in_one_unit_revise_the_canary_once_against_the_full_stable_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    stage = _stage(tmp_path, monkeypatch)
    _both_closed_small(stage, data_dir)
    late = [_partial(stage, v, _feedback(data_dir, v, 2, 61), PAST + 30) for v in ("t2", "t1")]
    effects = asyncio.run(stage.handle(_batch(stage, (3, late[0]), (4, late[1])), T + 1))
    detections, _ = _out(stage, effects)
    negative = [d for d in detections if d["detector_id"] == "quality.negative_feedback.v1"]
    assert [(d["revision"], d["reference_size"], d["current_size"]) for d in negative] == [(1, 63, 63)]


def test_a_canary_window_judged_before_its_stable_window_had_any_event_is_judged_again_when_they_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    stage = _stage(tmp_path, monkeypatch)
    _both_closed_small(stage, data_dir)
    # The next window: the canary's closes, the stable version's feedback all held back.
    canary = _partial(stage, "t2", _feedback(data_dir, "t2", 2, 40), PAST + 60, window=1)
    alone = asyncio.run(stage.handle(_batch(stage, (3, canary)), T + 1))
    [first] = [d for d in _out(stage, alone)[0] if d["detector_id"] == "quality.negative_feedback.v1"]
    assert first["reference_size"] == 2  # the stable version's latest window, the one before
    _apply(stage, alone)
    stable = _partial(stage, "t1", _feedback(data_dir, "t1", 2, 40), PAST + 90, window=1)
    late = asyncio.run(stage.handle(_batch(stage, (4, stable)), T + 2))
    negative = _canary(_out(stage, late)[0])["quality.negative_feedback.v1"]
    assert (negative["revision"], negative["reference_size"], negative["verdict"]) == (1, 40, "drift")
    assert negative["window_start"] == first["window_start"]


def test_a_worker_that_took_over_the_windows_judges_the_canary_again_when_the_stable_window_is_revised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    before = _stage(tmp_path / "a", monkeypatch)
    after = _stage(tmp_path / "b", monkeypatch)
    early = (
        _partial(before, "t1", _feedback(data_dir, "t1", 0, 2), PAST),
        _partial(before, "t2", _feedback(data_dir, "t2", 0, 2), PAST),
    )
    first = asyncio.run(before.handle(_batch(before, (1, early[0]), (2, early[1])), T))
    _apply(before, first, after)  # the changelog the new owner recovers
    stable_late = _late(after, data_dir, "t1", 3, T + 1)
    again, _ = _out(after, stable_late)
    negative = _canary(again)["quality.negative_feedback.v1"]
    assert (negative["revision"], negative["reference_size"]) == (1, 63)


def test_a_closed_window_names_the_input_it_waited_for_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    stage = _stage(tmp_path, monkeypatch)
    held = f"{stage.settings.topics.feedback}|3"
    partial = _partial(stage, "t1", _feedback(data_dir, "t1", 0, 40), PAST)
    partial.progress[held] = START + 50  # this input's next feedback was held back
    waiting = asyncio.run(stage.handle(_batch(stage, (1, partial)), T))
    assert _out(stage, waiting) == ([], [])
    _apply(stage, waiting)
    caught_up = asyncio.run(stage.handle(_batch(stage, (2, {"progress": {held: PAST + 20}})), T + 21))
    _, [closed] = _out(stage, caught_up)
    reached = datetime.fromtimestamp(PAST + 20, UTC).strftime("%H:%M:%S")
    at = datetime.fromtimestamp(T + 21, UTC).strftime("%H:%M:%S")
    assert (closed.closed_by, closed.waited_for) == (
        "watermark",
        f"{stage.settings.topics.feedback} partition 3 (event time reached {reached} at {at})",
    )


def test_marks_say_what_closed_a_window_and_which_input_it_waited_for() -> None:
    marks = Marks(lateness=1.0, idle_seconds=30.0)
    marks.observe(3, {"in|0": 59.0, "in|1": 75.0}, now=0.0)
    assert marks.closing(3, end=60.0, now=1.0) is None  # in|0 has not passed 61 yet
    marks.observe(3, {"in|0": 61.5}, now=2.0)
    assert marks.closing(3, end=60.0, now=2.0) == (
        "watermark",
        "in partition 0 (event time reached 00:01:01 at 00:00:02)",
    )
    # Every input passing the end in one move: none lagged.
    together = Marks(lateness=1.0, idle_seconds=30.0)
    together.observe(3, {"in|0": 70.0, "in|1": 75.0}, now=0.0)
    assert together.closing(3, end=60.0, now=0.0) == ("watermark", None)
    # An input that went quiet is left behind: the idle timeout closed the window.
    quiet = Marks(lateness=1.0, idle_seconds=30.0)
    quiet.observe(3, {"in|0": 50.0, "in|1": 55.0}, now=0.0)
    quiet.observe(3, {"in|1": 90.0}, now=31.0)
    assert quiet.closing(3, end=60.0, now=31.0) == (
        "idle_timeout",
        "in partition 0 (event time reached 00:00:50 at 00:00:00)",
    )
    # One quiet for longer than that held nothing back: the window waited for the input that passed last.
    quiet.observe(3, {"in|1": 150.0}, now=61.0)
    assert quiet.closing(3, end=120.0, now=61.0) == ("watermark", None)


def test_windows_say_which_rule_closed_them() -> None:
    feedback = "llm.feedback.v1"
    spec = WindowSpec(
        seconds=60, grace_seconds=1, idle_seconds=30, close="watermark", feedback_topic=feedback
    )
    windows = Windows(spec)
    sample = Sample(10)
    sample.offer({"request_id": "r"}, random.Random(1))
    held = Partial(
        {"model": "m"}, "feedback", MINUTE, START, START + 1, sample, {f"{feedback}|2": START + 30}
    )
    assert windows.add(held, T, partition=3) == []
    # Its segment went quiet with an input behind: the idle timeout closes it, naming that input.
    [closed] = windows.tick(T + 30)
    reached = datetime.fromtimestamp(START + 30, UTC).strftime("%H:%M:%S")
    at = datetime.fromtimestamp(T, UTC).strftime("%H:%M:%S")
    assert (closed.closed_by, closed.waited_for) == (
        "idle_timeout",
        f"{feedback} partition 2 (event time reached {reached} at {at})",
    )
    counted = Windows(WindowSpec(seconds=None, events=1))
    [by_count] = counted.add(Partial({"model": "m"}, "inference", 0, START, START, sample), T)
    assert (by_count.closed_by, by_count.waited_for) == ("count", None)
