"""The act stage: rollbacks and promotions change the registry's aliases; retrains start a job.

Opt-in: ``LOOPWATCH_ACTUATOR=mlflow`` reads ``loopwatch.rollback-requests.v1``
and ``loopwatch.promotion-requests.v1`` and applies each request to the MLflow
registry (:func:`retrain_trigger.act.apply_request`: a compare-and-set that
moves ``champion`` to a promoted version, removes ``challenger`` from a bad
canary, or moves a bad ``champion`` back; both versions tagged with the
incident);
``LOOPWATCH_RETRAIN_TRIGGER`` reads ``loopwatch.retrain-requests.v1`` and
dispatches each request to the job trigger (:mod:`retrain_trigger.dispatch`).
Each result (``.applied`` / ``.rejected``, ``retrain.dispatched`` /
``.dispatch_failed``) goes on the request's own topic; this stage skips its own
results and every other event type there (verifications, other tools' events).

**At most once per CloudEvent id.** The registry calls block, so the handler
runs them in a thread and awaits them: the result record is then part of the
same unit, sent and acknowledged before the request is acked (a result the
runtime performed as a later unit could be lost by a crash after the ack). A
crash between the alias move and the result event replays the request, and the
marker tag the move left on the target version
(:func:`~retrain_trigger.registry.apply_move`) makes the replay report the
first outcome instead of changing an alias again. The ids of handled requests go to the
changelog-backed ``act`` table after their results, so a request published
twice, or replayed after its result was written, is skipped without calling the
registry or the trigger again. A retrain dispatched just before a crash may be
dispatched again on replay (Airflow refuses the second run: its run id is the
CloudEvent id's); its result is at-least-once like every output.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import BaseModel, ValidationError

from core.settings import Settings
from retrain_trigger.act import MOVE_REQUESTS, MoveRequest, apply_request, dispatch_event
from retrain_trigger.actions import RETRAIN_REQUESTED, RetrainRequest, to_kafka
from retrain_trigger.dispatch import JobTrigger, dispatch
from retrain_trigger.registry import ModelRegistry, registry_from_settings
from schemas.events import CloudEvent, DeadLetterReason
from streams.ingest import Accepted, Rejected, decode
from streams.metrics import Metrics
from streams.runtime import Batch, ChangelogTable, Decoder, Effects, Runtime, Stage

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.act")

#: The data model each request type must carry; other event types pass through the decoder and are skipped.
_REQUEST_DATA: dict[str, type[BaseModel]] = {
    **dict.fromkeys(MOVE_REQUESTS, MoveRequest),
    RETRAIN_REQUESTED: RetrainRequest,
}


class ActStage(Stage):
    """Applies rollback and promotion requests to the registry and dispatches retrain requests."""

    name = "act"

    def __init__(
        self, runtime: Runtime, settings: Settings, metrics: Metrics, *, registry: ModelRegistry | None = None
    ) -> None:
        super().__init__(runtime)
        self.app: LoopwatchApp = runtime.app
        self.settings = settings
        self.metrics = metrics
        topics = settings.topics
        self.registry = registry or (
            registry_from_settings(settings) if settings.actuator == "mlflow" else None
        )
        self.trigger = JobTrigger.from_settings(settings)
        self.inputs: dict[str, Decoder] = {}
        if self.registry is not None:
            self.inputs[topics.rollback_requests] = self._decode
            self.inputs[topics.promotion_requests] = self._decode
        if self.trigger is not None:
            self.inputs[topics.retrain_requests] = self._decode
        self.table = ChangelogTable(self.app, "act", settings.partitions)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the job trigger's HTTP session."""
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()

    def _decode(self, message: Any, now: float) -> Accepted[CloudEvent] | Rejected:
        outcome = decode(message.value, CloudEvent, max_bytes=self.settings.max_event_bytes)
        if isinstance(outcome, Rejected):
            return outcome
        event = outcome.event
        data_model = _REQUEST_DATA.get(event.type)
        if data_model is not None:
            try:
                data_model.model_validate(event.data)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "data"
                return Rejected(
                    DeadLetterReason.INVALID_VALUE,
                    f"{event.type} {event.id}: data.{where}: {first['msg']}",
                    [{"loc": ["data", *first["loc"]], "type": first["type"]}],
                )
        return outcome

    async def handle(self, batch: Batch, now: float) -> Effects:
        """Apply or dispatch each request not handled before; its result goes on the request's topic."""
        effects = self.effects()
        at = datetime.fromtimestamp(now, UTC)
        handled: set[bytes] = set()
        for message, accepted in batch.accepted:
            event = accepted.event
            key = event.id.encode()
            if event.type not in _REQUEST_DATA or key in handled or self.table.get(key) is not None:
                continue  # a result, a verification, someone else's event, or a request already handled
            handled.add(key)
            if event.type in MOVE_REQUESTS:
                assert self.registry is not None, "move topics are read only with a registry"
                # Blocking HTTP calls to MLflow: in a thread, awaited so the result is in this unit.
                result = await asyncio.to_thread(apply_request, self.registry, event, at)
            else:
                result = await self._dispatch(event, at)
            record_key, value, headers = to_kafka(result)
            effects.records.add(batch.topic, record_key, value, headers=headers)
            effects.put(self.table, key, result.type.encode(), message.partition)
        return effects

    async def _dispatch(self, event: CloudEvent, at: datetime) -> CloudEvent:
        assert self.trigger is not None, "retrain requests are read only with a trigger"
        if self._session is None:  # a batch handled before start() ran
            self._session = aiohttp.ClientSession()
        request = RetrainRequest.model_validate(event.data)
        outcome = await dispatch(self.trigger, event.id, request, self._session)
        if outcome.dispatched:
            log.warning(
                "retrain %s of %s dispatched via %s: %s",
                event.id,
                request.model,
                self.trigger.kind,
                outcome.detail,
            )
        return dispatch_event(event, self.trigger.kind, outcome, request.dataset, at)
