"""Decoding and validation: every message is classified, with the right reason."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.frame import describe
from schemas.events import (
    MAX_LABELS,
    MAX_TEXT_CHARS,
    DeadLetterReason,
    Feedback,
    InferenceLog,
    SourceRef,
)
from services import sample_data
from streams.ingest import Accepted, Rejected, dead_letter, decode, out_of_range

MAX_BYTES = 1_048_576


@pytest.fixture(scope="module")
def valid(data_dir) -> dict[str, Any]:
    pair = next(iter(sample_data.hh_rlhf(data_dir)))
    return sample_data.inference_event(pair[0], sample_data.now(), random.Random(0))


def _dump(event: Any) -> bytes:
    return json.dumps(event).encode()


BREAKAGES = [
    (
        "invalid utf-8",
        lambda e: _dump(e).replace(b'"response": "', b'"response": "\xc3\x28', 1),
        "invalid_utf8",
    ),
    ("truncated json", lambda e: _dump(e)[:40], "malformed_json"),
    ("empty message", lambda e: b"", "malformed_json"),
    ("json array", lambda e: _dump([e]), "not_an_object"),
    ("json string", lambda e: b'"hello"', "not_an_object"),
    ("schema v2", lambda e: _dump({**e, "schema_version": "2"}), "unknown_schema_version"),
    ("schema v2 and broken", lambda e: _dump({"schema_version": "2"}), "unknown_schema_version"),
    (
        "no request_id",
        lambda e: _dump({k: v for k, v in e.items() if k != "request_id"}),
        "missing_field",
    ),
    ("no model", lambda e: _dump({k: v for k, v in e.items() if k != "model"}), "missing_field"),
    ("typo field", lambda e: _dump({**e, "respose": "x"}), "unknown_field"),
    ("latency string", lambda e: _dump({**e, "latency_ms": "fast"}), "wrong_type"),
    ("model is a string", lambda e: _dump({**e, "model": "gpt"}), "wrong_type"),
    (
        "tokens float",
        lambda e: _dump({**e, "tokens": {"prompt": 1.5, "completion": 2}}),
        "wrong_type",
    ),
    (
        "response too long",
        lambda e: _dump({**e, "response": "x" * (MAX_TEXT_CHARS + 1)}),
        "oversize",
    ),
    (
        "too many labels",
        lambda e: _dump({**e, "labels": {f"k{i}": "v" for i in range(MAX_LABELS + 1)}}),
        "oversize",
    ),
    ("negative latency", lambda e: _dump({**e, "latency_ms": -1}), "invalid_value"),
    ("bad status", lambda e: _dump({**e, "status": "meh"}), "invalid_value"),
    ("bad timestamp", lambda e: _dump({**e, "timestamp": "yesterday"}), "wrong_type"),
    # Issue 14 defect 7, issue 15 finding 3: what JSON Schema says, the decoder does.
    ("epoch timestamp", lambda e: _dump({**e, "timestamp": 1_700_000_000}), "wrong_type"),
    ("epoch timestamp text", lambda e: _dump({**e, "timestamp": "1700000000"}), "wrong_type"),
    # Trial 12b finding 6: a date-time that only lacks its offset is a wrong value, not a wrong type.
    ("timestamp without offset", lambda e: _dump({**e, "timestamp": "2026-11-01T10:00:00"}), "invalid_value"),
    (
        "timestamp without offset, ms",
        lambda e: _dump({**e, "timestamp": "2026-12-01T20:58:20.401"}),
        "invalid_value",
    ),
    ("timestamp without seconds", lambda e: _dump({**e, "timestamp": "2026-11-01T10:00"}), "wrong_type"),
    ("latency NaN", lambda e: _token(e, "latency_ms", "NaN"), "non_finite_number"),
    ("latency Infinity", lambda e: _token(e, "latency_ms", "Infinity"), "non_finite_number"),
    ("cost -Infinity", lambda e: _token(e, "cost_usd", "-Infinity"), "non_finite_number"),
    ("latency 1e400", lambda e: _token(e, "latency_ms", "1e400"), "non_finite_number"),
    (
        "tokens 1e400",
        lambda e: _token(e, "tokens", '{"prompt": 1e400, "completion": 1}'),
        "non_finite_number",
    ),
    ("feature NaN", lambda e: _token(e, "features", '{"temperature": NaN}'), "non_finite_number"),
    ("prediction Infinity", lambda e: _token(e, "prediction", "Infinity"), "non_finite_number"),
    ("latency true", lambda e: _dump({**e, "latency_ms": True}), "wrong_type"),
    ("cost false", lambda e: _dump({**e, "cost_usd": False}), "wrong_type"),
    ("latency as text", lambda e: _dump({**e, "latency_ms": "150"}), "wrong_type"),
    ("tokens true", lambda e: _dump({**e, "tokens": {"prompt": True, "completion": 2}}), "wrong_type"),
    ("tokens as text", lambda e: _dump({**e, "tokens": {"prompt": "3", "completion": 2}}), "wrong_type"),
    ("feature true", lambda e: _dump({**e, "features": {"flag": True}}), "wrong_type"),
    ("prediction true", lambda e: _dump({**e, "prediction": True}), "wrong_type"),
    (
        "tokens beyond 2^53",
        lambda e: _dump({**e, "tokens": {"prompt": 2**53, "completion": 2}}),
        "invalid_value",
    ),
    (
        "repeated schema_version",
        lambda e: _repeat(_dump({**e, "schema_version": "2"}), '"schema_version": "1"'),
        "duplicate_key",
    ),
    (
        "repeated nested key",
        lambda e: _dump(e).replace(b'"model": {', b'"model": {"name": "x", ', 1),
        "duplicate_key",
    ),
    ("repeated label", lambda e: _token(e, "labels", '{"team": "a", "team": "b"}'), "duplicate_key"),
    # The last of two values would be invalid on its own: the repeat is still what the producer must fix.
    (
        "repeated schema_version, the last one wrong",
        lambda e: _repeat(_dump(e), '"schema_version": "2"'),
        "duplicate_key",
    ),
    (
        "repeated key, the last value invalid",
        lambda e: _repeat(_dump(e), '"latency_ms": -5'),
        "duplicate_key",
    ),
]


def _token(event: dict[str, Any], field: str, token: str) -> bytes:
    """The event with ``field`` set to a raw JSON token (json.dumps cannot write NaN as a producer might)."""
    return _dump({**event, field: "__token__"}).replace(b'"__token__"', token.encode())


def _repeat(raw: bytes, member: str) -> bytes:
    """``raw`` with one more top-level member: a key it already has, repeated."""
    return raw[:-1] + b", " + member.encode() + b"}"


@pytest.mark.parametrize(("case", "breaker", "reason"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_each_breakage_is_rejected_with_its_reason(valid, case, breaker, reason):
    outcome = decode(breaker(valid), InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected), case
    assert outcome.reason == DeadLetterReason(reason)
    assert outcome.error  # a sentence a person can act on


def test_a_timestamp_without_an_offset_says_to_add_one(valid):
    """Trial 12b finding 6: the error names the fix, and the detail carries no input."""
    broken = _dump({**valid, "timestamp": "2026-12-01T20:58:20.401", "latency_ms": "slow"})
    outcome = decode(broken, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected)
    assert outcome.reason == DeadLetterReason.WRONG_TYPE  # the latency's wrong type comes first
    [stamp] = [d for d in outcome.detail if d["field"] == "timestamp"]
    assert stamp == {
        "field": "timestamp",
        "type": "timestamp_without_offset",
        "message": "needs a UTC offset, e.g. 2026-11-01T10:00:00Z or 2026-11-01T11:00:00+01:00",
    }
    alone = decode(
        _dump({**valid, "timestamp": "2026-12-01T20:58:20.401"}), InferenceLog, max_bytes=MAX_BYTES
    )
    assert isinstance(alone, Rejected) and alone.reason == DeadLetterReason.INVALID_VALUE
    assert alone.error == f"invalid InferenceLog: timestamp: {stamp['message']}"
    assert all(set(d) == {"field", "type", "message"} for d in outcome.detail)


@pytest.mark.parametrize(
    "change",
    [
        {"tokens": {"prompt": 12.0, "completion": 3}},  # JSON Schema's integer: 12.0 is one
        {"latency_ms": 0, "cost_usd": 1e308},
        {"features": {"temperature": 0.7, "segment": "gold"}, "prediction": -0.0},
        {"timestamp": "2026-11-01T10:00:00.123456789-05:30"},
        {"timestamp": "9999-12-31T23:59:59Z"},  # valid here; the worker's skew check refuses it
        # Keys repeated in different objects, and JSON quoted inside a string, are no repeats.
        {"response": 'Use {"a": 1, "a": 2} ": "a": and \\": here', "labels": {"prompt": "x", "a": "y"}},
    ],
)
def test_values_at_the_edges_are_accepted(valid, change):
    outcome = decode(_dump({**valid, **change}), InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Accepted), outcome


def test_pretty_printed_and_compact_json_are_accepted(valid):
    for raw in (json.dumps(valid, indent=2).encode(), json.dumps(valid, separators=(",", ":")).encode()):
        assert isinstance(decode(raw, InferenceLog, max_bytes=MAX_BYTES), Accepted)
    spaced = json.dumps(valid).replace('": ', '" :\t ').encode()
    assert isinstance(decode(spaced, InferenceLog, max_bytes=MAX_BYTES), Accepted)
    repeated = spaced[:-1] + b', "schema_version"\n: "1"}'
    outcome = decode(repeated, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected) and outcome.reason is DeadLetterReason.DUPLICATE_KEY
    assert "schema_version" in outcome.error


def test_valid_event_is_accepted_and_keeps_its_text(valid):
    raw = _dump(valid)
    outcome = decode(raw, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Accepted)
    assert outcome.event.request_id == valid["request_id"]
    assert outcome.text == raw.decode()


def test_message_over_the_byte_limit_is_oversize(valid):
    outcome = decode(_dump(valid), InferenceLog, max_bytes=1024)
    assert isinstance(outcome, Rejected) and outcome.reason is DeadLetterReason.OVERSIZE
    assert "1,024" in outcome.error


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"value": "maybe"}, "invalid_value"),
        ({"kind": "rating", "value": True}, "invalid_value"),
        ({"kind": "correction", "value": None}, "invalid_value"),
        ({"user_id": "jane.doe@example.com"}, "invalid_value"),
        ({"user_id": "u0123456789abcdef\n"}, "invalid_value"),
        ({"kind": "like"}, "invalid_value"),
        ({"value": 0}, "invalid_value"),  # thumbs are true/false or 1/-1; 0 is neither
        ({"value": 2}, "invalid_value"),
        ({"kind": "rating", "value": "4"}, "invalid_value"),
        ({"kind": "rating", "value": "__token__"}, "non_finite_number"),
        ({"timestamp": 1_700_000_000}, "wrong_type"),
    ],
)
def test_feedback_rules(change, reason):
    event = {
        "schema_version": "1",
        "event_id": "f1",
        "request_id": "r1",
        "timestamp": "2026-11-01T10:00:00Z",
        "kind": "thumbs",
        "value": True,
        "user_id": "u0123456789abcdef",
    }
    assert isinstance(decode(_dump(event), Feedback, max_bytes=MAX_BYTES), Accepted)
    raw = _dump({**event, **change}).replace(b'"__token__"', b"NaN")
    outcome = decode(raw, Feedback, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected) and outcome.reason == DeadLetterReason(reason)


def test_dead_letter_keeps_original_bytes_and_source(valid):
    import base64

    raw = _dump(valid)[:50]
    outcome = decode(raw, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected)
    source = SourceRef(topic="t", partition=3, offset=99)
    letter = dead_letter(outcome, source, b"k", raw, sample_data.now(), prefix_bytes=1024)
    assert base64.b64decode(letter.value_b64) == raw
    assert base64.b64decode(letter.key_b64 or "") == b"k"
    assert letter.source == source


@pytest.mark.parametrize(
    ("response", "refusal", "empty"),
    [
        ("I'm sorry, but I can't help with that.", True, False),
        ("I cannot assist with creating malware.", True, False),
        ("As an AI language model, I don't have opinions.", True, False),
        ("Sorry to hear that! Here is how to reset your router: ...", False, False),
        ("The capital of France is Paris.", False, False),
        ("   ", False, True),
    ],
)
def test_descriptors(valid, response, refusal, empty):
    log = InferenceLog.model_validate({**valid, "response": response, "tokens": None})
    d = describe(log)
    assert (d.refusal, d.empty_response) == (refusal, empty)
    assert d.response_chars == len(response)
    assert d.tokens_estimated and d.completion_tokens == -(-len(response) // 4)


def test_reported_tokens_win_over_estimates(valid):
    d = describe(InferenceLog.model_validate(valid))
    assert not d.tokens_estimated
    assert d.prompt_tokens == valid["tokens"]["prompt"]


# --- fuzzing: decode never raises and always classifies -------------------------


def _classifies(raw: bytes) -> None:
    for model in (InferenceLog, Feedback):
        outcome = decode(raw, model, max_bytes=4096)
        assert isinstance(outcome, Accepted | Rejected)
        if isinstance(outcome, Rejected):
            assert isinstance(outcome.reason, DeadLetterReason) and outcome.error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(raw):
    _classifies(raw)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fuzz_random_json(value):
    _classifies(json.dumps(value).encode())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_valid_events(valid, data):
    event = dict(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        field = data.draw(st.sampled_from([*sorted(event), "extra"]))
        action = data.draw(st.sampled_from(["delete", "replace"]))
        if action == "delete":
            event.pop(field, None)
        else:
            event[field] = data.draw(json_values)
    raw = json.dumps(event).encode()
    cut = data.draw(st.integers(0, len(raw)))
    _classifies(raw if data.draw(st.booleans()) else raw[:cut])


def test_spliced_enriched_json_equals_the_model(valid):
    from detectors.frame import describe
    from schemas.events import EnrichedInference
    from streams.ingest import enrich, enriched_json

    raw = _dump(valid)
    outcome = decode(raw, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Accepted)
    source = SourceRef(topic="llm.inference.v1", partition=1, offset=42)
    spliced = EnrichedInference.model_validate_json(enriched_json(raw, describe(outcome.event), source))
    assert spliced == enrich(outcome.event, source)


# --- timestamps far from their Kafka message's time (issue 15 finding 2) -----------

_MESSAGE_TIME = 1_796_000_000.0  # 2026-11-29, as the Kafka message's timestamp in seconds
_LIMITS = {"max_past": 7 * 86_400.0, "max_future": 3_600.0}


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@pytest.mark.parametrize(
    ("timestamp", "refused"),
    [
        (_at(_MESSAGE_TIME), False),
        (_at(_MESSAGE_TIME + 3_600), False),
        (_at(_MESSAGE_TIME + 3_601), True),
        (_at(_MESSAGE_TIME - 7 * 86_400), False),
        (_at(_MESSAGE_TIME - 7 * 86_400 - 1), True),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), True),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=23, minutes=59))), True),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))), True),
    ],
)
def test_timestamps_far_from_the_message_time_are_refused(timestamp, refused):
    outcome = out_of_range(timestamp, _MESSAGE_TIME, 0.0, **_LIMITS)
    assert (outcome is not None) == refused
    if outcome is not None:
        assert outcome.reason is DeadLetterReason.TIMESTAMP_OUT_OF_RANGE
        assert "max_timestamp_" in outcome.error and outcome.detail[0]["field"] == "timestamp"


@pytest.mark.parametrize("message_time", [None, -0.001, 0.0])
def test_without_a_message_time_the_worker_clock_decides(message_time):
    now = _MESSAGE_TIME
    assert out_of_range(_at(now - 60), message_time, now, **_LIMITS) is None
    assert out_of_range(_at(now + 7_200), message_time, now, **_LIMITS) is not None


def test_an_absurd_message_time_is_reported_not_raised():
    outcome = out_of_range(_at(_MESSAGE_TIME), 1e15, 0.0, **_LIMITS)
    assert outcome is not None and "after 1970" in outcome.error
