"""The faust app factory: topics, the join table, the agents, /metrics and /health.

No app exists at import time: :func:`create_app` builds one from a
:class:`~services.settings.Settings`. Agents only read the message, call the
pure functions in :mod:`streams.ingest` and :mod:`streams.join`, and send.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

import faust
from faust.types import TP
from faust.web import Request, Response, View

from schemas.events import Feedback, InferenceLog, SourceRef
from services.settings import Settings
from streams import join
from streams.consumer import FastDrainTransport
from streams.ingest import Rejected, dead_letter, decode, enrich
from streams.metrics import Metrics

log = logging.getLogger("loopwatch.streams")


class LoopwatchApp(faust.App):
    """faust.App using the fast-drain consumer (see :mod:`streams.consumer`)."""

    def _new_transport(self) -> Any:
        return FastDrainTransport(self.conf.broker_consumer, self)


class Ingest:
    """What the agents do with each message; holds the topics, the join table and metrics."""

    def __init__(self, app: faust.App, settings: Settings, metrics: Metrics) -> None:
        topics = settings.topics

        def raw(name: str) -> Any:
            # loopwatch decodes bytes itself, so a malformed value becomes a dead
            # letter instead of a faust decode error.
            return app.topic(name, key_serializer="raw", value_serializer="raw")

        self.settings = settings
        self.metrics = metrics
        self.inference_topic = raw(topics.inference)
        self.feedback_topic = raw(topics.feedback)
        self.deadletter = raw(topics.deadletter)
        self.enriched = raw(topics.enriched)
        self.joined = raw(topics.joined)
        self.unmatched = raw(topics.unmatched)
        # key_type=bytes makes faust use the raw codec for keys both when writing
        # the changelog and when recovering from it (a Schema argument only
        # covers writing); values are JSON dicts.
        self.joins = app.Table("joins", partitions=settings.partitions, key_type=bytes)
        self.last_offset: dict[TP, int] = {}
        self._in = {t: metrics.events_in.labels(t) for t in (topics.inference, topics.feedback)}
        self._valid = {t: metrics.events_valid.labels(t) for t in (topics.inference, topics.feedback)}
        self._seconds = {t: metrics.processing_seconds.labels(t) for t in (topics.inference, topics.feedback)}

    def _receive(self, message: Any) -> SourceRef:
        self._in[message.topic].inc()
        self.last_offset[message.tp] = message.offset
        return SourceRef(topic=message.topic, partition=message.partition, offset=message.offset)

    def _reject(self, message: Any, rejected: Rejected, source: SourceRef) -> None:
        record = dead_letter(rejected, source, message.key, message.value, datetime.now(UTC))
        self.deadletter.send_soon(
            key=message.key,
            value=record.model_dump_json().encode(),
            headers={"loopwatch-reason": rejected.reason.value.encode()},
        )
        self.metrics.rejected(message.topic, rejected.reason)

    def _key(self, message: Any, request_id: str) -> bytes:
        key = request_id.encode()
        if message.key != key:
            self.metrics.join_key_mismatch.labels(message.topic).inc()
        return key

    def _publish_joined(self, key: bytes, partition: int, result: join.JoinResult) -> None:
        for record in result.joined:
            self.joined.send_soon(key=key, value=record.model_dump_json().encode(), partition=partition)
        self.metrics.feedback_joined.inc(len(result.joined))

    def on_inference(self, message: Any) -> None:
        """Validate one inference log, forward it enriched, and join waiting feedback."""
        started = time.perf_counter()
        source = self._receive(message)
        outcome = decode(message.value, InferenceLog, max_bytes=self.settings.max_event_bytes)
        if isinstance(outcome, Rejected):
            self._reject(message, outcome, source)
        else:
            log_ = outcome.event
            key = self._key(message, log_.request_id)
            self._valid[message.topic].inc()
            self.enriched.send_soon(
                key=key,
                value=enrich(log_, source).model_dump_json().encode(),
                partition=message.partition,
            )
            result = join.on_inference(self.joins.get(key), outcome.text, log_, source, time.time())
            if not result.duplicate:
                self.joins[key] = result.state
            self._publish_joined(key, message.partition, result)
        self._seconds[message.topic].observe(time.perf_counter() - started)

    def on_feedback(self, message: Any) -> None:
        """Validate one feedback event and join it with its inference (or keep it waiting)."""
        started = time.perf_counter()
        source = self._receive(message)
        outcome = decode(message.value, Feedback, max_bytes=self.settings.max_event_bytes)
        if isinstance(outcome, Rejected):
            self._reject(message, outcome, source)
        else:
            feedback = outcome.event
            key = self._key(message, feedback.request_id)
            self._valid[message.topic].inc()
            result = join.on_feedback(self.joins.get(key), outcome.text, feedback, source, time.time())
            if result.duplicate:
                self.metrics.feedback_duplicate.inc()
            else:
                self.joins[key] = result.state
            self._publish_joined(key, message.partition, result)
        self._seconds[message.topic].observe(time.perf_counter() - started)

    async def sweep(self, app: faust.App) -> None:
        """Expire joins older than the TTL; hand their unmatched feedback on, then delete."""
        now = time.time()
        active = app.assignor.assigned_actives()
        expired = [
            (key, state)
            for key, state in list(self.joins.data.items())
            if join.is_expired(state, now, self.settings.join_ttl_seconds)
            and TP(self.inference_topic.get_topic_name(), state["partition"]) in active
        ]
        for key, state in expired:
            records = join.unmatched(state, key.decode(), now)
            for record in records:
                # Awaited: the entry is deleted only once its feedback is safely published.
                await self.unmatched.send(
                    key=key, value=record.model_dump_json().encode(), partition=state["partition"]
                )
            del self.joins.data[key]
            self.joins.send_changelog(state["partition"], key, None, value_serializer="raw")
            self.metrics.feedback_unmatched.inc(len(records))
        self.metrics.join_entries.set(len(self.joins.data))

    def update_lag(self, app: faust.App) -> None:
        """Consumer lag per partition: the high-water mark minus the next offset to process."""
        for tp in app.assignor.assigned_actives():
            if tp.topic in self._in and tp in self.last_offset:
                lag = app.consumer.highwater(tp) - (self.last_offset[tp] + 1)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))


def create_app(settings: Settings, metrics: Metrics | None = None) -> LoopwatchApp:
    """Build the loopwatch faust app (agents, table, timers, web pages) from settings."""
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
        # Batch outgoing records: one produce request per partition every few ms
        # instead of one per record.
        producer_linger_ms=10,
        # A crashed worker's partitions move on after 10 s instead of faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        producer_max_batch_size=1 << 20,
        key_serializer="raw",
        value_serializer="raw",
    )
    ingest = Ingest(app, settings, metrics)

    async def ingest_inference(stream: Any) -> None:
        async for event in stream.events():
            ingest.on_inference(event.message)

    async def ingest_feedback(stream: Any) -> None:
        async for event in stream.events():
            ingest.on_feedback(event.message)

    app.agent(ingest.inference_topic, name="ingest-inference")(ingest_inference)
    app.agent(ingest.feedback_topic, name="ingest-feedback")(ingest_feedback)

    @app.timer(settings.join_sweep_seconds)
    async def sweep_joins() -> None:
        try:
            await ingest.sweep(app)
        except Exception:
            # Nothing is deleted before its feedback is published, so the next sweep retries.
            log.exception("join sweep failed; retrying in %.0fs", settings.join_sweep_seconds)

    @app.timer(5.0)
    async def lag() -> None:
        ingest.update_lag(app)

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Response:
        ingest.update_lag(app)
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
