"""The detect stage's handlers on their own: what each unit of work asks the runtime to do (its Effects)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from core.settings import Settings, Topics
from retrain_trigger.stable import StableVersionMarked
from schemas.events import DeadLetterReason, Detection
from streams.app import create_app
from streams.detect import Judged, Reference
from streams.detect_stage import DetectStage, SlowResult, decode_summary
from streams.ingest import Accepted, Rejected
from streams.metrics import Metrics
from streams.runtime import Batch, Effects
from streams.windows import ClosedWindow, Partial, Sample

WINDOW_EVENTS = 100
FAST = {"detector_id": "drift.ks.v1", "kind": "inference", "config": {"column": "response_chars"}}
SLOW = {**FAST, "config": {"column": "prompt_chars"}, "slow": True}


def _stage(tmp_path: Path, detectors: list[dict[str, Any]], **settings: Any) -> DetectStage:
    detectors_file = tmp_path / "detectors.yaml"
    detectors_file.write_text(yaml.safe_dump(detectors))
    config = Settings(
        data_dir=tmp_path / "data",
        curation=False,
        decide=False,
        window_events=WINDOW_EVENTS,
        detectors_file=detectors_file,
        **settings,
    )
    app = create_app(config, Metrics())
    stage = app.runtime.stages["detect"]
    assert isinstance(stage, DetectStage)
    return stage


def _partial(version: str, mean: float, seed: int) -> Partial:
    """A whole count window of one segment (it closes as soon as it is merged)."""
    rng = random.Random(seed)
    sample = Sample(WINDOW_EVENTS)
    for i in range(WINDOW_EVENTS):
        row = {"request_id": f"{version}-{seed}-{i}", "response_chars": rng.gauss(mean, 50.0)}
        sample.offer({**row, "prompt_chars": row["response_chars"]}, rng)
    segment = {"model": "m", "model_version": version, "app": "a", "route": None, "tenant": None}
    return Partial(segment, "inference", 0, 1.8e9, 1.8e9 + 60, sample)


def _message(value: bytes, offset: int = 0, partition: int = 3) -> Any:
    return SimpleNamespace(topic="summaries", partition=partition, offset=offset, key=b"seg", value=value)


def _batch(*partials: Partial) -> Batch:
    accepted = []
    for n, partial in enumerate(partials):
        message = _message(json.dumps(partial.to_json()).encode(), offset=n)
        outcome = decode_summary(message, 0.0)
        assert isinstance(outcome, Accepted)
        accepted.append((message, outcome))
    return Batch("summaries", [m for m, _ in accepted], accepted, 0.0)


def _detections(effects: Effects, topic: str) -> list[Detection]:
    # Each closed window also has its WindowClosed (tests/test_window_marks.py checks those).
    records = {slot: queued for slot, queued in effects.records.take().items() if slot[0] != Topics().windows}
    assert set(records) <= {(topic, None)}, records.keys()
    return [Detection.model_validate_json(value or b"") for _, value, _ in records.get((topic, None), [])]


def _apply(effects: Effects) -> None:
    """What the runtime does with a unit's state writes (before the next unit)."""
    for write in effects.writes:
        write.table.apply(write.key, write.value, write.partition)


def test_two_windows_in_one_batch_pin_then_judge_and_the_table_is_only_written_by_the_runtime(
    tmp_path: Path,
) -> None:
    stage = _stage(tmp_path, [FAST])
    effects = asyncio.run(stage.handle(_batch(_partial("v1", 500, 1), _partial("v1", 900, 2)), 1.8e9))
    # The first window was pinned; the second read that write within the same unit and drifted.
    [detection] = _detections(effects, stage.settings.topics.detections)
    assert detection.verdict == "drift" and detection.reference.startswith("pinned:")
    assert detection.segment.model_version == "v1"
    assert [(w.table, w.partition) for w in effects.writes] == [(stage.table, 3)]
    assert effects.writes[0].table.changelog.endswith("references-changelog")
    assert not effects.background and not effects.calls
    # Nothing was written by the handler itself: the runtime applies the writes.
    assert stage.table.get(effects.writes[0].key) is None
    _apply(effects)
    later = asyncio.run(stage.handle(_batch(_partial("v1", 500, 3)), 1.8e9))
    [calm] = _detections(later, stage.settings.topics.detections)
    assert calm.verdict == "ok" and calm.reference == detection.reference
    assert not later.writes  # the pinned reference is complete: it does not move


