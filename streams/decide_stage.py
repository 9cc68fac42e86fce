"""The decide stage: Detections in; alerts, pages and retrain/rollback requests out.

Detections are keyed by model, so every decision about one model is made on
one worker. The :class:`~retrain_trigger.pipeline.Decider` holds the state
(alerts, incidents, published idempotency keys, cooldowns, rollback
watches); each model's state is kept in the changelog-backed ``decisions``
table, so a restarted worker carries on where the crashed one stopped.

The handlers only say what to do; :mod:`streams.runtime` does it, in its one
order. For a batch of detections: the actions (CloudEvents, with the Kafka
binding's ``ce_`` headers) and alerts are sent and acknowledged, then the
changed model states reach the changelog, and only then are the detections acked. A crash before the
changelog write replays the batch from the old state, which re-decides the
same actions with the same ids; a crash after it replays nothing, because the
dedup stage remembers the published keys. The only duplicate possible is a
second copy with the *same* CloudEvent id, if the crash falls between the two
writes; no action is ever lost.

Pages are output records too, on ``loopwatch.pages.v1`` (keyed by alert
group), acknowledged before the detections are acked: the notify stage
(:mod:`streams.notify_stage`) delivers them, so a slow or dead webhook never
stalls decisions, and a page is never lost with a worker's memory.

Silences and stable marks come from :mod:`streams.control`, posted to this
stage's queue. Every silence is announced as an info alert (on the alerts topic
and to the receivers) when it is applied and again when it ends, so a mute is
never invisible. The worker that owns partition 0 of the detections topic
announces, on its tick, and remembers what it announced in the ``decisions``
table: the record of the announcement is a state write of the same tick, so it
reaches the changelog after the alerts (a crash between repeats an alert, never
loses one), and a restart does not repeat it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from faust.types import TP
from pydantic import TypeAdapter

from core.settings import Settings
from curation.store import DatasetStore
from retrain_trigger.act import ROLLBACK_APPLIED, ROLLBACK_REJECTED, MoveResult
from retrain_trigger.actions import ROLLBACK_REQUESTED, ROLLBACK_SKIPPED, DatasetRef, to_kafka
from retrain_trigger.alerts import Notification, firing_counts, transition_line
from retrain_trigger.pipeline import Decider, ModelState
from retrain_trigger.policy import PolicyError, load_policy
from retrain_trigger.publish import Decision, action_topic
from retrain_trigger.registry import RegistryError, previous_stable, registry_from_settings
from retrain_trigger.silence import Silence
from retrain_trigger.stable import StableVersionMarked
from schemas.events import Alert, CloudEvent, Detection
from streams.control import settings_marks
from streams.ingest import Accepted, Rejected, decode
from streams.metrics import Metrics
from streams.runtime import Batch, ChangelogTable, Decoder, Effects, Runtime, Stage

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.decide")

#: The decisions-table key of the silences announced so far (id -> announced end).
_ANNOUNCED_KEY = b"*silences-announced*"
_ANNOUNCED = TypeAdapter(dict[str, datetime])

#: Pipeline stages whose refusals are counted in ``loopwatch_actions_stopped_total``.
_STOPPING = ("inhibit", "silence", "dedup", "cooldown")


@dataclass(frozen=True)
class CanaryVersions:
    """The registry's challenger version of each model, read in the background (and its stable one)."""

    versions: dict[str, str]
    #: The stable alias per model (None: not set): the rollback target, before any stable mark.
    stable: dict[str, str | None] = field(default_factory=dict)
    #: The version the stable one replaced (its tag): the target when the stable version goes bad.
    previous: dict[str, str | None] = field(default_factory=dict)


