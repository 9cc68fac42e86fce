"""Versioned event models: what producers send and what loopwatch publishes.

Every model forbids unknown fields, so a misspelt field (``respose``) is
rejected with a reason instead of silently ignored, and carries an explicit
``schema_version``. ``python -m schemas.generate`` writes the JSON Schema
files under ``schemas/jsonschema/`` that non-Python producers validate with.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = "1"
_HASHED_ID = re.compile(r"^[A-Za-z0-9:_\-]{8,128}$")

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
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    prompt: Count
    completion: Count


class InferenceLog(_Event):
    """One request served by a model, as the application logs it to ``llm.inference.v1``."""

    schema_version: Literal["1"]
    event_id: Id
    request_id: Id
    timestamp: datetime
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
    features: Annotated[dict[LabelKey, float | str], Field(max_length=MAX_FEATURES)] | None = None
    prediction: float | str | None = None
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


class Feedback(_Event):
    """A user's (or annotator's) verdict on one request, sent to ``llm.feedback.v1``.

    ``value`` depends on ``kind``: thumbs take ``true``/``false`` or ``1``/``-1``,
    ratings a number, corrections carry the preferred reply in ``correction``.
    ``user_id`` must already be hashed: raw e-mail addresses and names are refused.
    """

    schema_version: Literal["1"]
    event_id: Id
    request_id: Id
    timestamp: datetime
    kind: FeedbackKind
    value: bool | float | str | None = None
    correction: Text | None = None
    comment: Annotated[str, Field(max_length=10_000)] | None = None
    source: Literal["user", "annotator", "automatic"] = "user"
    user_id: Annotated[str, Field(max_length=128)] | None = None

    _normalise_timestamp = field_validator("timestamp")(_utc)

    @field_validator("user_id")
    @classmethod
    def _user_id_is_hashed(cls, value: str | None) -> str | None:
        if value is not None and not _HASHED_ID.match(value):
            raise ValueError(
                "user_id must be a hashed id (8-128 of A-Z a-z 0-9 : _ -), never a raw e-mail address or name"
            )
        return value

    @model_validator(mode="after")
    def _value_fits_kind(self) -> Feedback:
        if self.kind == "thumbs" and self.value not in (True, False, 1, -1):
            raise ValueError("thumbs feedback needs value true/false or 1/-1")
        if self.kind == "rating" and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError("rating feedback needs a numeric value")
        if self.kind == "correction" and not self.correction:
            raise ValueError("correction feedback needs the corrected text in 'correction'")
        return self

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


class DeadLetter(_Event):
    """A refused message, with the reason, the error and the original bytes."""

    schema_version: Literal["1"] = "1"
    reason: DeadLetterReason
    error: str = Field(description="What is wrong, in words a person can act on")
    detail: list[dict[str, Any]] = Field(default_factory=list, description="Per-field errors")
    source: SourceRef
    key_b64: str | None = None
    value_b64: str
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
    "alert": Alert,
    "cloud_event": CloudEvent,
}
