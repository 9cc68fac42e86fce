"""OTLP traces off Kafka: the Collector's messages decoded into ``ExportTraceServiceRequest``. Pure, no Kafka.

The OpenTelemetry Collector's Kafka exporter writes one request per message, as
protobuf (``otlp_proto``, its default) or as OTLP/JSON (``otlp_json``, trace and
span ids in hex). :func:`decode_traces` reads both, and protobuf's own JSON form
(base64 ids) too; anything else raises :class:`OtlpDecodeError` with the
dead-letter reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from schemas.events import DeadLetterReason

#: How the Collector's Kafka exporter encodes traces (``auto``: tell them apart by their first byte).
Encoding = Literal["auto", "otlp_proto", "otlp_json"]


class OtlpDecodeError(ValueError):
    """A message that is not an ExportTraceServiceRequest in the encoding expected; ``reason`` says how."""

    def __init__(self, reason: DeadLetterReason, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


def decode_traces(raw: bytes | None, encoding: Encoding = "auto") -> ExportTraceServiceRequest:
    """The ExportTraceServiceRequest in one Kafka message, or :class:`OtlpDecodeError`.

    With ``auto``, a message whose first non-blank byte is ``{`` is OTLP/JSON:
    protobuf cannot start so (field 15 as a group is not in the message).

    >>> decode_traces(b"").__class__.__name__
    Traceback (most recent call last):
    ...
    schemas.otlp_decode.OtlpDecodeError: the message has no value (empty or tombstone)
    """
    if not raw:
        raise OtlpDecodeError(
            DeadLetterReason.MALFORMED_OTLP, "the message has no value (empty or tombstone)"
        )
    if encoding == "otlp_json" or (encoding == "auto" and raw.lstrip()[:1] == b"{"):
        return _decode_json(raw)
    try:
        request = ExportTraceServiceRequest.FromString(raw)
    except DecodeError as exc:
        raise OtlpDecodeError(
            DeadLetterReason.MALFORMED_OTLP,
            f"not an OTLP protobuf ExportTraceServiceRequest ({len(raw):,} bytes): {exc}",
        ) from exc
    if not request.resource_spans:
        # Bytes that parse only as unknown fields: an empty request serializes to no bytes at all.
        raise OtlpDecodeError(
            DeadLetterReason.MALFORMED_OTLP,
            f"not an OTLP protobuf ExportTraceServiceRequest: {len(raw):,} bytes and no resourceSpans",
        )
    return request


def _decode_json(raw: bytes) -> ExportTraceServiceRequest:
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise OtlpDecodeError(
            DeadLetterReason.INVALID_UTF8, f"OTLP/JSON that is not UTF-8: byte {exc.start} is invalid"
        ) from exc
    except ValueError as exc:
        raise OtlpDecodeError(DeadLetterReason.MALFORMED_JSON, f"OTLP/JSON that is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise OtlpDecodeError(
            DeadLetterReason.NOT_AN_OBJECT, "OTLP/JSON must be an object (an ExportTraceServiceRequest)"
        )
    try:
        return _collector_json(document)
    except (_NotCollectorShaped, KeyError, TypeError, ValueError, AttributeError):
        pass  # anything unusual: protobuf's own JSON parser, slower and exact, decides
    for resource in _items(document, "resourceSpans", "resource_spans"):
        for scope in _items(resource, "scopeSpans", "scope_spans"):
            for span in _items(scope, "spans", "spans"):
                _ids_to_base64(span)
                for link in _items(span, "links", "links"):
                    _ids_to_base64(link)
    try:
        return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise OtlpDecodeError(
            DeadLetterReason.MALFORMED_OTLP, f"OTLP/JSON that is not an ExportTraceServiceRequest: {exc}"
        ) from exc


def _items(document: Any, camel: str, snake: str) -> list[Any]:
    found = document.get(camel, document.get(snake)) if isinstance(document, dict) else None
    return found if isinstance(found, list) else []


def _ids_to_base64(span: Any) -> None:
    """OTLP/JSON writes ids in hex (the Collector does); protobuf's JSON parser reads base64."""
    if not isinstance(span, dict):
        return
    for key, size in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
        for name in (key, _snake(key)):
            value = span.get(name)
            if isinstance(value, str) and len(value) == 2 * size:
                # Not hex: base64 as protobuf writes it, left to its parser.
                with contextlib.suppress(binascii.Error, ValueError):
                    span[name] = base64.b64encode(binascii.unhexlify(value)).decode("ascii")


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


# -- OTLP/JSON as the Collector writes it, built straight into protobuf messages ---------
#
# protobuf's json_format walks every field in Python (about 400 us per span here); the
# Collector's OTLP/JSON has one shape (camelCase keys, hex ids, enums as numbers), which
# these functions build into the messages with their C constructors instead. Any key or
# value they do not know raises, and json_format parses the document after all; a test
# holds both to the same result.

_REQUEST = frozenset({"resourceSpans"})
_RESOURCE_SPANS = frozenset({"resource", "scopeSpans", "schemaUrl"})
_RESOURCE = frozenset({"attributes", "droppedAttributesCount"})
_SCOPE_SPANS = frozenset({"scope", "spans", "schemaUrl"})
_SCOPE = frozenset({"name", "version", "attributes", "droppedAttributesCount"})
_SPAN = frozenset(
    {
        "traceId", "spanId", "parentSpanId", "traceState", "flags", "name", "kind", "startTimeUnixNano",
        "endTimeUnixNano", "attributes", "droppedAttributesCount", "events", "droppedEventsCount",
        "droppedLinksCount", "status",
    }
)  # fmt: skip
_EVENT = frozenset({"timeUnixNano", "name", "attributes", "droppedAttributesCount"})
_STATUS = frozenset({"code", "message"})


class _NotCollectorShaped(Exception):
    """A document the fast path does not build (json_format parses it)."""


def _known(document: Any, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(document, dict) or not document.keys() <= keys:
        raise _NotCollectorShaped
    return document


def _collector_json(document: dict[str, Any]) -> ExportTraceServiceRequest:
    _known(document, _REQUEST)
    resource_spans = []
    for item in document.get("resourceSpans", []):
        _known(item, _RESOURCE_SPANS)
        resource = _known(item.get("resource", {}), _RESOURCE)
        scope_spans = []
        for group in item.get("scopeSpans", []):
            _known(group, _SCOPE_SPANS)
            scope = _known(group.get("scope", {}), _SCOPE)
            scope_spans.append(
                trace_pb2.ScopeSpans(
                    scope=InstrumentationScope(
                        name=scope.get("name", ""),
                        version=scope.get("version", ""),
                        attributes=_key_values(scope.get("attributes", [])),
                    ),
                    spans=[_span(span) for span in group.get("spans", [])],
                    schema_url=group.get("schemaUrl", ""),
                )
            )
        resource_spans.append(
            trace_pb2.ResourceSpans(
                resource=Resource(
                    attributes=_key_values(resource.get("attributes", [])),
                    dropped_attributes_count=resource.get("droppedAttributesCount", 0),
                ),
                scope_spans=scope_spans,
                schema_url=item.get("schemaUrl", ""),
            )
        )
    return ExportTraceServiceRequest(resource_spans=resource_spans)


def _span(span: Any) -> trace_pb2.Span:
    _known(span, _SPAN)
    status = _known(span.get("status", {}), _STATUS)
    return trace_pb2.Span(
        trace_id=_id(span.get("traceId", ""), 16),
        span_id=_id(span.get("spanId", ""), 8),
        parent_span_id=_id(span.get("parentSpanId", ""), 8),
        trace_state=span.get("traceState", ""),
        flags=span.get("flags", 0),
        name=span.get("name", ""),
        kind=span.get("kind", 0),
        start_time_unix_nano=int(span.get("startTimeUnixNano", 0)),
        end_time_unix_nano=int(span.get("endTimeUnixNano", 0)),
        attributes=_key_values(span.get("attributes", [])),
        dropped_attributes_count=span.get("droppedAttributesCount", 0),
        events=[_event(event) for event in span.get("events", [])],
        dropped_events_count=span.get("droppedEventsCount", 0),
        dropped_links_count=span.get("droppedLinksCount", 0),
        status=trace_pb2.Status(code=status.get("code", 0), message=status.get("message", "")),
    )


def _event(event: Any) -> trace_pb2.Span.Event:
    _known(event, _EVENT)
    return trace_pb2.Span.Event(
        time_unix_nano=int(event.get("timeUnixNano", 0)),
        name=event.get("name", ""),
        attributes=_key_values(event.get("attributes", [])),
        dropped_attributes_count=event.get("droppedAttributesCount", 0),
    )


def _id(value: str, size: int) -> bytes:
    if not value:
        return b""
    if len(value) == 2 * size:
        return bytes.fromhex(value)
    raise _NotCollectorShaped  # base64 (protobuf's JSON) or a wrong length: json_format decides


def _key_values(pairs: list[Any]) -> list[KeyValue]:
    return [KeyValue(key=pair["key"], value=_any(pair.get("value", {}))) for pair in pairs]


def _any(value: dict[str, Any]) -> AnyValue:
    if len(value) > 1:
        raise _NotCollectorShaped
    for kind, item in value.items():
        if kind == "stringValue":
            return AnyValue(string_value=item)
        if kind == "intValue":
            if isinstance(item, float | bool):  # int64 is a JSON string or integer, never these
                raise _NotCollectorShaped
            return AnyValue(int_value=int(item))
        if kind == "boolValue":
            return AnyValue(bool_value=item)
        if kind == "doubleValue":
            return AnyValue(double_value=float(item))
        if kind == "arrayValue":
            return AnyValue(array_value=ArrayValue(values=[_any(v) for v in _known(item, _VALUES)["values"]]))
        if kind == "kvlistValue":
            return AnyValue(kvlist_value=KeyValueList(values=_key_values(_known(item, _VALUES)["values"])))
        if kind == "bytesValue":
            return AnyValue(bytes_value=base64.b64decode(item, validate=True))
        raise _NotCollectorShaped
    return AnyValue()


_VALUES = frozenset({"values"})
