"""The decide stage's Kafka edge: Detections in; alerts, pages and retrain/rollback requests out.

Detections are keyed by model, so every decision about one model is made on
one worker. The :class:`~retrain_trigger.pipeline.Decider` holds the state
(alerts, incidents, published idempotency keys, cooldowns, rollback
watches); each model's state is kept in the changelog-backed ``decisions``
table, so a restarted worker carries on where the crashed one stopped.

Order of writes for one batch of detections: the actions (CloudEvents, with
the Kafka binding's ``ce_`` headers) are sent and acknowledged, then the new
model states reach the changelog, and only then are the detections acked.
A crash before the changelog write replays the batch from the old state,
which re-decides the same actions with the same ids; a crash after it
replays nothing, because the dedup stage remembers the published keys. The
only duplicate possible is a second copy with the *same* CloudEvent id, if
the crash falls between the two writes; no action is ever lost.

Pages go to the notifiers through a bounded queue in the background, so a
slow or dead webhook never stalls the stream; every failed delivery is
published on ``loopwatch.delivery-failures.v1``.

Silences and stable marks come from :mod:`streams.control`. Every silence is
announced as an info alert (on the alerts topic and to the receivers) when it
is applied and again when it ends, so a mute is never invisible. The worker
that owns partition 0 of the detections topic announces, and remembers what
it announced in the ``decisions`` table, so a restart does not repeat it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from faust.types import TP
from pydantic import TypeAdapter

from core.config_files import load_yaml_list
from core.settings import Settings
from curation.store import DatasetStore
from retrain_trigger.actions import ROLLBACK_REQUESTED, to_kafka
from retrain_trigger.alerts import firing_counts, transition_line
from retrain_trigger.notify import DeliveryFailure, Dispatcher, ReceiverConfig
from retrain_trigger.pipeline import Decider, ModelState
from retrain_trigger.policy import PolicyError, load_policy
from retrain_trigger.publish import Decision, action_topic
from retrain_trigger.silence import Silence
from retrain_trigger.stable import StableVersionMarked
from schemas.events import CloudEvent, Detection
from streams.control import settings_marks
from streams.ingest import Rejected, decode
from streams.metrics import Metrics
from streams.outbox import Outbox

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.decide")

#: The decisions-table key of the silences announced so far (id -> announced end).
_ANNOUNCED_KEY = b"*silences-announced*"
_ANNOUNCED = TypeAdapter(dict[str, datetime])


def load_receivers(path: Path | None) -> list[Any]:
    """Notifier receivers from a YAML list (webhook, slack, pagerduty, alertmanager); none without a file."""
    return [] if path is None else load_yaml_list(path, ReceiverConfig, "receivers")


class DecideStage:
    """Runs the Decider over detections and publishes what it decides."""

    def __init__(self, app: LoopwatchApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.topics = settings.topics
        self.policy_path = settings.policy_file
        self.policy_mtime = self._mtime()
        self.decider = Decider(load_policy(self.policy_path))
        for mark in settings_marks(settings):
            self.decider.mark_stable(mark)
        self.table = app.Table("decisions", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        self.datasets = DatasetStore(settings.datasets_uri()) if settings.curation else None
        self.dispatcher = Dispatcher(load_receivers(settings.receivers_file), on_failure=self._failed)
        self.partition_of: dict[str, int] = {}
        self._failures = self.app.outbox()

    async def start(self) -> None:
        """Start the notifiers' background senders."""
        await self.dispatcher.start()

    async def add_silence(self, silence: Silence) -> None:
        """A verified silence from the control topic: it mutes from the next decision (or tick)."""
        self.decider.add_silence(silence)

    async def mark_stable(self, mark: StableVersionMarked) -> None:
        """A verified stable mark from the control topic: the target of later rollbacks."""
        self.decider.mark_stable(mark)

    async def stop(self) -> None:
        """Deliver what is queued (failures are recorded), then stop."""
        await self.dispatcher.stop()
        await self._send_failures()

    async def on_detections(self, messages: list[Any]) -> None:
        """Decide on a batch of detections; publish actions, then state; then the batch is acked."""
        decision = Decision()
        touched: set[str] = set()
        letters = self.app.outbox()
        for message in messages:
            outcome = decode(message.value, Detection, max_bytes=self.settings.max_event_bytes)
            if isinstance(outcome, Rejected):  # e.g. from an external detector
                self._reject(letters, message, outcome)
                continue
            detection = outcome.event
            model = detection.segment.model
            self.partition_of[model] = message.partition
            self._restore(model)
            decision.extend(self.decider.decide(detection, detection.detected_at))
            touched.add(model)
            segment = detection.segment
            self.metrics.decided(model, segment.model_version, detection.detector_id, detection.verdict)
        await letters.send_and_wait(self.app.kafka_producer())
        await self._publish(decision, touched)

    def _reject(self, outbox: Outbox, message: Any, rejected: Rejected) -> None:
        outbox.add_dead_letter(self.topics.deadletter, message, rejected)
        self.metrics.rejected(message.topic, rejected.reason)

    async def tick(self) -> None:
        """Time-based decisions (stale alerts resolve, repeat pages, rollback watch deadlines)."""
        self._reload_policy()
        now = datetime.now(UTC)
        decision = self.decider.tick(now)
        await self._publish(decision, set(self.decider.state.models))
        await self._announce_silences(now)

    async def _announce_silences(self, now: datetime) -> None:
        """Info alerts for silences applied or ended since the last tick (on one worker only)."""
        if self.app.rebalancing or not cast(Any, self.app.tables).recovery.completed.is_set():
            return  # what was announced is not known before the table is recovered
        if TP(self.topics.detections, 0) not in self.app.assignor.assigned_actives():
            return
        stored = self.table.data.get(_ANNOUNCED_KEY)
        announced = _ANNOUNCED.validate_json(stored) if stored is not None else {}
        notices = self.decider.state.silences.announce(announced, now)
        if not notices:
            return
        outbox = self.app.outbox()
        for notice in notices:
            for alert in notice.alerts:
                outbox.add(self.topics.alerts, alert.fingerprint.encode(), alert.model_dump_json().encode())
                self.metrics.alerts.labels(alert.status).inc()
        # Alerts first, then the record of them: a crash between repeats an alert, never loses one.
        await outbox.send_and_wait(self.app.kafka_producer())
        value = _ANNOUNCED.dump_json(announced)
        self.table.data[_ANNOUNCED_KEY] = value
        state = self.app.outbox()
        state.add(cast(str, self.table.changelog_topic.get_topic_name()), _ANNOUNCED_KEY, value, partition=0)
        await state.send_and_wait(self.app.kafka_producer())
        for notice in notices:
            self.dispatcher.submit(notice)

    async def _publish(self, decision: Decision, touched: set[str]) -> None:
        producer = self.app.kafka_producer()
        actions = self.app.outbox()
        for event in decision.actions:
            rollback = action_topic(event) == "rollback"
            topic = self.topics.rollback_requests if rollback else self.topics.retrain_requests
            key, value, headers = to_kafka(self._with_dataset(event))
            actions.add(topic, key, value, headers=headers)
            self.metrics.actions.labels(event.type).inc()
            # Formatted here: the log's repeat filter folds lines by template, and each action is news.
            log.warning(f"published {event.type} {event.id} for {event.subject}")
        for event in decision.dry_run_actions:
            self.metrics.actions_dry_run.labels(event.type).inc()
            log.warning(f"dry-run: would publish {event.type} {event.id} for {event.subject}")
        for alert in decision.alerts:
            actions.add(self.topics.alerts, alert.fingerprint.encode(), alert.model_dump_json().encode())
            self.metrics.alerts.labels(alert.status).inc()
            log.warning(transition_line(alert))
        for entry in decision.log:
            if not entry.passed and entry.stage in ("inhibit", "silence", "dedup", "cooldown"):
                self.metrics.actions_stopped.labels(entry.stage).inc()
        await actions.send_and_wait(producer)
        state = self.app.outbox()
        changelog = cast(str, self.table.changelog_topic.get_topic_name())
        for model in touched:
            value = self.decider.model_state(model).to_json()
            if self.table.data.get(model.encode()) != value:
                self.table.data[model.encode()] = value
                state.add(changelog, model.encode(), value, partition=self.partition_of.get(model, 0))
        await state.send_and_wait(producer)
        for notification in decision.notifications:
            self.dispatcher.submit(notification)
        self.metrics.set_alerts_firing(firing_counts(ms.book for ms in self.decider.state.models.values()))
        await self._send_failures()

    def _with_dataset(self, event: CloudEvent) -> CloudEvent:
        """A retrain request names the curated dataset table and version it should train on."""
        if event.type == ROLLBACK_REQUESTED or "dataset" not in event.data or self.datasets is None:
            return event
        dataset = self.datasets.training_ref()
        if dataset is None:
            return event
        return event.model_copy(update={"data": {**event.data, "dataset": dataset}})

    def _restore(self, model: str) -> None:
        """After a restart or rebalance, pick up the model's state from the table."""
        if model in self.decider.state.models:
            return
        stored = self.table.data.get(model.encode())
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

    def _failed(self, failure: DeliveryFailure) -> None:
        self.metrics.delivery_failures.labels(failure.receiver).inc()
        value = failure.model_dump_json().encode()
        self._failures.add(self.topics.delivery_failures, failure.group_key.encode(), value)

    async def _send_failures(self) -> None:
        if len(self._failures):
            await self._failures.send_and_wait(self.app.kafka_producer())
