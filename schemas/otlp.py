"""OpenTelemetry traces in: GenAI spans mapped to loopwatch events. Pure functions, no Kafka.

The OpenTelemetry Collector's Kafka exporter writes one ``ExportTraceServiceRequest``
per message; :func:`decode_traces` (:mod:`schemas.otlp_decode`) reads it, and
:func:`map_traces` turns every LLM call in it into an ``InferenceLog`` and every
``gen_ai.evaluation.result`` event into a ``Feedback``, as plain dicts that the
bridge stage writes to the inference and feedback topics (ingest validates them
there, like any producer's events).

Each field is taken from the first attribute family that carries it:

1. the current GenAI semantic conventions (``gen_ai.input.messages``,
   ``gen_ai.usage.input_tokens``, ``gen_ai.provider.name``, ...);
2. the older names many instrumentations still emit (``gen_ai.prompt`` and
   ``gen_ai.completion``, also indexed as ``gen_ai.prompt.0.content``, the span
   events ``gen_ai.content.prompt`` / ``gen_ai.content.completion``,
   ``gen_ai.usage.prompt_tokens``, ``gen_ai.system``);
3. OpenInference (``llm.input_messages.0.message.content``, ``input.value``,
   ``llm.token_count.prompt``, ``llm.model_name``, ...).

A span's request id is its ``gen_ai.response.id``, else ``<trace id>-<span id>``
in hex; an evaluation event refers to the request named by its own
``gen_ai.response.id``, else to the span it is on, else to that span's parent
(when the parent is an LLM call in the same message), so its Feedback joins.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic_core import from_json

from schemas.events import MAX_ID_CHARS, MAX_LABEL_VALUE_CHARS, MAX_MESSAGES
from schemas.otlp_decode import Encoding, OtlpDecodeError, decode_traces

__all__ = ["Encoding", "Mapped", "Mapping", "OtlpDecodeError", "SkipReason", "decode_traces", "map_traces"]

#: ``gen_ai.operation.name`` values that are LLM calls; other operations (embeddings, tools, agents) are not.
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
EVALUATION_EVENT = "gen_ai.evaluation.result"
_STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

# Roles the InferenceLog knows; what instrumentations call them otherwise.
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "model": "assistant",
    "ai": "assistant",
    "tool": "tool",
    "function": "tool",
}


class SkipReason(StrEnum):
    """Why a span (or an evaluation event) was not turned into an event; one metric label each."""

    NOT_GENAI = "not_genai"  # no GenAI or OpenInference attribute: an HTTP, database, ... span
    NOT_AN_LLM_CALL = "not_an_llm_call"  # embeddings, tool, agent, retrieval, chain spans
    NO_MODEL = "no_model"  # an LLM call that names no model
    BAD_TIMESTAMP = "bad_timestamp"  # no start or end time, or one no datetime holds
    EVALUATION_WITHOUT_REQUEST = "evaluation_without_request"  # no response id, no LLM span to refer to
    EVALUATION_WITHOUT_RESULT = "evaluation_without_result"  # neither a score nor a label
    EVALUATION_FAILED = "evaluation_failed"  # the evaluator itself failed (error.type set)


# -- mapping -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mapping:
    """Where the attributes no convention names are found (resource attributes first, then the span's)."""

    version_attribute: str = "service.version"
    tenant_attribute: str | None = "tenant.id"
    route_attribute: str | None = None


@dataclass
class Mapped:
    """What one ExportTraceServiceRequest became: (request id, event) pairs, and what was skipped why."""

    inferences: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    feedback: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    skipped: Counter[SkipReason] = field(default_factory=Counter)


def map_traces(request: ExportTraceServiceRequest, mapping: Mapping) -> Mapped:
    """Every LLM span of ``request`` as an InferenceLog dict, every evaluation event as a Feedback dict."""
    mapped = Mapped()
    request_ids: dict[bytes, str] = {}  # span id -> request id of the LLM spans seen
    evaluated: list[tuple[Any, str | None]] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs = _attributes(span.attributes)
                event = _inference(span, attrs, resource, mapping, mapped.skipped)
                request_id = None
                if event is not None:
                    request_id = event["request_id"]
                    request_ids[span.span_id] = request_id
                    mapped.inferences.append((request_id, event))
                if span.events and any(e.name == EVALUATION_EVENT for e in span.events):
                    evaluated.append((span, request_id))
    for span, request_id in evaluated:
        own = request_id or request_ids.get(span.parent_span_id)
        for index, span_event in enumerate(span.events):
            if span_event.name == EVALUATION_EVENT:
                feedback = _feedback(span, index, span_event, own, mapped.skipped)
                if feedback is not None:
                    mapped.feedback.append((feedback["request_id"], feedback))
    return mapped


def _inference(
    span: Any, attrs: dict[str, Any], resource: dict[str, Any], mapping: Mapping, skipped: Counter[SkipReason]
) -> dict[str, Any] | None:
    """The InferenceLog of an LLM span, or None (counted in ``skipped``)."""
    reason = _not_llm(attrs)
    if reason is not None:
        skipped[reason] += 1
        return None
    model = _first(attrs, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
    if not isinstance(model, str) or not model:
        skipped[SkipReason.NO_MODEL] += 1
        return None
    ended = span.end_time_unix_nano or span.start_time_unix_nano
    timestamp = _timestamp(ended)
    if timestamp is None:
        skipped[SkipReason.BAD_TIMESTAMP] += 1
        return None
    trace, span_id = span.trace_id.hex(), span.span_id.hex()
    response_id = attrs.get("gen_ai.response.id")
    valid_id = isinstance(response_id, str) and 0 < len(response_id) <= MAX_ID_CHARS
    event: dict[str, Any] = {
        "schema_version": "1",
        "event_id": f"otel-{trace}-{span_id}",
        "request_id": response_id if valid_id else f"{trace}-{span_id}",
        "timestamp": timestamp,
        "model": {
            "name": _cut(model),
            "version": _label(_lookup(mapping.version_attribute, resource, attrs)) or "unknown",
        },
    }
    _put(event, "app", _label(resource.get("service.name")))
    if mapping.route_attribute:
        _put(event, "route", _label(_lookup(mapping.route_attribute, attrs, resource)))
    if mapping.tenant_attribute:
        _put(event, "tenant", _label(_lookup(mapping.tenant_attribute, attrs, resource)))
    _put(event, "labels", _labels(attrs, model))
    _put(event, "prompt", _prompt(span, attrs))
    response = _response(span, attrs)
    if response is not None:  # an empty reply is a fact the detectors count
        event["response"] = response
    if span.start_time_unix_nano and span.end_time_unix_nano >= span.start_time_unix_nano:
        event["latency_ms"] = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    prompt_tokens = _count(
        attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"
    )
    completion_tokens = _count(
        attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"
    )
    if prompt_tokens is not None and completion_tokens is not None:
        event["tokens"] = {"prompt": prompt_tokens, "completion": completion_tokens}
    cost = _number(_first(attrs, "gen_ai.usage.cost", "llm.cost.total"))
    if cost is not None and cost >= 0:
        event["cost_usd"] = cost
    error_type = attrs.get("error.type")
    if span.status.code == _STATUS_ERROR or error_type:
        event["status"] = "error"
        _put(event, "error", span.status.message or (str(error_type) if error_type else None))
    event["trace_id"] = trace
    return event


def _not_llm(attrs: dict[str, Any]) -> SkipReason | None:
    """None for an LLM call; else why the span is not one."""
    operation = attrs.get("gen_ai.operation.name")
    if operation is not None:
        return None if str(operation).lower() in LLM_OPERATIONS else SkipReason.NOT_AN_LLM_CALL
    kind = attrs.get("openinference.span.kind")
    if kind is not None:
        return None if str(kind).upper() == "LLM" else SkipReason.NOT_AN_LLM_CALL
    request_type = attrs.get("llm.request.type")  # OpenLLMetry, beside the older gen_ai names
    if request_type is not None and str(request_type).lower() not in ("chat", "completion"):
        return SkipReason.NOT_AN_LLM_CALL
    if any(key.startswith(("gen_ai.", "llm.")) for key in attrs):
        return None  # an older instrumentation: no operation name, but GenAI attributes
    return SkipReason.NOT_GENAI


def _feedback(
    span: Any, index: int, event: Any, own: str | None, skipped: Counter[SkipReason]
) -> dict[str, Any] | None:
    """The Feedback of one evaluation event (source ``automatic``), or None (counted)."""
    attrs = _attributes(event.attributes)
    response_id = attrs.get("gen_ai.response.id")
    request_id = response_id if isinstance(response_id, str) and response_id else own
    if request_id is None:
        skipped[SkipReason.EVALUATION_WITHOUT_REQUEST] += 1
        return None
    if attrs.get("error.type"):
        skipped[SkipReason.EVALUATION_FAILED] += 1
        return None
    score = _number(attrs.get("gen_ai.evaluation.score.value"))
    label = attrs.get("gen_ai.evaluation.score.label")
    label = str(label) if label not in (None, "") else None
    if score is None and label is None:
        skipped[SkipReason.EVALUATION_WITHOUT_RESULT] += 1
        return None
    timestamp = _timestamp(event.time_unix_nano or span.end_time_unix_nano)
    if timestamp is None:
        skipped[SkipReason.BAD_TIMESTAMP] += 1
        return None
    name = str(attrs.get("gen_ai.evaluation.name") or "evaluation")
    comment = name + (f" ({label})" if label is not None and score is not None else "")
    explanation = attrs.get("gen_ai.evaluation.explanation")
    if explanation:
        comment += f": {explanation}"
    return {
        "schema_version": "1",
        "event_id": f"otel-{span.trace_id.hex()}-{span.span_id.hex()}-{index}",
        "request_id": request_id,
        "timestamp": timestamp,
        "kind": "rating" if score is not None else "label",
        "value": score if score is not None else label,
        "comment": comment[:10_000],
        "source": "automatic",
    }


# -- texts ---------------------------------------------------------------------------


def _prompt(span: Any, attrs: dict[str, Any]) -> list[dict[str, str]] | str | None:
    """The prompt as chat turns (or text), from the first family that carries one."""
    turns = _semconv_messages(attrs.get("gen_ai.input.messages"))
    if turns is not None:
        system = _parts_text(_json(attrs.get("gen_ai.system_instructions")))
        if system:
            turns.insert(0, {"role": "system", "content": system})
        return turns[-MAX_MESSAGES:]
    found = _older_families(
        span, attrs, "gen_ai.prompt", "gen_ai.content.prompt", "llm.input_messages", "input.value"
    )
    return found[-MAX_MESSAGES:] if isinstance(found, list) else found


def _response(span: Any, attrs: dict[str, Any]) -> str | None:
    """The reply's text (the first choice), from the first family that carries one."""
    turns = _semconv_messages(attrs.get("gen_ai.output.messages"))
    if turns:
        return turns[0]["content"]
    found = _older_families(
        span, attrs, "gen_ai.completion", "gen_ai.content.completion", "llm.output_messages", "output.value"
    )
    return found[0]["content"] if isinstance(found, list) else found


def _older_families(
    span: Any, attrs: dict[str, Any], gen_ai: str, event: str, openinference: str, text: str
) -> list[dict[str, str]] | str | None:
    """Turns (or text) from the first older family that carries them: gen_ai, its span event, OpenInference.

    The prompt and the reply are written alike, under their own attribute names.
    """
    for found in (
        _old_messages(attrs.get(gen_ai)),
        _indexed(attrs, f"{gen_ai}.", ".role", ".content"),
        _old_messages(_event_attribute(span, event, gen_ai)),
        _indexed(attrs, f"{openinference}.", ".message.role", ".message.content"),
        attrs.get(text) if isinstance(attrs.get(text), str) else None,
    ):
        if found:
            return found
    return None


def _semconv_messages(value: Any) -> list[dict[str, str]] | None:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages``: JSON ``[{role, parts: [{type, content}]}]``."""
    messages = _json(value)
    if not isinstance(messages, list):
        return None
    turns = []
    for message in messages:
        if isinstance(message, dict):
            parts = message.get("parts")
            content = _parts_text(parts) if isinstance(parts, list) else _content(message.get("content"))
            turns.append({"role": _role(message.get("role")), "content": content})
    return turns


def _old_messages(value: Any) -> list[dict[str, str]] | str | None:
    """``gen_ai.prompt`` / ``gen_ai.completion``: plain text, or JSON ``[{role, content}]``."""
    if not isinstance(value, str) or not value:
        return None
    if value.lstrip()[:1] in ("[", "{"):
        messages = _json(value)
        if isinstance(messages, dict):
            messages = [messages]
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            return [{"role": _role(m.get("role")), "content": _content(m.get("content"))} for m in messages]
    return value


def _indexed(attrs: dict[str, Any], prefix: str, role: str, content: str) -> list[dict[str, str]] | None:
    """Turns written one attribute each: ``<prefix>0<role>``, ``<prefix>0<content>``, ``<prefix>1...``."""
    if prefix + "0" + content not in attrs and prefix + "0" + role not in attrs:
        return None
    turns = []
    n = 0
    while (prefix + str(n) + content) in attrs or (prefix + str(n) + role) in attrs:
        at = prefix + str(n)
        text = attrs.get(at + content)
        if text is None:  # OpenInference's multi-part form: .message.contents.M.message_content.text
            text = _indexed_parts(attrs, at + ".message.contents.")
        turns.append({"role": _role(attrs.get(at + role)), "content": _content(text)})
        n += 1
    return turns


def _indexed_parts(attrs: dict[str, Any], prefix: str) -> str:
    texts, m = [], 0
    while (
        key := f"{prefix}{m}.message_content.text"
    ) in attrs or f"{prefix}{m}.message_content.type" in attrs:
        text = attrs.get(key)
        if isinstance(text, str):
            texts.append(text)
        m += 1
    return "\n".join(texts)


def _event_attribute(span: Any, name: str, attribute: str) -> Any:
    for event in span.events:
        if event.name == name:
            for kv in event.attributes:
                if kv.key == attribute:
                    return _value(kv.value)
    return None


def _parts_text(parts: Any) -> str:
    """The text parts of a message (``[{type: text, content}]``), joined by newlines."""
    if not isinstance(parts, list):
        return ""
    texts = [
        p["content"]
        for p in parts
        if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("content"), str)
    ]
    return "\n".join(texts)


def _content(value: Any) -> str:
    """A message's content: text, or a provider's list of parts (``[{type: text, text}]``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [p.get("text", p.get("content")) if isinstance(p, dict) else p for p in value]
        return "\n".join(t for t in texts if isinstance(t, str))
    return "" if value is None else str(value)


def _role(value: Any) -> str:
    return _ROLES.get(str(value).lower(), "user") if value is not None else "user"


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return from_json(value)  # pydantic's parser: a few times faster than json.loads
        except ValueError:
            return None
    return value


# -- attributes ------------------------------------------------------------------------


def _attributes(pairs: Any) -> dict[str, Any]:
    # The hot loop of the bridge: strings (most attributes) without a call of _value.
    attributes = {}
    for kv in pairs:
        value = kv.value
        if value.WhichOneof("value") == "string_value":
            attributes[kv.key] = value.string_value
        else:
            attributes[kv.key] = _value(value)
    return attributes


def _value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


def _first(attrs: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


def _lookup(name: str, first: dict[str, Any], then: dict[str, Any]) -> Any:
    value = first.get(name)
    return then.get(name) if value is None or value == "" else value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(attrs: dict[str, Any], *names: str) -> int | None:
    number = _number(_first(attrs, *names))
    return int(number) if number is not None and number >= 0 and number.is_integer() else None


def _timestamp(unix_nano: int) -> str | None:
    if unix_nano <= 0:
        return None
    try:
        return datetime.fromtimestamp(unix_nano // 1_000 / 1e6, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def _labels(attrs: dict[str, Any], model: str) -> dict[str, str]:
    """Facts worth keeping beside the event, under the current convention's names whatever the family."""
    labels = {
        "gen_ai.provider.name": _first(
            attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"
        ),
        "gen_ai.operation.name": attrs.get("gen_ai.operation.name"),
        "gen_ai.conversation.id": _first(attrs, "gen_ai.conversation.id", "session.id"),
    }
    request_model = _first(attrs, "gen_ai.request.model")
    if request_model != model:
        labels["gen_ai.request.model"] = request_model
    reasons = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list):
        labels["gen_ai.response.finish_reasons"] = ",".join(str(r) for r in reasons)
    user = _first(attrs, "user.id", "enduser.id")
    if user is not None:
        labels["user.id"] = hashed_user(str(user))
    return {key: _cut(str(value)) for key, value in labels.items() if value not in (None, "")}


def hashed_user(user_id: str) -> str:
    """A user id as loopwatch keeps it: hashed (``u_`` and 16 hex digits of its SHA-256), never raw.

    >>> hashed_user("jane@example.com")
    'u_8c87b489ce35cf2e'
    """
    return "u_" + hashlib.sha256(user_id.encode()).hexdigest()[:16]


def _label(value: Any) -> str | None:
    return None if value is None or value == "" else _cut(str(value))


def _cut(text: str) -> str:
    return text[:MAX_LABEL_VALUE_CHARS]


def _put(event: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, "", [], {}):
        event[key] = value
