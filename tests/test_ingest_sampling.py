"""Issue 16, round 2: ingest's cheaper sampling and sources publish exactly what the plain ones did.

The stage counts each event with ``BatchSummaries.keeps`` and builds rows only
for the events its samples still hold when it publishes. The reference here is
the way it sampled before, through the public ``wants``/``keep`` API with a row
built for every event wanted: with the same seed both must draw the same keys
and publish the same partials (segments, counts, keys, rows, offsets). The
enriched and joined records, whose sources the stage now takes from the
message read, are the ones a SourceRef made.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from pydantic_core import from_json, to_json

from core.settings import Settings
from detectors.frame import describe, feedback_row, log_row, segment_of
from schemas.events import Feedback, InferenceLog, JoinedFeedback, SourceRef
from streams.app import create_app
from streams.ingest import Accepted, enrich
from streams.ingest_stage import IngestStage
from streams.metrics import Metrics
from streams.runtime import Batch
from streams.watermarks import source_of
from streams.window_batch import BatchSummaries
from streams.windows import window_spec

_SEED = 16
_START = datetime(2026, 12, 1, 12, 0, 50, tzinfo=UTC).timestamp()  # 500 events in a first window


def _inference(i: int) -> bytes:
    """Two models, two apps (one of them None): four segments; every 7th without tokens."""
    event = InferenceLog.model_validate(
        {
            "schema_version": "1",
            "event_id": f"e-{i}",
            "request_id": f"r-{i}",
            "timestamp": datetime.fromtimestamp(_START + i * 0.02, UTC),
            "model": {"name": f"bot-{i % 2}", "version": "v1"},
            "app": None if i // 2 % 2 else "web",
            "prompt": f"question {i} " * (i % 5 + 1),
            "response": "I'm sorry, I can't help." if i % 11 == 0 else f"answer {i}",
            "tokens": None if i % 7 == 0 else {"prompt": 3, "completion": i % 9},
        }
    )
    return event.model_dump_json().encode()


def _feedback(i: int) -> bytes:
    event = Feedback.model_validate(
        {
            "schema_version": "1",
            "event_id": f"f-{i}",
            "request_id": f"r-{i}",
            "timestamp": datetime.fromtimestamp(_START + i * 0.02 + 1, UTC),
            "kind": "rating",
            "value": i % 5 + 1,
        }
    )
    return event.model_dump_json().encode()


def _messages(topic: str, values: list[tuple[int, bytes]]) -> list[Any]:
    return [
        SimpleNamespace(
            topic=topic,
            partition=i % 3,
            offset=i,
            key=f"r-{i}".encode(),
            value=value,
            timestamp=_START + i * 0.02,
            headers=[],
            tp=TP(topic, i % 3),
        )
        for i, value in values
    ]


def _where(topic: str, offset: int) -> SourceRef:
    """Where _messages put the event at ``offset``."""
    return SourceRef(topic=topic, partition=offset % 3, offset=offset)


def _partials(records: dict[tuple[str, int | None], list[Any]], topic: str) -> list[Any]:
    """The partials published on ``topic`` (not the progress-only records), without their progress."""
    found = []
    for (name, _), batch in records.items():
        for _, value, _ in batch:
            data = from_json(value)
            if name == topic and set(data) != {"progress"}:
                data.pop("progress", None)
                found.append(data)
    return found


def _plain(partials: BatchSummaries) -> list[Any]:
    return [from_json(to_json(p.to_json(), inf_nan_mode="null")) for p in partials.all()]


def test_the_stage_publishes_the_partials_that_wants_and_keep_make(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, join_store="memory", detection=True, curation=False, decide=False)
    stage = create_app(settings, Metrics()).runtime.stages["ingest"]
    assert isinstance(stage, IngestStage)
    stage._follow_sources = lambda: None  # type: ignore[method-assign]  # no consumer group here
    capacity = stage.summaries.capacity
    stage.rng = random.Random(_SEED)
    stage.summaries = BatchSummaries(stage.window_spec, capacity, stage.rng)
    topics, now = settings.topics, time.time()
    count = 2_400  # 475 events per segment in the second window: three partials of at most 200 each
    batches = [
        _messages(topics.inference, [(i, _inference(i)) for i in range(count)]),
        _messages(topics.feedback, [(i, _feedback(i)) for i in range(0, count, 2)]),
    ]

    async def handle(messages: list[Any]) -> Any:
        decode = stage.inputs[messages[0].topic]
        accepted = [(m, outcome) for m in messages if isinstance(outcome := decode(m, now), Accepted)]
        assert len(accepted) == len(messages)
        effects = await stage.handle(Batch(messages[0].topic, messages, accepted, time.perf_counter()), now)
        for write in effects.writes:  # what the runtime does once the outputs are acknowledged
            write.table.apply(write.key, write.value, write.partition)
        return accepted, effects.records.take()

    (inferences, first), (_, second) = [asyncio.run(handle(messages)) for messages in batches]
    joined = [
        JoinedFeedback.model_validate_json(v)
        for _, v, _ in itertools.chain(*second.values())
        if b'"joined_at"' in v
    ]
    assert len(joined) == count // 2

    # The reference: the same draws through wants/keep, a row built for every event wanted.
    rng = random.Random(_SEED)
    spec = window_spec(settings)
    expected_first = BatchSummaries(spec, capacity, rng)
    for message, outcome in inferences:
        event = outcome.event
        segment = {
            "model": event.model.name,
            "model_version": event.model.version,
            "app": event.app,
            "route": event.route,
            "tenant": event.tenant,
        }
        origin = (source_of(message.topic, message.partition), message.offset)
        wanted = expected_first.wants(segment, "inference", event.timestamp.timestamp(), origin)
        if wanted is not None:
            row = log_row(event, describe(event), settings.window_text_chars)
            wanted[0].sample.keep(row, wanted[1], origin)
    expected_second = BatchSummaries(spec, capacity, rng)
    # The outbox groups records by partition; the stage drew the keys in the order read (offsets).
    for offset, record in sorted((int(r.request_id.removeprefix("r-")), r) for r in joined):
        row = feedback_row(record)
        origin = (source_of(topics.feedback, offset % 3), offset)
        wanted = expected_second.wants(
            segment_of(row), "feedback", record.feedback.timestamp.timestamp(), origin
        )
        if wanted is not None:
            wanted[0].sample.keep(row, wanted[1], origin)

    # The enriched logs and joined feedback, built from the message rather than a SourceRef, say the same.
    enriched = sorted(v for (name, _), batch in first.items() if name == topics.enriched for _, v, _ in batch)
    assert enriched == sorted(
        enrich(outcome.event, _where(message.topic, message.offset)).model_dump_json().encode()
        for message, outcome in inferences
    )
    for record in joined:
        offset = int(record.request_id.removeprefix("r-"))
        assert record.feedback_source == _where(topics.feedback, offset)
        assert record.inference_source == _where(topics.inference, offset)

    published = _partials(first, topics.summaries)
    assert len(published) == 16  # four segments x (one partial in the first window + three in the second)
    # No partial lets a row go; per segment two partials of the second window are full (475 = 200 + 200 + 75).
    assert all(len(p["rows"]) == p["seen"] for p in published)
    assert sum(p["seen"] == capacity for p in published) == 8
    assert published == _plain(expected_first)
    assert _partials(second, topics.summaries) == _plain(expected_second)
