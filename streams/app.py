"""The faust app factory: topics, the join table, the ingest handlers, /metrics and /health.

No app exists at import time: :func:`create_app` builds one from a
:class:`~core.settings.Settings`.

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
from itertools import islice, repeat
from typing import Any, cast

import faust
from faust.types import TP
from faust.web import Request, Response, View
from pydantic_core import to_json

from core.settings import Settings
from detectors.frame import describe, feedback_row, log_row, segment_of
from schemas.events import DeadLetterReason, Descriptors, Feedback, InferenceLog, JoinedFeedback, SourceRef
from streams import join
from streams.broker_watch import BrokerWatch
from streams.consumer import BatchHandler, FastDrainTransport
from streams.control import ControlFollower
from streams.detect_stage import DetectStage, window_spec
from streams.ingest import Accepted, Rejected, decode, enriched_json, out_of_range
from streams.join_store import SWEEP_CHUNK, JoinStore, claim_directory, table_options
from streams.metrics import Metrics
from streams.outbox import Outbox, OutputLimit
from streams.rekey import Origin, headers_for, origin_in
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

    def __init__(self, *args: Any, output_limit: OutputLimit, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_routes: dict[str, BatchRoute] = {}
        self.stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self.output_limit = output_limit

    def outbox(self) -> Outbox:
        """An empty outbox whose records are held to the output limit."""
        return Outbox(self.output_limit)

    def Table(self, *args: Any, **kwargs: Any) -> Any:
        """faust's Table, whose changelog topic takes records up to ``max_record_bytes``."""
        kwargs.setdefault("extra_topic_configs", self.output_limit.topic_configs)
        return super().Table(*args, **kwargs)

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
        # when recovering from it: each entry is its JoinState as join.encode bytes.
        # Bytes are not tracked by Python's garbage collector; a million state
        # dicts were, and every full collection walked them all.
        directory, self._directory_lock = claim_directory(settings.data_dir / "joins")
        self.joins = app.Table(
            "joins",
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            **table_options(settings.join_store, directory),
        )
        self.join_store = JoinStore(self.joins, settings.join_store, directory)
        self._indexed_generation: int | None = None
        self.last_offset: dict[TP, int] = {}
        inputs = (self.topics.inference, self.topics.feedback, self.topics.rekey)
        self._warned: set[str] = set()
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

    async def on_rekeyed(self, messages: list[Any]) -> None:
        """Process messages re-keyed by their request_id as if they had come with that key."""
        kinds: dict[str, tuple[type[Any], Callable[..., None]]] = {
            self.topics.inference: (InferenceLog, self._inference),
            self.topics.feedback: (Feedback, self._feedback),
        }
        by_kind: dict[str, tuple[list[Any], list[Origin]]] = {}
        strays = []
        for message in messages:
            origin = origin_in(message.headers)
            if origin is None or origin.source.topic not in kinds:
                strays.append(message)
            else:
                batch, origins = by_kind.setdefault(origin.source.topic, ([], []))
                batch.append(message)
                origins.append(origin)
        for topic, (batch, origins) in by_kind.items():
            model, handle_valid = kinds[topic]
            await self._handle(batch, model, handle_valid, origins)
        if strays:
            await self._strays(strays)
        for message in messages:  # by offset again: the batches above were split by kind
            self.last_offset[message.tp] = message.offset

    async def _strays(self, messages: list[Any]) -> None:
        """Dead-letter messages on the repartition topic that ingest did not write there."""
        outbox = self.app.outbox()
        rejected = Rejected(
            DeadLetterReason.MISSING_FIELD,
            f"{self.topics.rekey} is internal: its messages need the loopwatch-source header naming"
            f" {self.topics.inference} or {self.topics.feedback}, which ingest writes",
        )
        for message in messages:
            outbox.add_dead_letter(self.topics.deadletter, message, rejected)
            self.metrics.rejected(message.topic, rejected.reason)
        await outbox.send(self.app.kafka_producer())
        self._in[self.topics.rekey].inc(len(messages))

    def _inference(
        self,
        outbox: Outbox,
        message: Any,
        source: SourceRef,
        accepted: Accepted[InferenceLog],
        key: bytes,
        now: float,
    ) -> None:
        event = accepted.event
        descriptors = describe(event)
        outbox.add(
            self.topics.enriched,
            key,
            enriched_json(message.value, descriptors, source),
            partition=message.partition,
        )
        if self.settings.detection:
            self._sample_inference(event, descriptors)
        previous = self._state(key, message.partition)
        result = join.on_inference(previous, accepted.text, event, source, now, partition=message.partition)
        self._store(outbox, key, result, message.partition, new=previous is None)

    def _feedback(
        self,
        outbox: Outbox,
        message: Any,
        source: SourceRef,
        accepted: Accepted[Feedback],
        key: bytes,
        now: float,
    ) -> None:
        previous = self._state(key, message.partition)
        result = join.on_feedback(
            previous, accepted.text, accepted.event, source, now, partition=message.partition
        )
        if result.duplicate:
            self.metrics.feedback_duplicate.inc()
        self._store(outbox, key, result, message.partition, new=previous is None)

    # -- steps shared by both handlers -------------------------------------------

    async def _handle(
        self,
        messages: list[Any],
        model: type[Any],
        handle_valid: Callable[..., None],
        origins: list[Origin] | None = None,
    ) -> None:
        """Decode each message; dead-letter the bad, re-key the wrongly keyed, pass the rest on; send; count.

        ``origins`` are the messages the producer wrote, when ``messages`` are their
        copies from the repartition topic: sources and dead letters point there.
        """
        started = time.perf_counter()
        outbox = self.app.outbox()
        now = time.time()
        valid = 0
        for message, origin in zip(messages, origins or repeat(None), strict=False):
            if origin is None:
                source = SourceRef(topic=message.topic, partition=message.partition, offset=message.offset)
            else:
                source = origin.source
            outcome = decode(message.value, model, max_bytes=self.settings.max_event_bytes)
            if isinstance(outcome, Accepted) and origin is None:
                # Checked once, against the producer's message: a re-keyed copy carries
                # the time it was re-sent.
                outcome = self._timely(outcome, message, now)
            if isinstance(outcome, Rejected):
                outbox.add_dead_letter(self.topics.deadletter, message, outcome, origin)
                self.metrics.rejected(message.topic, outcome.reason)
                continue
            valid += 1
            key = outcome.event.request_id.encode()
            if message.key != key and self._rekeyed(outbox, message, key):
                continue
            handle_valid(outbox, message, source, outcome, key, now)
        self._flush_summaries(outbox)
        await outbox.send(self.app.kafka_producer())
        for message in messages:
            self.last_offset[message.tp] = message.offset
        topic = messages[0].topic
        self._in[topic].inc(len(messages))
        self._valid[topic].inc(valid)
        self._seconds[topic].observe((time.perf_counter() - started) / len(messages))

    def _timely(self, accepted: Accepted[Any], message: Any, now: float) -> Accepted[Any] | Rejected:
        """The event, or its rejection when its timestamp is too far from its Kafka message's."""
        rejected = out_of_range(
            accepted.event.timestamp,
            message.timestamp,
            now,
            max_past=self.settings.max_timestamp_past_seconds,
            max_future=self.settings.max_timestamp_future_seconds,
        )
        return accepted if rejected is None else rejected

    def _rekeyed(self, outbox: Outbox, message: Any, key: bytes) -> bool:
        """Re-send a message not keyed by its request_id to the repartition topic, keyed by it.

        The join is partition-local: under another key the message may sit where
        its partner never comes. False for a message that came from the
        repartition topic already: it is joined where it is, never sent round again.
        """
        topic = message.topic
        self.metrics.join_key_mismatch.labels(topic).inc()
        if topic == self.topics.rekey:
            self._warn_once(topic, message, key, f"left in partition {message.partition}, not re-keyed again")
            return False
        outbox.add(self.topics.rekey, key, message.value, headers=headers_for(Origin.of(message)))
        self.metrics.rekeyed.labels(topic).inc()
        self._warn_once(topic, message, key, f"re-keyed through {self.topics.rekey} so that they join")
        return True

    def _warn_once(self, topic: str, message: Any, key: bytes, what: str) -> None:
        if topic in self._warned:
            return
        self._warned.add(topic)
        shown = "no key" if message.key is None else f"key {message.key[:64]!r}"
        log.warning(
            "messages on %s are not keyed by their request_id (first: %s, request_id %r,"
            " partition %d, offset %d): %s; counted in loopwatch_join_key_mismatch_total, warned once",
            topic,
            shown,
            key[:64].decode(errors="replace"),
            message.partition,
            message.offset,
            what,
        )

    def _state(self, key: bytes, partition: int) -> join.JoinState | None:
        stored = self.join_store.get(partition, key)
        return None if stored is None else join.decode(stored)

    def _store(
        self, outbox: Outbox, key: bytes, result: join.JoinResult, partition: int, *, new: bool
    ) -> None:
        """Keep the new join state (table and changelog) and queue the joined records."""
        if not result.duplicate:
            stored = join.encode(result.state)
            self.join_store.put(partition, key, stored, new=new)
            outbox.add(self._changelog, key, stored, partition=partition)
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
            # Strict JSON whatever a row holds: a NaN (none gets past validation) would be null.
            value = to_json(partial.to_json(), inf_nan_mode="null")
            outbox.add(self.topics.summaries, segment.encode(), value)
        self.summaries = BatchSummaries(self.window_spec, _ROWS_PER_PARTIAL, self.rng)

    @property
    def _changelog(self) -> str:
        return cast(str, self.joins.changelog_topic.get_topic_name())

    # -- timers ------------------------------------------------------------------

    async def sweep(self) -> None:
        """Expire joins older than the TTL; publish their unmatched feedback, then delete them."""
        app = cast(Any, self.app)
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return  # entries recovered from now on would be missing from the expiry index
        if app.consumer_generation_id != self._indexed_generation:
            self.join_store.on_rebalance()
            self._indexed_generation = app.consumer_generation_id
        partitions = {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == self.topics.inference
        }
        await self.join_store.reindex(partitions)
        before = time.time() - self.settings.join_ttl_seconds
        while True:
            # A chunk at a time: a large backlog expiring at once stays bounded in RAM.
            expired = list(islice(self.join_store.expired(partitions, before), SWEEP_CHUNK))
            if not expired or not await self._expire(expired) or len(expired) < SWEEP_CHUNK:
                break
        self.metrics.join_entries.set(self.join_store.count(partitions))

    async def _expire(self, expired: list[tuple[int, bytes, bytes]]) -> int:
        """Publish the unmatched feedback of ``expired`` and tombstone them; delete what did not change."""
        now = time.time()
        outbox = self.app.outbox()
        unmatched = 0
        for partition, key, stored in expired:
            for record in join.unmatched(join.decode(stored), key.decode(), now):
                outbox.add(self.topics.unmatched, key, record.model_dump_json().encode(), partition=partition)
                unmatched += 1
            outbox.add(self._changelog, key, None, partition=partition)  # tombstone
        # Wait for the broker: an entry is deleted only once its feedback is published.
        await outbox.send_and_wait(self.app.kafka_producer())
        deleted = 0
        for partition, key, stored in expired:
            # New feedback for this request may have come in meanwhile: its newer
            # state (written to the changelog after the tombstone) stays.
            if self.join_store.get(partition, key) == stored:
                self.join_store.delete(partition, key, stored)
                deleted += 1
        self.metrics.feedback_unmatched.inc(unmatched)
        return deleted

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
        output_limit=OutputLimit(settings, metrics),
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
        # Every record is held to max_record_bytes (streams/outbox.py), so the
        # producer's own check never refuses one; a batch is never larger than
        # the broker must accept anyway.
        producer_max_request_size=settings.max_record_bytes,
        producer_max_batch_size=min(1 << 20, settings.max_record_bytes),
        # Larger fetches: fewer round trips through faust's consumer thread.
        consumer_max_fetch_size=32 << 20,
        # A crashed worker's partitions move on after 10 s instead of faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        # faust logs a partition as stalled when its records wait this long (see
        # FastDrainConsumer._handle_batch for how batch topics report progress).
        stream_processing_timeout=settings.stream_stall_seconds,
        key_serializer="raw",
        value_serializer="raw",
    )
    ingest = Ingest(app, settings, metrics)
    app.batch_topic(settings.topics.inference, ingest.on_inference, stage="ingest")
    app.batch_topic(settings.topics.feedback, ingest.on_feedback, stage="ingest")
    app.batch_topic(settings.topics.rekey, ingest.on_rekeyed, stage="ingest")
    if settings.curation:
        from streams.curate_stage import CurateStage

        curate = CurateStage(app, settings, metrics)
        app.batch_topic(settings.topics.joined, curate.on_joined, stage="curate")
    # One control-topic follower per worker: stable marks reach detect, silences and marks decide.
    control = ControlFollower(app, settings, metrics)
    if settings.decide:
        from streams.decide_stage import DecideStage

        decide = DecideStage(app, settings, metrics)
        control.subscribe(silence=decide.add_silence, stable=decide.mark_stable)
        app.batch_topic(settings.topics.detections, decide.on_detections, stage="decide")
        app.stop_hooks.append(decide.stop)

        @app.task
        async def start_notifiers() -> None:
            await decide.start()

        @app.timer(5.0)
        async def decide_tick() -> None:
            await decide.tick()

    if settings.detection:
        detect = DetectStage(app, settings, metrics)
        control.subscribe(stable=detect.mark_stable)
        app.batch_topic(settings.topics.summaries, detect.on_summaries, stage="detect")
        app.stop_hooks.append(detect.stop)

        @app.timer(0.1)
        async def close_windows() -> None:
            await detect.tick()

        app.detect = detect  # type: ignore[attr-defined]

    if settings.decide or settings.detection:

        @app.task
        async def follow_control() -> None:
            await control.follow()

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

    watch = BrokerWatch(app, settings, metrics)

    @app.timer(settings.topic_check_seconds)
    async def check_broker() -> None:
        await watch.check()

    @app.page("/health")
    async def health(web: View, request: Request) -> Response:
        ready = not app.rebalancing and cast(Any, app.tables).recovery.completed.is_set()
        problem = watch.problem
        body: dict[str, Any] = {
            "status": "unhealthy" if problem else "ok" if ready else "starting",
            "app_id": settings.app_id,
            "assigned_partitions": len(app.assignor.assigned_actives()),
        }
        if problem:
            body["reason"] = problem
        return web.json(body, status=200 if ready and not problem else 503)

    app.loopwatch = ingest  # type: ignore[attr-defined]
    app.broker_watch = watch  # type: ignore[attr-defined]
    return app
