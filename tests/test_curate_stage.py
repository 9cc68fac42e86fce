"""The curate stage: its handler's Effects on their own, and a bad joined record on the real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.settings import Settings
from curation import DATASET_KINDS
from curation import store as store_module
from curation.store import DatasetStore
from schemas.events import DeadLetter, DeadLetterReason, JoinedFeedback
from streams.app import create_app
from streams.curate_stage import CurateStage
from streams.ingest import Accepted
from streams.metrics import Metrics
from streams.runtime import Batch
from tests.helpers import WorkerStack

from .test_curate_stream import _expected, _stored, _traffic


def _stage(tmp_path: Path) -> CurateStage:
    settings = Settings(data_dir=tmp_path / "data", detection=False, decide=False)
    stage = create_app(settings, Metrics()).runtime.stages["curate"]
    assert isinstance(stage, CurateStage)
    return stage


def _batch(stage: CurateStage, values: list[bytes], partition: int = 1) -> Batch:
    """A batch as the runtime hands it over: every message, and the ones its decoder accepted."""
    [(topic, decode)] = stage.inputs.items()
    messages = [
        SimpleNamespace(topic=topic, partition=partition, offset=10 + n, key=b"r", value=value)
        for n, value in enumerate(values)
    ]
    accepted = [(m, outcome) for m in messages if isinstance(outcome := decode(m, 0.0), Accepted)]
    return Batch(topic, messages, accepted, 0.0)


def _joined(records: list[JoinedFeedback]) -> list[bytes]:
    return [r.model_dump_json().encode() for r in records]


def test_the_delta_write_is_a_call_for_the_runtime_with_the_batch_offsets_in_its_commit(
    tmp_path: Path, data_dir: Path
) -> None:
    stage = _stage(tmp_path)
    _, _, joined = _traffic(data_dir, 12)
    batch = _batch(stage, [*_joined(joined), b'{"request_id": '])
    assert len(batch.accepted) == len(joined)  # the last one is the runtime's to dead-letter
    effects = asyncio.run(stage.handle(batch, 0.0))
    root = tmp_path / "data" / "datasets"
    assert not root.exists() or not _stored(root)  # nothing written by the handler itself
    assert not effects.records.take() and not effects.writes and not effects.background
    [write] = effects.calls
    write()  # what the runtime runs in a thread, after the records and before the acks
    assert _stored(root) == _expected(joined)
    store = DatasetStore(root)
    kinds = [kind for kind in DATASET_KINDS if store.exists(kind)]
    history = store.history(kinds[0], limit=1)[0]
    # The batch's last offset (the bad record's: it is acked with the batch).
    assert f"{batch.topic}/1@{10 + len(joined)}" in json.dumps(history)
    assert stage.metrics.curated_events._value.get() == len(joined)
    assert sum(stage.metrics.curated_rows.labels(k)._value.get() for k in kinds) == sum(
        len(ids) for ids in _expected(joined).values()
    )


def test_a_batch_of_only_bad_records_writes_nothing(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    effects = asyncio.run(stage.handle(_batch(stage, [b"", b"[]"]), 0.0))
    assert not effects.calls and not effects.records.take()


def test_a_failing_write_is_retried_then_raised_for_the_worker_to_replay(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path)
    _, _, joined = _traffic(data_dir, 4)
    waits: list[float] = []
    monkeypatch.setattr(store_module.time, "sleep", waits.append)  # the backoff, not waited out here
    write = stage.store.write
    attempts: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("commit conflict")
        return write(*args, **kwargs)

    monkeypatch.setattr(stage.store, "write", flaky)
    [call] = asyncio.run(stage.handle(_batch(stage, _joined(joined)), 0.0)).calls
    call()
    assert len(attempts) == 3 and len(waits) == 2
    assert _stored(tmp_path / "data" / "datasets") == _expected(joined)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the disk is gone")

    monkeypatch.setattr(stage.store, "write", broken)
    [call] = asyncio.run(stage.handle(_batch(stage, _joined(joined)), 0.0)).calls
    with pytest.raises(OSError, match="the disk is gone"):
        call()


@pytest.mark.broker
def test_a_malformed_joined_record_and_summary_are_dead_lettered_and_the_stages_carry_on(
    broker: str, tmp_path: Path, data_dir: Path
) -> None:
    stack = WorkerStack(broker, tmp_path, decide="false").start()
    _, _, joined = _traffic(data_dir, 6)
    try:
        stack.send(stack.topics.joined, [b'{"request_id": "r-1", "inference": '], keys=[b"r-1"])
        stack.send(stack.topics.summaries, [b"[]"], keys=[b"seg"])
        stack.send(stack.topics.joined, _joined(joined), keys=[r.request_id.encode() for r in joined])
        letters = [DeadLetter.model_validate_json(r.value) for r in stack.read(stack.topics.deadletter, 2)]
        expected = _expected(joined)
        stack.wait(
            lambda: _stored(tmp_path / "data" / "datasets") == expected,
            "the valid joined records after the bad one were not curated",
            timeout=90,
        )
        assert stack.metric("loopwatch_detector_errors_total", detector="detect-stage") == 1
    finally:
        stack.stop()
    by_topic = {letter.source.topic: letter for letter in letters if letter.source is not None}
    assert by_topic[stack.topics.joined].reason is DeadLetterReason.MALFORMED_JSON
    assert by_topic[stack.topics.summaries].reason is DeadLetterReason.NOT_AN_OBJECT
    assert by_topic[stack.topics.joined].source.offset == 0  # type: ignore[union-attr]
