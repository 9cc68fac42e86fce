"""The faust app factory: the wiring of topics, stages, timers, /metrics and /health.

No app exists at import time: :func:`create_app` builds one from a
:class:`~core.settings.Settings`.

faust runs everything around the stages: the consumer group and partition
assignment, offsets and commits, the changelog-backed tables and their
recovery, timers and the web server. The stages (``streams/*_stage.py``) run
on :mod:`streams.runtime`, which takes each fetch of their topics from
:class:`~streams.consumer.FastDrainConsumer` as one batch and performs what
the stages decide, in one order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import faust
from faust.web import Request, Response, View

from core.settings import Settings
from streams.broker_watch import BrokerWatch
from streams.consumer import FastDrainTransport
from streams.control import ControlFollower
from streams.ingest_stage import IngestStage
from streams.kafka import broker_credentials, client_options, servers
from streams.metrics import Metrics
from streams.outbox import Outbox, OutputLimit
from streams.recovery import LoopwatchTableManager
from streams.runtime import Runtime, Stage

if TYPE_CHECKING:
    from faust.types import TP

    from streams.detect_stage import DetectStage

log = logging.getLogger("loopwatch.streams")

StageT = TypeVar("StageT", bound=Stage)

# Rows each batch contributes per window and segment: bounds the summary
# message size (rows hold prompts and replies cut to window_text_chars).
_ROWS_PER_PARTIAL = 200


class LoopwatchApp(faust.App):
    """faust.App whose consumer hands whole fetches of the stages' topics to the stage runtime."""

    def __init__(
        self,
        *args: Any,
        output_limit: OutputLimit,
        runtime: Runtime,
        kafka_options: dict[str, Any],
        summaries_topic: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: Whose partitions decide which models this worker judges: listed first in /health and the log.
        self.summaries_topic = summaries_topic
        self.output_limit = output_limit
        #: What the worker's own aiokafka clients connect with (streams.kafka.client_options).
        self.kafka_options = kafka_options
        self.runtime = runtime
        runtime.app = self
        #: When the last rebalance ended (``time.monotonic()``; None: not yet), for ``/health``.
        self.settled_since: float | None = None
        self.on_partitions_assigned.connect(cast(Any, self._log_assignment))  # faust's types are loose

    async def _log_assignment(self, sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        """One line per rebalance naming what this worker owns: which worker judges a model (issue 17)."""
        log.info("worker assigned: %s", assignment_line(self.assigned_partitions()))

    def on_rebalance_end(self) -> None:
        """faust's end of a rebalance (partitions assigned and recovered), and when it was."""
        super().on_rebalance_end()
        self.settled_since = time.monotonic()

    def assigned_partitions(self) -> dict[str, list[int]]:
        """This worker's active partitions per topic, the summaries topic first."""
        return partitions_by_topic(self.assignor.assigned_actives(), first=self.summaries_topic)

    def outbox(self) -> Outbox:
        """An empty outbox whose records are held to the output limit."""
        return Outbox(self.output_limit)

    def add_stage(self, stage: StageT) -> StageT:
        """Run ``stage`` on the runtime: subscribe to its input topics (raw bytes) and tick it."""
        self.runtime.add(stage)
        for name in stage.inputs:
            self.topics.add(self.topic(name, key_serializer="raw", value_serializer="raw"))
        if stage.tick_seconds is not None:

            async def tick() -> None:
                self.runtime.tick(stage.name)

            self.timer(stage.tick_seconds, name=f"{stage.name}_tick")(tick)
        return stage

    def Table(self, *args: Any, **kwargs: Any) -> Any:
        """faust's Table, whose changelog topic takes records up to ``max_record_bytes``."""
        kwargs.setdefault("extra_topic_configs", self.output_limit.topic_configs)
        return super().Table(*args, **kwargs)

    async def on_stop(self) -> None:
        """Let the stages finish their work (e.g. deliver queued pages) while the producer is up."""
        await self.runtime.stop()
        await super().on_stop()

    def _new_transport(self) -> Any:
        return FastDrainTransport(self.conf.broker_consumer, self)

    def kafka_producer(self) -> Any:
        """faust's own AIOKafkaProducer: what faust flushes before it commits offsets."""
        return cast(Any, self.producer)._ensure_producer()


def partitions_by_topic(assigned: Iterable[TP], first: str | None = None) -> dict[str, list[int]]:
    """Partitions per topic, both sorted, topic ``first`` first: what ``/health`` and the log line show.

    The summaries topic goes first: its partitions say which models this worker judges.

    >>> from faust.types import TP
    >>> partitions_by_topic([TP("b", 3), TP("a", 1), TP("b", 0), TP("c", 2)], first="b")
    {'b': [0, 3], 'a': [1], 'c': [2]}
    """
    owned: dict[str, list[int]] = {}
    for tp in sorted(assigned, key=lambda tp: (tp.topic != first, tp)):
        owned.setdefault(tp.topic, []).append(tp.partition)
    return owned


def assignment_line(owned: dict[str, list[int]]) -> str:
    """The log's account of ``owned``: topics with the same partitions together, changelogs counted.

    faust gives every topic (changelogs too) the same partitions: one list per topic ran to 900 characters.

    >>> assignment_line({"s": [0, 2], "a": [0, 2], "a-changelog": [0, 2], "b": [1]})
    's, a [0, 2] (and 1 changelog); b [1]'
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for topic, listed in owned.items():
        groups.setdefault(tuple(listed), []).append(topic)
    said = []
    for partitions, topics in groups.items():
        changelogs = sum(topic.endswith("-changelog") for topic in topics)
        named = ", ".join(topic for topic in topics if not topic.endswith("-changelog")) or "changelogs"
        more = f" (and {changelogs} changelog{'s' if changelogs > 1 else ''})" if changelogs else ""
        more = "" if named == "changelogs" else more
        said.append(f"{named} {list(partitions)}{more}")
    return "; ".join(said) or "no partitions"


def judged_models(detect: DetectStage | None) -> list[str]:
    """The models whose windows this worker's detect stage holds: open, waiting, or judged and kept.

    Summaries are keyed by model, so these are the models this worker judges; a
    closed window is kept for ``window_revision_seconds``, so a model that went
    quiet drops out after that. Read on the event loop, between the stage's units
    of work, so the stage's dicts do not change while this reads them.
    """
    if detect is None:
        return []
    windows = detect.windows
    partials = [*windows.open.values(), *(done.partial for done in windows.done.values())]
    segments = [p.segment for p in partials] + [window.segment for window, _ in detect.waiting]
    return sorted({segment.get("model") or "" for segment in segments})


def create_app(settings: Settings, metrics: Metrics | None = None) -> LoopwatchApp:
    """Build the loopwatch faust app (batch handlers, table, timers, web pages) from settings."""
    metrics = metrics or Metrics()
    limit = OutputLimit(settings, metrics)
    app = LoopwatchApp(
        settings.app_id,
        output_limit=limit,
        runtime=Runtime(limit, metrics, settings.topics.deadletter),
        kafka_options=client_options(settings),
        summaries_topic=settings.topics.summaries,
        broker=[f"kafka://{server}" for server in servers(settings)],
        # TLS and SASL for faust's consumer, producer and admin requests.
        broker_credentials=broker_credentials(settings),
        store="memory://",
        # faust's table recovery, minus its crash on a rebalance during a recovery (streams/recovery.py).
        TableManager=LoopwatchTableManager,
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
        # A crashed worker's partitions move on after 10 s (by default) instead of faust's 60 s; a
        # heartbeat at most a third of it apart, so one late heartbeat does not cost the session.
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(2.0, settings.session_timeout_seconds / 3),
        # faust logs a partition as stalled when its records wait this long (see
        # FastDrainConsumer._report_progress for how batch topics report progress).
        stream_processing_timeout=settings.stream_stall_seconds,
        key_serializer="raw",
        value_serializer="raw",
    )
    runtime = app.runtime
    detect: DetectStage | None = None
    ingest = IngestStage(runtime, settings, metrics)
    app.add_stage(ingest)
    if settings.otlp:
        from streams.otlp_stage import OtlpStage

        app.add_stage(OtlpStage(runtime, settings, metrics))  # Collector spans -> inference, feedback
    if settings.curation:
        from streams.curate_stage import CurateStage

        app.add_stage(CurateStage(runtime, settings, metrics))
    # One control-topic follower per worker: stable marks reach detect, silences and marks decide.
    control = ControlFollower(app, settings, metrics)
    if settings.decide:
        from streams.decide_stage import DecideStage

        decide = app.add_stage(DecideStage(runtime, settings, metrics))
        control.subscribe(
            silence=partial(runtime.post, decide.name), stable=partial(runtime.post, decide.name)
        )
        from streams.notify_stage import NotifyStage

        app.add_stage(NotifyStage(runtime, settings, metrics))  # delivers the pages decide publishes
    if settings.detection:
        from streams.detect_stage import DetectStage

        detect = app.add_stage(DetectStage(runtime, settings, metrics))
        control.subscribe(stable=partial(runtime.post, detect.name))
    if settings.actuator != "none" or settings.retrain_trigger != "none":
        from streams.act_stage import ActStage

        app.add_stage(ActStage(runtime, settings, metrics))  # moves the registry's alias, starts retrains
    if settings.history:
        from streams.history_stage import HistoryStage

        # Last: it reads the topics other stages act on, and a topic's first reader dead-letters.
        app.add_stage(HistoryStage(runtime, settings, metrics))

    @app.task
    async def start_stages() -> None:
        await runtime.start()

    if settings.decide or settings.detection:

        @app.task
        async def follow_control() -> None:
            await control.follow()

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
        # Settled: assigned and recovered, and no rebalance started since for health_settle_seconds. A
        # member's heartbeat tells it of a rebalance pending (another worker joining a moment later).
        since = app.settled_since
        settled = since is not None and time.monotonic() - since >= settings.health_settle_seconds
        ready = settled and not app.rebalancing and cast(Any, app.tables).recovery.completed.is_set()
        problem = watch.problem
        body: dict[str, Any] = {
            "status": "unhealthy" if problem else "ok" if ready else "starting",
            "app_id": settings.app_id,
            "assigned_partitions": len(app.assignor.assigned_actives()),
            "partitions": app.assigned_partitions(),
            "models": judged_models(detect),
        }
        if problem:
            body["reason"] = problem
        return web.json(body, status=200 if ready and not problem else 503)

    app.ingest = ingest  # type: ignore[attr-defined]
    app.broker_watch = watch  # type: ignore[attr-defined]
    return app
