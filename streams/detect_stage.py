"""The detect stage: window summaries in, Detections out, on the stage runtime.

It merges the partial summaries every ingest batch publishes
(:mod:`streams.windows`), and when a window closes, judges it
(:mod:`streams.detect`) and publishes one Detection per detector on
``loopwatch.detections.v1``, keyed by model. A summary that cannot be parsed
is dead-lettered with a reason by the runtime (and counted in
``loopwatch_detector_errors_total{detector="detect-stage"}``); a valid one that
fails to merge or judge is logged and counted the same way, never raised.

Fast detectors run inline in the handler: they take milliseconds on a window
sample. Slow ones (embeddings, Detoxify) and the Evidently report run in a
child process (:mod:`streams.slow_detectors`), at most ``slow_detector_queue``
windows at a time; a window that finds the queue full is not given to them,
and ``loopwatch_windows_skipped_total`` counts it. Their judging is the
stage's background work (``Effects.background``): its :class:`SlowResult`
comes back to :meth:`DetectStage.receive` through the stage's queue, so the
stage's state is only ever touched by one unit of work at a time. Ingest never
waits for any of this: it runs on its own topics, and this stage only reads
the small summaries topic.

The handlers never send or write themselves. Detections go into the unit's
records; reference windows go into the ``references`` table
(:class:`~streams.runtime.ChangelogTable`, so pinned references survive
restarts and rebalances) as state writes. A unit reads its own writes before
the runtime applies them (:class:`~streams.detect_parts.ReferenceStore`): two
windows of one segment that close in one batch see each other, as they did
when the table was written at once.

Summaries are keyed by model, so every version of a model (the stable one
and its canaries) is merged and judged on one worker. A time window closes
when the event-time watermarks of every input partition heard on its
summaries partition passed its end plus ``window_grace_seconds``
(:mod:`streams.watermarks`; ``LOOPWATCH_WINDOW_CLOSE=timer`` keeps the older
wall-clock rule). Partials that come for a window after it closed, within
``window_revision_seconds``, are merged into it and the fast detectors judge
it again: its Detections carry the same bounds and ``revision`` n (slow
detectors do not run again). A canary's window waits (up to the idle time) for
its stable version's window of the same time while that is open, is compared with
it as it is now, and judged again (closed by ``reference``) when it changes after.
Each closing and each revision is one ``WindowClosed`` on
``loopwatch.windows.v1`` (judged, reference, waiting or skipped), saying what
closed the window and the input it waited for last.

Open windows are state too (:mod:`streams.window_table`): every merged partial
is a write to the ``windows`` table, deleted when its window leaves the
revision horizon, and a window whose slow detectors are still at work stays
there until their result is out; so are each partition's watermarks. At the
start of each unit the stage compares the summaries partitions it owns with
the ones it had: it rebuilds the open windows (and re-queues the slow work)
of partitions it got, once the tables are recovered, and drops, unjudged, the
windows of partitions another worker took. When partitions are revoked
(faust's ``on_partitions_revoked``) it drops their windows, waiting windows
and watermarks at once (the runtime hands over none of their batches still
queued), and refuses any write to their tables; while a rebalance is under
way it merges but closes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from core.settings import Settings
from detectors.files import read_frame
from retrain_trigger.registry import RegistryError, registry_from_settings
from retrain_trigger.stable import StableVersionMarked
from streams.detect import DetectorSpec, Judge, Judged, Reference, References, to_detection
from streams.detect_parts import (
    ReferenceStore,
    RegistryStable,
    SlowResult,
    load_specs,
    stable_slot,
    window_closed,
)
from streams.ingest import Accepted, Rejected
from streams.metrics import Metrics
from streams.report_names import report_file_name
from streams.runtime import Batch, ChangelogTable, Decoder, Effects, Runtime, Stage
from streams.slow_detectors import SlowDetectors
from streams.summaries import ProgressOnly, decode_summary
from streams.window_table import WindowTable, restore_windows
from streams.windows import ClosedWindow, Done, Partial, Windows, segment_key, window_spec

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.detect")


class DetectStage(Stage):
    """Merges window summaries, judges closed windows, publishes Detections."""

    name = "detect"
    #: Idle windows close and canary windows whose stable reference came are judged within this.
    tick_seconds = 0.1

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        super().__init__(runtime)
        self.settings = settings
        self.metrics = metrics
        self.inputs: dict[str, Decoder] = {settings.topics.summaries: self._decode}
        self.windows = Windows(window_spec(settings))
        specs = load_specs(settings.detectors_file)
        not_ready = self._detector_not_ready
        self.judge = Judge(
            specs, alpha=settings.drift_alpha, on_failure=self._detector_failed, on_not_ready=not_ready
        )
        self.slow = SlowDetectors(
            specs, alpha=settings.drift_alpha, log_level=settings.log_level, on_not_ready=not_ready
        )
        self.table = ChangelogTable(runtime.app, "references", settings.partitions)
        self.store = ReferenceStore(self.table)
        reference_frame = read_frame(settings.reference_file) if settings.reference_file else None
        self.references = References(
            self.store,
            pinned_windows=settings.reference_windows,
            min_events=settings.reference_min_events,
            stable_versions=settings.stable_versions,
            reference_frame=reference_frame,
        )
        self.reports = settings.data_dir / "reports"
        self.slow_pending = 0
        self.partition_of: dict[str, int] = {}
        self.waiting: list[tuple[ClosedWindow, float]] = []
        self.max_wait = settings.window_idle_seconds
        self.app: LoopwatchApp = runtime.app
        self.window_table = WindowTable(runtime.app, settings.partitions)
        # Summaries partitions whose open windows are in memory (rebuilt from the table); changed in place,
        # as it is also the window table's guard against writes for partitions revoked.
        self.assigned: set[int] = set()
        # Revoked and not assigned again: their batches still queued are not merged.
        self.revoked: set[int] = set()
        runtime.app.on_partitions_revoked.connect(
            cast(Any, self._on_revoked)
        )  # faust's signature types are loose
        # With a registry, its champion is each model's stable version (the canaries' reference), as
        # in the decide stage: read in a thread on ticks, and a model's windows wait for the first read.
        self.registry = registry_from_settings(settings)
        self.models: set[str] = set()
        self.stable_read: set[str] = set()
        self._stable_asked: set[str] = set()
        self._reading_stable = False
        self._next_stable_read = 0.0

    def _decode(self, message: Any, now: float) -> Accepted[Any] | Rejected:
        outcome = decode_summary(message, now)
        if isinstance(outcome, Rejected):
            self.metrics.detector_errors.labels("detect-stage").inc()
            log.error(
                "summary at %s/%s/%s dead-lettered: %s",
                message.topic,
                message.partition,
                message.offset,
                outcome.error,
            )
        return outcome

    def _unit(self, now: float, *, settled: bool = False) -> Effects:
        """Empty effects for a new unit of work (the previous unit's writes are in the table now)."""
        self.store.written.clear()
        effects = self.effects()
        self._follow_assignment(effects, now, settled=settled)
        return effects

    async def handle(self, batch: Batch, now: float) -> Effects:
        """Merge a batch of partial summaries; judge the windows they complete."""
        # The runtime drops messages of a revoked assignment: one of a partition revoked or new here came
        # under the new one (recovered, though faust may still say rebalancing): restore it before merging.
        settled = not {m.partition for m, _ in batch.accepted} <= self.assigned - self.revoked
        effects = self._unit(now, settled=settled)
        late, duplicates = self.windows.late_events, self.windows.duplicate_events
        # While a rebalance is under way nothing closes: the partition may be on its way to another worker.
        closing = not self.app.rebalancing
        closed: list[ClosedWindow] = []
        for message, accepted in batch.accepted:
            if message.partition in self.revoked or self.window_table.holds(message):
                continue  # another worker's now; or replayed after a restart, merged already
            try:
                if isinstance(accepted.event, ProgressOnly):
                    self.windows.progress(message.partition, accepted.event.progress, now)
                    if closing:
                        closed.extend(self.windows.tick(now))
                    continue
                partial: Partial = accepted.event
                self.partition_of[segment_key(partial.segment)] = message.partition
                self.models.add(partial.segment.get("model") or "")
                merges = self.windows.merges(partial)
                entry = self.window_table.entry(message, accepted.text) if merges else None
                closed.extend(self.windows.add(partial, now, entry, message.partition, close=closing))
                # After the merge, which took out the events counted already (input read twice).
                self.metrics.window_events.labels(partial.kind).inc(partial.sample.seen)
            except Exception:
                # A summary this stage cannot merge must not crash the worker (and,
                # re-read after the restart, crash it again): it is logged and counted.
                self._failed(f"summary at {message.topic}/{message.partition}/{message.offset}")
        self.metrics.window_late_events.inc(self.windows.late_events - late)
        self.metrics.window_duplicate_events.inc(self.windows.duplicate_events - duplicates)
        revised = self.windows.revisions(now) if closing else []
        self._write_marks(effects)
        for window in closed + revised:
            self._judge_or_count(effects, window, now)
        revised += self._judge_beside_again(effects, closed + revised, now)
        # After judging: a closed window's entry in the table says what its closing came to.
        self.window_table.flush(effects, closed + revised, self.windows, self.partition_of)
        return effects

    def _write_marks(self, effects: Effects) -> None:
        """One table entry per summaries partition whose watermarks moved in this unit."""
        marks = self.windows.marks
        for partition in sorted(marks.dirty):
            self.window_table.marks(effects, partition, marks.of(partition))
        marks.dirty.clear()

    async def tick(self, now: float) -> Effects:
        """Close windows of segments that went quiet; judge canary windows whose stable reference came."""
        effects = self._unit(now)
        self._refresh_stable(effects, now)
        if self.app.rebalancing:
            return effects  # windows of partitions on their way to another worker are not ours to close
        ready = [w for w, since in self.waiting if not self._awaits_stable(w) or now - since > self.max_wait]
        self.waiting = [(w, since) for w, since in self.waiting if all(w is not r for r in ready)]
        for window in ready:
            self._judge_or_count(effects, window, now, waited=True)
        try:
            closed = self.windows.tick(now) + self.windows.revisions(now)
            self.window_table.expire(effects, self.windows.expire(now), self.partition_of)
        except Exception:
            self._failed("closing windows")
            closed = []
        for window in closed:
            self._judge_or_count(effects, window, now)
        closed += self._judge_beside_again(effects, closed, now)
        self.window_table.flush(effects, closed, self.windows, self.partition_of)
        return effects

    async def receive(self, message: Any, now: float) -> Effects:
        """A stable mark (control topic), the registry's stable versions, or slow detectors' result."""
        effects = self._unit(now)
        if isinstance(message, StableVersionMarked):
            self._mark_stable(effects, message.model, message.version)
        elif isinstance(message, RegistryStable):
            self._registry_stable(effects, message)
        elif isinstance(message, SlowResult):
            self._slow_done(effects, message)
        else:
            raise TypeError(f"the detect stage takes no {type(message).__name__}")
        return effects

    async def stop(self) -> None:
        """Stop the slow detectors' process (the runtime has cancelled their work in flight)."""
        self.slow.stop()

    def _mark_stable(self, effects: Effects, model: str, version: str) -> None:
        """The version is the reference of the others from now on.

        Its latest windows seen here become the stable references at once, so
        canary windows waiting for one are judged at the next tick.
        """
        for key, value, segment in self.references.mark_stable(model, version):
            self._put(effects, key, value, self.partition_of.get(segment, 0))

    # -- the registry's stable version -------------------------------------------------

    def _awaits_stable(self, window: ClosedWindow) -> bool:
        """Wait for the registry's first answer on the model, then for a window of its stable version,
        and for the one of the same time while it is open (else judged again when it closes)."""
        if self.registry is not None and (window.segment.get("model") or "") not in self.stable_read:
            return True  # its champion may be the reference: judging now would pin the canary's own traffic
        beside = stable_slot(window, self.references.stable_versions)
        open_beside = self.references.reference_frame is None and beside in self.windows.open
        return open_beside or self.references.awaits_stable(window)

    def _refresh_stable(self, effects: Effects, now: float) -> None:
        """Read the models' champion in a thread: a new model at once, the others once per cache period."""
        if self.registry is None or self._reading_stable:
            return
        if not self.models - self._stable_asked and now < self._next_stable_read:
            return
        self._reading_stable = True
        self._stable_asked |= self.models
        self._next_stable_read = now + max(self.settings.registry_cache_seconds, 1.0)
        effects.background.append(asyncio.to_thread(self._read_stable, sorted(self.models)))

    def _read_stable(self, models: list[str]) -> RegistryStable:
        assert self.registry is not None
        found: dict[str, str | None] = {}
        for model in models:
            try:
                found[model] = self.registry.stable_version(model)
            except RegistryError as exc:
                # Its windows wait (at most window_idle_seconds), then are judged as without a registry.
                log.warning("cannot read the stable version of %s from the registry: %s", model, exc)
        return RegistryStable(found)

    def _registry_stable(self, effects: Effects, read: RegistryStable) -> None:
        """A champion that moved is the stable version from now on (unset: marks and settings stay)."""
        self._reading_stable = False
        self.stable_read.update(read.versions)
        for model, version in read.versions.items():
            if version is not None and self.references.stable_versions.get(model) != version:
                log.warning("stable version of %s from the registry: %s", model, version)
                self._mark_stable(effects, model, version)

    def _slow_done(self, effects: Effects, result: SlowResult) -> None:
        self.slow_pending -= 1
        owned = self.window_table.owned
        partition = self.partition_of.get(segment_key(result.window.segment))
        if owned is not None and partition is not None and partition not in owned:
            # Revoked while the child worked: the new owner re-queues this window from the table.
            log.info("slow detections of a window of summaries partition %d dropped: not ours now", partition)
            return
        if result.pending is not None:  # a state write: it reaches the changelog after the Detections
            self.window_table.done(effects, result.pending)
        if result.crashed:
            self.metrics.detector_errors.labels("slow-detectors").inc()
            return
        for detector_id in result.failed:
            self._detector_failed(detector_id)
        for item in result.judged:
            self._publish(effects, to_detection(item, result.window, result.reference))

    def _put(self, effects: Effects, key: str, value: bytes, partition: int) -> None:
        if self.window_table.owned is not None and partition not in self.window_table.owned:
            # Revoked: its new owner pins and moves this partition's references now.
            log.warning(
                "dropped a write to the references table for summaries partition %d, not ours", partition
            )
            return
        self.store.written[key] = value
        effects.put(self.table, key.encode(), value, partition)

    def _judge_or_count(
        self, effects: Effects, window: ClosedWindow, now: float, *, waited: bool = False
    ) -> None:
        """Judge a window; a failure loses that window's detections, never the worker (nor its timer)."""
        try:
            self._judge(effects, window, now, waited=waited)
        except Exception:
            self._failed(f"the {window.kind} window of {segment_key(window.segment)} from {window.start}")

    def _failed(self, what: str) -> None:
        self.metrics.detector_errors.labels("detect-stage").inc()
        log.exception("detect stage failed on %s; carrying on", what)

    def _judge(self, effects: Effects, window: ClosedWindow, now: float, *, waited: bool) -> None:
        if window.revision:
            self._judge_again(effects, window)
            return
        if not waited and self._awaits_stable(window):
            # A canary's window closed before any window of its stable version: wait for one
            # (at most max_wait) rather than pin the canary's own traffic as its reference.
            self.waiting.append((window, now))
            self._window_closed(effects, window, "waiting")
            return
        self.metrics.window_rows.labels(window.kind).inc(len(window.rows))
        beside = self.references.stable_beside(window, self.windows.done)
        reference = beside or self.references.for_window(window)
        partition = self.partition_of.get(segment_key(window.segment), 0)
        for key, value in self.references.observe(window):
            self._put(effects, key, value, partition)
        if reference is None:
            log.info("window %s of %s pinned as reference", window.kind, segment_key(window.segment))
            self._window_closed(effects, window, "reference")
            return
        judged = self.judge.run(window, reference, self.judge.specs_for(window.kind, slow=False))
        report = self._maybe_report(window, reference, judged)
        for item in judged:
            self._publish(effects, to_detection(item, window, reference, report))
        slow = self.judge.specs_for(window.kind, slow=True)
        if slow and self.slow_pending >= self.settings.slow_detector_queue:
            self.metrics.windows_skipped.labels(window.kind).inc()
            self._window_closed(effects, window, "skipped", reference)
            self._remember_reference(window, reference)
            return
        self._window_closed(effects, window, "judged", reference)
        self._remember_reference(window, reference)
        if slow:
            pending = self.window_table.pending(effects, window, partition)
            self._judge_slowly_later(effects, window, reference, slow, pending)

    def _judge_again(self, effects: Effects, window: ClosedWindow) -> None:
        """A window revised by late partials: the fast detectors only, its Detections with its revision.

        Only a window judged when it first closed is judged again (one pinned as a
        reference would be compared with itself); its references are not moved again.
        """
        first = self._done(window)
        if first is not None and first.outcome not in ("judged", "skipped"):
            self._window_closed(effects, window, first.outcome)
            return
        # The stable window of the same time as it is now (late events may have revised it too), else
        # the first verdict's reference: the stable version's newest window may be too small to judge against.
        reference = self.references.stable_beside(window, self.windows.done)
        reference = reference or (first.reference if first is not None else None)
        reference = reference or self.references.for_window(window)
        if reference is None:
            self._window_closed(effects, window, "reference")
            return
        for item in self.judge.run(window, reference, self.judge.specs_for(window.kind, slow=False)):
            self._publish(effects, to_detection(item, window, reference))
        self._window_closed(effects, window, "judged", reference)
        self._remember_reference(window, reference)

    def _judge_beside_again(
        self, effects: Effects, closed: list[ClosedWindow], now: float
    ) -> list[ClosedWindow]:
        """Other versions' windows judged against a stable window before this unit closed or revised it.

        Each is judged again as its next revision (:meth:`Windows.again`, closed by ``reference``), against
        the stable window as it is now, whichever of the two late deliveries came first (one
        judged before the stable window had any event was compared with its latest window).
        """
        try:
            stale = [
                slot for window in closed for slot in self.references.judged_before(window, self.windows.done)
            ]
        except Exception:
            self._failed("finding the windows judged against a revised stable window")
            return []
        again = [self.windows.again(slot, "reference") for slot in dict.fromkeys(stale)]
        for window in again:
            log.info(
                "%s window of %s from %s judged again: its stable window closed or was revised since",
                window.kind,
                segment_key(window.segment),
                window.start,
            )
            self._judge_or_count(effects, window, now)
        return again

    def _remember_reference(self, window: ClosedWindow, reference: Reference) -> None:
        done = self._done(window)
        if done is not None:
            done.reference = reference

    def _done(self, window: ClosedWindow) -> Done | None:
        """The closed window kept for revisions (None: a count window, or not kept)."""
        if window.window_id is None:
            return None
        return self.windows.done.get((segment_key(window.segment), window.kind, window.window_id))

    def _window_closed(
        self, effects: Effects, window: ClosedWindow, outcome: str, reference: Reference | None = None
    ) -> None:
        """One ``WindowClosed`` for this closing (or revision) of the window, keyed by model."""
        done = self._done(window)
        if done is not None and window.revision == 0:
            done.outcome = outcome
        event = window_closed(window, outcome, reference)
        key = (window.segment.get("model") or "").encode()
        effects.records.add(self.settings.topics.windows, key, event.model_dump_json().encode())

    def _judge_slowly_later(
        self,
        effects: Effects,
        window: ClosedWindow,
        reference: Reference,
        specs: list[DetectorSpec],
        pending: str,
    ) -> None:
        self.slow_pending += 1
        effects.background.append(self._judge_slowly(window, reference, specs, pending))

    async def _judge_slowly(
        self,
        window: ClosedWindow,
        reference: Reference,
        specs: list[DetectorSpec],
        pending: str | None = None,
    ) -> SlowResult:
        """The slow detectors' findings (run by the runtime in the background; the result comes back)."""
        try:
            judged, failed = await self.slow.judge(window, reference, specs)
        except asyncio.CancelledError:
            log.warning("stopping: the slow detections of the %s window are not published", window.kind)
            raise
        except Exception:
            # Returned, not raised: the stage must hear of it to free the window's queue slot.
            log.exception("slow detectors failed on the %s window", window.kind)
            return SlowResult(window, reference, [], [], crashed=True, pending=pending)
        return SlowResult(window, reference, judged, failed, pending=pending)

    # -- open windows across restarts and rebalances -----------------------------------

    def _follow_assignment(self, effects: Effects, now: float, *, settled: bool = False) -> None:
        """Rebuild the open windows of summaries partitions this worker just got; drop the ones it lost."""
        app: Any = self.app
        if (app.rebalancing and not settled) or not app.tables.recovery.completed.is_set():
            return  # the table is complete only once recovered
        topic = self.settings.topics.summaries
        assigned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
        gone, new = self.assigned - assigned, assigned - self.assigned
        self.assigned.clear()
        self.assigned.update(assigned)
        self.revoked -= assigned
        self.window_table.owned = self.assigned
        if gone:
            self._forget(gone)
        if new:
            self._recover(effects, new, now)

    async def _on_revoked(self, sender: Any, revoked: set[Any], *, signal: Any, **kwargs: Any) -> None:
        """faust revoked partitions: stop at once closing, pinning or writing for those of the summaries.

        Called after faust waited for the units queued (which closed nothing: it
        was rebalancing); batches of them still queued are not merged.
        """
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.topics.summaries}
        if not partitions:
            return
        self.revoked |= partitions
        self.assigned -= partitions
        self._forget(partitions)
        log.info("summaries partitions %s revoked: the new owner restores their windows", sorted(partitions))

    def _forget(self, partitions: set[int]) -> None:
        """Windows of partitions another worker merges now: dropped unjudged (that worker restores them)."""
        for slot in [s for s in self.windows.open if self.partition_of.get(s[0]) in partitions]:
            self.window_table.forget(self.windows.entries.get(slot, []))
            self.windows.forget(slot)
        self.window_table.forget(self.windows.forget_partitions(partitions))
        self.waiting = [
            (w, since)
            for w, since in self.waiting
            if self.partition_of.get(segment_key(w.segment)) not in partitions
        ]

    def _recover(self, effects: Effects, partitions: set[int], now: float) -> None:
        """Open windows and pending slow detections of ``partitions``, from the windows table."""
        restored = self.window_table.restore(partitions)
        for key, partial in restored.partials:
            self.partition_of[segment_key(partial.segment)] = self.window_table.partition[key]
            self.models.add(partial.segment.get("model") or "")
        for partition, segment, *_ in restored.done:
            self.partition_of[segment_key(segment)] = partition
        for key in restore_windows(self.windows, restored, now):
            self.window_table.done(effects, key)  # a partial of a window closed already
        for key, window in restored.pending:
            self.partition_of.setdefault(segment_key(window.segment), self.window_table.partition[key])
            reference = self.references.for_window(window)
            specs = self.judge.specs_for(window.kind, slow=True)
            if reference is None or not specs:
                self.window_table.done(effects, key)
                continue
            self._judge_slowly_later(effects, window, reference, specs, key)
        if restored.partials or restored.pending:
            log.warning(
                "restored %d open windows (%d partials) and %d windows awaiting slow detectors",
                len(self.windows.open),
                len(restored.partials),
                len(restored.pending),
            )

    def _detector_failed(self, detector_id: str) -> None:
        self.metrics.detector_errors.labels(detector_id).inc()

    def _detector_not_ready(self, detector_id: str) -> None:
        self.metrics.detector_not_ready.labels(detector_id).inc()

    def _maybe_report(self, window: ClosedWindow, reference: Reference, judged: list[Judged]) -> str | None:
        """Render an Evidently report (in the slow detectors' process) for a window whose columns drifted.

        Handed to the child and not awaited: the report touches no stage state and
        sends nothing, and the Detection links its path before it exists.
        """
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

    def _publish(self, effects: Effects, detection: Any) -> None:
        self.metrics.detections.labels(detection.detector_id, detection.verdict).inc()
        # Keyed by model: every decision about one model is made by one worker.
        effects.records.add(
            self.settings.topics.detections,
            detection.segment.model.encode(),
            detection.model_dump_json().encode(),
        )
