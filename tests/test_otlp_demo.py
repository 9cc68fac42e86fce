"""``loopwatch demo --otlp``'s traffic: the same events, its inference logs as Collector-shaped OTLP spans."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from core.settings import Topics
from schemas.events import DeadLetterReason, InferenceLog
from schemas.otlp import Mapping, OtlpDecodeError, decode_traces, map_traces
from services.demo.scenario import build_traffic


def test_the_otlp_demo_sends_every_valid_log_as_a_span_that_maps_back_to_it(data_dir: Path) -> None:
    topics = Topics()
    plain = build_traffic(data_dir, topics, pairs=40, oasst=20)
    traffic = build_traffic(data_dir, topics, pairs=40, oasst=20)
    traffic.as_otlp(topics)
    valid = {
        request_id: json.loads(value)
        for topic, value in plain.messages + plain.after_rollback
        if topic == topics.inference and (request_id := _request_id(value)) is not None
    }
    assert traffic.otlp_spans == len(valid) == traffic.valid_inference
    # What stays on the inference topic is the producer's broken messages, as in the plain demo.
    assert traffic.count(topics.inference) == plain.count(topics.inference) - len(valid)
    assert traffic.count(topics.feedback) == plain.count(topics.feedback)
    mapped: dict[str, InferenceLog] = {}
    undecodable = []
    for topic, value in traffic.messages + traffic.after_rollback:
        if topic != topics.otlp_spans:
            continue
        try:
            request = decode_traces(value)
        except OtlpDecodeError as refused:
            undecodable.append(refused.reason)
            continue
        for request_id, event in map_traces(request, Mapping()).inferences:
            mapped[request_id] = InferenceLog.model_validate(event)
    assert undecodable == [DeadLetterReason.MALFORMED_OTLP]
    assert traffic.expected_rejections["malformed_otlp"] == 1
    assert mapped.keys() == valid.keys()  # the request ids the app's feedback is keyed by
    for request_id, log in mapped.items():
        event = valid[request_id]
        assert (log.model.name, log.model.version, log.tenant) == (
            event["model"]["name"],
            event["model"]["version"],
            event["tenant"],
        )
        assert log.response == event["response"] and log.latency_ms == pytest.approx(event["latency_ms"])
        assert log.tokens is not None and log.tokens.model_dump() == event["tokens"]
        assert log.timestamp.isoformat() == event["timestamp"]
    # No feedback moves ahead of its request: the feedback messages keep their order, and each one
    # that came after its log in the plain demo comes after the span message carrying it.
    for plain_messages, messages in (
        (plain.messages, traffic.messages),
        (plain.after_rollback, traffic.after_rollback),
    ):
        seen: set[str] = set()
        after: list[bool] = []
        for topic, value in plain_messages:
            if topic == topics.inference and (request_id := _request_id(value)) is not None:
                seen.add(request_id)
            elif topic == topics.feedback:
                after.append(json.loads(value)["request_id"] in seen)
        seen, checked = set(), 0
        for topic, value in messages:
            if topic == topics.otlp_spans:
                with contextlib.suppress(OtlpDecodeError):
                    seen |= {
                        request_id for request_id, _ in map_traces(decode_traces(value), Mapping()).inferences
                    }
            elif topic == topics.feedback:
                request_id = json.loads(value)["request_id"]
                assert not after[checked] or request_id in seen or request_id not in valid, request_id
                checked += 1
        assert checked == len(after)


def _request_id(value: bytes) -> str | None:
    try:
        return InferenceLog.model_validate_json(value).request_id
    except ValueError:
        return None
