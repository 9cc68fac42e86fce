"""The control topic's Kafka edge: silences and stable marks, verified, handed to every stage that needs them.

One follower per worker, whatever stages run on it, reads the whole
one-partition compacted ``loopwatch.control.v1`` from its start with a
group-less consumer and keeps following it, so every worker mutes, rolls
back and picks references alike. Each record is checked
(:func:`retrain_trigger.control.check`: signature, shape, silence limits);
a refused one is counted in ``loopwatch_control_rejected_total{reason}`` and
logged in one line, a malformed one is also dead-lettered. An accepted
silence goes to the decide stage; a stable mark that is the newest for its
model goes to the decide stage (rollback target) and the detect stage
(references).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from core.settings import Settings
from retrain_trigger.control import ControlEvent, Refused, check
from retrain_trigger.silence import Silence
from retrain_trigger.stable import StableVersionMarked, StableVersions
from streams.ingest import Rejected, decode
from streams.metrics import Metrics

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.control")

#: When the marks from ``LOOPWATCH_STABLE_VERSIONS`` count as made: any mark on the topic is newer.
SETTINGS_MARKED_AT = datetime(1970, 1, 1, tzinfo=UTC)

SilenceHandler = Callable[[Silence], None]
StableHandler = Callable[[StableVersionMarked], None]


def settings_marks(settings: Settings) -> list[StableVersionMarked]:
    """The stable versions from settings, as marks older than any on the control topic."""
    return [
        StableVersionMarked(model=model, version=version, marked_at=SETTINGS_MARKED_AT, marked_by="settings")
        for model, version in settings.stable_versions.items()
    ]


class ControlFollower:
    """Follows the control topic and hands each verified event to the subscribed stages."""

    def __init__(self, app: LoopwatchApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.max_silence = timedelta(seconds=settings.silence_max_seconds)
        self.stable = StableVersions()
        for mark in settings_marks(settings):
            self.stable.apply(mark)
        self.silence_handlers: list[SilenceHandler] = []
        self.stable_handlers: list[StableHandler] = []

    def subscribe(
        self, *, silence: SilenceHandler | None = None, stable: StableHandler | None = None
    ) -> None:
        """Have silences and/or the newest stable mark of each model handed to these callables.

        The stages subscribe ``runtime.post`` to their name: an event is handled in the
        stage's queue, like its batches and ticks.
        """
        if silence is not None:
            self.silence_handlers.append(silence)
        if stable is not None:
            self.stable_handlers.append(stable)

    async def follow(self) -> None:
        """Apply every record of the control topic, from its start, forever."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        topic = self.settings.topics.control
        if self.settings.control_key is None:
            log.warning(
                "control messages on %s are not authenticated: anyone who can write the topic can"
                " silence alerts; set LOOPWATCH_CONTROL_KEY (and restrict writes with Kafka ACLs)",
                topic,
            )
        from streams.kafka import client_options

        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or {0}
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            await consumer.seek_to_beginning()
            async for record in consumer:
                await self.handle(record)
        finally:
            await consumer.stop()

    async def handle(self, record: Any) -> None:
        """Check one control record; apply it, or count and log why not."""
        if record.value is None:  # a tombstone: compaction will drop the key
            return
        outcome = check(
            record.key,
            record.value,
            record.headers or (),
            key=self.settings.control_key,
            max_silence=self.max_silence,
        )
        if isinstance(outcome, Refused):
            await self._refuse(record, outcome)
            return
        await self._apply(outcome)
        self.metrics.control_events.inc()

    async def _apply(self, event: ControlEvent) -> None:
        if event.silence is not None:
            # `silence expire` republishes the silence ending now: say so, not "applied".
            ended = event.silence.ends_at <= datetime.now(UTC)
            log.warning(
                "silence %s %s %s: %s (%s, by %s)",
                event.silence.id,
                "expired at" if ended else "applied until",
                event.silence.ends_at.isoformat(),
                ",".join(str(m) for m in event.silence.matchers),
                event.silence.comment,
                event.silence.created_by,
            )
            for on_silence in self.silence_handlers:
                on_silence(event.silence)
        mark = event.stable
        if mark is not None:
            before = self.stable.models.get(mark.model)
            self.stable.apply(mark)
            if self.stable.models[mark.model] is before:
                log.info(
                    "%s %s mark of %s is older than the current one: ignored",
                    mark.model,
                    mark.version,
                    mark.marked_at,
                )
                return
            log.warning(
                "%s %s marked stable (by %s at %s)", mark.model, mark.version, mark.marked_by, mark.marked_at
            )
            for on_stable in self.stable_handlers:
                on_stable(mark)

    async def _refuse(self, record: Any, refused: Refused) -> None:
        self.metrics.control_rejected.labels(refused.reason).inc()
        log.error(
            "control record refused (%s): %s[%d]@%d key=%r: %s",
            refused.reason,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            refused.detail,
        )
        if refused.reason != "invalid":
            return
        rejected = decode(record.value, ControlEvent, max_bytes=self.settings.max_event_bytes)
        if isinstance(rejected, Rejected):
            letters = self.app.outbox()
            letters.add_dead_letter(self.settings.topics.deadletter, record, rejected)
            self.metrics.rejected(record.topic, rejected.reason)
            await letters.send_and_wait(self.app.kafka_producer())
