"""The faust app factory: topics, the join table, the ingest handlers, /metrics and /health.

No app exists at import time: :func:`create_app` builds one from a
:class:`~services.settings.Settings`.

faust runs everything around ingest: the consumer group and partition
assignment, offsets and commits, the changelog-backed join table and its
recovery, timers and the web server. The hot path itself is a *batch
handler*: :class:`~streams.consumer.FastDrainConsumer` hands each fetch of an
input topic to :meth:`Ingest.on_inference` or :meth:`Ingest.on_feedback` as a
list, instead of one faust Event and stream step per message (which cost
about 90 µs each here). The handlers only read messages, call the pure
functions in :mod:`streams.ingest` and :mod:`streams.join`, and fill an
:class:`~streams.outbox.Outbox`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import TP
from faust.web import Request, Response, View
from pydantic_core import from_json, to_json

from detectors.frame import feedback_row, log_row, segment_of
from schemas.events import Descriptors, Feedback, InferenceLog, JoinedFeedback, SourceRef
from services.settings import Settings
from streams import join
from streams.consumer import BatchHandler, FastDrainTransport
from streams.detect_stage import DetectStage, window_spec
from streams.ingest import Accepted, Rejected, decode, describe, enriched_json
from streams.metrics import Metrics
from streams.outbox import Outbox
from streams.windows import BatchSummaries

log = logging.getLogger("loopwatch.streams")

# Rows each batch contributes per window and segment: bounds the summary
# message size (rows hold prompts and replies cut to window_text_chars).
_ROWS_PER_PARTIAL = 200


@dataclass(frozen=True)
class BatchRoute:
    """Where the batches of one topic go: a stage handles its batches one at a time, in order."""

    stage: str
    handler: BatchHandler


class LoopwatchApp(faust.App):
    """faust.App whose consumer can hand whole fetches of a topic to a batch handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_routes: dict[str, BatchRoute] = {}
        self.stop_hooks: list[Callable[[], Awaitable[None]]] = []

    async def on_stop(self) -> None:
        """Run loopwatch's own shutdown work (e.g. deliver queued pages) while the producer is up."""
        for hook in self.stop_hooks:
            try:
                await hook()
            except Exception:
                log.exception("shutdown step failed")
        await super().on_stop()

    def _new_transport(self) -> Any:
        return FastDrainTransport(self.conf.broker_consumer, self)

    def batch_topic(self, name: str, handler: BatchHandler, *, stage: str) -> None:
        """Subscribe to ``name`` and deliver its messages to ``handler`` in batches.

        Topics of one ``stage`` (which share its state) are handled one batch at a
        time; different stages run side by side.
        """
        self.topics.add(self.topic(name, key_serializer="raw", value_serializer="raw"))
        self.batch_routes[name] = BatchRoute(stage, handler)

    def kafka_producer(self) -> Any:
        """faust's own AIOKafkaProducer: what faust flushes before it commits offsets."""
        return cast(Any, self.producer)._ensure_producer()


