"""The history stage: what loopwatch saw and did, from its own topics into the history Delta tables.

It reads the closed windows (one ``windows`` row per segment, kind and
window, judged or not: a later revision replaces it), the detections (one
``detections`` row each, every revision; they also give their window's row its
first detection time, and its counts until the WindowClosed comes), the
alerts (with the time each was published), the action topics (retrain, rollback and
promotion requests and their result events) and the dead letters, each through
the runtime's decoders (a record that is not the event its topic carries is
dead-lettered with its reason). The stage shares those topics with the stages
that act on them (decide reads the detections); the runtime acks a shared
message once every reader has.

Off the hot path: a unit's rows are merged into Delta by its blocking call
(``Effects.calls``, in a thread), which the runtime runs *before* it acks the
unit's offsets, so nothing acked is unwritten; batches that arrive while a
write runs are merged into the next unit by the runtime, so a busy history
writes fewer, larger commits. The merge on each table's unique key (and the
dead-letter offsets recorded in each commit) makes a replay after a crash add
nothing: see :mod:`curation.history_store`. A merge that lost a race with
another worker's commit to the same table is merged again on the new
snapshot, as often as it takes (counted in
``loopwatch_delta_write_conflicts_total{store="history"}``).

Every ``history_compact_seconds`` the worker owning partition 0 of the
dead-letter topic expires, compacts and vacuums the tables (a tick's blocking
call; a failure is logged and retried at the next interval).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from faust.types import TP
from pydantic import BaseModel

from core.settings import Settings
from curation.history import (
    Letter,
    WindowInput,
    action_row,
    alert_row,
    config_id,
    detection_row,
    window_closed_row,
    window_row,
)
from curation.history_store import HistoryBatch, HistoryStore
from curation.store import ConflictLog, with_retries
from detectors.registry import all_detectors
from detectors.thresholds import threshold_of
from schemas.events import Alert, CloudEvent, DeadLetter, Detection, WindowClosed
from streams.detect import DetectorSpec
from streams.detect_stage import load_specs
from streams.ingest import Accepted, Rejected, decode
from streams.metrics import Metrics
from streams.runtime import Batch, Decoder, Effects, Runtime, Stage
from streams.windows import WindowKind

log = logging.getLogger("loopwatch.history")


class WindowInputs:
    """Which input (inference or feedback) a Detection's window counted, from the detector specs.

    A Detection does not say it; its detector id and full config do: the detect
    stage runs each spec on one kind of window, and a Detection's config is that
    spec's config validated by the detector (defaults filled in). So (detector
    id, config id) names the spec; a detection no spec here produced (another
    worker's detectors file) falls back to its detector id when every spec of
    that id runs on one kind, else it is unknown.
    """

    def __init__(self, specs: list[DetectorSpec]) -> None:
        detectors = all_detectors()
        self.by_config: dict[tuple[str, str], WindowKind] = {}
        by_id: dict[str, set[WindowKind]] = {}
        for spec in specs:
            by_id.setdefault(spec.detector_id, set()).add(spec.kind)
            cls = detectors.get(spec.detector_id)
            try:
                config = cls.Config.model_validate(spec.config).model_dump(mode="json") if cls else None
            except ValueError:  # pydantic's ValidationError: the detect stage reports that spec
                config = None
            if config is not None:
                self.by_config[(spec.detector_id, config_id(config))] = spec.kind
        self.by_id = {detector_id: kinds.pop() for detector_id, kinds in by_id.items() if len(kinds) == 1}

    def __call__(self, detection: Detection) -> WindowInput:
        """The input ``detection``'s ``window_events`` counted, or None when no spec tells."""
        kind = self.by_config.get((detection.detector_id, config_id(detection.config)))
        return kind or self.by_id.get(detection.detector_id)


class HistoryStage(Stage):
    """Each batch of windows, detections, alerts, actions or dead letters as history rows, written first."""

    name = "history"
    tick_seconds = 30.0

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        super().__init__(runtime)
        self.metrics = metrics
        self.max_bytes = settings.max_record_bytes  # what loopwatch itself writes
        topics = settings.topics
        self.deadletter_topic = topics.deadletter
        self.alerts_topic = topics.alerts
        self.windows_topic = topics.windows
        self.action_topics = {topics.retrain_requests, topics.rollback_requests, topics.promotion_requests}
        self.inputs: dict[str, Decoder] = {
            topics.windows: self._decoder(WindowClosed),
            topics.detections: self._decoder(Detection),
            topics.alerts: self._decoder(Alert),
            topics.deadletter: self._decoder(DeadLetter),
            **{topic: self._decoder(CloudEvent) for topic in sorted(self.action_topics)},
        }
        self.store = HistoryStore(settings.history_uri(), retention_days=settings.history_retention_days)
        self.counted = WindowInputs(load_specs(settings.detectors_file))
        self.compact_seconds = settings.history_compact_seconds
        self.maintained = time.monotonic()  # the first maintenance comes one interval after start
        self.conflicts = ConflictLog("history write", metrics.delta_conflicts.labels("history").inc)

    def _decoder(self, model: type[BaseModel]) -> Decoder:
        def decoder(message: Any, now: float) -> Accepted[Any] | Rejected:
            return decode(message.value, model, max_bytes=self.max_bytes)

        return decoder

    async def handle(self, batch: Batch, now: float) -> Effects:
        """The batch's history rows; their merge is a blocking call the runtime makes before the ack."""
        effects = self.effects()
        rows = self.rows(batch)
        if len(rows):
            effects.calls.append(partial(self._write, rows))
        return effects

    def rows(self, batch: Batch) -> HistoryBatch:
        """The history rows of a batch of one topic's decoded events."""
        out = HistoryBatch()
        events = [(message, accepted.event) for message, accepted in batch.accepted]
        if batch.topic == self.deadletter_topic:
            out.letters[batch.topic] = [Letter(m.partition, m.offset, event) for m, event in events]
        elif batch.topic in self.action_topics:
            out.rows["actions"] = [action_row(event, batch.topic) for _, event in events]
        elif batch.topic == self.alerts_topic:
            out.rows["alerts"] = [alert_row(event, _published(message)) for message, event in events]
        elif batch.topic == self.windows_topic:
            out.rows["windows"] = [window_closed_row(event) for _, event in events]
        else:
            out.rows["windows"] = [window_row(event, self.counted(event)) for _, event in events]
            out.rows["detections"] = [
                detection_row(event, threshold_of(event.detector_id, event.measurements))
                for _, event in events
            ]
        return out

    def _write(self, rows: HistoryBatch) -> None:
        """Merge the rows into Delta (in the runtime's thread), retrying conflicts with other workers."""
        write = partial(self.store.write, rows, conflicts=self.conflicts)
        inserted = with_retries(write, "history write", conflicts=self.conflicts)
        for table, count in inserted.items():
            self.metrics.history_rows.labels(table).inc(count)

    async def tick(self, now: float) -> Effects:
        """Expire, compact and vacuum the tables once an interval has passed (on one worker)."""
        effects = self.effects()
        if time.monotonic() - self.maintained < self.compact_seconds or not self._maintainer():
            return effects
        self.maintained = time.monotonic()
        effects.calls.append(self._maintain)
        return effects

    def _maintainer(self) -> bool:
        """Whether this worker owns partition 0 of the dead-letter topic (one worker maintains the tables)."""
        app = self.runtime.app
        return TP(self.deadletter_topic, 0) in cast(Any, app).assignor.assigned_actives()

    def _maintain(self) -> None:
        try:
            done = self.store.maintain()
        except Exception:
            log.warning(
                "history maintenance failed; it is tried again in %.0f s", self.compact_seconds, exc_info=True
            )
            return
        log.info(
            "history maintained: deleted %s, compacted %s, vacuumed %s",
            done.deleted,
            done.compacted,
            done.vacuumed,
        )


def _published(message: Any) -> datetime | None:
    """When a record was written (its Kafka timestamp, seconds), None when the broker did not say."""
    stamp = getattr(message, "timestamp", None)
    return datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) and stamp > 0 else None
