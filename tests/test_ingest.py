"""Decoding and validation: every message is classified, with the right reason."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import (
    MAX_LABELS,
    MAX_TEXT_CHARS,
    DeadLetterReason,
    Feedback,
    InferenceLog,
    SourceRef,
)
from services import sample_data
from streams.ingest import Accepted, Rejected, dead_letter, decode, describe

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
]


@pytest.mark.parametrize(("case", "breaker", "reason"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_each_breakage_is_rejected_with_its_reason(valid, case, breaker, reason):
    outcome = decode(breaker(valid), InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected), case
    assert outcome.reason == DeadLetterReason(reason)
    assert outcome.error  # a sentence a person can act on


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
        ({"kind": "like"}, "invalid_value"),
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
    outcome = decode(_dump({**event, **change}), Feedback, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected) and outcome.reason == DeadLetterReason(reason)


def test_dead_letter_keeps_original_bytes_and_source(valid):
    import base64

    raw = _dump(valid)[:50]
    outcome = decode(raw, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected)
    letter = dead_letter(outcome, SourceRef(topic="t", partition=3, offset=99), b"k", raw, sample_data.now())
    assert base64.b64decode(letter.value_b64) == raw
    assert base64.b64decode(letter.key_b64 or "") == b"k"
    assert (letter.source.partition, letter.source.offset) == (3, 99)


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
    from schemas.events import EnrichedInference
    from streams.ingest import describe, enrich, enriched_json

    raw = _dump(valid)
    outcome = decode(raw, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Accepted)
    source = SourceRef(topic="llm.inference.v1", partition=1, offset=42)
    spliced = EnrichedInference.model_validate_json(enriched_json(raw, describe(outcome.event), source))
    assert spliced == enrich(outcome.event, source)
