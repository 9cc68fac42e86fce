"""The demo's traffic as an instrumented app and the OpenTelemetry Collector would put it on Kafka.

Each inference event becomes an LLM client span recorded with the real
OpenTelemetry SDK (one ``TracerProvider`` per service version, as a deployment
has), under the app's HTTP server span (a span the bridge skips), with the
attributes of one of three instrumentation families. Finished spans are
encoded with the SDK's own OTLP encoder into ``ExportTraceServiceRequest``
messages, written as the Collector's Kafka exporter writes them: protobuf
(``otlp_proto``) or OTLP/JSON with hex ids (``otlp_json``).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, Literal

from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from schemas.events import InferenceLog

#: Attribute families: the current GenAI conventions, the older names, OpenInference.
Family = Literal["current", "older", "openinference"]


def _nanos(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1e6) * 1_000


def _turns(prompt: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt or [])


def genai_attributes(event: dict[str, Any], family: Family) -> dict[str, Any]:
    """The span attributes an instrumentation of ``family`` records for the call ``event`` describes."""
    turns, model, reply = _turns(event.get("prompt")), event["model"]["name"], event.get("response", "")
    tokens = event.get("tokens") or {}
    attrs: dict[str, Any] = {}
    if event.get("tenant"):
        attrs["tenant.id"] = event["tenant"]
    if family == "current":
        attrs |= {
            "gen_ai.operation.name": event.get("route") or "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.response.id": event["request_id"],
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.input.messages": json.dumps(
                [{"role": t["role"], "parts": [{"type": "text", "content": t["content"]}]} for t in turns]
            ),
            "gen_ai.output.messages": json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": reply}],
                        "finish_reason": "stop",
                    }
                ]
            ),
        }
        if tokens:
            attrs["gen_ai.usage.input_tokens"] = tokens["prompt"]
            attrs["gen_ai.usage.output_tokens"] = tokens["completion"]
    elif family == "older":
        attrs |= {
            "gen_ai.system": "openai",
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.response.id": event["request_id"],
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": reply,
        }
        for n, turn in enumerate(turns):
            attrs[f"gen_ai.prompt.{n}.role"] = turn["role"]
            attrs[f"gen_ai.prompt.{n}.content"] = turn["content"]
        if tokens:
            attrs["gen_ai.usage.prompt_tokens"] = tokens["prompt"]
            attrs["gen_ai.usage.completion_tokens"] = tokens["completion"]
    else:
        attrs |= {
            "openinference.span.kind": "LLM",
            "llm.model_name": model,
            "llm.provider": "openai",
            "input.value": turns[-1]["content"] if turns else "",
            "output.value": reply,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": reply,
        }
        for n, turn in enumerate(turns):
            attrs[f"llm.input_messages.{n}.message.role"] = turn["role"]
            attrs[f"llm.input_messages.{n}.message.content"] = turn["content"]
        if tokens:
            attrs["llm.token_count.prompt"] = tokens["prompt"]
            attrs["llm.token_count.completion"] = tokens["completion"]
    return attrs


class SpanWriter:
    """Records LLM calls as the OpenTelemetry SDK does and exports them as the Collector writes them."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self._tracers: dict[tuple[str, str], trace.Tracer] = {}

    def _tracer(self, app: str, version: str) -> trace.Tracer:
        if (app, version) not in self._tracers:
            provider = TracerProvider(
                resource=Resource.create({"service.name": app, "service.version": version})
            )
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            self._tracers[app, version] = provider.get_tracer("loopwatch.demo")
        return self._tracers[app, version]

    def record(
        self,
        event: dict[str, Any],
        family: Family = "current",
        evaluations: list[dict[str, Any]] | None = None,
    ) -> None:
        """One LLM call (an InferenceLog-shaped dict) as a client span under an HTTP server span.

        ``evaluations`` (attributes of ``gen_ai.evaluation.result`` events) are added to the LLM span.
        """
        tracer = self._tracer(event.get("app") or "app", event["model"]["version"])
        end = _nanos(event["timestamp"])
        start = end - int((event.get("latency_ms") or 0) * 1e6)
        server = tracer.start_span("POST /chat", kind=SpanKind.SERVER, start_time=start - 1_000_000)
        server.set_attribute("http.request.method", "POST")
        context = trace.set_span_in_context(server)
        name = f"chat {event['model']['name']}"
        span = tracer.start_span(
            name,
            context=context,
            kind=SpanKind.CLIENT,
            attributes=genai_attributes(event, family),
            start_time=start,
        )
        for evaluation in evaluations or []:
            span.add_event("gen_ai.evaluation.result", evaluation, timestamp=end)
        if event.get("status") == "error":
            span.set_status(Status(StatusCode.ERROR, event.get("error") or "error"))
        span.end(end_time=end)
        server.end(end_time=end + 1_000_000)

    def take(self) -> list[ReadableSpan]:
        """The spans finished since the last call."""
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans


def export_request(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    """The ExportTraceServiceRequest the SDK's OTLP exporter sends for ``spans``."""
    return encode_spans(spans)


def collector_message(request: ExportTraceServiceRequest, encoding: str = "otlp_proto") -> bytes:
    """``request`` as the Collector's Kafka exporter writes it: protobuf, or OTLP/JSON with hex ids."""
    if encoding == "otlp_proto":
        return request.SerializeToString()
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource in document.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _hex(span[key])
    return json.dumps(document).encode()


def _hex(base64_id: str) -> str:
    return base64.b64decode(base64_id).hex()


def as_collector_traffic(
    messages: list[tuple[str, bytes]], inference_topic: str, otlp_topic: str, *, per_message: int = 20
) -> tuple[list[tuple[str, bytes]], int, int]:
    """The same traffic with its valid inference logs sent as LLM spans in Collector messages instead.

    Spans are grouped ``per_message`` to a message, each message placed where its
    first log was, so no feedback moves ahead of its request. The families
    alternate between the current and the older names (both carry
    ``gen_ai.response.id``, so the app's feedback keyed by request id joins).
    Messages that are not valid logs stay as they are: a producer's own bugs.
    Returns the messages, the LLM spans and the Collector messages written.
    """
    writer = SpanWriter()
    out: list[tuple[str, bytes]] = []
    slot: int | None = None  # where the pending spans' message goes
    pending = spans = written = 0

    def flush() -> None:
        nonlocal slot, pending, written
        if slot is not None:
            out[slot] = (otlp_topic, collector_message(export_request(writer.take())))
            slot, pending, written = None, 0, written + 1

    for topic, value in messages:
        event = _valid_log(value, InferenceLog) if topic == inference_topic else None
        if event is None:
            out.append((topic, value))
            continue
        if slot is None:
            slot = len(out)
            out.append((otlp_topic, b""))
        writer.record(event, "current" if spans % 2 == 0 else "older")
        spans, pending = spans + 1, pending + 1
        if pending == per_message:
            flush()
    flush()
    return out, spans, written


def _valid_log(value: bytes, model: type[InferenceLog]) -> dict[str, Any] | None:
    try:
        model.model_validate_json(value)
        return dict(json.loads(value))
    except ValueError:
        return None
