"""decode's one-parse path (jiter, then pydantic's Python mode) agrees with the two-parse path it skips.

For every message, valid or not, ``decode`` must return what it returned when
each message was parsed by ``model_validate_json`` and again by jiter for
repeated keys: the same event, or the same reason, error and detail.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Feedback, InferenceLog
from streams import ingest

MAX_BYTES = 1_048_576

_LOG: dict[str, Any] = {
    "schema_version": "1",
    "event_id": "e-1",
    "request_id": "r-1",
    "timestamp": "2026-12-01T12:00:00+05:30",
    "model": {"name": "helpdesk-bot", "version": "v2"},
    "prompt": [{"role": "user", "content": "Hi \u00e9"}, {"role": "assistant", "content": "Hello"}],
    "response": "I'm sorry, I can't help with that.",
    "latency_ms": 12,
    "tokens": {"prompt": 7.0, "completion": 6},
    "cost_usd": 0.5,
    "features": {"a": 1, "b": 2.5, "c": "x"},
    "prediction": 3,
    "labels": {"k": "v"},
}
_FEEDBACK: dict[str, Any] = {
    "schema_version": "1",
    "event_id": "f-1",
    "request_id": "r-1",
    "timestamp": "2026-12-01T12:00:00Z",
    "kind": "thumbs",
    "value": True,
}

# Values a producer might put in any field: every JSON type, and the edges the schema draws.
_ODD = [
    None,
    True,
    0,
    -1,
    1.5,
    2**53,
    2**64,
    1e308,
    "",
    "1",
    "2026-12-01T12:00:00",
    "2026-12-01 12:00:00Z",
    "\ud800",
    [],
    [1],
    {},
    {"name": "m"},
    {"role": "user", "content": 1},
]


def _two_parse(raw: bytes, model: type[Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patched:
        patched.setattr(ingest, "_valid_event", lambda raw, model: None)
        return ingest.decode(raw, model, max_bytes=MAX_BYTES)


def _same(raw: bytes, model: type[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    before = _two_parse(raw, model, monkeypatch)
    after = ingest.decode(raw, model, max_bytes=MAX_BYTES)
    assert after == before, raw[:300]
    if isinstance(after, ingest.Accepted):
        assert after.event.model_dump() == before.event.model_dump()


@pytest.mark.parametrize("model, base", [(InferenceLog, _LOG), (Feedback, _FEEDBACK)])
def test_every_odd_value_in_every_field_decodes_as_before(
    model: type[Any], base: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(ingest.decode(json.dumps(base).encode(), model, max_bytes=MAX_BYTES), ingest.Accepted)
    for name in [*base, "unknown"]:
        for value in _ODD:
            _same(json.dumps({**base, name: value}).encode(), model, monkeypatch)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"schema_version": "2", "schema_version": "1"}',
        json.dumps(_LOG).encode()[:-1] + b', "response": "twice"}',
        json.dumps(_LOG).replace('"k": "v"', '"k": "v", "k": "w"').encode(),
        json.dumps(_LOG).replace("12,", "NaN,").encode(),
        json.dumps(_LOG).replace("0.5", "Infinity").encode(),
        json.dumps(_LOG).encode() + b" x",
        b"[]",
        b"null",
        b'"text"',
    ],
)
def test_repeated_keys_and_broken_json_decode_as_before(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    _same(raw, InferenceLog, monkeypatch)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([*_LOG, "tokens.prompt", "model.name", "x"]), value=_JSON)
def test_any_json_in_a_field_decodes_as_before(name: str, value: Any) -> None:
    event = json.loads(json.dumps(_LOG))
    if "." in name:
        outer, inner = name.split(".")
        event[outer][inner] = value
    else:
        event[name] = value
    raw = json.dumps(event).encode()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _same(raw, InferenceLog, monkeypatch)