class Ingest:
    """What happens to each batch of messages; holds the join table and metrics."""

    def __init__(self, app: LoopwatchApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.topics = settings.topics
        self.metrics = metrics
        # The raw codec for keys and values, both when writing the changelog and
        # when recovering from it: each entry is its JoinState as JSON bytes. Bytes
        # are not tracked by Python's garbage collector; a million state dicts
        # were, and every full collection walked them all.
        self.joins = app.Table("joins", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        # When each entry was first seen, so that the expiry sweep reads a float
        # per entry instead of parsing every state.
        self.first_seen: dict[bytes, float] = {}
        self.last_offset: dict[TP, int] = {}
        inputs = (self.topics.inference, self.topics.feedback)
        self._in = {t: metrics.events_in.labels(t) for t in inputs}
        self._valid = {t: metrics.events_valid.labels(t) for t in inputs}
        self._seconds = {t: metrics.processing_seconds.labels(t) for t in inputs}
        self.window_spec = window_spec(settings)
        self.rng = random.Random()
        self.summaries = BatchSummaries(self.window_spec, _ROWS_PER_PARTIAL, self.rng)

    # -- the batch handlers ------------------------------------------------------

    async def on_inference(self, messages: list[Any]) -> None:
        """Validate inference logs, forward them enriched, and join feedback waiting for them."""
        await self._handle(messages, InferenceLog, self._inference)

    async def on_feedback(self, messages: list[Any]) -> None:
        """Validate feedback and join it with its inference (or keep it waiting)."""
        await self._handle(messages, Feedback, self._feedback)

    def _inference(
        self, outbox: Outbox, message: Any, source: SourceRef, accepted: Accepted[InferenceLog], now: float
    ) -> None:
        event = accepted.event
        key = self._key(message, event.request_id)
        descriptors = describe(event)
        outbox.add(
            self.topics.enriched,
            key,
            enriched_json(message.value, descriptors, source),
            partition=message.partition,
        )
        if self.settings.detection:
            self._sample_inference(event, descriptors)
        result = join.on_inference(self._state(key), accepted.text, accepted.event, source, now)
        self._store(outbox, key, result, message.partition)

    def _feedback(
        self, outbox: Outbox, message: Any, source: SourceRef, accepted: Accepted[Feedback], now: float
    ) -> None:
        key = self._key(message, accepted.event.request_id)
        result = join.on_feedback(self._state(key), accepted.text, accepted.event, source, now)
        if result.duplicate:
            self.metrics.feedback_duplicate.inc()
        self._store(outbox, key, result, message.partition)

    # -- steps shared by both handlers -------------------------------------------

    async def _handle(self, messages: list[Any], model: type[Any], handle_valid: Callable[..., None]) -> None:
        """Decode every message; dead-letter the bad ones, pass the valid ones on; send; count."""
        started = time.perf_counter()
        outbox = Outbox()
        now = time.time()
        valid = 0
        for message in messages:
            source = SourceRef(topic=message.topic, partition=message.partition, offset=message.offset)
            outcome = decode(message.value, model, max_bytes=self.settings.max_event_bytes)
            if isinstance(outcome, Rejected):
                outbox.add_dead_letter(self.topics.deadletter, message, outcome)
                self.metrics.rejected(message.topic, outcome.reason)
            else:
                handle_valid(outbox, message, source, outcome, now)
                valid += 1
        self._flush_summaries(outbox)
        await outbox.send(self.app.kafka_producer())
        for message in messages:
            self.last_offset[message.tp] = message.offset
        topic = messages[0].topic
        self._in[topic].inc(len(messages))
        self._valid[topic].inc(valid)
        self._seconds[topic].observe((time.perf_counter() - started) / len(messages))

    def _key(self, message: Any, request_id: str) -> bytes:
        key = request_id.encode()
        if message.key != key:
            self.metrics.join_key_mismatch.labels(message.topic).inc()
        return key

    def _state(self, key: bytes) -> join.JoinState | None:
        state = self.joins.data.get(key)
        return None if state is None else from_json(state)

    def _store(self, outbox: Outbox, key: bytes, result: join.JoinResult, partition: int) -> None:
        """Keep the new join state (table and changelog) and queue the joined records."""
        if not result.duplicate:
            state = to_json(result.state)
            self.joins.data[key] = state
            self.first_seen.setdefault(key, result.state["first_seen"])
            outbox.add(self._changelog, key, state, partition=partition)
        for record in result.joined:
            outbox.add(self.topics.joined, key, record.model_dump_json().encode(), partition=partition)
            if self.settings.detection:
                self._sample_feedback(record)
        self.metrics.feedback_joined.inc(len(result.joined))

    # -- window summaries for the detect stage -----------------------------------

    def _sample_inference(self, event: InferenceLog, descriptors: Descriptors) -> None:
        """Count the event into its window; keep its row only if the window's sample wants it."""
        segment = {
            "model": event.model.name,
            "model_version": event.model.version,
            "app": event.app,
            "route": event.route,
            "tenant": event.tenant,
        }
        wanted = self.summaries.wants(segment, "inference", event.timestamp.timestamp())
        if wanted is not None:
            partial, sample_key = wanted
            partial.sample.keep(log_row(event, descriptors, self.settings.window_text_chars), sample_key)

    def _sample_feedback(self, record: JoinedFeedback) -> None:
        row = feedback_row(record)
        wanted = self.summaries.wants(segment_of(row), "feedback", record.feedback.timestamp.timestamp())
        if wanted is not None:
            partial, sample_key = wanted
            partial.sample.keep(row, sample_key)

    def _flush_summaries(self, outbox: Outbox) -> None:
        """Publish this batch's window summaries with its other outputs (before the commit)."""
        if not self.summaries.partials:
            return
        for (segment, _, _), partial in self.summaries.partials.items():
            outbox.add(self.topics.summaries, segment.encode(), to_json(partial.to_json()))
        self.summaries = BatchSummaries(self.window_spec, _ROWS_PER_PARTIAL, self.rng)

    @property
    def _changelog(self) -> str:
        return cast(str, self.joins.changelog_topic.get_topic_name())

    # -- timers ------------------------------------------------------------------

    async def sweep(self) -> None:
        """Expire joins older than the TTL; publish their unmatched feedback, then delete them."""
        now = time.time()
        entries = self.joins.data
        for key in entries.keys() - self.first_seen.keys():  # recovered from the changelog
            self.first_seen[key] = from_json(entries[key])["first_seen"]
        active = self.app.assignor.assigned_actives()
        expired = []
        for key, first_seen in list(self.first_seen.items()):
            if key not in entries:  # its partition moved to another worker
                del self.first_seen[key]
            elif join.is_expired(first_seen, now, self.settings.join_ttl_seconds):
                stored = entries[key]
                state: join.JoinState = from_json(stored)
                if TP(self.topics.inference, state["partition"]) in active:
                    expired.append((key, stored, state))
        if not expired:
            self.metrics.join_entries.set(len(entries))
            return
        outbox = Outbox()
        unmatched = 0
        for key, _, state in expired:
            for record in join.unmatched(state, key.decode(), now):
                outbox.add(
                    self.topics.unmatched,
                    key,
                    record.model_dump_json().encode(),
                    partition=state["partition"],
                )
                unmatched += 1
            outbox.add(self._changelog, key, None, partition=state["partition"])  # tombstone
        # Wait for the broker: an entry is deleted only once its feedback is published.
        for delivered in await outbox.send(self.app.kafka_producer()):
            await delivered
        for key, stored, _ in expired:
            # New feedback for this request may have come in meanwhile: its newer
            # state (written to the changelog after the tombstone) stays.
            if entries.get(key) == stored:
                del entries[key], self.first_seen[key]
        self.metrics.feedback_unmatched.inc(unmatched)
        self.metrics.join_entries.set(len(entries))

    def update_lag(self) -> None:
        """Consumer lag per partition: the high-water mark minus the next offset to process."""
        for tp in self.app.assignor.assigned_actives():
            if tp.topic in self._in and tp in self.last_offset:
                lag = self.app.consumer.highwater(tp) - (self.last_offset[tp] + 1)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))


