"""The detect stage's Kafka edge: window summaries in, Detections out.

It merges the partial summaries every ingest batch publishes
(:mod:`streams.windows`), and when a window closes, judges it
(:mod:`streams.detect`) and publishes one Detection per detector on
``loopwatch.detections.v1``, keyed by segment.

Fast detectors run inline: they take milliseconds on a window sample.
Slow ones (embeddings, Detoxify) and the Evidently report run in a child
process (:mod:`streams.slow_detectors`), at most ``slow_detector_queue``
windows at a time; a window that finds the queue full is not given to them, and
``loopwatch_windows_skipped_total`` counts it. Ingest never waits for any
of this: it runs on its own topics, and the detect stage only reads the
small summaries topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from core.config_files import load_yaml_list
from core.settings import Settings
from detectors.files import read_frame
from retrain_trigger.stable import StableVersionMarked
from streams.detect import DEFAULT_SPECS, DetectorSpec, Judge, Judged, Reference, References, to_detection
from streams.metrics import Metrics
from streams.slow_detectors import SlowDetectors
from streams.windows import ClosedWindow, Partial, Windows, WindowSpec, segment_key

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.detect")


def window_spec(settings: Settings) -> WindowSpec:
    """The window shape from settings: by count when ``window_events`` is set, else by time."""
    return WindowSpec(
        seconds=None if settings.window_events else settings.window_seconds,
        events=settings.window_events,
        sample_size=settings.window_sample_size,
        grace_seconds=settings.window_grace_seconds,
        idle_seconds=settings.window_idle_seconds,
    )


def load_specs(path: Path | None) -> list[DetectorSpec]:
    """Detectors to run, from a YAML list of ``{detector_id, kind, config, slow}`` (or the defaults)."""
    return list(DEFAULT_SPECS) if path is None else load_yaml_list(path, DetectorSpec, "detectors")


def report_file_name(segment: str, start: datetime) -> str:
    """A safe file name for a segment's report: no separators or dots, bounded, unique by a hash.

    >>> report_file_name("support|v2|shop|/chat/../admin|acme", datetime(2026, 3, 1, 12))
    'support_v2_shop_chat_admin_acme-9f454eb6093e-20260301T120000.html'
    """
    # Segment labels come from producers: a route like /chat must not become a folder.
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", segment).strip("_")[:80]
    digest = hashlib.sha256(segment.encode()).hexdigest()[:12]
    return f"{readable}-{digest}-{start:%Y%m%dT%H%M%S}.html"


class DetectStage:
    """Merges window summaries, judges closed windows, publishes Detections."""

    def __init__(self, app: LoopwatchApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.windows = Windows(window_spec(settings))
        specs = load_specs(settings.detectors_file)
        not_ready = self._detector_not_ready
        self.judge = Judge(
            specs, alpha=settings.drift_alpha, on_failure=self._detector_failed, on_not_ready=not_ready
        )
        self.slow = SlowDetectors(
            specs, alpha=settings.drift_alpha, log_level=settings.log_level, on_not_ready=not_ready
        )
        # A changelog-backed table, so pinned references survive restarts and rebalances.
        self.table = app.Table("references", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        reference_frame = read_frame(settings.reference_file) if settings.reference_file else None
        self.references = References(
            _TableView(self.table),
            pinned_windows=settings.reference_windows,
            stable_versions=settings.stable_versions,
            reference_frame=reference_frame,
        )
        self.reports = settings.data_dir / "reports"
        self.slow_pending = 0
        self.partition_of: dict[str, int] = {}
        self._outbox = self.app.outbox()
        self._tasks: set[asyncio.Future[None]] = set()
        self.waiting: list[tuple[ClosedWindow, float]] = []
        self.max_wait = settings.window_idle_seconds

    async def on_summaries(self, messages: list[Any]) -> None:
        """Merge a batch of partial summaries; judge and publish the windows they complete."""
        now = time.time()
        late = self.windows.late_events
        closed: list[ClosedWindow] = []
        for message in messages:
            try:
                partial = Partial.from_json(json.loads(message.value))
                self.partition_of[segment_key(partial.segment)] = message.partition
                self.metrics.window_events.labels(partial.kind).inc(partial.sample.seen)
                closed.extend(self.windows.add(partial, now))
            except Exception:
                # A summary this stage cannot merge must not crash the worker (and,
                # re-read after the restart, crash it again): it is logged and counted.
                self._failed(f"summary at {message.topic}/{message.partition}/{message.offset}")
        self.metrics.window_late_events.inc(self.windows.late_events - late)
        await self._close(closed)

    async def mark_stable(self, mark: StableVersionMarked) -> None:
        """A stable mark from the control topic: the version is the reference of the others from now on.

        Its latest windows seen here become the stable references at once, so
        canary windows waiting for one are judged at the next tick. The records
        go out through an outbox of their own: the stage's outbox may be mid-send.
        """
        outbox = self.app.outbox()
        changelog = cast(str, self.table.changelog_topic.get_topic_name())
        for key, value, segment in self.references.mark_stable(mark.model, mark.version):
            self.table.data[key.encode()] = value
            outbox.add(changelog, key.encode(), value, partition=self.partition_of.get(segment, 0))
        await outbox.send_and_wait(self.app.kafka_producer())

    async def tick(self) -> None:
        """Close windows of segments that went quiet; judge canary windows whose stable reference came."""
        now = time.time()
        ready = [
            w
            for w, since in self.waiting
            if not self.references.awaits_stable(w) or now - since > self.max_wait
        ]
        self.waiting = [(w, since) for w, since in self.waiting if all(w is not r for r in ready)]
        for window in ready:
            self._judge_or_count(window, waited=True)
        try:
            closed = self.windows.tick(now)
        except Exception:
            self._failed("closing windows")
            closed = []
        await self._close(closed)

    async def _close(self, closed: list[ClosedWindow]) -> None:
        for window in closed:
            self._judge_or_count(window)
        await self._send()

    def _judge_or_count(self, window: ClosedWindow, *, waited: bool = False) -> None:
        """Judge a window; a failure loses that window's detections, never the worker (nor its timer)."""
        try:
            self._judge(window, waited=waited)
        except Exception:
            self._failed(f"a {window.kind} window of {segment_key(window.segment)} from {window.start}")

    def _failed(self, what: str) -> None:
        self.metrics.detector_errors.labels("detect-stage").inc()
        log.exception("detect stage failed on %s; carrying on", what)

    def _judge(self, window: ClosedWindow, *, waited: bool = False) -> None:
        if not waited and self.references.awaits_stable(window):
            # A canary's window closed before any window of its stable version: wait for one
            # (at most max_wait) rather than pin the canary's own traffic as its reference.
            self.waiting.append((window, time.time()))
            return
        self.metrics.window_rows.labels(window.kind).inc(len(window.rows))
        reference = self.references.for_window(window)
        partition = self.partition_of.get(segment_key(window.segment), 0)
        changelog = cast(str, self.table.changelog_topic.get_topic_name())
        for key, value in self.references.observe(window):
            self.table.data[key.encode()] = value
            self._outbox.add(changelog, key.encode(), value, partition=partition)
        if reference is None:
            log.info("window %s of %s pinned as reference", window.kind, segment_key(window.segment))
            return
        judged = self.judge.run(window, reference, self.judge.specs_for(window.kind, slow=False))
        report = self._maybe_report(window, reference, judged)
        for item in judged:
            self._publish(to_detection(item, window, reference, report))
        slow = self.judge.specs_for(window.kind, slow=True)
        if not slow:
            return
        if self.slow_pending >= self.settings.slow_detector_queue:
            self.metrics.windows_skipped.labels(window.kind).inc()
            return
        self.slow_pending += 1
        task = asyncio.ensure_future(self._run_slow(window, reference))
        self._tasks.add(task)  # a task nobody references can be garbage-collected mid-run
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop the slow detectors' process."""
        self.slow.stop()

    def _detector_failed(self, detector_id: str) -> None:
        self.metrics.detector_errors.labels(detector_id).inc()

    def _detector_not_ready(self, detector_id: str) -> None:
        self.metrics.detector_not_ready.labels(detector_id).inc()

    async def _run_slow(self, window: ClosedWindow, reference: Reference) -> None:
        try:
            specs = self.judge.specs_for(window.kind, slow=True)
            judged, failed = await self.slow.judge(window, reference, specs)
            if self.app.should_stop:
                log.warning("stopping: the slow detections of a %s window are not published", window.kind)
                return
            for detector_id in failed:
                self._detector_failed(detector_id)
            for item in judged:
                self._publish(to_detection(item, window, reference))
            await self._send()
        except Exception:
            self.metrics.detector_errors.labels("slow-detectors").inc()
            log.exception("slow detectors failed on a %s window", window.kind)
        finally:
            self.slow_pending -= 1

    def _maybe_report(self, window: ClosedWindow, reference: Reference, judged: list[Judged]) -> str | None:
        """Render an Evidently report (in the slow detectors' process) for a window whose columns drifted."""
        columns = sorted(
            {
                str(item.config["column"])
                for item in judged
                if item.finding.verdict == "drift" and "column" in item.config
            }
        )
        if not columns:
            return None
        path = self.reports / report_file_name(segment_key(window.segment), window.start)

        def failed(error: BaseException) -> None:
            self.metrics.detector_errors.labels("drift-report").inc()
            log.error("drift report %s failed: %r", path, error)

        self.slow.report(reference, window, columns, path, failed)
        return str(path)

    def _publish(self, detection: Any) -> None:
        self.metrics.detections.labels(detection.detector_id, detection.verdict).inc()
        # Keyed by model: every decision about one model is made by one worker.
        self._outbox.add(
            self.settings.topics.detections,
            detection.segment.model.encode(),
            detection.model_dump_json().encode(),
        )

    async def _send(self) -> None:
        # Waits for the broker: a detection it did not take is sent again, not only counted.
        if len(self._outbox):
            await self._outbox.send_and_wait(self.app.kafka_producer())


class _TableView:
    """A faust table's data (bytes keys) read with str keys."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str, /) -> bytes | None:
        """The stored value under ``key``, or None."""
        return cast(bytes | None, self.table.data.get(key.encode()))
