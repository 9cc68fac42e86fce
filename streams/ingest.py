"""Decode, validate and describe incoming messages: pure functions, no Kafka.

``decode`` never raises on input: every message comes back either
``Accepted`` (a validated event) or ``Rejected`` (a reason from
:class:`~schemas.events.DeadLetterReason` and an error a person can act on).
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.events import (
    DeadLetter,
    DeadLetterReason,
    Descriptors,
    EnrichedInference,
    InferenceLog,
    SourceRef,
)

EventT = TypeVar("EventT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Accepted(Generic[EventT]):
    """A message that is a valid event (``text`` is the message decoded as UTF-8)."""

    event: EventT
    text: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not a valid event, and why."""

    reason: DeadLetterReason
    error: str
    detail: list[dict[str, Any]] = field(default_factory=list)


# When a message has several problems, the dead letter names the one a
# producer should fix first: a wrong schema version explains every other error.
_PRIORITY = [
    DeadLetterReason.UNKNOWN_SCHEMA_VERSION,
    DeadLetterReason.OVERSIZE,
    DeadLetterReason.MISSING_FIELD,
    DeadLetterReason.UNKNOWN_FIELD,
    DeadLetterReason.WRONG_TYPE,
    DeadLetterReason.INVALID_VALUE,
]
_TOO_LONG = {"string_too_long", "too_long", "bytes_too_long"}


def decode(raw: bytes | None, model: type[EventT], *, max_bytes: int) -> Accepted[EventT] | Rejected:
    """Turn the bytes of one Kafka message into a validated event or a rejection.

    >>> from schemas.events import Feedback
    >>> decode(b'{"schema_version": "2"}', Feedback, max_bytes=1024).reason.value
    'unknown_schema_version'
    """
    if not raw:
        return Rejected(DeadLetterReason.MALFORMED_JSON, "the message has no value (empty or tombstone)")
    if len(raw) > max_bytes:
        return Rejected(
            DeadLetterReason.OVERSIZE,
            f"the message is {len(raw):,} bytes; the limit is {max_bytes:,} (max_event_bytes)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(
            DeadLetterReason.INVALID_UTF8,
            f"the message is not UTF-8: byte {exc.start} ({raw[exc.start : exc.start + 1]!r}) is invalid",
        )
    try:
        return Accepted(model.model_validate_json(text), text)
    except ValidationError as exc:
        return _classify(exc, model.__name__)


def _classify(exc: ValidationError, model_name: str) -> Rejected:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    detail = [{"field": _dotted(e["loc"]), "type": e["type"], "message": e["msg"]} for e in errors]
    first = errors[0]
    if first["type"] == "json_invalid":
        return Rejected(DeadLetterReason.MALFORMED_JSON, f"not valid JSON: {first['msg']}", detail)
    if first["type"] == "model_type" and not first["loc"]:
        return Rejected(
            DeadLetterReason.NOT_AN_OBJECT,
            f"the message must be a JSON object ({model_name})",
            detail,
        )

    reasons = [_reason_for(e) for e in errors]
    reason = min(reasons, key=_PRIORITY.index)
    examples = [f"{d['field']}: {d['message']}" for d, r in zip(detail, reasons, strict=True) if r is reason]
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return Rejected(reason, f"invalid {model_name}: {examples[0]}{more}", detail)


def _reason_for(error: Any) -> DeadLetterReason:
    kind: str = error["type"]
    if error["loc"] == ("schema_version",) and kind == "literal_error":
        return DeadLetterReason.UNKNOWN_SCHEMA_VERSION
    if kind == "missing":
        return DeadLetterReason.MISSING_FIELD
    if kind == "extra_forbidden":
        return DeadLetterReason.UNKNOWN_FIELD
    if kind in _TOO_LONG:
        return DeadLetterReason.OVERSIZE
    if kind.endswith(("_type", "_parsing")) or kind == "int_from_float":
        return DeadLetterReason.WRONG_TYPE
    return DeadLetterReason.INVALID_VALUE


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(message)"


def dead_letter(
    rejected: Rejected, source: SourceRef, key: bytes | None, value: bytes | None, now: datetime
) -> DeadLetter:
    """The dead-letter record for a rejected message, original bytes included."""
    return DeadLetter(
        reason=rejected.reason,
        error=rejected.error,
        detail=rejected.detail[:20],
        source=source,
        key_b64=base64.b64encode(key).decode("ascii") if key is not None else None,
        value_b64=base64.b64encode(value or b"").decode("ascii"),
        received_at=now,
    )


# Openings that chat models use to decline; matched on the start of the reply.
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i apologi[sz]e|as an ai\b|"
    r"i (?:can(?:'|no)?t|cannot|won'?t|am not able to|'m not able to|am unable to|'m unable to)"
    r" (?:help|assist|provide|comply|do that|answer|fulfil|support|engage|discuss|create|write|give))",
    re.IGNORECASE,
)
_CHARS_PER_TOKEN = 4  # the usual estimate for English text with BPE tokenizers


def describe(log: InferenceLog) -> Descriptors:
    """Cheap descriptors of one request: lengths, tokens (estimated if absent), empty, refusal.

    >>> from datetime import datetime, timezone
    >>> log = InferenceLog(schema_version="1", event_id="e", request_id="r",
    ...     timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
    ...     model={"name": "m", "version": "1"}, prompt="Hi!", response="I'm sorry, I can't help.")
    >>> d = describe(log)
    >>> (d.prompt_chars, d.prompt_tokens, d.tokens_estimated, d.refusal)
    (3, 1, True, True)
    """
    prompt = log.prompt_text()
    response = log.response or ""
    if log.tokens is not None:
        prompt_tokens, completion_tokens, estimated = (
            log.tokens.prompt,
            log.tokens.completion,
            False,
        )
    else:
        prompt_tokens = math.ceil(len(prompt) / _CHARS_PER_TOKEN)
        completion_tokens = math.ceil(len(response) / _CHARS_PER_TOKEN)
        estimated = True
    return Descriptors(
        prompt_chars=len(prompt),
        response_chars=len(response),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tokens_estimated=estimated,
        empty_response=log.status == "ok" and not response.strip(),
        refusal=_REFUSAL.match(response[:200]) is not None,
    )


def enrich(log: InferenceLog, source: SourceRef) -> EnrichedInference:
    """The event forwarded for detection: the log, its descriptors and where it came from."""
    return EnrichedInference(inference=log, descriptors=describe(log), source=source)


def enriched_json(raw: bytes, descriptors: Descriptors, source: SourceRef) -> bytes:
    """``enrich(log, source).model_dump_json()``, without serialising the log a second time.

    ``raw`` is the message that just validated as the log ``descriptors`` describe,
    so it is spliced in as it is; only the small parts are serialised. A test checks
    that the result parses to the same EnrichedInference as :func:`enrich`.
    """
    return b"".join(
        (
            b'{"schema_version":"1","inference":',
            raw,
            b',"descriptors":',
            descriptors.model_dump_json().encode(),
            b',"source":',
            source.model_dump_json().encode(),
            b"}",
        )
    )
