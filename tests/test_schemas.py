"""The committed JSON Schema files match the models, and accept exactly what the models accept."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import MAX_COUNT, PUBLISHED, Feedback, InferenceLog
from schemas.generate import SCHEMA_DIR, render
from services import sample_data
from streams.ingest import Accepted, decode

from .strict_json import strict_loads


def test_committed_json_schemas_match_the_models():
    rendered = render()
    stale = [
        name
        for name, text in rendered.items()
        if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_text() != text
    ]
    assert not stale, f"run `python -m schemas.generate`: {stale} differ from the models"
    assert len(rendered) == len(PUBLISHED)


def test_schema_files_carry_limits_and_forbid_extra_fields():
    schema = json.loads((SCHEMA_DIR / "inference_log.v1.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["labels"]["maxProperties"] == 32
    assert "request_id" in schema["required"] and "schema_version" in schema["required"]


# --- the schema files and the models accept exactly the same messages ---------
#
# Every message below is judged twice: by the JSON Schema file (after a strict
# JSON parse, since a schema validates JSON and NaN, Infinity, 1e400 or a repeated
# key are not I-JSON) and by the decoder the worker runs. They must agree.


_DELETE = object()
_RAW = "__raw_token__"  # replaced by a token json.dumps cannot write (NaN, 1e400, a repeated key)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


VALIDATORS = {InferenceLog: _validator("inference_log"), Feedback: _validator("feedback")}


def _schema_accepts(model: type[Any], raw: bytes) -> bool:
    try:
        instance = strict_loads(raw)
    except ValueError:
        return False
    return bool(VALIDATORS[model].is_valid(instance))


def _model_accepts(model: type[Any], raw: bytes) -> bool:
    return isinstance(decode(raw, model, max_bytes=1 << 21), Accepted)


def _encode(event: dict[str, Any], raw_token: str | None = None) -> bytes:
    text = json.dumps(event)
    if raw_token is not None:
        text = text.replace(json.dumps(_RAW), raw_token)
    return text.encode()


def _set(path: str, value: Any, raw_token: str | None = None) -> Callable[[dict[str, Any]], bytes]:
    """A mutation: set the dotted ``path`` (``-`` deletes it), optionally to a raw JSON token."""

    def mutate(event: dict[str, Any]) -> bytes:
        event = copy.deepcopy(event)
        *parents, last = path.split(".")
        target = event
        for part in parents:
            target = target.setdefault(part, {})
        if value is _DELETE:
            target.pop(last, None)
        else:
            target[last] = _RAW if raw_token is not None else value
        return _encode(event, raw_token)

    return mutate


TIMESTAMPS = [
    "2026-11-01T10:00:00Z",
    "2026-11-01T10:00:00.123456789+05:30",
    "2026-11-01T10:00:00-00:00",
    "2024-02-29T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-23:59",
    "2026-02-29T00:00:00Z",
    "2026-11-01T23:59:60Z",
    "2026-11-01T10:00:00",
    "2026-11-01 10:00:00Z",
    "2026-11-01t10:00:00z",
    "2026-11-01T10:00Z",
    "2026-11-01T10:00:00,5Z",
    "2026-11-01T10:00:00+24:00",
    "2026-11-01",
    "0000-01-01T00:00:00Z",
    "1700000000",
    "",
]
NUMBER_TOKENS = ["0", "-0", "150", "150.5", "1e308", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "-1"]
NUMBER_VALUES = [True, False, "150", None, [], {}, 10**400]

INFERENCE_MUTATIONS = [
    *(_set("timestamp", ts) for ts in TIMESTAMPS),
    _set("timestamp", 1700000000),
    *(_set(field, None, token) for field in ("latency_ms", "cost_usd") for token in NUMBER_TOKENS),
    *(_set(field, value) for field in ("latency_ms", "cost_usd") for value in NUMBER_VALUES),
    *(
        _set(f"tokens.{field}", value)
        for field in ("prompt", "completion")
        for value in (0, 2.0, 2.5, True, "3", -1, MAX_COUNT, MAX_COUNT + 1, None)
    ),
    _set("tokens.prompt", None, "1e400"),
    _set("tokens.prompt", None, "NaN"),
    _set("features", {"temperature": 0.7, "segment": "gold", "n": 3}),
    *(_set("features", {"x": value}) for value in (True, None, [1], {"a": 1}, "", 1e308)),
    *(_set("features.x", None, token) for token in ("NaN", "Infinity", "1e400", "1e308")),
    *(_set("prediction", value) for value in (0.9, "spam", True, None, [0.1], 10**400)),
    _set("prediction", None, "NaN"),
    _set("labels", {"team": "search", "k" * 64: "v" * 256}),
    _set("labels", {"k" * 65: "v"}),
    _set("labels", {"team": 1}),
    _set("labels", {f"k{i}": "v" for i in range(33)}),
    _set("status", "error"),
    _set("status", "meh"),
    _set("schema_version", "2"),
    _set("schema_version", 1),
    _set("model.version", _DELETE),
    _set("model.extra", "x"),
    _set("respose", "typo"),
    _set("request_id", ""),
    _set("request_id", _DELETE),
    _set("prompt", "a plain prompt"),
    _set("prompt", [{"role": "robot", "content": "hi"}]),
    _set("prompt", [{"role": "user"}]),
    _set("prompt", None),
    _set("response", "x" * 200_001),
    _set("trace_id", "t" * 257),
    _set("app", None),
    _set("app", ""),
]

FEEDBACK_MUTATIONS = [
    *(_set("timestamp", ts) for ts in TIMESTAMPS[::3]),
    *(_set("value", value) for value in (True, False, 1, -1, 1.0, 0, 2, "true", None, _DELETE)),
    _set("value", None, "NaN"),
    _set("value", None, "1e400"),
    _set("kind", "like"),
    _set("source", "bot"),
    *(
        _set("user_id", value)
        for value in ("u0123456789abcdef", "jane@example.com", "short", "u" * 128, "u" * 129, None)
    ),
    _set("comment", "x" * 10_001),
]


def _rating(event: dict[str, Any]) -> list[bytes]:
    base = {**event, "kind": "rating", "value": 4}
    values: list[Any] = [4, 4.5, -3, True, "4", None]
    return [_encode({**base, "value": v}) for v in values] + [
        _encode({k: v for k, v in base.items() if k != "value"}),
        _encode({**base, "value": _RAW}, "NaN"),
        _encode({**base, "value": _RAW}, "1e400"),
    ]


def _corrections(event: dict[str, Any]) -> list[bytes]:
    base = {**event, "kind": "correction", "value": None}
    return [
        _encode({**base, "correction": "Paris is the capital of France."}),
        _encode({**base, "correction": ""}),
        _encode({**base, "correction": " "}),
        _encode(base),
        _encode({**base, "kind": "label", "value": "off-topic"}),
        _encode({**base, "kind": "flag", "value": {"why": "x"}}),
    ]


def _repeated(event: dict[str, Any], key: str) -> bytes:
    text = json.dumps(event)
    return (text[:-1] + f", {json.dumps(key)}: {json.dumps(event[key])}" + "}").encode()


@pytest.fixture(scope="module")
def corpus(data_dir) -> list[tuple[type[Any], bytes]]:
    rng = random.Random(7)
    exchanges = [e for _, pair in zip(range(3), sample_data.hh_rlhf(data_dir), strict=False) for e in pair]
    exchanges += [e for _, e in zip(range(3), sample_data.oasst1(data_dir), strict=False)]
    at = sample_data.now()
    messages: list[tuple[type[Any], bytes]] = []
    for exchange in exchanges:
        event = sample_data.inference_event(exchange, at, rng)
        messages.append((InferenceLog, _encode(event)))
        messages.append((InferenceLog, _repeated(event, "schema_version")))
        messages += [(InferenceLog, mutate(event)) for mutate in INFERENCE_MUTATIONS]
        for feedback in sample_data.feedback_events(exchange, at):
            messages.append((Feedback, _encode(feedback)))
            messages.append((Feedback, _repeated(feedback, "value")))
            messages += [(Feedback, mutate(feedback)) for mutate in FEEDBACK_MUTATIONS]
            messages += [(Feedback, raw) for raw in _rating(feedback) + _corrections(feedback)]
    return messages


def test_schema_files_and_models_accept_the_same_messages(corpus):
    verdicts = [
        (model, raw, _schema_accepts(model, raw), _model_accepts(model, raw)) for model, raw in corpus
    ]
    disagree = [
        f"{model.__name__}: schema {'accepts' if by_schema else 'refuses'}, model "
        f"{'accepts' if by_model else 'refuses'}: {raw[:300]!r}"
        for model, raw, by_schema, by_model in verdicts
        if by_schema != by_model
    ]
    assert not disagree, "\n".join(disagree[:20])
    accepted = sum(by_model for *_, by_model in verdicts)
    assert accepted >= 100 and len(verdicts) - accepted >= 300, (accepted, len(verdicts))


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from([*TIMESTAMPS, "user", "thumbs", "rating", "correction", "ok", "error", "1"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def valid_messages(corpus) -> list[tuple[type[Any], bytes]]:
    return [message for message in corpus if _model_accepts(*message)][:40]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_schema_and_model_agree(valid_messages, data):
    model, raw = data.draw(st.sampled_from(valid_messages))
    event = json.loads(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        field = data.draw(st.sampled_from([*sorted(event), "extra"]))
        event[field] = data.draw(_JSON_VALUES)
    mutated = json.dumps(event).encode()
    assert _schema_accepts(model, mutated) == _model_accepts(model, mutated), mutated[:400]


def test_feedback_schema_says_what_each_kind_needs():
    schema = json.loads((SCHEMA_DIR / "feedback.v1.json").read_text())
    rules = {rule["if"]["properties"]["kind"]["const"]: rule["then"] for rule in schema["allOf"]}
    assert rules["thumbs"]["properties"]["value"]["enum"] == [True, False, 1, -1]
    assert rules["correction"]["required"] == ["correction"]
    assert "pattern" in schema["properties"]["user_id"]["anyOf"][0]