def create_app(settings: Settings, metrics: Metrics | None = None) -> LoopwatchApp:
    """Build the loopwatch faust app (batch handlers, table, timers, web pages) from settings."""
    metrics = metrics or Metrics()
    app = LoopwatchApp(
        settings.app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.data_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_commit_interval=settings.commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        # Outputs are sent as whole record batches (streams/outbox.py); a linger
        # would only make the next batch for a partition wait for this one.
        producer_linger_ms=0,
        producer_max_batch_size=1 << 20,
        # Larger fetches: fewer round trips through faust's consumer thread.
        consumer_max_fetch_size=32 << 20,
        # A crashed worker's partitions move on after 10 s instead of faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        key_serializer="raw",
        value_serializer="raw",
    )
    ingest = Ingest(app, settings, metrics)
    app.batch_topic(settings.topics.inference, ingest.on_inference, stage="ingest")
    app.batch_topic(settings.topics.feedback, ingest.on_feedback, stage="ingest")
    if settings.curation:
        from streams.curate_stage import CurateStage

        curate = CurateStage(app, settings, metrics)
        app.batch_topic(settings.topics.joined, curate.on_joined, stage="curate")
    if settings.decide:
        from streams.decide_stage import DecideStage

        decide = DecideStage(app, settings, metrics)
        app.batch_topic(settings.topics.detections, decide.on_detections, stage="decide")
        app.stop_hooks.append(decide.stop)

        @app.task
        async def start_notifiers() -> None:
            await decide.start()

        @app.task
        async def follow_control() -> None:
            await decide.follow_control()

        @app.timer(5.0)
        async def decide_tick() -> None:
            await decide.tick()

    if settings.detection:
        detect = DetectStage(app, settings, metrics)
        app.batch_topic(settings.topics.summaries, detect.on_summaries, stage="detect")
        app.stop_hooks.append(detect.stop)

        @app.timer(0.1)
        async def close_windows() -> None:
            await detect.tick()

        app.detect = detect  # type: ignore[attr-defined]

    @app.timer(settings.join_sweep_seconds)
    async def sweep_joins() -> None:
        try:
            await ingest.sweep()
        except Exception:
            # Nothing is deleted before its feedback is published, so the next sweep retries.
            log.exception("join sweep failed; retrying in %.0fs", settings.join_sweep_seconds)

    @app.timer(5.0)
    async def lag() -> None:
        ingest.update_lag()

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Response:
        ingest.update_lag()
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: View, request: Request) -> Response:
        ready = not app.rebalancing and cast(Any, app.tables).recovery.completed.is_set()
        body = {
            "status": "ok" if ready else "starting",
            "app_id": settings.app_id,
            "assigned_partitions": len(app.assignor.assigned_actives()),
        }
        return web.json(body, status=200 if ready else 503)

    app.loopwatch = ingest  # type: ignore[attr-defined]
    return app
