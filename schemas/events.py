"""Versioned event models: what producers send and what loopwatch publishes.

Every model forbids unknown fields, so a misspelt field (``respose``) is
rejected with a reason instead of silently ignored, and carries an explicit
``schema_version``. ``python -m schemas.generate`` writes the JSON Schema
files under ``schemas/jsonschema/`` that non-Python producers validate with.

Those files carry every rule the models check (patterns, bounds, the value
each feedback kind needs), and a test holds both to one corpus. What JSON
Schema cannot say is the JSON itself: messages must be I-JSON (RFC 7493), so no
repeated keys, no NaN or Infinity, and numbers a double holds.
"""

from __future__ import annotations

import math
import re
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    ValidationInfo,
    field_validator,
)
from pydantic.config import JsonDict, JsonValue
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

SCHEMA_VERSION = "1"
HASHED_ID_PATTERN = r"^[A-Za-z0-9:_-]{8,128}$"
_HASHED_ID = re.compile(HASHED_ID_PATTERN)

# RFC 3339 date-time as JSON Schema's "date-time" means it: seconds and an
# offset required, years 0001-9999 (what Python's datetime holds). It goes into
# the schema, so it is written in the syntax ECMA-262, Rust's regex and Python
# share (no look-arounds); whether the day exists is left to the date parser.
# Upper-case T and Z only: RFC 3339 allows t and z, many validators do not.
_LOCAL_DATE_TIME = (
    r"^([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
    r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
)
TIMESTAMP_PATTERN = _LOCAL_DATE_TIME + r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
#: A date-time that only lacks its offset (Python's ``isoformat()`` of a naive datetime):
#: a wrong value of the right type, which the dead letter names as such.
NAIVE_TIMESTAMP = re.compile(_LOCAL_DATE_TIME + "$")
NAIVE_TIMESTAMP_ERROR = "needs a UTC offset, e.g. 2026-11-01T10:00:00Z or 2026-11-01T11:00:00+01:00"
#: The same with a space for the T (Python's ``str()`` of a datetime), with or without an offset.
SPACED_TIMESTAMP = re.compile(_LOCAL_DATE_TIME.replace("T(", " (", 1) + r"(Z|[+-]\d\d:\d\d)?$")

# Numbers as I-JSON (RFC 7493) has them, so that every JSON reader holds them
# exactly: finite doubles, and integers a double represents without loss.
MAX_NUMBER = sys.float_info.max
MAX_COUNT = 2**53 - 1

# Size limits, written into the JSON Schema so producers see them too.
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 200_000
MAX_MESSAGES = 512
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 64
MAX_LABEL_VALUE_CHARS = 256
MAX_FEATURES = 1_024

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_VALUE_CHARS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
LabelKey = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_KEY_CHARS)]
LabelValue = Annotated[str, Field(max_length=MAX_LABEL_VALUE_CHARS)]


def _whole_number(value: Any) -> Any:
    """An integer as JSON Schema counts one: ``3`` and ``3.0``, never ``true`` or ``"3"``."""
    if type(value) is int:
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        if value.is_integer():
            return int(value)
    raise PydanticCustomError("int_type", "Input should be a valid integer (not a string or a boolean)")


