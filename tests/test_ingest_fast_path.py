"""Issue 16's cheaper ingest: an InferenceLog checked by msgspec is the event pydantic's validation builds.

The fast path (``streams.ingest._inference_from``) must accept nothing that
pydantic refuses and build, for what it accepts, the very instance pydantic
builds: the same values of the same types, the same fields set, the same JSON
(the joined records re-serialise the log). Dead-letter reasons are covered by
tests/test_ingest_one_parse.py, which runs through the same path. Also: a
request's first join state is built from the message's bytes, and ingest without
detection ticks only as often as it sweeps.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast, get_args

import jiter
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.settings import Settings
from schemas.events import ChatMessage, InferenceLog, ModelRef, SourceRef, TokenUsage
from services import sample_data
from streams import ingest, join
from streams.app import create_app
from streams.ingest_stage import CATCH_UP_SECONDS
from streams.metrics import Metrics

MAX_BYTES = 1_048_576

_BASE: dict[str, Any] = {
    "schema_version": "1",
    "event_id": "e-1",
    "request_id": "r-1",
    "timestamp": "2026-12-01T12:00:00.5+05:30",
    "model": {"name": "helpdesk-bot", "version": "v2"},
}


def _pydantic(value: dict[str, Any]) -> InferenceLog:
    return InferenceLog.model_validate(jiter.from_json(json.dumps(value).encode()))


def _same_instance(fast: Any, slow: Any) -> None:
    """Equal values of equal types all the way down, and pydantic's bookkeeping alike."""
    assert type(fast) is type(slow)
    if isinstance(slow, InferenceLog | ModelRef | TokenUsage | ChatMessage):
        assert list(vars(fast)) == list(vars(slow))  # pydantic's field order
        assert fast.model_fields_set == slow.model_fields_set
        assert fast.__pydantic_extra__ == slow.__pydantic_extra__
        assert fast.__pydantic_private__ == slow.__pydantic_private__
        for name in vars(slow):
            _same_instance(getattr(fast, name), getattr(slow, name))
    elif isinstance(slow, list):
        assert len(fast) == len(slow)
        for a, b in zip(fast, slow, strict=True):
            _same_instance(a, b)
    elif isinstance(slow, dict):
        assert list(fast) == list(slow)
        for key in slow:
            _same_instance(fast[key], slow[key])
    elif isinstance(slow, datetime):
        assert type(fast.tzinfo) is type(slow.tzinfo)
        assert fast == slow and fast.utcoffset() == slow.utcoffset()
    else:
        assert fast == slow or (fast != fast and slow != slow)


def _check(value: dict[str, Any]) -> None:
    """The fast path builds pydantic's instance, or refuses and leaves the event to pydantic."""
    raw = json.dumps(value).encode()
    try:
        slow = _pydantic(value)
    except ValueError:
        assert ingest._inference_from(jiter.from_json(raw)) is None, raw[:300]
        return
    fast = ingest._inference_from(jiter.from_json(raw))
    if fast is None:  # stricter than pydantic is allowed (pydantic then decides, as before)
        return
    _same_instance(fast, slow)
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast == slow


def test_the_shape_has_inference_logs_fields_in_its_order() -> None:
    """A field added to InferenceLog must be added to the shape too, or events would lose it."""
    assert list(ingest._InferenceShape.__struct_fields__) == list(InferenceLog.model_fields)


def test_the_shapes_literals_are_the_models() -> None:
    assert get_args(ingest._Role) == get_args(ChatMessage.model_fields["role"].annotation)
    assert get_args(ingest._Status) == get_args(InferenceLog.model_fields["status"].annotation)


def test_an_inference_log_is_decoded_without_pydantics_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = json.dumps({**_BASE, "prompt": "Hi", "tokens": {"prompt": 1, "completion": 2}}).encode()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pydantic validated the event")

    monkeypatch.setattr(InferenceLog, "model_validate", refuse)
    monkeypatch.setattr(InferenceLog, "model_validate_json", refuse)
    decoded = ingest.decode(raw, InferenceLog, max_bytes=MAX_BYTES)
    assert isinstance(decoded, ingest.Accepted)
    assert decoded.event.tokens is not None and decoded.event.tokens.completion == 2


def test_real_exchanges_decode_to_pydantics_events(data_dir: Path) -> None:
    rng = random.Random(3)
    at = datetime(2026, 12, 1, 9, 30, 15, 250_000, tzinfo=UTC)
    pairs = [e for _, pair in zip(range(60), sample_data.hh_rlhf(data_dir), strict=False) for e in pair]
    exchanges = pairs + [e for _, e in zip(range(60), sample_data.oasst1(data_dir), strict=False)]
    built = 0
    for exchange in exchanges:
        event = sample_data.inference_event(exchange, at, rng)
        for variant in (event, {**event, "prompt": exchange.prompt[-1]["content"]}):
            _check(variant)
            built += ingest._inference_from(jiter.from_json(json.dumps(variant).encode())) is not None
    assert built == 2 * len(exchanges)  # every real event took the fast path