def test_slow_detectors_are_background_work_whose_result_comes_back_to_receive(tmp_path: Path) -> None:
    stage = _stage(tmp_path, [FAST, SLOW], slow_detector_queue=1)
    _apply(asyncio.run(stage.handle(_batch(_partial("v1", 500, 1)), 1.8e9)))  # pinned
    judged_here = stage.judge.run(
        *_window_and_reference(stage), stage.judge.specs_for("inference", slow=True)
    )
    calls: list[Any] = []

    async def judge(window: ClosedWindow, reference: Reference, specs: Any) -> tuple[list[Judged], list[str]]:
        calls.append((window, reference, specs))
        return judged_here, ["drift.failing.v1"]

    stage.slow = SimpleNamespace(judge=judge, report=stage.slow.report, stop=stage.slow.stop)  # type: ignore[assignment]

    async def scenario() -> tuple[Effects, Effects, Any]:
        first = await stage.handle(_batch(_partial("v1", 900, 2)), 1.8e9)
        second = await stage.handle(_batch(_partial("v1", 900, 3)), 1.8e9)  # the queue of 1 is full
        [work] = first.background
        result = await work
        return first, second, result

    first, second, result = asyncio.run(scenario())
    assert not second.background
    assert stage.metrics.windows_skipped.labels("inference")._value.get() == 1
    assert [d.config["column"] for d in _detections(first, stage.settings.topics.detections)] == [
        "response_chars"
    ]
    assert isinstance(result, SlowResult) and len(calls) == 1 and stage.slow_pending == 1
    back = asyncio.run(stage.receive(result, 1.8e9))
    [slow] = _detections(back, stage.settings.topics.detections)
    assert slow.config["column"] == "prompt_chars" and slow.verdict == judged_here[0].finding.verdict
    assert stage.slow_pending == 0  # the next window gets the slow detectors again
    assert stage.metrics.detector_errors.labels("drift.failing.v1")._value.get() == 1


def _window_and_reference(stage: DetectStage) -> tuple[ClosedWindow, Reference]:
    partial = _partial("v1", 900, 2)
    [window] = stage.windows.add(partial, 1.8e9)  # a window the stage itself never sees again
    reference = stage.references.for_window(window)
    assert reference is not None
    return window, reference


def test_slow_detectors_that_raise_free_their_slot_and_are_counted(tmp_path: Path) -> None:
    stage = _stage(tmp_path, [SLOW], slow_detector_queue=1)
    _apply(asyncio.run(stage.handle(_batch(_partial("v1", 500, 1)), 1.8e9)))

    async def judge(*args: Any) -> Any:
        raise RuntimeError("the child died")

    stage.slow = SimpleNamespace(judge=judge, stop=stage.slow.stop)  # type: ignore[assignment]

    async def scenario() -> Effects:
        [work] = (await stage.handle(_batch(_partial("v1", 900, 2)), 1.8e9)).background
        return await stage.receive(await work, 1.8e9)

    back = asyncio.run(scenario())
    assert not _detections(back, stage.settings.topics.detections)
    assert stage.slow_pending == 0
    assert stage.metrics.detector_errors.labels("slow-detectors")._value.get() == 1


def test_slow_work_cancelled_by_a_stopping_worker_says_its_detections_are_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stage = _stage(tmp_path, [SLOW])
    _apply(asyncio.run(stage.handle(_batch(_partial("v1", 500, 1)), 1.8e9)))

    async def judge(*args: Any) -> Any:
        await asyncio.Event().wait()  # a window the child never finishes

    stage.slow = SimpleNamespace(judge=judge, stop=stage.slow.stop)  # type: ignore[assignment]

    async def scenario() -> None:
        [work] = (await stage.handle(_batch(_partial("v1", 900, 2)), 1.8e9)).background
        task = asyncio.ensure_future(work)
        await asyncio.sleep(0)  # let it start waiting on the child
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, "loopwatch.detect"):
        asyncio.run(scenario())
    assert "stopping: the slow detections of the inference window are not published" in caplog.text


