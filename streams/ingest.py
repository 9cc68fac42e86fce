"""Decode, validate and describe incoming messages: pure functions, no Kafka.

``decode`` never raises on input: every message comes back either
``Accepted`` (a validated event) or ``Rejected`` (a reason from
:class:`~schemas.events.DeadLetterReason` and an error a person can act on).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, NamedTuple, Protocol, TypeVar, cast

import jiter
import msgspec
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_json

from detectors.frame import describe
from schemas.events import (
    MAX_COUNT,
    MAX_FEATURES,
    MAX_ID_CHARS,
    MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_MESSAGES,
    MAX_NUMBER,
    MAX_TEXT_CHARS,
    NAIVE_TIMESTAMP,
    NAIVE_TIMESTAMP_ERROR,
    SPACED_TIMESTAMP,
    ChatMessage,
    DeadLetter,
    DeadLetterReason,
    Descriptors,
    EnrichedInference,
    Feedback,
    InferenceLog,
    ModelRef,
    SourceRef,
    Timestamp,
    TokenUsage,
)
from streams.rekey import KEY_PREFIX_BYTES, Origin

EventT = TypeVar("EventT", bound=BaseModel)


class Accepted(NamedTuple, Generic[EventT]):
    """A message that is a valid event (``text`` is the message decoded as UTF-8).

    A named tuple, not a frozen dataclass: ingest builds two per event (decode, then
    its timely copy with ``stamp``), and a frozen dataclass sets each field through
    ``object.__setattr__`` (about twice the time, issue 16). Immutable as before.
    """

    event: EventT
    text: str
    #: The event's timestamp in epoch seconds, once a decoder computed it (ingest's, for out_of_range):
    #: datetime.timestamp() takes about 1.5 us with pydantic's timezone, and ingest asked twice.
    stamp: float | None = None


class ReadAt(Protocol):
    """Where an event was read: a :class:`~schemas.events.SourceRef`, or the Kafka message itself.

    Ingest passes the message it read (it has these three attributes) rather
    than building a validated SourceRef per event; one is built where a record
    holds it (a joined feedback's source).
    """

    @property
    def topic(self) -> str:
        """The topic read."""
        ...

    @property
    def partition(self) -> int:
        """Its partition."""
        ...

    @property
    def offset(self) -> int:
        """The event's offset there."""
        ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not a valid event, and why."""

    reason: DeadLetterReason
    error: str
    detail: list[dict[str, Any]] = field(default_factory=list)
    #: The message the producer wrote, when the rejected one is its re-keyed copy.
    origin: Origin | None = None


# When a message has several problems, the dead letter names the one a
# producer should fix first: a wrong schema version explains every other error.
_PRIORITY = [
    DeadLetterReason.UNKNOWN_SCHEMA_VERSION,
    DeadLetterReason.OVERSIZE,
    DeadLetterReason.MISSING_FIELD,
    DeadLetterReason.UNKNOWN_FIELD,
    # Before wrong_type: NaN in a number-or-string field also fails as "not a string".
    DeadLetterReason.NON_FINITE_NUMBER,
    DeadLetterReason.WRONG_TYPE,
    DeadLetterReason.INVALID_VALUE,
]
_TOO_LONG = {"string_too_long", "too_long", "bytes_too_long"}
#: The detail's type of a date-time without an offset (``invalid_value``, not ``wrong_type``).
NAIVE_TIMESTAMP_TYPE = "timestamp_without_offset"
#: ... and of one with a space where RFC 3339 has a T (``invalid_value`` too).
SPACED_TIMESTAMP_TYPE = "timestamp_without_t"


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
    event = _valid_event(raw, model) if model in _ONE_PARSE else None
    if event is not None:
        return Accepted(event, text)
    try:
        event = model.model_validate_json(text)
    except ValidationError as exc:
        # A repeated key comes first: the other errors may only be what the last of
        # two values said (e.g. a second, wrong schema_version).
        rejected = _classify(exc, model.__name__)
        if rejected.reason is DeadLetterReason.MALFORMED_JSON:
            return rejected
        return _duplicate_key(raw) or rejected
    return _duplicate_key(raw) or Accepted(event, text)


#: The models :func:`_valid_event` may decode: their validators do the same in pydantic's JSON and
#: Python modes (Detection's do not: in Python mode they drop a detector's NaN, from JSON they refuse it).
_ONE_PARSE: frozenset[type[BaseModel]] = frozenset({InferenceLog, Feedback})


def _valid_event(raw: bytes, model: type[EventT]) -> EventT | None:
    """The event in ``raw`` when it is I-JSON that validates as ``model``; None for anything else.

    One parse instead of two for the messages that pass (nearly all): jiter
    refuses a repeated key while it builds the Python objects, and pydantic
    validates those (its Python mode, which takes the types JSON decodes to as
    JSON mode does). Every failure returns None and :func:`decode` parses again
    the way it always did, so each dead-letter reason and error text comes from
    that one path. On the bench's 1 KB events decode took about 10 us instead
    of 12 (best of five, busy machine); a test checks both paths agree.
    An InferenceLog is checked by msgspec first (:func:`_inference_from`).
    """
    try:
        parsed = jiter.from_json(raw, catch_duplicate_keys=True, cache_mode="keys")
        if model is InferenceLog:
            event = _inference_from(parsed)
            if event is not None:
                return cast(EventT, event)
        return model.model_validate(parsed)
    except ValueError:  # jiter's errors, and pydantic's ValidationError
        return None


# -- InferenceLog checked by msgspec --------------------------------------------------
#
# pydantic's validation of a parsed 1 KB log took 6-9 us, most of it its per-field
# machinery rather than the rules; msgspec checks the same rules on the same objects
# in C in about 1 us (issue 16). Its shape below is InferenceLog's with every
# rule at least as strict (whole numbers only for token counts, where pydantic
# also takes 3.0): what it refuses goes to pydantic as before, so no event is
# accepted that pydantic would refuse, and what it accepts is built as pydantic
# would have built it (a test holds both to the same corpus and to the same
# fields). The timestamp is parsed by pydantic itself: the same datetime, tzinfo
# and errors.

_IdRule = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_NameRule = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LABEL_VALUE_CHARS)]
_TextRule = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
_LabelKeyRule = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LABEL_KEY_CHARS)]
_LabelValueRule = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_VALUE_CHARS)]
_NumberRule = Annotated[float, msgspec.Meta(ge=-MAX_NUMBER, le=MAX_NUMBER)]  # NaN fails both bounds
_NonNegativeRule = Annotated[float, msgspec.Meta(ge=0, le=MAX_NUMBER)]
_CountRule = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
# ChatMessage's and InferenceLog's literals (a test holds them equal).
_Role = Literal["system", "user", "assistant", "tool"]
_Status = Literal["ok", "error"]


class _ModelRefShape(msgspec.Struct, forbid_unknown_fields=True):
    name: _NameRule
    version: _NameRule


class _TokensShape(msgspec.Struct, forbid_unknown_fields=True):
    prompt: _CountRule
    completion: _CountRule


class _TurnShape(msgspec.Struct, forbid_unknown_fields=True):
    role: _Role
    content: _TextRule


class _InferenceShape(msgspec.Struct, forbid_unknown_fields=True):
    """InferenceLog's fields, in its order, with its rules (or stricter ones)."""

    schema_version: Literal["1"]
    event_id: _IdRule
    request_id: _IdRule
    timestamp: str  # checked and parsed by pydantic (_TIMESTAMP)
    model: _ModelRefShape
    app: _NameRule | None = None
    route: _NameRule | None = None
    tenant: _NameRule | None = None
    labels: Annotated[dict[_LabelKeyRule, _LabelValueRule], msgspec.Meta(max_length=MAX_LABELS)] = (
        msgspec.field(default_factory=dict)
    )
    prompt: _TextRule | Annotated[list[_TurnShape], msgspec.Meta(max_length=MAX_MESSAGES)] | None = None
    response: _TextRule | None = None
    latency_ms: _NonNegativeRule | None = None
    tokens: _TokensShape | None = None
    cost_usd: _NonNegativeRule | None = None
    status: _Status = "ok"
    error: _TextRule | None = None
    features: (
        Annotated[dict[_LabelKeyRule, _NumberRule | str], msgspec.Meta(max_length=MAX_FEATURES)] | None
    ) = None
    prediction: _NumberRule | str | None = None
    trace_id: _IdRule | None = None


_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(Timestamp)
#: Its core validator, called directly: the same validation without TypeAdapter's Python-level
#: wrapper (about half of the call's time per event, issue 16).
_TIMESTAMP_CHECK: Callable[[Any], datetime] = _TIMESTAMP.validator.validate_python
_TURN_FIELDS = frozenset({"role", "content"})
_MODEL_FIELDS = frozenset({"name", "version"})
_TOKEN_FIELDS = frozenset({"prompt", "completion"})


def _inference_from(parsed: Any) -> InferenceLog | None:
    """The InferenceLog in ``parsed`` (jiter's objects) when msgspec's shape takes it, else None."""
    try:
        shape = msgspec.convert(parsed, _InferenceShape)
        timestamp = _TIMESTAMP_CHECK(shape.timestamp)
    except (msgspec.ValidationError, ValidationError):
        return None
    if timestamp.tzinfo is None:  # never, with the pattern's offset (InferenceLog's validator adds UTC)
        return None
    prompt: Any = shape.prompt
    if isinstance(prompt, list):
        prompt = [_built(ChatMessage, {"role": t.role, "content": t.content}, _TURN_FIELDS) for t in prompt]
    ref, tokens = shape.model, shape.tokens
    values = {
        "schema_version": shape.schema_version,
        "event_id": shape.event_id,
        "request_id": shape.request_id,
        "timestamp": timestamp,
        "model": _built(ModelRef, {"name": ref.name, "version": ref.version}, _MODEL_FIELDS),
        "app": shape.app,
        "route": shape.route,
        "tenant": shape.tenant,
        "labels": shape.labels,
        "prompt": prompt,
        "response": shape.response,
        "latency_ms": shape.latency_ms,
        "tokens": None
        if tokens is None
        else _built(TokenUsage, {"prompt": tokens.prompt, "completion": tokens.completion}, _TOKEN_FIELDS),
        "cost_usd": shape.cost_usd,
        "status": shape.status,
        "error": shape.error,
        "features": shape.features,
        "prediction": shape.prediction,
        "trace_id": shape.trace_id,
    }
    return _built(InferenceLog, values, parsed.keys())


def _built(model: type[EventT], values: dict[str, Any], fields_set: Iterable[str]) -> EventT:
    """``model`` holding ``values`` (checked already), as pydantic's own validation leaves an instance."""
    event = _new(model)
    _set(event, "__dict__", values)
    _set(event, "__pydantic_fields_set__", set(fields_set))
    _set(event, "__pydantic_extra__", None)  # extra="forbid"
    _set(event, "__pydantic_private__", None)  # no private attributes
    return event


_new = object.__new__
_set = object.__setattr__


def _duplicate_key(raw: bytes) -> Rejected | None:
    repeated = _repeated_key(raw)
    if repeated is None:
        return None
    return Rejected(
        DeadLetterReason.DUPLICATE_KEY,
        f"{repeated}: the keys of a JSON object must be unique (I-JSON, RFC 7493)",
    )


def _repeated_key(raw: bytes) -> str | None:
    """Where ``raw`` (JSON that validated) repeats a key in one object, or None.

    pydantic's parser keeps the last of two equal keys, so the event cannot tell
    that ``{"schema_version": "2", "schema_version": "1"}`` ever said "2". jiter
    (the same parser, as a library) has an option to refuse them. It costs a
    second parse, about half of what validation costs. A Python scan of the raw
    bytes (count ``":``, compare with the event's distinct keys) that proves most
    messages free of repeats was measured too: as slow at 1 KB, slower beyond.
    """
    try:
        jiter.from_json(raw, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as exc:
        return str(exc)
    return None


def out_of_range(
    timestamp: datetime,
    message_time: float | None,
    now: float,
    *,
    max_past: float,
    max_future: float,
    stamp: float | None = None,
) -> Rejected | None:
    """A rejection when an event's ``timestamp`` is too far from its Kafka message's time.

    ``message_time`` is the message's timestamp in epoch seconds (the producer's
    or the broker's clock, as the topic is configured); without one (None, or
    Kafka's -1), the worker's clock ``now`` stands in. ``stamp`` is
    ``timestamp.timestamp()`` when the caller has it.

    >>> from datetime import datetime, timezone
    >>> far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    >>> out_of_range(far, 1.8e9, 1.8e9, max_past=86400, max_future=3600).reason.value
    'timestamp_out_of_range'
    """
    reference = message_time if message_time is not None and message_time > 0 else now
    ahead = (timestamp.timestamp() if stamp is None else stamp) - reference
    if ahead > max_future:
        direction, limit, setting = "after", max_future, "max_timestamp_future_seconds"
    elif -ahead > max_past:
        direction, limit, setting = "before", max_past, "max_timestamp_past_seconds"
    else:
        return None
    return Rejected(
        DeadLetterReason.TIMESTAMP_OUT_OF_RANGE,
        f"timestamp {timestamp.isoformat()} is {_duration(abs(ahead))} {direction} the Kafka message's"
        f" time ({_instant(reference)}); at most {_duration(limit)} is"
        f" accepted ({setting})",
        [
            {
                "field": "timestamp",
                "type": "timestamp_out_of_range",
                "message": f"more than {limit:g} s {direction}",
            }
        ],
    )


def _instant(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # a producer's clock can say anything
        return f"{seconds:.0f} s after 1970"


def _duration(seconds: float) -> str:
    return f"{seconds / 86_400:,.1f} days" if seconds >= 86_400 else f"{seconds:,.0f} s"


def _classify(exc: ValidationError, model_name: str) -> Rejected:
    # The inputs only tell a date-time that lacks its offset apart; no detail carries them.
    errors = [_naive_timestamp(e) for e in exc.errors(include_url=False, include_context=False)]
    detail = [{"field": _dotted(e["loc"]), "type": e["type"], "message": _message(e)} for e in errors]
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
    detail, reasons = _most_specific_per_field(detail, reasons)
    reason = min(reasons, key=_PRIORITY.index)
    examples = [f"{d['field']}: {d['message']}" for d, r in zip(detail, reasons, strict=True) if r is reason]
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return Rejected(reason, f"invalid {model_name}: {examples[0]}{more}", detail)


def _message(error: Any) -> str:
    """pydantic's message, without the "Value error, " it puts before our validators' own words."""
    message: str = error["msg"]
    return message.removeprefix("Value error, ") if error["type"] == "value_error" else message


def _most_specific_per_field(
    detail: list[dict[str, Any]], reasons: list[DeadLetterReason]
) -> tuple[list[dict[str, Any]], list[DeadLetterReason]]:
    """Each field's errors of its most specific reason only.

    A union field fails once per member it was tried as: a NaN rating is not
    finite, not a boolean and not a string. Only ``non_finite_number`` says
    what is wrong with it. Members that fail for the same reason are all kept
    (``prediction: [1]`` is neither a number nor a string).
    """
    best: dict[str, int] = {}
    for entry, reason in zip(detail, reasons, strict=True):
        rank = _PRIORITY.index(reason)
        best[entry["field"]] = min(best.get(entry["field"], rank), rank)
    kept = [
        (entry, reason)
        for entry, reason in zip(detail, reasons, strict=True)
        if _PRIORITY.index(reason) == best[entry["field"]]
    ]
    return [entry for entry, _ in kept], [reason for _, reason in kept]


def _naive_timestamp(error: Any) -> Any:
    """``error`` as a date-time that only lacks its offset or its T (the right type, a wrong value)."""
    given = error.get("input")
    if error["type"] != "timestamp_parsing" or not isinstance(given, str):
        return error
    if NAIVE_TIMESTAMP.match(given):
        return {**error, "type": NAIVE_TIMESTAMP_TYPE, "msg": NAIVE_TIMESTAMP_ERROR}
    if SPACED_TIMESTAMP.match(given):
        has_offset = given.endswith("Z") or given[-6] in "+-"
        missing = "a T between the date and the time" + ("" if has_offset else " and a UTC offset")
        return {**error, "type": SPACED_TIMESTAMP_TYPE, "msg": f"needs {missing}, e.g. 2026-11-01T10:00:00Z"}
    return error


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
    if kind == "finite_number":
        return DeadLetterReason.NON_FINITE_NUMBER
    if kind.endswith(("_type", "_parsing")) or kind == "int_from_float":
        return DeadLetterReason.WRONG_TYPE
    return DeadLetterReason.INVALID_VALUE


#: How pydantic names the member of a union a value failed as (``value.constrained-float``): a
#: dead letter's field is the event's path only, ``value``, with one error per member it tried.
_UNION_MEMBER = re.compile(r"bool|str|int|float|constrained-\w+|\w+\[.*\]")
#: The event's mapping fields: the part after them is a key the producer chose, never a union member.
_MAPPINGS = frozenset(
    name
    for model in (InferenceLog, Feedback)
    for name, f in model.model_fields.items()
    if "dict[" in str(f.annotation)
)


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``prompt.0.content`` for pydantic's ``('prompt', 'list[ChatMessage]', 0, 'content')``."""
    path = [
        str(part)
        for at, part in enumerate(loc)
        if not (
            isinstance(part, str) and _UNION_MEMBER.fullmatch(part) and not (at == 1 and loc[0] in _MAPPINGS)
        )
    ]
    return ".".join(path) or "(message)"


# Bounds of a dead letter's parts besides the value prefix, chosen so that together
# they stay under settings.RECORD_HEADROOM even when every character is escaped in
# JSON (six bytes each); a test builds the worst case.
_ERROR_CHARS = 1_000
_DETAILS = 20
_DETAIL_CHARS = 160


def dead_letter(
    rejected: Rejected,
    source: SourceRef | None,
    key: bytes | None,
    value: bytes | None,
    now: datetime,
    *,
    prefix_bytes: int,
    key_bytes: int | None = None,
    output_topic: str | None = None,
) -> DeadLetter:
    """The dead letter of a rejected message: the first ``prefix_bytes`` of it, its length and SHA-256.

    ``source`` says where to fetch the whole message while the topic retains it.
    ``key_bytes`` is the original key's length when ``key`` is already a cut copy.

    >>> from datetime import datetime, timezone
    >>> letter = dead_letter(Rejected(DeadLetterReason.OVERSIZE, "too big"), None, None, b"x" * 10,
    ...     datetime(2026, 1, 1, tzinfo=timezone.utc), prefix_bytes=4)
    >>> (base64.b64decode(letter.value_b64), letter.value_bytes, letter.value_sha256[:8])
    (b'xxxx', 10, 'fc11d6f2')
    """
    value = value or b""
    return DeadLetter(
        reason=rejected.reason,
        error=_cut(rejected.error, _ERROR_CHARS),
        detail=[
            {name: _cut(part, _DETAIL_CHARS) if isinstance(part, str) else part for name, part in d.items()}
            for d in rejected.detail[:_DETAILS]
        ],
        source=source,
        key_b64=None if key is None else base64.b64encode(key[:KEY_PREFIX_BYTES]).decode("ascii"),
        key_bytes=None if key is None else len(key) if key_bytes is None else key_bytes,
        value_b64=base64.b64encode(value[:prefix_bytes]).decode("ascii"),
        value_bytes=len(value),
        value_sha256=hashlib.sha256(value).hexdigest(),
        output_topic=output_topic,
        received_at=now,
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def enrich(log: InferenceLog, source: SourceRef) -> EnrichedInference:
    """The event forwarded for detection: the log, its descriptors and where it came from."""
    return EnrichedInference(inference=log, descriptors=describe(log), source=source)


def enriched_json(raw: bytes, descriptors: Descriptors | Mapping[str, int | bool], source: ReadAt) -> bytes:
    """``enrich(log, source).model_dump_json()``, without serialising the log a second time.

    ``raw`` is the message that just validated as the log ``descriptors`` describe,
    so it is spliced in as it is; only the small parts are serialised, the source
    by hand (its three fields in SourceRef's order: a sixth of this call's time
    went to pydantic's set-up for them). ``descriptors`` may be the model or its
    fields (:func:`~detectors.frame.descriptor_values`, what ingest passes). A
    test checks that the result is the bytes :func:`enrich` writes.
    """
    return (
        b'{"schema_version":"1","inference":%s,"descriptors":%s,"source":{"topic":%s,"partition":%d,"offset":%d}}'
        % (
            raw,
            to_json(descriptors),
            to_json(source.topic),
            source.partition,
            source.offset,
        )
    )
