"""Outputs always fit: bounded dead letters, the outbox's size limit, re-key headers (no broker)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, UnknownError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.settings import RECORD_HEADROOM, Settings
from schemas.events import DeadLetter, DeadLetterReason, Feedback, SourceRef
from streams import join
from streams import outbox as outbox_module
from streams.ingest import Rejected, dead_letter
from streams.metrics import Metrics
from streams.outbox import Outbox, OutputLimit, record_size
from streams.rekey import KEY_PREFIX_BYTES, Origin, headers_for, origin_in

SMALL = Settings(max_event_bytes=64 * 1024, max_record_bytes=256 * 1024, deadletter_value_bytes=4096)


def _limit(settings: Settings = SMALL) -> tuple[OutputLimit, Metrics]:
    metrics = Metrics()
    return OutputLimit(settings, metrics), metrics


def _dropped(metrics: Metrics, topic: str, reason: str) -> float:
    return metrics.output_dropped.labels(topic, reason)._value.get()


@given(
    key=st.none() | st.binary(max_size=300),
    value=st.none() | st.binary(max_size=300),
    headers=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=50)), max_size=4),
)
def test_record_size_is_never_below_what_the_producer_checks(key, value, headers):
    assert record_size(key, value, headers) >= DefaultRecordBatchBuilder.estimate_size_in_bytes(
        key, value, headers
    )


def test_worst_case_dead_letter_fits_its_headroom():
    # Every string as long as allowed and made of characters JSON escapes to six bytes.
    nasty = "\x01" * 100_000
    rejected = Rejected(
        DeadLetterReason.UNKNOWN_FIELD,
        nasty,
        [{"field": nasty, "type": nasty[:64], "message": nasty} for _ in range(100)],
    )
    source = SourceRef(topic="t" * 249, partition=2**31 - 1, offset=2**63 - 1)
    for prefix in (0, 1, SMALL.deadletter_value_bytes, Settings().deadletter_value_bytes):
        letter = dead_letter(
            rejected,
            source,
            b"k" * 5_000_000,
            b"v" * 5_000_000,
            datetime.now(UTC),
            prefix_bytes=prefix,
            output_topic="o" * 249,
        )
        size = len(letter.model_dump_json().encode())
        assert size <= 4 * math.ceil(prefix / 3) + RECORD_HEADROOM - 1024, size
        assert letter.value_bytes == 5_000_000 and letter.key_bytes == 5_000_000
        assert len(base64.b64decode(letter.value_b64)) == prefix
        assert len(base64.b64decode(letter.key_b64 or "")) == KEY_PREFIX_BYTES


def test_dead_letter_of_a_message_keeps_prefix_length_hash_and_source():
    limit, _ = _limit()
    outbox = Outbox(limit)
    value = b'{"schema_version": "1", "x": "' + b"y" * 200_000 + b'"}'
    message = SimpleNamespace(topic="in", partition=3, offset=77, key=b"r-1", value=value)
    outbox.add_dead_letter(SMALL.topics.deadletter, message, Rejected(DeadLetterReason.UNKNOWN_FIELD, "x"))
    [(key, record, headers)] = outbox._records[SMALL.topics.deadletter, None]
    letter = DeadLetter.model_validate_json(record)
    assert key == b"r-1" and headers == [("loopwatch-reason", b"unknown_field")]
    assert base64.b64decode(letter.value_b64) == value[: SMALL.deadletter_value_bytes]
    assert letter.value_bytes == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.source == SourceRef(topic="in", partition=3, offset=77)
    assert record_size(key, record, headers) < SMALL.max_record_bytes


def test_an_output_over_the_limit_becomes_a_small_dead_letter_and_the_rest_is_queued():
    limit, metrics = _limit()
    outbox = Outbox(limit)
    huge = b"x" * SMALL.max_record_bytes
    outbox.add("enriched", b"r-1", b"small", partition=0)
    outbox.add("enriched", b"r-2", huge, partition=0)
    outbox.add("enriched", b"r-3", b"small too", partition=0)
    assert [k for k, _, _ in outbox._records["enriched", 0]] == [b"r-1", b"r-3"]
    [(key, record, _)] = outbox._records[SMALL.topics.deadletter, None]
    letter = DeadLetter.model_validate_json(record)
    assert letter.reason == DeadLetterReason.OUTPUT_TOO_LARGE and letter.output_topic == "enriched"
    assert letter.source is None and key == b"r-2"
    assert letter.value_bytes == len(huge) and letter.value_sha256 == hashlib.sha256(huge).hexdigest()
    assert "max_record_bytes" in letter.error
    assert len(record) < SMALL.max_record_bytes
    assert _dropped(metrics, "enriched", "too_large") == 1


def test_a_record_just_at_the_limit_is_kept_and_headers_count():
    limit, metrics = _limit()
    outbox = Outbox(limit)
    room = SMALL.max_record_bytes - record_size(b"k", b"", [])
    outbox.add("t", b"k", b"v" * room, partition=1)
    outbox.add("t", b"k", b"v" * room, partition=1, headers=[("h", b"1")])
    assert len(outbox._records["t", 1]) == 1
    assert _dropped(metrics, "t", "too_large") == 1


def test_a_dead_letter_too_large_itself_is_counted_not_dead_lettered_again():
    limit, metrics = _limit()
    outbox = Outbox(limit)
    outbox.add(SMALL.topics.deadletter, None, b"x" * SMALL.max_record_bytes)
    assert len(outbox) == 0
    assert _dropped(metrics, SMALL.topics.deadletter, "too_large") == 1


def test_dropped_records_are_logged_once_per_order_of_magnitude(caplog):
    limit, metrics = _limit()
    with caplog.at_level(logging.ERROR, logger="loopwatch.outbox"):
        for _ in range(120):
            limit.dropped("t", "too_large", "too big")
        limit.dropped("u", "too_large", "too big")
    counts = [r.args[1] for r in caplog.records]  # type: ignore[index]
    assert counts == [1, 10, 100, 1]
    assert _dropped(metrics, "t", "too_large") == 120


class _RefusingProducer:
    """A producer whose broker refuses every record batch as too large."""

    def create_batch(self) -> Any:
        return _Batch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(MessageSizeTooLargeError())
        return future


class _Batch:
    def append(self, **record: Any) -> object:
        return record


def test_size_refusals_are_counted_per_record_and_do_not_raise():
    limit, metrics = _limit()
    outbox = Outbox(limit)
    for n in range(5):
        outbox.add("t", b"k", b"v%d" % n, partition=0)
    asyncio.run(outbox.send_and_wait(_RefusingProducer()))
    assert _dropped(metrics, "t", "too_large") == 5
    assert _dropped(metrics, "t", "failed") == 0


def test_settings_refuse_limits_a_maximal_event_or_dead_letter_would_not_fit():
    with pytest.raises(ValidationError, match="max_record_bytes"):
        Settings(max_event_bytes=4 * 1024 * 1024)
    with pytest.raises(ValidationError, match="deadletter_value_bytes"):
        Settings(deadletter_value_bytes=3 * 1024 * 1024)
    fits = Settings(max_event_bytes=8 * 1024 * 1024, max_record_bytes=8 * 1024 * 1024 + RECORD_HEADROOM)
    assert int(fits.record_topic_configs()["max.message.bytes"]) > fits.max_record_bytes


def test_rekey_headers_name_the_original_message():
    message = SimpleNamespace(topic="llm.inference.v1", partition=2, offset=41, key=b"k" * 5000)
    origin = Origin.of(message)
    assert origin_in(headers_for(origin)) == origin
    assert origin.key == b"k" * KEY_PREFIX_BYTES and origin.key_bytes == 5000
    unkeyed = Origin.of(SimpleNamespace(topic="t", partition=0, offset=0, key=None))
    assert origin_in(headers_for(unkeyed)) == unkeyed
    assert origin_in(None) is None
    assert origin_in([("loopwatch-source", b"{not json")]) is None
    assert origin_in([("loopwatch-source", json.dumps({"topic": "t"}).encode())]) is None


def test_a_rekeyed_copy_keeps_its_join_state_in_the_partition_it_is_processed_in():
    feedback = json.dumps(
        {
            "schema_version": "1",
            "event_id": "fb-1",
            "request_id": "r-1",
            "timestamp": datetime.now(UTC).isoformat(),
            "kind": "thumbs",
            "value": True,
        }
    )
    event = Feedback.model_validate_json(feedback)
    original = SourceRef(topic="llm.feedback.v1", partition=3, offset=9)
    result = join.on_feedback(None, feedback, event, original, 0.0, partition=1)
    assert result.state["partition"] == 1
    assert result.state["pending"][0]["source"] == ("llm.feedback.v1", 3, 9)


class _FlakyProducer:
    """Fails the first ``failures`` deliveries (as a broker that is restarting does), then takes them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delivered: list[bytes | None] = []

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: list
    ) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.failures > 0:
            self.failures -= 1
            future.set_exception(UnknownError())
        else:
            self.delivered.append(value)
            future.set_result(None)
        return future


def test_send_and_wait_sends_again_what_a_restarting_broker_did_not_take():
    limit, metrics = _limit()
    outbox = Outbox(limit)
    outbox.add("t", b"k", b"state")
    producer = _FlakyProducer(failures=2)
    asyncio.run(outbox.send_and_wait(producer))
    assert producer.delivered == [b"state"]
    assert _dropped(metrics, "t", "failed") == 0


def test_send_and_wait_gives_up_after_its_retry_time_counts_and_raises(monkeypatch):
    monkeypatch.setattr(outbox_module, "RETRY_SECONDS", 0.5)
    limit, metrics = _limit()
    outbox = Outbox(limit)
    outbox.add("t", b"k", b"one")
    outbox.add("t", b"k", b"two")
    with pytest.raises(UnknownError):
        asyncio.run(outbox.send_and_wait(_FlakyProducer(failures=10**6)))
    assert _dropped(metrics, "t", "failed") == 2
