"""Issue 17, trial 17b finding 2: a feedback read again after ``kill -9`` counts once in its window.

A feedback that came before its inference is joined by the inference's batch.
The next owner, which re-reads both topics in batches cut elsewhere and
without the join state the killed worker never made durable, may read the
inference first and join the feedback from its own batch. Counted at the
message that joined it, the feedback had two offsets (the inference's, then
its own) and its window counted it twice (22-38 % too many in the trial).
Pure code: the ingest stage's handler, as tests/test_ingest_sampling.py
drives it, and the detect stage's :class:`~streams.windows.Windows`.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from core.settings import Settings
from schemas.events import Feedback, InferenceLog
from streams.app import create_app
from streams.ingest import Accepted
from streams.ingest_stage import IngestStage
from streams.metrics import Metrics
from streams.runtime import Batch
from streams.windows import Partial, Windows, window_spec

_START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC).timestamp()
_REQUESTS = 40


def _inference(i: int) -> bytes:
    return (
        InferenceLog.model_validate(
            {
                "schema_version": "1",
                "event_id": f"e-{i}",
                "request_id": f"r-{i}",
                "timestamp": datetime.fromtimestamp(_START + i * 0.1, UTC),
                "model": {"name": "bot", "version": "v1"},
                "prompt": f"question {i}",
                "response": f"answer {i}",
            }
        )
        .model_dump_json()
        .encode()
    )


def _feedback(i: int) -> bytes:
    return (
        Feedback.model_validate(
            {
                "schema_version": "1",
                "event_id": f"f-{i}",
                "request_id": f"r-{i}",
                "timestamp": datetime.fromtimestamp(_START + i * 0.1 + 1, UTC),
                "kind": "thumbs",
                "value": i % 3 != 0,
            }
        )
        .model_dump_json()
        .encode()
    )


def _messages(topic: str, make: Any) -> list[Any]:
    """One message per request on partition 0 of ``topic``, at offset = request number."""
    return [
        SimpleNamespace(
            topic=topic,
            partition=0,
            offset=i,
            key=f"r-{i}".encode(),
            value=make(i),
            timestamp=_START + i * 0.1,
            headers=[],
            tp=TP(topic, 0),
        )
        for i in range(_REQUESTS)
    ]


def _worker(tmp_path: Path, name: str) -> tuple[IngestStage, Settings]:
    """A fresh ingest stage (an empty join store: the killed worker's join state never became durable)."""
    settings = Settings(
        data_dir=tmp_path / name, join_store="memory", detection=True, curation=False, decide=False
    )
    stage = create_app(settings, Metrics()).runtime.stages["ingest"]
    assert isinstance(stage, IngestStage)
    stage._follow_sources = lambda: None  # type: ignore[method-assign]  # no consumer group here
    return stage, settings


def _feedback_partials(stage: IngestStage, batches: list[list[Any]]) -> list[Partial]:
    """The feedback partials the stage publishes on the summaries topic, handling ``batches`` in order."""
    now = time.time()
    found: list[Partial] = []

    async def handle(messages: list[Any]) -> None:
        decode = stage.inputs[messages[0].topic]
        accepted = [(m, outcome) for m in messages if isinstance(outcome := decode(m, now), Accepted)]
        assert len(accepted) == len(messages)
        effects = await stage.handle(Batch(messages[0].topic, messages, accepted, time.perf_counter()), now)
        for write in effects.writes:
            write.table.apply(write.key, write.value, write.partition)
        for (topic, _), records in effects.records.take().items():
            for _, value, _ in records:
                data = json.loads(value or b"{}")
                if topic == stage.topics.summaries and data.get("kind") == "feedback":
                    found.append(Partial.from_json(data))

    for messages in batches:
        asyncio.run(handle(messages))
    return found


def test_a_feedback_joined_from_its_inference_then_from_its_own_batch_counts_once(tmp_path: Path) -> None:
    killed, settings = _worker(tmp_path, "killed")
    topics = settings.topics
    inference, feedback = _messages(topics.inference, _inference), _messages(topics.feedback, _feedback)
    # The killed worker: every feedback waits for its inference, which joins it (outputs out, then kill -9).
    first = _feedback_partials(killed, [feedback, inference])
    # The next owner reads the inference first: each feedback is joined from its own batch now.
    again = _feedback_partials(_worker(tmp_path, "next")[0], [inference, feedback])
    assert sum(p.sample.seen for p in first) == sum(p.sample.seen for p in again) == _REQUESTS

    windows = Windows(window_spec(settings))
    for partial in first + again:
        windows.add(partial, now=0.0, partition=0)
    closed = [w for w in windows.tick(now=settings.window_idle_seconds + 1) if w.kind == "feedback"]
    assert sum(w.seen for w in closed) == _REQUESTS
    assert windows.duplicate_events == _REQUESTS
    for window in closed:
        assert len(window.rows) == len({row["request_id"] for row in window.rows}), "one row per feedback"


def test_feedback_waiting_for_its_inference_between_counted_ones_is_not_taken_for_counted(
    tmp_path: Path,
) -> None:
    # Odd requests' feedback comes first and waits; even ones' inference came before: a batch of the
    # feedback topic counts only the even offsets, and the odd ones are counted later, at their own.
    stage, settings = _worker(tmp_path, "one")
    topics = settings.topics
    inference, feedback = _messages(topics.inference, _inference), _messages(topics.feedback, _feedback)
    even, odd = inference[0::2], inference[1::2]
    partials = _feedback_partials(stage, [even, feedback, odd])
    windows = Windows(window_spec(settings))
    for partial in partials:
        windows.add(partial, now=0.0, partition=0)
    closed = [w for w in windows.tick(now=settings.window_idle_seconds + 1) if w.kind == "feedback"]
    assert sum(w.seen for w in closed) == _REQUESTS
    assert windows.duplicate_events == 0