def test_a_canary_window_waits_for_its_stable_reference_then_is_judged_at_a_tick(tmp_path: Path) -> None:
    stage = _stage(tmp_path, [FAST], stable_versions={"m": "v1"})
    topic = stage.settings.topics.detections

    async def scenario() -> tuple[Effects, Effects, Effects, Effects]:
        canary = await stage.handle(_batch(_partial("v2", 900, 1)), 1.8e9)
        early = await stage.tick(1.8e9 + 0.1)
        stable = await stage.handle(_batch(_partial("v1", 500, 2)), 1.8e9 + 0.2)
        _apply(stable)
        return canary, early, stable, await stage.tick(1.8e9 + 0.3)

    canary, early, stable, ready = asyncio.run(scenario())
    assert not _detections(canary, topic) and not canary.writes and not _detections(early, topic)
    assert not _detections(stable, topic)  # v1's first window: pinned as its own reference
    assert any(w.key.startswith(b"stable|") for w in stable.writes)
    [detection] = _detections(ready, topic)
    assert detection.segment.model_version == "v2" and detection.reference.startswith("stable:")
    assert detection.verdict == "drift" and not stage.waiting


def test_a_canary_window_is_judged_without_a_stable_reference_after_the_max_wait(tmp_path: Path) -> None:
    stage = _stage(tmp_path, [FAST], stable_versions={"m": "v1"}, window_idle_seconds=5)

    async def scenario() -> tuple[Effects, int, Effects]:
        await stage.handle(_batch(_partial("v2", 900, 1)), 1.8e9)
        before = await stage.tick(1.8e9 + 4)
        return before, len(stage.waiting), await stage.tick(1.8e9 + 6)

    before, waiting, after = asyncio.run(scenario())
    assert not before.writes and waiting == 1 and not stage.waiting
    assert [w.key for w in after.writes] == [b"inference|m|v2|a||"]  # its own traffic, pinned


def test_a_stable_mark_makes_the_latest_windows_of_that_version_references_in_the_table(
    tmp_path: Path,
) -> None:
    stage = _stage(tmp_path, [FAST])
    _apply(asyncio.run(stage.handle(_batch(_partial("v2", 500, 1)), 1.8e9)))
    mark = StableVersionMarked(model="m", version="v2", marked_at="2026-12-01T00:00:00Z")
    effects = asyncio.run(stage.receive(mark, 1.8e9))
    assert [(w.key.split(b"|")[0], w.partition) for w in effects.writes] == [(b"stable", 3)]
    assert not effects.records.take()
    with pytest.raises(TypeError):
        asyncio.run(stage.receive(object(), 1.8e9))


def test_a_window_that_fails_to_judge_is_counted_and_the_stage_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path, [FAST])
    _apply(asyncio.run(stage.handle(_batch(_partial("v1", 500, 1)), 1.8e9)))

    def broken(*args: Any) -> Any:
        raise ValueError("a detector bug")

    monkeypatch.setattr(stage.judge, "run", broken)
    effects = asyncio.run(stage.handle(_batch(_partial("v1", 900, 2)), 1.8e9))
    assert not _detections(effects, stage.settings.topics.detections)
    assert stage.metrics.detector_errors.labels("detect-stage")._value.get() == 1


VALID = _partial("v1", 500, 0).to_json()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", DeadLetterReason.MALFORMED_JSON),
        (b"\xff\xfe", DeadLetterReason.INVALID_UTF8),
        (b'{"segment": ', DeadLetterReason.MALFORMED_JSON),
        (b"[1, 2]", DeadLetterReason.NOT_AN_OBJECT),
        (
            json.dumps({k: v for k, v in VALID.items() if k != "rows"}).encode(),
            DeadLetterReason.MISSING_FIELD,
        ),
        (json.dumps({**VALID, "seen": "many"}).encode(), DeadLetterReason.WRONG_TYPE),
        (json.dumps({**VALID, "kind": "other"}).encode(), DeadLetterReason.INVALID_VALUE),
        (json.dumps({**VALID, "rows": VALID["rows"][:-1]}).encode(), DeadLetterReason.INVALID_VALUE),
    ],
)
def test_a_summary_that_cannot_be_parsed_is_rejected_with_a_reason(
    value: bytes, reason: DeadLetterReason
) -> None:
    outcome = decode_summary(_message(value), 0.0)
    assert isinstance(outcome, Rejected) and outcome.reason is reason, outcome


def test_the_stage_decoder_counts_rejected_summaries_as_detect_stage_errors(tmp_path: Path) -> None:
    stage = _stage(tmp_path, [FAST])
    [decode] = stage.inputs.values()
    assert isinstance(decode(_message(json.dumps(VALID).encode()), 0.0), Accepted)
    assert isinstance(decode(_message(b"not json"), 0.0), Rejected)
    assert stage.metrics.detector_errors.labels("detect-stage")._value.get() == 1