class _RFC3339:
    """Marks a datetime that must arrive as RFC 3339 text: no epoch numbers, no date without a time.

    pydantic's own datetime parsing is laxer than the schema's "date-time" (it
    takes 1700000000, "2026-01-01 00:00", a missing offset); the pattern is
    checked first, in pydantic-core, so the hot path calls no Python. A
    datetime object passes as it is when a model is built in Python.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        text = core_schema.custom_error_schema(
            core_schema.chain_schema([core_schema.str_schema(pattern=TIMESTAMP_PATTERN), handler(source)]),
            custom_error_type="timestamp_parsing",
            custom_error_message="Input should be an RFC 3339 date-time with seconds and an offset,"
            " e.g. 2026-11-01T10:00:00Z",
        )
        return core_schema.json_or_python_schema(
            json_schema=text,
            python_schema=core_schema.union_schema([core_schema.is_instance_schema(datetime), text]),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}


# Strict: a boolean or a numeric string is not a number. Finite and bounded:
# NaN, Infinity and 1e400 are refused (the bounds also say so in the schema).
Number = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER)]
NonNegative = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0, le=MAX_NUMBER)]
TokenCount = Annotated[int, Field(ge=0, le=MAX_COUNT), BeforeValidator(_whole_number)]
Count = Annotated[int, Field(ge=0)]  # derived by loopwatch, never read from a producer
Boolean = Annotated[bool, Strict()]
Timestamp = Annotated[datetime, _RFC3339()]


class _Event(BaseModel):
    # Non-finite numbers never get into any event (and so never out as NaN tokens).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _utc(value: datetime) -> datetime:
    """Naive timestamps are taken as UTC; everything is stored timezone-aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class ModelRef(_Event):
    """Which model (and version) served a request."""

    name: Name
    version: Name


