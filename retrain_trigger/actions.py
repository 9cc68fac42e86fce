"""Actions as CloudEvents 1.0: typed payloads, and the Kafka protocol binding (value + ``ce_`` headers)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from schemas.events import CloudEvent, Detection, SourceRef

RETRAIN_REQUESTED = "io.loopwatch.retrain.requested"
ROLLBACK_REQUESTED = "io.loopwatch.rollback.requested"
ROLLBACK_VERIFIED = "io.loopwatch.rollback.verified"
ROLLBACK_FAILED = "io.loopwatch.rollback.failed"
#: A rollback alert fired but there was no version to go back to: recorded, so on-call sees why.
ROLLBACK_SKIPPED = "io.loopwatch.rollback.skipped"
PROMOTION_REQUESTED = "io.loopwatch.promotion.requested"
EVENT_TYPES = {"retrain": RETRAIN_REQUESTED, "rollback": ROLLBACK_REQUESTED}
#: Structured mode of the Kafka binding: the whole event is the JSON value.
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetRef(_Data):
    """The curated dataset table and Delta version a retrain should train on."""

    table: str
    version: int
    uri: str | None = Field(None, description="Where the Delta table is (what a training job opens)")

    @model_serializer(mode="wrap")
    def _without_unknown_uri(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A reference made without its location keeps the shape consumers saw before the uri existed.
        data: dict[str, Any] = handler(self)
        if data.get("uri") is None:
            data.pop("uri", None)
        return data


class ActionData(_Data):
    """What every action carries: why, under which policy, and the evidence."""

    reason: str
    policy: str
    rule: str
    mode: Literal["auto", "dry-run"]
    model: str
    incident_start: datetime
    window_start: datetime
    window_end: datetime
    detections: list[Detection]
    sources: list[SourceRef] = Field(default_factory=list)


class RetrainRequest(ActionData):
    """Data of ``io.loopwatch.retrain.requested``."""

    dataset: DatasetRef | None = Field(None, description="Filled once curated datasets are wired in")


class RollbackRequest(ActionData):
    """Data of ``io.loopwatch.rollback.requested``: go from ``from_version`` back to ``target_version``."""

    from_version: str
    target_version: str


class RollbackSkipped(ActionData):
    """Data of ``io.loopwatch.rollback.skipped``: ``from_version`` is bad and nothing to go back to."""

    from_version: str
    skipped_because: str = Field(description="Why no rollback was requested")


Judgement = Literal["better", "not_better", "not_yet_better", "worse", "not_worse", "not_enough_data"]


class MetricComparison(_Data):
    """One measurement of the rollback target against the rolled-back version (lower is better).

    ``rolled_back`` and ``target`` are the two rates; the rest says how sure the
    comparison is (Fisher's exact test, one-sided in the direction that matters).
    """

    detector_id: str
    measurement: str
    rolled_back: float
    target: float
    target_verdict: str
    triggered: bool = Field(False, description="This measure triggered the rollback")
    rolled_back_samples: int | None = None
    target_samples: int | None = Field(None, description="Samples of the target's windows since the request")
    p_value: float | None = Field(
        None, description="Triggering: that the target is not lower; other: that it is not higher"
    )
    p_value_adjusted: float | None = Field(None, description="Other measures: Benjamini-Hochberg adjusted")
    ci_low: float | None = Field(None, description="Interval of target minus rolled-back at the confidence")
    ci_high: float | None = None
    judgement: Judgement | None = None


MarginJudgement = Literal["non_inferior", "worse", "inconclusive", "not_enough_data"]


class MarginComparison(_Data):
    """One measure of a challenger against the stable version (lower is better), with its margin.

    ``ci_low``/``ci_high`` bound challenger minus stable at ``confidence``;
    ``p_value`` is Fisher's exact test that the challenger's rate is higher.
    """

    detector_id: str
    measurement: str
    stable: float
    candidate: float
    stable_samples: int
    candidate_samples: int
    margin: float
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    judgement: MarginJudgement


class CandidateEvidence(_Data):
    """What the challenger's windows show against stable: measures, intervals, windows, alerts."""

    model: str
    stable_version: str
    candidate_version: str
    status: Literal["non_inferior", "worse", "not_enough_data"]
    reason: str
    confidence: float
    windows: int = Field(description="Challenger windows with a judged measure")
    windows_required: int
    stable_windows: int
    window_start: datetime | None = None
    window_end: datetime | None = None
    alerts: list[str] = Field(default_factory=list, description="Alerts fired for the challenger")
    comparisons: list[MarginComparison] = Field(default_factory=list)


class PromotionRequest(_Data):
    """Data of ``io.loopwatch.promotion.requested``: stable from ``from_version`` to ``target_version``."""

    reason: str
    policy: str
    mode: Literal["auto", "dry-run"]
    model: str
    from_version: str
    target_version: str
    evidence: CandidateEvidence
    detection_ids: list[str] = Field(default_factory=list, description="The challenger windows counted")
    chosen_over: list[str] = Field(
        default_factory=list,
        description="Challengers that qualified in the same step and are held (the reason says why)",
    )


class WindowSpan(_Data):
    """One window's bounds."""

    window_start: datetime
    window_end: datetime


class CountedWindow(WindowSpan):
    """A target window a rollback's outcome counted, with the samples each measure added from it."""

    samples: dict[str, int] = Field(default_factory=dict, description="Detector id -> samples it added")


class RollbackOutcome(_Data):
    """Data of ``io.loopwatch.rollback.verified`` / ``.failed``.

    The ``counted_*`` and ``rolled_back_*`` fields say which target windows the
    outcome rests on and how long the rolled-back version still served after
    the request (absent from events written before they existed).
    """

    rollback_id: str
    model: str
    from_version: str
    target_version: str
    verified: bool
    reason: str
    comparisons: list[MetricComparison] = Field(default_factory=list)
    triggers: list[str] = Field(default_factory=list, description="Detectors that triggered the rollback")
    confidence: float | None = Field(None, description="Confidence required of a triggering measure")
    counted_windows: list[CountedWindow] = Field(
        default_factory=list, description="The target windows counted, oldest first (at most the first 12)"
    )
    counted_window_count: int = Field(0, description="How many target windows were counted in all")
    counted_until: datetime | None = Field(None, description="The end of the last target window counted")
    rolled_back_last_window: WindowSpan | None = Field(
        None, description="The rolled-back version's last window seen serving after the request"
    )
    rolled_back_windows_after_request: int = Field(
        0, description="How many windows the rolled-back version served after the request"
    )


def cloud_event(
    *, event_id: str, source: str, event_type: str, subject: str, time: datetime, data: BaseModel
) -> CloudEvent:
    """A structured CloudEvent around typed data."""
    return CloudEvent(
        id=event_id,
        source=source,
        type=event_type,
        subject=subject,
        time=time,
        data=data.model_dump(mode="json"),
    )


def to_kafka(event: CloudEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the CloudEvents Kafka binding, structured mode.

    The value is the whole event as JSON; the ``ce_`` headers repeat the
    attributes so consumers can route without parsing the value; the key is
    the subject (the model), so one model's actions keep their order.
    """
    value = json.dumps(event.model_dump(mode="json"), separators=(",", ":")).encode()
    attributes: dict[str, Any] = {
        "ce_specversion": event.specversion,
        "ce_id": event.id,
        "ce_source": event.source,
        "ce_type": event.type,
        "ce_subject": event.subject,
        "ce_time": event.time.isoformat().replace("+00:00", "Z"),
    }
    headers = [(name, str(v).encode()) for name, v in attributes.items() if v is not None]
    headers.append(("content-type", STRUCTURED_CONTENT_TYPE.encode()))
    return (event.subject or "").encode(), value, headers


def from_kafka(value: bytes) -> CloudEvent:
    """A structured CloudEvent back from a Kafka value."""
    return CloudEvent.model_validate_json(value)
