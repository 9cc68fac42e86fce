"""Input that breaks a rule never gets in; input that passes never breaks a stage (issue 15).

The pure half pushes schema-valid events with extreme values (years 1 and 9999,
offsets of nearly a day, doubles near their limit, 2^53 - 1 tokens) through the
whole path a worker takes (decode, describe, join, window summaries, windows
closing, detectors, Detections) and parses every output with a strict JSON
reader. The broker half sends a hostile run to a real worker.
"""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_core import to_json

from detectors.frame import describe, feedback_row, log_row, segment_of
from schemas.events import (
    MAX_COUNT,
    MAX_NUMBER,
    Detection,
    Feedback,
    InferenceLog,
    SourceRef,
)
from services import sample_data
from streams import join
from streams.detect import DEFAULT_SPECS, Judge, Reference, to_detection
from streams.ingest import Accepted, Rejected, decode, enriched_json
from streams.window_batch import BatchSummaries
from streams.windows import ClosedWindow, Partial, Windows, WindowSpec

from .helpers import WorkerStack
from .strict_json import strict_loads

MAX_BYTES = 1_048_576
SPEC = WindowSpec(seconds=60.0, sample_size=200, grace_seconds=0.0, idle_seconds=1.0)
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=23, minutes=59))]
OFFSETS.append(timezone(-timedelta(hours=23, minutes=59)))


def _accepted(raw: bytes, model: type[Any]) -> Any:
    outcome = decode(raw, model, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Accepted), (outcome, raw[:300])
    return outcome


class Pipeline:
    """The pure steps of a worker, in its order, collecting every record it would write."""

    def __init__(self, judge: Judge, references: dict[str, Reference]) -> None:
        self.judge = judge
        self.references = references
        self.rng = random.Random(0)
        self.summaries = BatchSummaries(SPEC, 200, self.rng)
        self.windows = Windows(SPEC)
        self.states: dict[str, join.JoinState] = {}
        self.outputs: list[tuple[str, bytes]] = []
        self.offset = 0
        self.closed: list[ClosedWindow] = []

    def _source(self, topic: str) -> SourceRef:
        self.offset += 1
        return SourceRef(topic=topic, partition=0, offset=self.offset)

    def _store(self, request_id: str, result: join.JoinResult) -> None:
        self.states[request_id] = join.decode(join.encode(result.state))
        for record in result.joined:
            self.outputs.append(("joined", record.model_dump_json().encode()))
            row = feedback_row(record)
            self._sample(segment_of(row), "feedback", record.feedback.timestamp.timestamp(), row)

    def _sample(self, segment: dict[str, Any], kind: Any, timestamp: float, row: dict[str, Any]) -> None:
        wanted = self.summaries.wants(segment, kind, timestamp)
        if wanted is not None:
            partial, key = wanted
            partial.sample.keep(row, key)

    def inference(self, raw: bytes) -> None:
        outcome = _accepted(raw, InferenceLog)
        event, source = outcome.event, self._source("llm.inference.v1")
        descriptors = describe(event)
        self.outputs.append(("enriched", enriched_json(raw, descriptors, source)))
        segment = {
            "model": event.model.name,
            "model_version": event.model.version,
            "app": event.app,
            "route": event.route,
            "tenant": event.tenant,
        }
        self._sample(segment, "inference", event.timestamp.timestamp(), log_row(event, descriptors, 1000))
        state = self.states.get(event.request_id)
        self._store(event.request_id, join.on_inference(state, outcome.text, event, source, 0.0))

    def feedback(self, raw: bytes) -> None:
        outcome = _accepted(raw, Feedback)
        event, source = outcome.event, self._source("llm.feedback.v1")
        state = self.states.get(event.request_id)
        self._store(event.request_id, join.on_feedback(state, outcome.text, event, source, 0.0))

    def close(self) -> None:
        """Flush the summaries, merge them as the detect stage does, close every window, judge it."""
        for partial in self.summaries.all():
            value = to_json(partial.to_json(), inf_nan_mode="null")
            self.outputs.append(("summaries", value))
            self.closed += self.windows.add(Partial.from_json(json.loads(value)), now=0.0)
        self.closed += self.windows.tick(now=1e12)
        for window in self.closed:
            reference = self.references[window.kind]
            for judged in self.judge.run(window, reference, self.judge.specs_for(window.kind, slow=False)):
                self.outputs.append(
                    ("detections", to_detection(judged, window, reference).model_dump_json().encode())
                )
        for request_id, state in self.states.items():
            for record in join.unmatched(state, request_id, 0.0):
                self.outputs.append(("unmatched", record.model_dump_json().encode()))