class ChatMessage(_Event):
    """One turn of a chat prompt."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Text


class TokenUsage(_Event):
    """Token counts as reported by the serving stack."""

    prompt: TokenCount
    completion: TokenCount


class InferenceLog(_Event):
    """One request served by a model, as the application logs it to ``llm.inference.v1``.

    The message must be I-JSON (RFC 7493): no key twice in one object, no NaN or Infinity.
    """

    schema_version: Literal["1"]
    event_id: Id
    request_id: Id
    timestamp: Timestamp
    model: ModelRef
    app: Name | None = None
    route: Name | None = None
    tenant: Name | None = None
    # default_factory, not `= {}`: pydantic deep-copies mutable defaults for every
    # event, which was a fifth of the ingest CPU time.
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS, default_factory=dict)]
    prompt: Text | Annotated[list[ChatMessage], Field(max_length=MAX_MESSAGES)] | None = None
    response: Text | None = None
    latency_ms: NonNegative | None = None
    tokens: TokenUsage | None = None
    cost_usd: NonNegative | None = None
    status: Literal["ok", "error"] = "ok"
    error: Text | None = None
    features: Annotated[dict[LabelKey, Number | str], Field(max_length=MAX_FEATURES)] | None = None
    prediction: Number | str | None = None
    trace_id: Id | None = None

    _normalise_timestamp = field_validator("timestamp")(_utc)

    def prompt_text(self) -> str:
        """The prompt as one string (chat turns joined by newlines)."""
        if self.prompt is None:
            return ""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(message.content for message in self.prompt)


FeedbackKind = Literal["thumbs", "rating", "correction", "label", "flag"]


# What ``value`` and ``correction`` must be for each kind, as JSON Schema says it;
# Feedback._value_fits_kind checks the same, and a test holds the two to one corpus.
def _when_kind(kind: str, field: str, rule: JsonDict) -> JsonValue:
    return {
        "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
        "then": {"properties": {field: rule}, "required": [field]},
    }


_KIND_RULES: list[JsonValue] = [
    _when_kind("thumbs", "value", {"enum": [True, False, 1, -1]}),
    _when_kind("rating", "value", {"type": "number"}),
    _when_kind("correction", "correction", {"type": "string", "minLength": 1}),
]


_Value = bool | float | str | None


class Feedback(_Event):
    """A user's (or annotator's) verdict on one request, sent to ``llm.feedback.v1``.

    ``value`` depends on ``kind``: thumbs take ``true``/``false`` or ``1``/``-1``,
    ratings a number, corrections carry the preferred reply in ``correction``.
    ``user_id`` must already be hashed: raw e-mail addresses and names are refused.
    The message must be I-JSON (RFC 7493): no key twice in one object, no NaN or Infinity.
    """

    model_config = ConfigDict(json_schema_extra={"allOf": _KIND_RULES})

    schema_version: Literal["1"]
    event_id: Id
    request_id: Id
    timestamp: Timestamp
    kind: FeedbackKind
    value: Boolean | Number | Text | None = Field(None, validate_default=True)
    correction: Text | None = Field(None, validate_default=True)
    comment: Annotated[str, Field(max_length=10_000)] | None = None
    source: Literal["user", "annotator", "automatic"] = "user"
    user_id: (
        Annotated[
            str,
            Field(
                max_length=128,
                description="A hashed id, never a raw e-mail address or name",
                json_schema_extra={"pattern": HASHED_ID_PATTERN},
            ),
        ]
        | None
    ) = None

    _normalise_timestamp = field_validator("timestamp")(_utc)

    @field_validator("user_id")
    @classmethod
    def _user_id_is_hashed(cls, value: str | None) -> str | None:
        if value is not None and not _HASHED_ID.fullmatch(value):
            raise ValueError(
                "user_id must be a hashed id (8-128 of A-Z a-z 0-9 : _ -), never a raw e-mail address or name"
            )
        return value

    # Field validators, not one on the model: an error names the field it is about (trial 12u: a
    # thumbs "value": "yes" was reported under "(message)"). They run on the default too (no value).
    @field_validator("value")
    @classmethod
    def _value_fits_kind(
        cls, value: bool | float | str | None, info: ValidationInfo
    ) -> bool | float | str | None:
        kind, number = info.data.get("kind"), not isinstance(value, bool) and isinstance(value, int | float)
        if kind == "thumbs" and not (isinstance(value, bool) or (number and value in (1, -1))):
            raise ValueError("thumbs feedback needs value true/false or 1/-1")
        if kind == "rating" and not number:
            raise ValueError("rating feedback needs a numeric value")
        return value

    @field_validator("correction")
    @classmethod
    def _correction_fits_kind(cls, correction: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("kind") == "correction" and not correction:
            raise ValueError("correction feedback needs the corrected text in 'correction'")
        return correction

    def is_negative(self) -> bool:
        """Thumbs-down, a correction, or a flag."""
        if self.kind == "thumbs":
            return self.value in (False, -1)
        return self.kind in ("correction", "flag")


class SourceRef(_Event):
    """Where a message was read from: enough to find the exact bytes again."""

    topic: str
    partition: int
    offset: int


class Descriptors(_Event):
    """Cheap per-request facts derived at ingest, fed to the detectors."""

    prompt_chars: Count
    response_chars: Count
    prompt_tokens: Count
    completion_tokens: Count
    tokens_estimated: bool
    empty_response: bool
    refusal: bool


class EnrichedInference(_Event):
    """A valid InferenceLog with its descriptors, forwarded for detection."""

    schema_version: Literal["1"] = "1"
    inference: InferenceLog
    descriptors: Descriptors
    source: SourceRef


class JoinedFeedback(_Event):
    """Feedback matched with the inference it is about."""

    schema_version: Literal["1"] = "1"
    request_id: Id
    inference: InferenceLog
    feedback: Feedback
    inference_source: SourceRef
    feedback_source: SourceRef
    joined_at: datetime


class UnmatchedFeedback(_Event):
    """Feedback whose inference never arrived within the join TTL: kept, not dropped."""

    schema_version: Literal["1"] = "1"
    request_id: Id
    feedback: Feedback
    feedback_source: SourceRef
    first_seen: datetime
    expired_at: datetime


class DeadLetterReason(StrEnum):
    """Why a message was refused; one value per thing a producer can get wrong."""

    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    WRONG_TYPE = "wrong_type"
    OVERSIZE = "oversize"
    INVALID_VALUE = "invalid_value"
    NON_FINITE_NUMBER = "non_finite_number"
    DUPLICATE_KEY = "duplicate_key"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    # On the OTLP spans topic: not an ExportTraceServiceRequest (protobuf or OTLP/JSON).
    MALFORMED_OTLP = "malformed_otlp"
    # Not the producer's fault: a record loopwatch derived was too large to write.
    OUTPUT_TOO_LARGE = "output_too_large"


class DeadLetter(_Event):
    """A refused message (or an output too large to write), the reason, and a bounded copy of its bytes."""

    schema_version: Literal["1"] = "1"
    reason: DeadLetterReason
    error: str = Field(description="What is wrong, in words a person can act on")
    detail: list[dict[str, Any]] = Field(default_factory=list, description="Per-field errors")
    source: SourceRef | None = Field(
        description="Where the refused message was read (fetch it from there while the topic retains it);"
        " null for an output that no single message produced"
    )
    key_b64: str | None = Field(None, description="The original key (its first bytes when it is long)")
    key_bytes: int | None = Field(None, ge=0, description="Length of the original key")
    value_b64: str = Field(description="The first bytes of the original value (all of it when short)")
    value_bytes: int = Field(ge=0, description="Length of the original value")
    value_sha256: str = Field(description="SHA-256 of the whole original value, hex")
    output_topic: str | None = Field(
        None, description="For reason output_too_large: the topic the record was meant for"
    )
    received_at: datetime


class Segment(_Event):
    """The slice of traffic a detection is about."""

    model: str
    model_version: str
    app: str | None = None
    route: str | None = None
    tenant: str | None = None

    def key(self) -> str:
        """Stable string form, used as Kafka key and table key."""
        return "|".join(
            part or "" for part in (self.model, self.model_version, self.app, self.route, self.tenant)
        )


class Evidence(_Event):
    """What a person (or a retrain job) needs to check a detection."""

    request_ids: list[str] = Field(default_factory=list)
    report_path: str | None = None
    sources: list[SourceRef] = Field(default_factory=list)


class Detection(_Event):
    """One detector's verdict on one window of one segment (``loopwatch.detections.v1``)."""

    schema_version: Literal["1"] = "1"
    detection_id: Id
    detector_id: str
    detector_version: str
    config: dict[str, Any]
    segment: Segment
    window_start: datetime
    window_end: datetime
    reference_size: Count
    current_size: Count
    statistic: float | None = None
    p_value: float | None = None
    score: float | None = None
    threshold: float | None = None
    effect_size: float | None = None
    verdict: Literal["ok", "warning", "drift"]
    measurements: dict[str, float] = Field(
        default_factory=dict, description="Extra named numbers: per-label rates, percentiles, adjusted p"
    )
    reference: str = Field(description="What the window was compared with (file, pinned or stable window)")
    detected_at: datetime
    evidence: Evidence = Field(default_factory=Evidence)
    revision: Count = Field(
        0,
        description="0 for the window's first verdict; n for its n-th correction by events that came late",
    )
    window_kind: Literal["inference", "feedback"] | None = Field(
        None,
        description="The window read: inference (requests served in it) or feedback (ratings given in it,"
        " of replies served earlier too); null in Detections of older versions",
    )

    @field_validator("statistic", "p_value", "score", "threshold", "effect_size", mode="before")
    @classmethod
    def _unmeasured_is_null(cls, value: Any, info: ValidationInfo) -> Any:
        # A detector's NaN (a constant sample, no rows with latency) means "not
        # measured": null in JSON. From JSON itself, non-finite tokens are refused.
        if info.mode == "python" and isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    @field_validator("measurements", mode="before")
    @classmethod
    def _unmeasured_is_absent(cls, value: Any, info: ValidationInfo) -> Any:
        if info.mode == "python" and isinstance(value, dict):
            return {k: v for k, v in value.items() if not (isinstance(v, float) and not math.isfinite(v))}
        return value


