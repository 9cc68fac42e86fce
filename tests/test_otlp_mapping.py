"""OTLP traces from the real OpenTelemetry SDK, in both Collector encodings, mapped to loopwatch events.

Payloads are recorded with the SDK (TracerProvider + in-memory exporter), encoded
with its own OTLP encoder (``opentelemetry.exporter.otlp.proto.common``), and
written as protobuf, as protobuf's JSON (base64 ids) and as the Collector's
OTLP/JSON (hex ids). Texts are real HH-RLHF and OASST1 exchanges.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic_core import to_json

from core.settings import Settings
from schemas.events import DeadLetterReason, Feedback, InferenceLog
from schemas.otlp import Mapping, OtlpDecodeError, SkipReason, decode_traces, hashed_user, map_traces
from schemas.otlp_decode import _collector_json
from services import sample_data
from services.demo.otlp import collector_message
from streams.app import create_app
from streams.ingest import Accepted, Rejected, decode
from streams.metrics import Metrics
from streams.otlp_stage import SOURCE_HEADER, OtlpStage
from streams.runtime import Batch

START = 1_795_000_000_000_000_000  # 2026-11-17, in ns
LATENCY_NS = 812_500_000
ENCODINGS = ["otlp_proto", "protobuf_json", "otlp_json"]


class Recorder:
    """One service's spans, recorded with the SDK as an instrumented app records them."""

    def __init__(self, service: str = "support-bot", version: str = "2026-11-20", **resource: Any) -> None:
        self.exporter = InMemorySpanExporter()
        attributes = {"service.name": service, "service.version": version, **resource}
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def span(
        self,
        attributes: dict[str, Any],
        *,
        events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
        parent: Any = None,
        error: str | None = None,
        name: str = "chat",
    ) -> Any:
        """A finished span (start START, LATENCY_NS long) with these attributes and events."""
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(
            name, context=context, kind=SpanKind.CLIENT, attributes=attributes, start_time=START
        )
        for event_name, event_attributes in events:
            span.add_event(event_name, event_attributes, timestamp=START + LATENCY_NS + 1_000_000)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=START + LATENCY_NS)
        return span

    def message(self, encoding: str = "otlp_proto") -> bytes:
        """The finished spans as one Collector Kafka message."""
        request = encode_spans(self.exporter.get_finished_spans())
        if encoding == "protobuf_json":
            return json_format.MessageToJson(request).encode()  # base64 ids, enum names
        return collector_message(request, encoding)


def _mapped(raw: bytes, mapping: Mapping | None = None) -> Any:
    return map_traces(decode_traces(raw), mapping or Mapping())


def _only_inference(raw: bytes, mapping: Mapping | None = None) -> InferenceLog:
    mapped = _mapped(raw, mapping)
    assert len(mapped.inferences) == 1, mapped
    request_id, event = mapped.inferences[0]
    # What ingest reads: the bytes the bridge writes, through ingest's own decoder.
    accepted = decode(to_json(event), InferenceLog, max_bytes=1 << 20)
    assert isinstance(accepted, Accepted), accepted
    assert accepted.event.request_id == request_id
    return accepted.event


@pytest.fixture(scope="module")
def chat(data_dir: Path) -> sample_data.Exchange:
    """A real multi-turn OASST1 exchange (a prompter turn, a reply, then another prompter turn)."""
    return next(e for e in sample_data.oasst1(data_dir) if len(e.prompt) >= 3)


@pytest.fixture(scope="module")
def hh(data_dir: Path) -> sample_data.Exchange:
    """A real HH-RLHF exchange."""
    return next(sample_data.hh_rlhf(data_dir))[1]


def _semconv(turns: list[dict[str, str]]) -> str:
    return json.dumps(
        [{"role": t["role"], "parts": [{"type": "text", "content": t["content"]}]} for t in turns]
    )