@pytest.fixture(scope="module")
def reference_rows(data_dir) -> dict[str, Reference]:
    """References built from real traffic through the same steps."""
    pipeline = Pipeline(Judge([]), {})
    rng = random.Random(3)
    exchanges = [e for _, pair in zip(range(60), sample_data.hh_rlhf(data_dir), strict=False) for e in pair]
    at = sample_data.now()
    for exchange in exchanges:
        pipeline.inference(json.dumps(sample_data.inference_event(exchange, at, rng)).encode())
        for feedback in sample_data.feedback_events(exchange, at):
            pipeline.feedback(json.dumps(feedback).encode())
    rows: dict[str, list[dict[str, Any]]] = {"inference": [], "feedback": []}
    for partial in pipeline.summaries.all():
        rows[partial.kind] += json.loads(to_json(partial.to_json()))["rows"]
    return {kind: Reference(f"real-{kind}", pd.DataFrame(r), len(r)) for kind, r in rows.items()}


@pytest.fixture(scope="module")
def judge() -> tuple[Judge, list[str]]:
    failures: list[str] = []
    return Judge(list(DEFAULT_SPECS), on_failure=failures.append), failures


# -- hypothesis: schema-valid events with extreme values -------------------------------

_finite = st.floats(allow_nan=False, allow_infinity=False)
_non_negative = st.floats(min_value=0, max_value=MAX_NUMBER, allow_nan=False, allow_infinity=False)
_timestamps = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.sampled_from(OFFSETS),
)
_text = st.text(max_size=40)
_ids = st.text(min_size=1, max_size=12)


@st.composite
def inference_events(draw: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": "1",
        "event_id": draw(_ids),
        "request_id": draw(st.sampled_from(["r1", "r2", "r3"])),
        "timestamp": draw(_timestamps).isoformat(),
        "model": {"name": draw(st.sampled_from(["m", "n"])), "version": draw(st.sampled_from(["1", "2"]))},
        "prompt": draw(
            _text | st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": _text}), max_size=3)
        ),
        "response": draw(st.none() | _text | st.just("I'm sorry, I can't help with that.")),
        "status": draw(st.sampled_from(["ok", "error"])),
    }
    optional = {
        "latency_ms": st.none() | _non_negative,
        "cost_usd": st.none() | _non_negative,
        "tokens": st.none()
        | st.fixed_dictionaries(
            {"prompt": st.integers(0, MAX_COUNT), "completion": st.integers(0, MAX_COUNT)}
        ),
        "features": st.none() | st.dictionaries(st.text(min_size=1, max_size=8), _finite | _text, max_size=3),
        "prediction": st.none() | _finite | _text,
        "labels": st.dictionaries(st.text(min_size=1, max_size=8), _text, max_size=3),
        "app": st.none() | _ids,
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            event[name] = draw(values)
    return event


@st.composite
def feedback_events(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["thumbs", "rating", "correction", "label", "flag"]))
    value = {
        "thumbs": st.sampled_from([True, False, 1, -1]),
        "rating": _finite | st.integers(-(2**60), 2**60),
        "correction": st.none(),
        "label": st.none() | _text | _finite,
        "flag": st.none() | st.booleans(),
    }[kind]
    event = {
        "schema_version": "1",
        "event_id": draw(_ids),
        "request_id": draw(st.sampled_from(["r1", "r2", "r3", "orphan"])),
        "timestamp": draw(_timestamps).isoformat(),
        "kind": kind,
        "value": draw(value),
    }
    if kind == "correction":
        event["correction"] = draw(st.text(min_size=1, max_size=40))
    return event


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inference=st.lists(inference_events(), min_size=1, max_size=6),
    feedback=st.lists(feedback_events(), max_size=6),
)
def test_fuzz_valid_extremes_pass_the_whole_pipeline_and_everything_written_is_strict_json(
    reference_rows, judge, inference, feedback
):
    judge_, failures = judge
    pipeline = Pipeline(judge_, reference_rows)
    for event in inference:
        pipeline.inference(json.dumps(event).encode())
    for event in feedback:
        pipeline.feedback(json.dumps(event).encode())
    pipeline.close()

    assert pipeline.closed, "every event lands in a window, and every window closes"
    for topic, value in pipeline.outputs:
        strict_loads(value)  # raises on NaN, Infinity, 1e400, a repeated key
        if topic == "detections":
            _accepted(value, Detection)  # what the decide stage reads back
    assert not failures, f"detectors failed on valid input: {failures}"


def test_a_window_of_year_9999_closes_without_an_error():
    """The crash of issue 15: the window after 9999-12-31T23:59:59Z ends in year 10000."""
    windows = Windows(SPEC)
    batch = BatchSummaries(SPEC, 10, random.Random(0))
    segment = {"model": "m", "model_version": "1", "app": None, "route": None, "tenant": None}
    # In time order (a window older than the last one closed is late, and not judged).
    for ts in ("0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59Z", "9999-12-31T23:00:00-23:59"):
        batch.wants(segment, "inference", datetime.fromisoformat(ts).timestamp())
    closed = []
    for partial in batch.all():
        closed += windows.add(partial, now=0.0)
    closed += windows.tick(now=10.0)
    assert len(closed) == 3
    assert max(w.end for w in closed) == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert min(w.start for w in closed) == datetime(1, 1, 1, tzinfo=UTC)