class WindowClosed(_Event):
    """One closed window of one segment, judged or not (``loopwatch.windows.v1``): what the detectors saw."""

    schema_version: Literal["1"] = "1"
    segment: Segment
    kind: Literal["inference", "feedback"]
    window_start: datetime
    window_end: datetime
    events: Count = Field(description="Events the window counted (all of them, not only the sample)")
    sample_size: Count = Field(description="Rows of the window's sample the detectors read")
    revision: Count = Field(
        0,
        description="0 when the window first closed; n after its n-th revision (late events, its reference)",
    )
    outcome: Literal["judged", "reference", "waiting", "skipped"] = Field(
        description="judged: Detections went out; reference: pinned as a reference, not judged; "
        "waiting: held for its stable version's window; skipped: judged too (the fast detectors' "
        "Detections went out), only the slow ones (embeddings, Detoxify) did not run: their queue was full"
    )
    reference: str | None = Field(None, description="What it was compared with, when judged")
    closed_at: datetime
    closed_by: Literal["watermark", "idle_timeout", "revision", "reference", "timer", "count"] | None = Field(
        None,
        description="What closed it: watermark (every input's event time passed its end plus the grace), "
        "idle_timeout (an input that went quiet was left behind, or the segment went quiet), revision "
        "(late events revised it or opened it; before 'reference' existed, also a re-judgement against its "
        "reference), reference (judged again, none of its own events late: the stable version's window "
        "of its time closed or was revised after it was judged), timer (LOOPWATCH_WINDOW_CLOSE=timer) or "
        "count (a window of LOOPWATCH_WINDOW_EVENTS events)",
    )
    waited_for: str | None = Field(
        None,
        description="The input the window waited for last, e.g. 'llm.feedback.v1 partition 3 (event time "
        "reached 03:31:05 at 03:31:21)'; null when no input lagged",
    )