def current(exchange: sample_data.Exchange) -> dict[str, Any]:
    """The current GenAI semantic conventions."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": f"chatcmpl-{exchange.request_id}",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 321,
        "gen_ai.usage.output_tokens": 54,
        "gen_ai.conversation.id": "conv-7",
        "gen_ai.system_instructions": json.dumps(
            [{"type": "text", "content": "You are a helpful assistant."}]
        ),
        "gen_ai.input.messages": _semconv(exchange.prompt),
        "gen_ai.output.messages": json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": exchange.response}],
                    "finish_reason": "stop",
                }
            ]
        ),
        "tenant.id": "acme",
    }


def older(exchange: sample_data.Exchange) -> dict[str, Any]:
    """The older names: gen_ai.system, indexed gen_ai.prompt.N.*, usage prompt/completion tokens."""
    attrs: dict[str, Any] = {
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-3-5-sonnet",
        "gen_ai.response.id": f"msg-{exchange.request_id}",
        "gen_ai.usage.prompt_tokens": 120,
        "gen_ai.usage.completion_tokens": 33,
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": exchange.response,
        "llm.request.type": "chat",
    }
    for n, turn in enumerate(exchange.prompt):
        attrs[f"gen_ai.prompt.{n}.role"] = turn["role"]
        attrs[f"gen_ai.prompt.{n}.content"] = turn["content"]
    return attrs


def openinference(exchange: sample_data.Exchange) -> dict[str, Any]:
    """OpenInference: span kind LLM, llm.input_messages.N.message.*, token counts, session and user."""
    attrs: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "mistral-large",
        "llm.provider": "mistralai",
        "llm.token_count.prompt": 77,
        "llm.token_count.completion": 12,
        "input.value": exchange.prompt[-1]["content"],
        "output.value": exchange.response,
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": exchange.response,
        "session.id": "sess-1",
        "user.id": "jane@example.com",
    }
    for n, turn in enumerate(exchange.prompt):
        attrs[f"llm.input_messages.{n}.message.role"] = turn["role"]
        attrs[f"llm.input_messages.{n}.message.content"] = turn["content"]
    return attrs


FAMILIES = {
    "current": (current, "gpt-4o-2024-08-06", (321, 54)),
    "older": (older, "claude-3-5-sonnet", (120, 33)),
    "openinference": (openinference, "mistral-large", (77, 12)),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_in_each_encoding_becomes_the_inference_log_it_describes(
    family: str, encoding: str, chat: sample_data.Exchange
) -> None:
    attributes, model, tokens = FAMILIES[family]
    recorder = Recorder()
    span = recorder.span(attributes(chat))
    log = _only_inference(recorder.message(encoding))
    assert (log.model.name, log.model.version, log.app) == (model, "2026-11-20", "support-bot")
    assert log.tokens is not None and (log.tokens.prompt, log.tokens.completion) == tokens
    assert log.latency_ms == LATENCY_NS / 1e6
    assert log.timestamp == datetime.fromtimestamp((START + LATENCY_NS) / 1e9, UTC)
    assert log.response == chat.response
    turns = [(m.role, m.content) for m in log.prompt or [] if not isinstance(m, str)]
    expected = [(t["role"], t["content"]) for t in chat.prompt]
    if family == "current":
        expected.insert(0, ("system", "You are a helpful assistant."))
    assert turns == expected
    trace_id = format(span.get_span_context().trace_id, "032x")
    span_id = format(span.get_span_context().span_id, "016x")
    assert log.trace_id == trace_id and log.event_id == f"otel-{trace_id}-{span_id}"
    if family == "openinference":  # no response id: the span's ids are the request id
        assert log.request_id == f"{trace_id}-{span_id}"
        assert log.labels["user.id"] == hashed_user("jane@example.com")
        assert log.labels["gen_ai.conversation.id"] == "sess-1"
    else:
        assert log.request_id.endswith(chat.request_id)
    assert log.cost_usd is None and log.status == "ok"


def test_the_current_names_win_over_the_older_ones_and_the_older_over_openinference(
    hh: sample_data.Exchange, chat: sample_data.Exchange
) -> None:
    recorder = Recorder()
    recorder.span({**openinference(hh), **older(hh), **current(chat)})
    recorder.span({**openinference(hh), **older(chat)})
    first, second = (InferenceLog.model_validate(e) for _, e in _mapped(recorder.message()).inferences)
    assert first.model.name == "gpt-4o-2024-08-06" and first.response == chat.response
    assert first.tokens is not None and first.tokens.prompt == 321
    assert first.labels["gen_ai.provider.name"] == "openai"
    assert second.model.name == "claude-3-5-sonnet" and second.response == chat.response
    assert second.tokens is not None and second.tokens.prompt == 120
    assert second.labels["gen_ai.provider.name"] == "anthropic"


def test_older_plain_and_json_prompts_and_the_content_events_are_read(hh: sample_data.Exchange) -> None:
    recorder = Recorder()
    base = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-3.5-turbo"}
    recorder.span({**base, "gen_ai.prompt": hh.prompt[-1]["content"], "gen_ai.completion": hh.response})
    recorder.span(
        base,
        events=[
            ("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps(hh.prompt)}),
            (
                "gen_ai.content.completion",
                {"gen_ai.completion": json.dumps([{"role": "assistant", "content": hh.response}])},
            ),
        ],
    )
    plain, evented = (InferenceLog.model_validate(e) for _, e in _mapped(recorder.message()).inferences)
    assert plain.prompt == hh.prompt[-1]["content"] and plain.response == hh.response
    assert [m.content for m in evented.prompt or [] if not isinstance(m, str)] == [
        t["content"] for t in hh.prompt
    ]
    assert evented.response == hh.response
    assert plain.tokens is None  # no counts: ingest estimates them


def test_openinference_multi_part_messages_are_joined(hh: sample_data.Exchange) -> None:
    recorder = Recorder()
    recorder.span(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o-mini",
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.contents.0.message_content.type": "text",
            "llm.input_messages.0.message.contents.0.message_content.text": hh.prompt[0]["content"],
            "llm.input_messages.0.message.contents.1.message_content.type": "image",
            "llm.input_messages.0.message.contents.2.message_content.text": "and this picture",
            "output.value": hh.response,
        }
    )
    log = _only_inference(recorder.message("otlp_json"))
    assert [(m.role, m.content) for m in log.prompt or [] if not isinstance(m, str)] == [
        ("user", hh.prompt[0]["content"] + "\nand this picture")
    ]
    assert log.response == hh.response and log.tokens is None


def test_spans_that_are_not_llm_calls_are_skipped_and_counted_by_reason(hh: sample_data.Exchange) -> None:
    recorder = Recorder()
    recorder.span({"http.request.method": "POST", "url.path": "/chat"}, name="POST /chat")
    recorder.span({"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "text-embedding-3-small"})
    recorder.span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"})
    recorder.span({"openinference.span.kind": "CHAIN", "input.value": "hi"})
    recorder.span({"openinference.span.kind": "RETRIEVER"})
    recorder.span({"gen_ai.system": "openai", "llm.request.type": "embedding", "gen_ai.request.model": "ada"})
    recorder.span({"gen_ai.operation.name": "chat", "gen_ai.input.messages": _semconv(hh.prompt)})
    recorder.span(current(hh))
    mapped = _mapped(recorder.message("otlp_json"))
    assert len(mapped.inferences) == 1
    assert dict(mapped.skipped) == {
        SkipReason.NOT_GENAI: 1,
        SkipReason.NOT_AN_LLM_CALL: 5,
        SkipReason.NO_MODEL: 1,
    }


def test_evaluation_events_become_automatic_feedback_that_refers_to_the_evaluated_request(
    hh: sample_data.Exchange,
) -> None:
    recorder = Recorder()
    llm = recorder.span(
        openinference(hh),  # no response id: the feedback must name the span's own request id
        events=[
            (
                "gen_ai.evaluation.result",
                {
                    "gen_ai.evaluation.name": "helpfulness",
                    "gen_ai.evaluation.score.value": 0.25,
                    "gen_ai.evaluation.score.label": "unhelpful",
                    "gen_ai.evaluation.explanation": "the reply dodges the question",
                },
            ),
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "relevance"}),  # no result: skipped
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "tox", "error.type": "timeout"}),
        ],
    )
    # An evaluator's own span under the LLM span, its event naming no response id: the parent's.
    recorder.span(
        {"gen_ai.operation.name": "evaluate"},
        parent=llm,
        events=[
            (
                "gen_ai.evaluation.result",
                {"gen_ai.evaluation.name": "toxicity", "gen_ai.evaluation.score.label": "safe"},
            )
        ],
    )
    # Evaluated elsewhere: the event names the response it is about.
    recorder.span(
        {"http.route": "/evaluate"},
        events=[
            (
                "gen_ai.evaluation.result",
                {
                    "gen_ai.evaluation.name": "groundedness",
                    "gen_ai.evaluation.score.value": 4,
                    "gen_ai.response.id": "chatcmpl-9",
                },
            ),
            (
                "gen_ai.evaluation.result",
                {"gen_ai.evaluation.name": "orphan", "gen_ai.evaluation.score.value": 1},
            ),
        ],
    )
    mapped = _mapped(recorder.message("otlp_proto"))
    ((request_id, _),) = mapped.inferences
    feedback = [Feedback.model_validate(f) for _, f in mapped.feedback]
    assert [(f.request_id, f.kind, f.value, f.source) for f in feedback] == [
        (request_id, "rating", 0.25, "automatic"),
        (request_id, "label", "safe", "automatic"),
        ("chatcmpl-9", "rating", 4.0, "automatic"),
    ]
    assert feedback[0].comment == "helpfulness (unhelpful): the reply dodges the question"
    assert feedback[0].timestamp == datetime.fromtimestamp((START + LATENCY_NS + 1_000_000) / 1e9, UTC)
    assert len({f.event_id for f in feedback}) == 3
    assert dict(mapped.skipped) == {
        SkipReason.EVALUATION_WITHOUT_RESULT: 1,
        SkipReason.EVALUATION_FAILED: 1,
        SkipReason.EVALUATION_WITHOUT_REQUEST: 1,
        SkipReason.NOT_AN_LLM_CALL: 1,  # the evaluator's span
        SkipReason.NOT_GENAI: 1,  # the /evaluate span
    }


def test_the_user_id_is_hashed_before_it_goes_anywhere(hh: sample_data.Exchange) -> None:
    recorder = Recorder()
    recorder.span({**current(hh), "user.id": "jane@example.com"})
    ((_, event),) = _mapped(recorder.message()).inferences
    assert b"jane@example.com" not in to_json(event)
    assert event["labels"]["user.id"] == hashed_user("jane@example.com")


def test_errors_cost_and_configurable_version_tenant_and_route(hh: sample_data.Exchange) -> None:
    recorder = Recorder(version="ignored", **{"deployment.version": "canary-3", "deployment.route": "faq"})
    recorder.span({**current(hh), "gen_ai.usage.cost": 0.0021, "org.tenant": "globex"}, error="rate limited")
    recorder.span({**older(hh), "error.type": "timeout"})
    mapping = Mapping(
        version_attribute="deployment.version",
        tenant_attribute="org.tenant",
        route_attribute="deployment.route",
    )
    failed, timed_out = (
        InferenceLog.model_validate(e) for _, e in _mapped(recorder.message(), mapping).inferences
    )
    assert (failed.model.version, failed.tenant, failed.route) == ("canary-3", "globex", "faq")
    assert (failed.status, failed.error, failed.cost_usd) == ("error", "rate limited", 0.0021)
    assert (timed_out.status, timed_out.error, timed_out.cost_usd) == ("error", "timeout", None)
    unversioned = Recorder(version="")
    unversioned.span(current(hh))
    assert (
        _only_inference(unversioned.message(), Mapping(version_attribute="nowhere")).model.version
        == "unknown"
    )


@pytest.mark.parametrize(
    ("raw", "encoding", "reason"),
    [
        (b"", "auto", DeadLetterReason.MALFORMED_OTLP),
        (b"\x0a\xff\xff\xff", "auto", DeadLetterReason.MALFORMED_OTLP),  # truncated protobuf
        (b"not otlp at all", "auto", DeadLetterReason.MALFORMED_OTLP),
        (b'{"resourceSpans": [', "auto", DeadLetterReason.MALFORMED_JSON),
        (b'  {"resourceSpans": 7}', "auto", DeadLetterReason.MALFORMED_OTLP),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
            "auto",
            DeadLetterReason.MALFORMED_OTLP,
        ),
        (b"[1, 2]", "otlp_json", DeadLetterReason.NOT_AN_OBJECT),
        (b'{"x": "\xff"}', "auto", DeadLetterReason.INVALID_UTF8),
        (
            b'{"resourceSpans": []}',
            "otlp_proto",
            DeadLetterReason.MALFORMED_OTLP,
        ),  # JSON where protobuf is due
    ],
)
def test_undecodable_messages_are_refused_with_a_reason(
    raw: bytes, encoding: Any, reason: DeadLetterReason
) -> None:
    with pytest.raises(OtlpDecodeError) as refused:
        decode_traces(raw, encoding)
    assert refused.value.reason == reason, refused.value.error


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_are_refused_never_raise_otherwise(raw: bytes) -> None:
    try:
        request = decode_traces(raw)
    except OtlpDecodeError as refused:
        assert refused.reason in set(DeadLetterReason)
        return
    map_traces(request, Mapping())  # whatever decodes maps without raising


# -- the stage's handler, without a broker ---------------------------------------------


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[OtlpStage]:
    """The bridge stage of an app built from settings (never started)."""
    config = Settings(data_dir=tmp_path / "data", curation=False, decide=False, detection=False)
    app = create_app(config, Metrics())
    found = app.runtime.stages["otlp"]
    assert isinstance(found, OtlpStage)
    yield found


def test_the_stage_keys_events_by_request_id_and_dead_letters_what_it_cannot_decode(
    stage: OtlpStage, hh: sample_data.Exchange
) -> None:
    recorder = Recorder()
    recorder.span(current(hh), events=[("gen_ai.evaluation.result", {"gen_ai.evaluation.score.value": 1})])
    recorder.span({"db.system": "postgresql"})
    topic = stage.runtime.stages["otlp"].inputs
    (name,) = topic
    messages = [
        SimpleNamespace(topic=name, partition=0, offset=0, key=None, value=recorder.message("otlp_json")),
        SimpleNamespace(topic=name, partition=0, offset=1, key=None, value=b"\x0a\x05broken"),
    ]
    outcomes = [topic[name](m, 0.0) for m in messages]
    assert isinstance(outcomes[1], Rejected) and outcomes[1].reason == DeadLetterReason.MALFORMED_OTLP
    accepted = [(messages[0], outcomes[0])]
    batch = Batch(name, messages, accepted, 0.0)  # type: ignore[arg-type]
    # Before the producer knows the topics, it partitions the records itself (murmur2 of the key).
    assert {p for _, p in asyncio.run(stage.handle(batch, 0.0)).records.take()} == {None}
    stage.partition_count = lambda topic: 6
    records = asyncio.run(stage.handle(batch, 0.0)).records.take()
    topics = stage.topics
    key = f"chatcmpl-{hh.request_id}".encode()
    partition = (murmur2(key) & 0x7FFFFFFF) % 6  # the Java client's partitioner, as the app's feedback uses
    assert set(records) == {(topics.inference, partition), (topics.feedback, partition)}
    ((inference_key, value, headers),) = records[topics.inference, partition]
    assert inference_key == key and InferenceLog.model_validate_json(value or b"")
    ((feedback_key, _, _),) = records[topics.feedback, partition]
    assert feedback_key == key  # the join meets them in one partition
    assert json.loads(dict(headers)[SOURCE_HEADER]) == {"topic": name, "partition": 0, "offset": 0}
    exposition = stage.metrics.render().decode()
    assert 'loopwatch_otlp_skipped_total{reason="not_genai"} 2.0' in exposition  # two handles, one each
    assert 'loopwatch_otlp_mapped_total{kind="inference"} 2.0' in exposition
    assert "loopwatch_otlp_spans_total 4.0" in exposition


def test_the_collectors_json_is_built_into_the_same_request_protobuf_json_parsing_gives(
    hh: sample_data.Exchange,
) -> None:
    recorder = Recorder()
    parent = recorder.span({"http.request.method": "POST"}, name="POST /chat")
    recorder.span(
        {**current(hh), "gen_ai.request.temperature": 0.3, "gen_ai.request.stream": False, "x.ids": [1, 2]},
        parent=parent,
        events=[
            ("gen_ai.evaluation.result", {"gen_ai.evaluation.score.value": 3, "gen_ai.evaluation.name": "q"})
        ],
        error="overloaded",
    )
    request = encode_spans(recorder.exporter.get_finished_spans())
    span = request.resource_spans[0].scope_spans[0].spans[1]
    # Values the SDK never records, but a Collector may forward: a key-value list and bytes.
    extra = span.attributes.add(key="x.map")
    extra.value.kvlist_value.values.add(key="a").value.int_value = -7
    span.attributes.add(key="x.raw").value.bytes_value = b"\x00\xff"
    document = json.loads(collector_message(request, "otlp_json"))
    assert _collector_json(document) == request
    assert json_format.ParseDict(json.loads(json_format.MessageToJson(request)), type(request)()) == request
    assert decode_traces(collector_message(request, "otlp_json")) == request
