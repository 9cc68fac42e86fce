"""Act: what a rollback, promotion or retrain request becomes once it is applied, as CloudEvents.

The act stage (``streams/act_stage.py``) reads the action topics; this module
holds its pure part. A promotion moves the registry's stable alias from the
request's ``from_version`` to its ``target_version``; a rollback takes a bad
canary out of rotation (its canary alias removed) or moves a bad stable
version back to the target (:func:`~retrain_trigger.registry.apply_move`: a
compare-and-set, at most once per CloudEvent id), after tagging both versions
with the incident. The result, ``.applied`` or ``.rejected`` with the reason
and the alias it concerns, goes on the request's own topic.
A retrain request is dispatched (:mod:`retrain_trigger.dispatch`) and becomes
``io.loopwatch.retrain.dispatched`` or ``.dispatch_failed``. Result events have
a deterministic id (the request's id and the outcome), so a consumer can drop
a repeat.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.actions import PROMOTION_REQUESTED, ROLLBACK_REQUESTED, DatasetRef, cloud_event
from retrain_trigger.dispatch import RETRAIN_DISPATCH_FAILED, RETRAIN_DISPATCHED, DispatchOutcome
from retrain_trigger.registry import AliasMove, ModelRegistry, RegistryError, apply_move, marker_key
from schemas.events import CloudEvent

log = logging.getLogger("loopwatch.act")

ROLLBACK_APPLIED = "io.loopwatch.rollback.applied"
ROLLBACK_REJECTED = "io.loopwatch.rollback.rejected"
PROMOTION_APPLIED = "io.loopwatch.promotion.applied"
PROMOTION_REJECTED = "io.loopwatch.promotion.rejected"
#: Request type -> the kind of alias move it asks for.
MOVE_REQUESTS: dict[str, Literal["rollback", "promotion"]] = {
    ROLLBACK_REQUESTED: "rollback",
    PROMOTION_REQUESTED: "promotion",
}
_RESULTS = {
    ("rollback", True): ROLLBACK_APPLIED,
    ("rollback", False): ROLLBACK_REJECTED,
    ("promotion", True): PROMOTION_APPLIED,
    ("promotion", False): PROMOTION_REJECTED,
}
SOURCE = "/loopwatch/act"
#: The incident tag keeps this many detections (MLflow tag values are bounded).
_TAGGED_DETECTIONS = 5


class MoveRequest(BaseModel):
    """What the actuator reads of a rollback or promotion request (the rest of its data is evidence)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(min_length=1)
    from_version: str = Field(min_length=1)
    target_version: str = Field(min_length=1)
    reason: str = ""
    detections: list[dict[str, Any]] = Field(default_factory=list)


class MoveResult(BaseModel):
    """Data of ``io.loopwatch.{rollback,promotion}.{applied,rejected}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    kind: Literal["rollback", "promotion"]
    model: str
    alias: str = Field(description="The alias the request changed (or would have): stable or canary")
    from_version: str
    target_version: str
    applied: bool
    reason: str = Field(description="moved, already applied, or why the alias was left alone")
    current_version: str | None = Field(
        None, description="Where the alias points after the request (None: removed, or not set)"
    )


class DispatchResult(BaseModel):
    """Data of ``io.loopwatch.retrain.dispatched`` / ``.dispatch_failed``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    model: str
    trigger: str
    dispatched: bool
    attempts: int
    detail: str
    dataset: DatasetRef | None = None


def incident_tags(request_id: str, kind: str, request: MoveRequest) -> dict[str, str]:
    """The tag both versions get: the incident's CloudEvent id, kind, reason and its latest detections."""
    detections = [
        {
            key: detection.get(key)
            for key in ("detector_id", "verdict", "window_end", "p_value", "effect_size", "statistic")
        }
        | {"model_version": (detection.get("segment") or {}).get("model_version")}
        for detection in request.detections[-_TAGGED_DETECTIONS:]
    ]
    value = {
        "cloudevent_id": request_id,
        "kind": kind,
        "from_version": request.from_version,
        "target_version": request.target_version,
        "reason": request.reason[:2000],
        "detections": detections,
    }
    key = marker_key(request_id).replace("loopwatch.move.", "loopwatch.incident.", 1)
    return {key: json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)}


def apply_request(registry: ModelRegistry, event: CloudEvent, now: datetime) -> CloudEvent:
    """Apply one rollback or promotion request to the registry (blocking); its result event.

    A registry that fails (unreachable, a version that does not exist) makes a
    ``.rejected`` result with the error as the reason: the failure is recorded,
    never retried into a second move.
    """
    kind = MOVE_REQUESTS[event.type]
    request = MoveRequest.model_validate(event.data)
    try:
        outcome = apply_move(
            registry,
            request.model,
            kind=kind,
            from_version=request.from_version,
            to_version=request.target_version,
            request_id=event.id,
            tags=incident_tags(event.id, kind, request),
        )
    except RegistryError as exc:
        outcome = AliasMove(False, None, f"registry error: {exc}", registry.stable_alias)
    level = logging.WARNING if outcome.moved else logging.ERROR
    log.log(
        level,
        "%s %s of %s %s -> %s (%s): %s",
        kind,
        "applied" if outcome.moved else "rejected",
        request.model,
        request.from_version,
        request.target_version,
        outcome.alias,
        outcome.reason,
    )
    result = MoveResult(
        request_id=event.id,
        kind=kind,
        model=request.model,
        alias=outcome.alias,
        from_version=request.from_version,
        target_version=request.target_version,
        applied=outcome.moved,
        reason=outcome.reason,
        current_version=outcome.current,
    )
    return result_event(event, _RESULTS[(kind, outcome.moved)], result, now)


def dispatch_event(
    event: CloudEvent, trigger: str, outcome: DispatchOutcome, dataset: DatasetRef | None, now: datetime
) -> CloudEvent:
    """The result event of one retrain dispatch."""
    result = DispatchResult(
        request_id=event.id,
        model=str(event.data.get("model", event.subject or "")),
        trigger=trigger,
        dispatched=outcome.dispatched,
        attempts=outcome.attempts,
        detail=outcome.detail,
        dataset=dataset,
    )
    return result_event(
        event, RETRAIN_DISPATCHED if outcome.dispatched else RETRAIN_DISPATCH_FAILED, result, now
    )


def result_event(request: CloudEvent, event_type: str, data: BaseModel, now: datetime) -> CloudEvent:
    """A result CloudEvent whose id follows from the request's and the outcome's, keyed like the request."""
    return cloud_event(
        event_id=f"{request.id}:{event_type.rsplit('.', 1)[1]}",
        source=SOURCE,
        event_type=event_type,
        subject=request.subject or "",
        time=now,
        data=data,
    )