class AlertValue(_Event):
    """The numbers of one detection behind an alert: what a paged person reads first."""

    detection_id: Id
    detector_id: str
    measurement: str | None = Field(
        None, description="The measure the detector judges, e.g. current_rate (null: only its statistic)"
    )
    reference_value: float | None = Field(
        None, description="Its value on the reference window, or the SLO it is held to (reference_is_slo)"
    )
    reference_is_slo: bool = Field(
        False, description="reference_value is an SLO (a configured bound), not a reference window's value"
    )
    current_value: float | None = Field(None, description="Its value on the current window")
    effect_size: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    reference_size: Count
    current_size: Count
    window_start: datetime
    window_end: datetime
    verdict: Literal["ok", "warning", "drift"]


class Alert(_Event):
    """An on-call alert with Alertmanager semantics (``loopwatch.alerts.v1``)."""

    schema_version: Literal["1"] = "1"
    fingerprint: str
    status: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    summary: str
    labels: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None = None
    detections: list[str] = Field(default_factory=list)
    values: list[AlertValue] = Field(default_factory=list, description="The numbers of each detection")
    runbook_url: str | None = Field(None, description="What to do, from the policy rule")
    resolved_by: str | None = Field(
        None,
        description="Why a resolved alert resolved: '6 clear windows', 'no detection for 0:30:00',"
        " 'rollback <id> verified: v1 serves and is better'",
    )


class CloudEvent(_Event):
    """A CloudEvents 1.0 envelope (structured JSON) for retrain and rollback requests."""

    specversion: Literal["1.0"] = "1.0"
    id: Id
    source: str
    type: str
    subject: str | None = None
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]


#: Models whose JSON Schema is published under ``schemas/jsonschema/``.
PUBLISHED: dict[str, type[BaseModel]] = {
    "inference_log": InferenceLog,
    "feedback": Feedback,
    "enriched_inference": EnrichedInference,
    "joined_feedback": JoinedFeedback,
    "unmatched_feedback": UnmatchedFeedback,
    "dead_letter": DeadLetter,
    "detection": Detection,
    "window_closed": WindowClosed,
    "alert": Alert,
    "cloud_event": CloudEvent,
}
