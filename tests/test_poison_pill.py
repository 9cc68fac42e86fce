"""Broker test: messages too large to copy whole into a dead letter no longer crash the worker."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from kafka import KafkaConsumer, TopicPartition

from core.settings import Settings
from services import sample_data

from .helpers import WorkerStack, values_json
from .test_streams import numbered_inference

pytestmark = pytest.mark.broker

# What the producer refused before (aiokafka's default max_request_size): a dead
# letter with a base64 copy of an ~800 KB message is over it.
OLD_PRODUCER_LIMIT = 1_000_000


def fetch(bootstrap: str, source: dict) -> bytes:
    """The value stored at a dead letter's source topic/partition/offset."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 << 20,
        fetch_max_bytes=64 << 20,
    )
    try:
        tp = TopicPartition(source["topic"], source["partition"])
        consumer.assign([tp])
        consumer.seek(tp, source["offset"])
        for _ in range(100):
            for records in consumer.poll(timeout_ms=300).values():
                return bytes(records[0].value)
    finally:
        consumer.close()
    raise AssertionError(f"nothing at {source}")


def test_poison_pills_are_dead_lettered_within_the_limit_and_the_stream_goes_on(
    stack: WorkerStack, exchanges, rng
):
    stack.start()
    event = sample_data.inference_event(exchanges[0], sample_data.now(), rng)
    # ~800 KB, under max_event_bytes but cut short (malformed), and 5 MB (over it).
    malformed = json.dumps({**event, "request_id": "pill-800k", "response": "x" * 800_000}).encode()[:-1]
    oversize = json.dumps({**event, "request_id": "pill-5m", "response": "y" * 5_000_000}).encode()
    good = numbered_inference("after-pill", 200, exchanges, rng)
    stack.send(stack.topics.inference, [malformed, oversize, *good])

    enriched = values_json(stack.read(stack.topics.enriched, 200, distinct=lambda r: r.key))
    assert {e["inference"]["request_id"] for e in enriched} == {f"after-pill-{i}" for i in range(200)}
    records = stack.read(stack.topics.deadletter, 2)
    assert stack.process is not None and stack.process.poll() is None, stack.log()

    limit = Settings().max_record_bytes
    assert all(len(r.value) < OLD_PRODUCER_LIMIT < limit for r in records)
    letters = {d["reason"]: d for d in values_json(records)}
    assert set(letters) == {"malformed_json", "oversize"}
    prefix = Settings().deadletter_value_bytes
    for letter, sent in ((letters["malformed_json"], malformed), (letters["oversize"], oversize)):
        assert letter["value_bytes"] == len(sent)
        assert letter["value_sha256"] == hashlib.sha256(sent).hexdigest()
        assert base64.b64decode(letter["value_b64"]) == sent[:prefix]
        assert letter["source"]["topic"] == stack.topics.inference
        # The source offset leads back to the whole message.
        assert fetch(stack.bootstrap, letter["source"]) == sent
    assert stack.metric("loopwatch_events_rejected_total") == 2
    assert stack.metric("loopwatch_events_valid_total") == 200