@pytest.mark.parametrize(
    "extra",
    [
        {"latency_ms": 12, "cost_usd": 0},  # ints in float fields: pydantic makes them floats
        {"latency_ms": -0.0, "cost_usd": 1.7976931348623157e308},
        {"latency_ms": -1},
        {"latency_ms": True},
        {"features": {"a": 1, "b": 2.5, "c": "x"}, "prediction": 3},
        {"features": {"a": True}},
        {"features": {"": 1.0}},
        {"features": {f"f{i}": i for i in range(1_025)}},
        {"prediction": "yes"},
        {"tokens": {"prompt": 7.0, "completion": 6}},  # 7.0: pydantic takes it, the fast path leaves it
        {"tokens": {"prompt": 2**53, "completion": 6}},
        {"tokens": {"prompt": -1, "completion": 6}},
        {"tokens": {"prompt": 1, "completion": 2, "total": 3}},
        {"labels": {"k": "v", "k2": ""}},
        {"labels": {"": "v"}},
        {"labels": {"k" * 65: "v"}},
        {"labels": {f"k{i}": "v" for i in range(33)}},
        {"prompt": [{"role": "user", "content": "Hi \u00e9"}, {"role": "assistant", "content": ""}]},
        {"prompt": [{"role": "robot", "content": "x"}]},
        {"prompt": [{"role": "user"}]},
        {"prompt": [{"role": "user", "content": "x"}] * 513},
        {"prompt": "\U0001f600" * 200_000},
        {"prompt": "\U0001f600" * 200_001},
        {"app": "", "route": None},
        {"tenant": "t" * 256},
        {"tenant": "t" * 257},
        {"status": "error", "error": "boom", "trace_id": "abc"},
        {"status": "failed"},
        {"timestamp": "2026-12-01T12:00:00Z"},
        {"timestamp": "2026-12-01T12:00:00.123456789-08:00"},
        {"timestamp": "2026-02-30T12:00:00Z"},
        {"timestamp": "2026-12-01T12:00:00"},
        {"timestamp": "2026-12-01 12:00:00Z"},
        {"timestamp": 1_800_000_000},
        {"schema_version": "2"},
        {"event_id": ""},
        {"model": {"name": "m"}},
        {"model": {"name": "m", "version": "v", "x": 1}},
        {"unknown": 1},
    ],
)
def test_edges_of_every_rule_build_pydantics_event_or_fall_back(extra: dict[str, Any]) -> None:
    _check({**_BASE, **extra})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from([*InferenceLog.model_fields, "model.name", "tokens.prompt", "prompt.0.role"]),
    value=_JSON,
)
def test_any_json_in_any_field_builds_pydantics_event_or_falls_back(name: str, value: Any) -> None:
    event: dict[str, Any] = {
        **_BASE,
        "tokens": {"prompt": 1, "completion": 2},
        "prompt": [{"role": "user", "content": "x"}],
        "features": {"a": 1.5},
    }
    path = name.split(".")
    target = event
    for part in path[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[path[-1]] = value
    _check(event)


# -- the ingest stage's tick --------------------------------------------------------


@pytest.mark.parametrize("detection, every", [(False, 7.0), (True, CATCH_UP_SECONDS)])
def test_without_detection_ingest_ticks_only_as_often_as_it_sweeps(
    tmp_path: Path, detection: bool, every: float
) -> None:
    """With detection off a tick only sweeps expired joins: no tick every 50 ms that finds no sweep due."""
    settings = Settings(
        data_dir=tmp_path, join_store="memory", detection=detection, join_sweep_seconds=7.0, curation=False
    )
    stage = create_app(settings, Metrics()).runtime.stages["ingest"]
    assert stage.tick_seconds == every


# -- a request's first inference: its join state straight from the message's bytes ---------


@given(
    text=st.text(max_size=200), offset=st.integers(min_value=0, max_value=2**62), partition=st.integers(0, 63)
)
def test_a_first_inferences_state_is_the_bytes_encode_writes(text: str, offset: int, partition: int) -> None:
    raw = json.dumps({"prompt": text}, ensure_ascii=False).encode()
    source = SourceRef(topic="llm.inference.v1", partition=partition, offset=offset)
    state = join.on_inference(None, raw.decode(), cast(Any, None), source, 1.8e9 + 0.125, partition=3).state
    assert join.encode_first_inference(raw, source, 3, 1.8e9 + 0.125) == join.encode(state)
