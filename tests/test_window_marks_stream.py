"""On the real broker, two workers and eight partitions, one partition's producer 1.5 s behind.

Every window is judged on all its events (its Detections' ``window_events``, and
its last ``WindowClosed``, equal the events sent for it), and a canary clearly
worse than its stable version is rolled back exactly once: both versions of the
model are merged by one worker, whichever it is.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from retrain_trigger.actions import ROLLBACK_REQUESTED, from_kafka
from schemas.events import Detection, WindowClosed
from services import sample_data
from tests.helpers import WorkerStack

pytestmark = pytest.mark.broker

PARTITIONS, HELD = 8, 5
WINDOW = 5  # seconds of event time
DETECTORS = [
    {"detector_id": "drift.text_length.v1", "kind": "inference", "config": {"column": "response_chars"}},
    {"detector_id": "quality.negative_feedback.v1", "kind": "feedback"},
]

#: (model version, kind, window start) -> events sent for that window
Truth = Counter[tuple[str, str, datetime]]


def _traffic(data_dir: Path, start: datetime) -> tuple[list[tuple[int, bytes, bytes]], Truth]:
    """Three windows of stable v1 (replies people chose) and canary v2 (the ones they rejected).

    Returns (partition, key, value) in sending order, inference before its feedback.
    """
    rng = random.Random(17)
    pairs = [pair for _, pair in zip(range(120), sample_data.hh_rlhf(data_dir), strict=False)]
    records: list[tuple[int, bytes, bytes]] = []
    truth: Truth = Counter()
    for n, (chosen, rejected) in enumerate(pairs):
        window, at_seconds = divmod(n, 40)
        at = start + timedelta(seconds=window * WINDOW + at_seconds * WINDOW / 40)
        for version, exchange in (("v1", chosen), ("v2", rejected)):
            partition = (2 * n + (version == "v2")) % PARTITIONS
            key = exchange.request_id.encode()
            records.append(
                (
                    partition,
                    key,
                    json.dumps(sample_data.inference_event(exchange, at, rng, version=version)).encode(),
                )
            )
            truth[(version, "inference", _window_start(at))] += 1
            for feedback in sample_data.feedback_events(exchange, at):
                records.append((partition, key, json.dumps(feedback).encode()))
                truth[
                    (version, "feedback", _window_start(datetime.fromisoformat(feedback["timestamp"])))
                ] += 1
    return records, truth


def _window_start(at: datetime) -> datetime:
    return datetime.fromtimestamp(at.timestamp() // WINDOW * WINDOW, UTC)


def _send(stack: WorkerStack, records: list[tuple[int, bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap.split(","))
    for partition, key, value in records:
        topic = stack.topics.inference if b'"prompt"' in value else stack.topics.feedback
        producer.send(topic, value, key=key, partition=partition)
    producer.flush()
    producer.close()


def _latest(items: list[Any], key: Any) -> dict[Any, Any]:
    """The last revision of each window's item."""
    latest: dict[Any, Any] = {}
    for item in sorted(items, key=lambda i: i.revision):
        latest[key(item)] = item
    return latest


def test_two_workers_judge_every_window_whole_with_a_partition_behind_and_roll_the_canary_back_once(
    broker: str, tmp_path: Path, data_dir: Path
) -> None:
    detectors = tmp_path / "detectors.yaml"
    detectors.write_text(yaml.safe_dump(DETECTORS))
    stack = WorkerStack(
        broker,
        tmp_path,
        partitions=PARTITIONS,
        curation="false",
        history="false",
        stable_versions=json.dumps({sample_data.MODEL: "v1"}),
        window_seconds=WINDOW,
        window_grace_seconds=0.5,
        window_idle_seconds=6,
        detectors_file=detectors,
    )
    other = stack.peer(tmp_path / "b")
    stack.start(wait=False)
    other.start(wait=False)
    try:
        for worker in (stack, other):
            worker.wait_healthy()
        stack.wait(
            lambda: all(w.health().get("assigned_partitions") for w in (stack, other)),
            "both workers never had partitions",
            60,
        )
        start = datetime.fromtimestamp((datetime.now(UTC).timestamp() - 60) // WINDOW * WINDOW, UTC)
        records, truth = _traffic(data_dir, start)
        first_window = start + timedelta(seconds=WINDOW)
        # The held partition's events after its first window come 1.5 s late, with their own event time.
        held = [r for r in records if r[0] == HELD and _sent_after(r, first_window)]
        on_time = [r for r in records if r not in held]
        late = threading.Timer(1.5, _send, (stack, held))
        _send(stack, on_time)
        late.start()
        late.join()

        def judged() -> dict[Any, WindowClosed]:
            closed = [WindowClosed.model_validate_json(r.value) for r in stack.read_all(stack.topics.windows)]
            return _latest(closed, lambda w: (w.segment.model_version, w.kind, w.window_start))

        stack.wait(lambda: set(judged()) >= set(truth), "not every window closed", 60)
        stack.wait_committed(stack.topics.inference, stack.topics.feedback, stack.topics.summaries)
        stack.wait_committed(stack.topics.detections)
    finally:
        stack.stop()
        other.stop()
    closed = judged()
    assert {key: w.events for key, w in closed.items()} == dict(truth), (
        stack.log()[-2000:],
        other.log()[-2000:],
    )
    detections = [Detection.model_validate_json(r.value) for r in stack.read_all(stack.topics.detections)]
    latest = _latest(detections, lambda d: (d.detector_id, d.segment.model_version, d.window_start))
    assert latest, "nothing was judged"
    for (_, version, window_start), detection in latest.items():
        kind = "feedback" if detection.detector_id.startswith("quality.negative") else "inference"
        assert detection.measurements["window_events"] == truth[(version, kind, window_start)]
    rollbacks = [from_kafka(r.value) for r in stack.read_all(stack.topics.rollback_requests)]
    requested = [event for event in rollbacks if event.type == ROLLBACK_REQUESTED]
    assert len(requested) == 1 and requested[0].data["from_version"] == "v2", rollbacks


def _sent_after(record: tuple[int, bytes, bytes], when: datetime) -> bool:
    """Whether an event's time is at or after ``when``."""
    return datetime.fromisoformat(json.loads(record[2])["timestamp"]) >= when