class DecideStage(Stage):
    """Runs the Decider over detections and says what to publish, store and page."""

    name = "decide"
    tick_seconds = 5.0

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        super().__init__(runtime)
        self.app: LoopwatchApp = runtime.app
        self.settings = settings
        self.metrics = metrics
        self.topics = settings.topics
        self.inputs: dict[str, Decoder] = {self.topics.detections: self._decode}
        #: With an act stage, a rollback watch counts only windows after its ``rollback.applied``.
        self.await_applied = settings.actuator == "mlflow"
        if self.await_applied:
            self.inputs[self.topics.rollback_requests] = self._decode_result
        self.policy_path = settings.policy_file
        self.policy_mtime = self._mtime()
        self.registry = registry_from_settings(settings)
        #: The registry's challenger per model, read on ticks; until read, no version is one.
        self.canaries: dict[str, str] = {}
        self._reading_canaries = False
        self.decider = Decider(
            load_policy(self.policy_path),
            canary=self._canary if self.registry else None,
            await_applied=self.await_applied,
        )
        for mark in settings_marks(settings):
            self.decider.mark_stable(mark)
        self.table = ChangelogTable(self.app, "decisions", settings.partitions)
        self.datasets = DatasetStore(settings.datasets_uri()) if settings.curation else None
        self.partition_of: dict[str, int] = {}

    def _decode(self, message: Any, now: float) -> Accepted[Detection] | Rejected:
        # Detections may come from an external detector: a bad one is dead-lettered by the runtime.
        return decode(message.value, Detection, max_bytes=self.settings.max_event_bytes)

    def _decode_result(self, message: Any, now: float) -> Accepted[CloudEvent] | Rejected:
        # The act stage's results share the topic with the requests; the rest is skipped in handle.
        return decode(message.value, CloudEvent, max_bytes=self.settings.max_event_bytes)

    # -- the handlers ----------------------------------------------------------------

    async def handle(self, batch: Batch, now: float) -> Effects:
        """Decide on a batch of detections: actions and alerts, the changed model states, the pages."""
        decision = Decision()
        touched: set[str] = set()
        if batch.topic != self.topics.detections:
            self._results(batch, decision, touched, datetime.fromtimestamp(now, UTC))
            effects = self.effects()
            self._publish(effects, decision, touched)
            return effects
        for message, accepted in batch.accepted:
            detection = accepted.event
            segment = detection.segment
            model = segment.model
            self.partition_of[model] = message.partition
            self._restore(model)
            decision.extend(self.decider.decide(detection, detection.detected_at))
            touched.add(model)
            self.metrics.decided(model, segment.model_version, detection.detector_id, detection.verdict)
        effects = self.effects()
        self._publish(effects, decision, touched)
        return effects

    def _results(self, batch: Batch, decision: Decision, touched: set[str], now: datetime) -> None:
        """The act stage's rollback results: ``applied`` arms the rollback's watch, ``rejected`` fails it."""
        for message, accepted in batch.accepted:
            event: CloudEvent = accepted.event
            if event.type not in (ROLLBACK_APPLIED, ROLLBACK_REJECTED):
                continue  # the requests and verifications this stage published itself
            try:
                result = MoveResult.model_validate(event.data)
            except ValueError as exc:
                log.warning("ignored %s %s: its data is not a rollback result: %s", event.type, event.id, exc)
                continue
            self._restore(result.model)
            self.partition_of.setdefault(result.model, message.partition)
            decision.extend(self.decider.rollback_result(result, event.time, now))
            touched.add(result.model)

    async def tick(self, now: float) -> Effects:
        """Time-based decisions (stale alerts resolve, repeat pages, rollback watches); silence notices."""
        self._reload_policy()
        at = datetime.fromtimestamp(now, UTC)
        effects = self.effects()
        self._publish(effects, self.decider.tick(at), set(self.decider.state.models))
        self._announce_silences(effects, at)
        self._refresh_canaries(effects)
        return effects

    async def receive(self, message: Any, now: float) -> Effects:
        """A verified silence or stable mark (from the control topic)."""
        effects = self.effects()
        if isinstance(message, Silence):
            self.decider.add_silence(message)  # it mutes from the next decision (or tick)
        elif isinstance(message, StableVersionMarked):
            self.decider.mark_stable(message)  # the target of later rollbacks
        elif isinstance(message, CanaryVersions):
            self.canaries.update(message.versions)
            self.decider.state.stable.use_registry(message.stable, message.previous)
            self._reading_canaries = False
        else:
            return await super().receive(message, now)
        return effects

    # -- what a decision leads to ----------------------------------------------------------

    def _publish(self, effects: Effects, decision: Decision, touched: set[str]) -> None:
        """Actions, alerts and pages as records, changed model states as writes."""
        for event in decision.actions:
            topic = {
                "rollback": self.topics.rollback_requests,
                "promotion": self.topics.promotion_requests,
                "retrain": self.topics.retrain_requests,
            }[action_topic(event)]
            key, value, headers = to_kafka(self._with_dataset(event))
            effects.records.add(topic, key, value, headers=headers)
            self.metrics.actions.labels(event.type).inc()
            # Formatted here: the log's repeat filter folds lines by template, and each action is news.
            if event.type == ROLLBACK_SKIPPED:
                version = event.data["from_version"]
                log.warning(f"no rollback of {event.subject}/{version}: {event.data['skipped_because']}")
            log.warning(f"published {event.type} {event.id} for {event.subject}")
        for event in decision.dry_run_actions:
            self.metrics.actions_dry_run.labels(event.type).inc()
            log.warning(f"dry-run: would publish {event.type} {event.id} for {event.subject}")
        for alert in decision.alerts:
            self._alert(effects, alert)
            log.warning(transition_line(alert))
        for entry in decision.log:
            if not entry.passed and entry.stage in _STOPPING:
                self.metrics.actions_stopped.labels(entry.stage).inc()
        for model in touched:
            key = model.encode()
            value = self.decider.model_state(model).to_json()
            if self.table.get(key) != value:
                effects.put(self.table, key, value, self.partition_of.get(model, 0))
        self._page(effects, decision.notifications)
        self.metrics.set_alerts_firing(firing_counts(ms.book for ms in self.decider.state.models.values()))

    def _alert(self, effects: Effects, alert: Alert) -> None:
        effects.records.add(self.topics.alerts, alert.fingerprint.encode(), alert.model_dump_json().encode())
        self.metrics.alerts.labels(alert.status).inc()

    def _page(self, effects: Effects, notifications: list[Notification]) -> None:
        """Pages as records on the pages topic (keyed by group: one group's pages stay in order)."""
        for notification in notifications:
            key, value = notification.group_key.encode(), notification.model_dump_json().encode()
            effects.records.add(self.topics.pages, key, value)

    def _announce_silences(self, effects: Effects, now: datetime) -> None:
        """Info alerts for silences applied or ended since the last tick (on one worker only)."""
        if self.app.rebalancing or not cast(Any, self.app.tables).recovery.completed.is_set():
            return  # what was announced is not known before the table is recovered
        if TP(self.topics.detections, 0) not in self.app.assignor.assigned_actives():
            return
        stored = self.table.get(_ANNOUNCED_KEY)
        announced = _ANNOUNCED.validate_json(stored) if stored is not None else {}
        notices = self.decider.state.silences.announce(announced, now)  # updates ``announced``
        if not notices:
            return
        for notice in notices:
            for alert in notice.alerts:
                self._alert(effects, alert)
        # A state write: the runtime sends it after the alerts, so a crash between repeats one.
        effects.put(self.table, _ANNOUNCED_KEY, _ANNOUNCED.dump_json(announced), 0)
        self._page(effects, notices)

    def _with_dataset(self, event: CloudEvent) -> CloudEvent:
        """A retrain request names the curated dataset table and version it should train on."""
        if event.type == ROLLBACK_REQUESTED or "dataset" not in event.data or self.datasets is None:
            return event
        found = self.datasets.training_ref()
        if found is None:
            return event
        # Through the request's own model: what the act stage (or any consumer) decodes with.
        dataset = DatasetRef.model_validate(found).model_dump(mode="json")
        return event.model_copy(update={"data": {**event.data, "dataset": dataset}})

    def _canary(self, model: str) -> str:
        """The model's challenger as last read from the registry ("" when none is known)."""
        return self.canaries.get(model, "")

    def _refresh_canaries(self, effects: Effects) -> None:
        """Read every known model's challenger alias in a thread (the registry is a network call)."""
        if self.registry is None or self._reading_canaries:
            return
        self._reading_canaries = True
        effects.background.append(asyncio.to_thread(self._read_canaries, sorted(self.decider.state.models)))

    def _read_canaries(self, models: list[str]) -> CanaryVersions:
        assert self.registry is not None
        found: dict[str, str] = {}
        stable: dict[str, str | None] = {}
        previous: dict[str, str | None] = {}
        for model in models:
            try:
                found[model] = self.registry.canary_version(model) or ""
                stable[model] = version = self.registry.stable_version(model)  # same cached read
                previous[model] = previous_stable(self.registry, model, version) if version else None
            except RegistryError as exc:
                # Kept as last read: promotion waits, nothing else depends on it.
                log.warning("cannot read the challenger of %s from the registry: %s", model, exc)
        return CanaryVersions(found, stable, previous)

    def _restore(self, model: str) -> None:
        """After a restart or rebalance, pick up the model's state from the table."""
        if model in self.decider.state.models:
            return
        stored = self.table.get(model.encode())
        if stored is not None:
            self.decider.restore_model(model, ModelState.from_json(stored))

    def _reload_policy(self) -> None:
        """Pick up an edited policy file; a malformed one is refused and the running policy stays."""
        mtime = self._mtime()
        if mtime == self.policy_mtime or self.policy_path is None:
            return
        self.policy_mtime = mtime
        try:
            self.decider.use_policy(load_policy(self.policy_path))
            log.warning("policy %s reloaded", self.policy_path)
        except PolicyError as exc:
            self.metrics.policy_rejected.inc()
            log.error("policy %s refused, the previous policy keeps running: %s", self.policy_path, exc)

    def _mtime(self) -> float | None:
        try:
            return self.policy_path.stat().st_mtime if self.policy_path else None
        except OSError:
            return None