def test_a_detectors_nan_is_written_as_null_or_left_out():
    detection = Detection(
        detection_id="d",
        detector_id="quality.latency.v1",
        detector_version="v1",
        config={"threshold": float("nan")},
        segment={"model": "m", "model_version": "1"},
        window_start=datetime(2026, 11, 1, tzinfo=UTC),
        window_end=datetime(2026, 11, 1, 0, 1, tzinfo=UTC),
        reference_size=10,
        current_size=0,
        statistic=float("nan"),
        p_value=float("inf"),
        verdict="ok",
        measurements={"p95_ms": float("nan"), "window_events": 0.0},
        reference="pinned",
        detected_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    written = strict_loads(detection.model_dump_json())
    assert (
        written["statistic"] is None and written["p_value"] is None and written["config"]["threshold"] is None
    )
    assert written["measurements"] == {"window_events": 0.0}
    # Read back (the decide stage), it is valid; a detection with a NaN token is not.
    assert isinstance(decode(detection.model_dump_json().encode(), Detection, max_bytes=MAX_BYTES), Accepted)
    hostile = detection.model_dump_json().replace('"window_events":0.0', '"window_events":NaN').encode()
    refused = decode(hostile, Detection, max_bytes=MAX_BYTES)
    assert isinstance(refused, Rejected) and refused.reason.value == "non_finite_number"


# -- a hostile run against a real worker -----------------------------------------------

BROKER_DETECTORS = [
    {"detector_id": "drift.text_length.v1", "kind": "inference", "config": {"column": "response_chars"}},
    {"detector_id": "quality.latency.v1", "kind": "inference", "config": {}},
    {"detector_id": "quality.negative_feedback.v1", "kind": "feedback", "config": {}},
]


def _token(event: dict[str, Any], field: str, token: str) -> bytes:
    return json.dumps({**event, field: "__token__"}).replace('"__token__"', token).encode()


def _hostile(inference: dict[str, Any], feedback: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """(topic kind, message, the reason its dead letter must give), each breaking one rule."""

    def inf(n: int, **change: Any) -> dict[str, Any]:
        return {**inference, "request_id": f"hostile-{n}", "event_id": f"hostile-{n}", **change}

    far_future = [
        ("inference", json.dumps(inf(i, timestamp="9999-12-31T23:59:59Z")).encode(), "timestamp_out_of_range")
        for i in range(5)
    ]
    return [
        *far_future,
        (
            "inference",
            json.dumps(inf(5, timestamp="0001-01-01T00:00:00Z")).encode(),
            "timestamp_out_of_range",
        ),
        (
            "inference",
            json.dumps(inf(6, timestamp="2026-01-01T00:00:00Z")).encode(),
            "timestamp_out_of_range",
        ),
        ("inference", json.dumps(inf(7, timestamp=1_796_000_000)).encode(), "wrong_type"),
        ("inference", _token(inf(8), "latency_ms", "NaN"), "non_finite_number"),
        ("inference", _token(inf(9), "cost_usd", "Infinity"), "non_finite_number"),
        ("inference", _token(inf(10), "latency_ms", "-Infinity"), "non_finite_number"),
        ("inference", _token(inf(11), "latency_ms", "1e400"), "non_finite_number"),
        ("inference", _token(inf(12), "features", '{"temperature": NaN}'), "non_finite_number"),
        ("inference", _token(inf(13), "prediction", "Infinity"), "non_finite_number"),
        ("inference", json.dumps(inf(14, latency_ms=True)).encode(), "wrong_type"),
        ("inference", json.dumps(inf(15, tokens={"prompt": True, "completion": 1})).encode(), "wrong_type"),
        ("inference", json.dumps(inf(16, features={"flag": False})).encode(), "wrong_type"),
        (
            "inference",
            json.dumps(inf(17, schema_version="2"))[:-1].encode() + b', "schema_version": "1"}',
            "duplicate_key",
        ),
        ("inference", _token(inf(18), "labels", '{"team": "a", "team": "b"}'), "duplicate_key"),
        ("inference", json.dumps(inf(19, response="x" * 400_000)).encode(), "oversize"),
        (
            "feedback",
            _token({**feedback, "kind": "rating", "event_id": "hf-1"}, "value", "NaN"),
            "non_finite_number",
        ),
        (
            "feedback",
            json.dumps({**feedback, "kind": "rating", "value": True, "event_id": "hf-2"}).encode(),
            "invalid_value",
        ),
        (
            "feedback",
            json.dumps({**feedback, "event_id": "hf-3"})[:-1].encode() + b', "value": false}',
            "duplicate_key",
        ),
        (
            "feedback",
            json.dumps({**feedback, "event_id": "hf-4", "timestamp": "9999-12-31T23:59:59Z"}).encode(),
            "timestamp_out_of_range",
        ),
    ]


def _valid(data_dir: Any) -> tuple[list[bytes], list[bytes]]:
    """Real traffic in two one-minute windows of one segment, a few minutes back."""
    rng = random.Random(11)
    base = datetime.fromtimestamp((datetime.now(UTC).timestamp() // 60 - 4) * 60, UTC)
    exchanges = [e for _, pair in zip(range(40), sample_data.hh_rlhf(data_dir), strict=False) for e in pair]
    inferences, feedback = [], []
    for i, exchange in enumerate(exchanges):
        at = base + timedelta(minutes=i * 2 // len(exchanges), seconds=1 + i % 40)
        inferences.append(json.dumps(sample_data.inference_event(exchange, at, rng)).encode())
        feedback += [json.dumps(f).encode() for f in sample_data.feedback_events(exchange, at)]
    return inferences, feedback


def _written(stack: WorkerStack, topics: list[str]) -> dict[str, list[bytes]]:
    """Every record of ``topics`` once the worker has handled its inputs and expired its joins."""
    stack.wait(lambda: stack.metric("loopwatch_join_entries") == 0, "the joins never expired")
    t = stack.topics
    stack.wait_committed(t.inference, t.feedback, t.rekey, t.summaries, t.detections)
    stack.wait(
        lambda: len(stack.read_all(t.unmatched)) >= stack.metric("loopwatch_feedback_unmatched_total"),
        "the expired feedback was counted but not published",
    )
    return {topic: [r.value for r in stack.read_all(topic)] for topic in topics}


@pytest.mark.broker
def test_a_hostile_run_is_dead_lettered_and_valid_traffic_after_it_is_processed(broker, tmp_path, data_dir):
    detectors_file = tmp_path / "detectors.yaml"
    detectors_file.write_text(json.dumps(BROKER_DETECTORS))  # JSON is YAML
    stack = WorkerStack(
        broker,
        tmp_path,
        window_grace_seconds=0.5,
        window_idle_seconds=1,
        join_ttl_seconds=3,
        join_sweep_seconds=0.5,
        detectors_file=detectors_file,
        curation="false",
    )
    inferences, feedback = _valid(data_dir)
    hostile = _hostile(json.loads(inferences[0]), json.loads(feedback[0]))
    stack.start()
    try:
        for kind in ("inference", "feedback"):
            stack.send(getattr(stack.topics, kind), [raw for k, raw, _ in hostile if k == kind])
        stack.send(stack.topics.inference, inferences)
        stack.send(stack.topics.feedback, feedback)

        letters = [json.loads(r.value) for r in stack.read(stack.topics.deadletter, len(hostile))]
        enriched = stack.read(stack.topics.enriched, len(inferences), distinct=lambda r: r.key)
        # The second window of each kind is judged (the first is pinned): the timers ran,
        # on windows the year-9999 events were kept out of.
        detections = stack.read(stack.topics.detections, len(BROKER_DETECTORS))
        assert stack.process is not None and stack.process.poll() is None, stack.log()[-3000:]
        assert stack.metric("loopwatch_events_in_total") >= len(hostile) + len(inferences) + len(feedback)
        outputs = [t for t in stack.topics.all() if t not in (stack.topics.inference, stack.topics.feedback)]
        written = _written(stack, outputs)
        assert stack.process.poll() is None, stack.log()[-3000:]
    finally:
        stack.stop()

    sent = {raw: reason for _, raw, reason in hostile}
    got = {}
    for letter in letters:
        value = base64.b64decode(letter["value_b64"])
        assert letter["value_bytes"] == len(value) or letter["reason"] == "oversize"
        got[value if letter["reason"] != "oversize" else next(r for r in sent if r.startswith(value))] = (
            letter
        )
    assert {raw: letter["reason"] for raw, letter in got.items()} == sent
    assert all(letter["error"] for letter in letters)
    request_ids = {json.loads(r.value)["inference"]["request_id"] for r in enriched}
    assert request_ids == {json.loads(raw)["request_id"] for raw in inferences}
    assert len(detections) >= len(BROKER_DETECTORS), stack.log()[-3000:]
    assert written[stack.topics.joined], "valid feedback joined"
    for topic, values in written.items():
        # Every output is strict JSON: no NaN, no Infinity, no repeated key.
        not_strict = [value[:200] for value in values if value is not None and not _is_strict(value)]
        assert not not_strict, (topic, not_strict)


def _is_strict(value: bytes) -> bool:
    try:
        strict_loads(value)
    except ValueError:
        return False
    return True
