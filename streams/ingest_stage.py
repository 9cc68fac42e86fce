"""The ingest stage: inference logs and feedback in; enriched logs, joined feedback and window summaries out.

Its three topics (inference, feedback and the repartition topic) are one
stage, so their batches never interleave. The runtime decodes each message with
this stage's decoders (schema, size, timestamp) and dead-letters what they
reject; :meth:`IngestStage.handle` then only calls the pure functions in
:mod:`streams.ingest` and :mod:`streams.join` and says what to write.

Join state lives in the ``joins`` table (:mod:`streams.join_store`): the
handler reads it, and the runtime writes it (locally at once, then to the
changelog once the batch's outputs are acknowledged). Within one batch the
handler reads its own writes from ``_written``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import random
import time
from itertools import islice
from typing import TYPE_CHECKING, Any, cast

from faust.types import TP
from pydantic_core import to_json

from core.settings import Settings
from detectors.frame import descriptor_values, feedback_row, log_row
from schemas.events import DeadLetterReason, Feedback, InferenceLog, JoinedFeedback
from streams import join
from streams.ingest import Accepted, ReadAt, Rejected, decode, enriched_json, out_of_range
from streams.join_store import SWEEP_CHUNK, JoinStore, claim_directory, table_options
from streams.metrics import Metrics
from streams.outbox import Outbox
from streams.rekey import Origin, headers_for, origin_in
from streams.runtime import Batch, Decoder, Effects, Runtime, Stage
from streams.watermarks import Progress, source_of
from streams.window_batch import BatchSummaries
from streams.window_sample import KeyCut
from streams.windows import window_spec

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.streams")

# Rows each batch contributes per window and segment: bounds the summary
# message size (rows hold prompts and replies cut to window_text_chars).
_ROWS_PER_PARTIAL = 200

# How often input partitions read to their end advance their watermarks with the wall clock
# (streams/watermarks.py, Progress.caught_up): a window closes within this of its due time.
CATCH_UP_SECONDS = 0.05


class IngestStage(Stage):
    """Validates, enriches, joins and samples each batch; expires joins that waited past the TTL."""

    name = "ingest"
    #: The broker's round trip for one batch overlaps the handling of the next ones.
    max_in_flight = 4
    #: The handler yields to the event loop every this many messages, so that the
    #: producer sends the earlier batches' records and reads the broker's answers
    #: meanwhile: a batch of 2,000 held the loop for about 150 ms (busy machine),
    #: and every round trip of the units in flight waited for it.
    yield_every = 250

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        super().__init__(runtime)
        self.app: LoopwatchApp = runtime.app
        self.settings = settings
        self.topics = topics = settings.topics
        self.metrics = metrics
        # With detection, often: each tick tells the watermarks of the input partitions read to their end.
        # Without, the tick only sweeps expired joins: twenty ticks a second that find no sweep due
        # are twenty units of work a second in the stage's queue, between its batches.
        self.tick_seconds = (
            min(settings.join_sweep_seconds, CATCH_UP_SECONDS)
            if settings.detection
            else settings.join_sweep_seconds
        )
        self._swept_at = -math.inf
        self.inputs: dict[str, Decoder] = {
            topics.inference: self._decoder(InferenceLog),
            topics.feedback: self._decoder(Feedback),
            topics.rekey: self._decode_rekeyed,
        }
        # The raw codec for keys and values, both when writing the changelog and
        # when recovering from it: each entry is its JoinState as join.encode bytes.
        # Bytes are not tracked by Python's garbage collector; a million state
        # dicts were, and every full collection walked them all.
        directory, self._directory_lock = claim_directory(settings.data_dir / "joins")
        self.joins = self.app.Table(
            "joins",
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            **table_options(settings.join_store, directory),
        )
        self.join_store = JoinStore(self.joins, settings.join_store, directory)
        self._written: dict[bytes, bytes] = {}
        self._indexed_generation: int | None = None
        self.last_offset: dict[TP, int] = {}
        inputs = (topics.inference, topics.feedback, topics.rekey)
        self._warned: set[str] = set()
        self._in = {t: metrics.events_in.labels(t) for t in inputs}
        self._valid = {t: metrics.events_valid.labels(t) for t in inputs}
        self._seconds = {t: metrics.processing_seconds.labels(t) for t in inputs}
        self.window_spec = window_spec(settings)
        self.rng = random.Random()
        # Across batches: a window's events beyond its sample size mostly need no row (KeyCut).
        self.cut = KeyCut(self.window_spec.sample_size)
        self.summaries = BatchSummaries(self.window_spec, _ROWS_PER_PARTIAL, self.rng, self.cut)
        # The event-time watermark of each input partition read (streams/watermarks.py).
        self.progress = Progress(
            self.window_spec.seconds,
            lateness=self.window_spec.grace_seconds,
            behind_seconds=settings.window_idle_seconds,
        )
        self._progress_generation = 0
        # Batches numbered as handled; their event times and last offsets, once acknowledged,
        # until every earlier one is.
        self._batches = self._passed_upto = 0
        self._acknowledged: dict[int, tuple[str, dict[int, float], dict[int, int]]] = {}
        #: The last offset of each input partition whose batch's outputs are acknowledged.
        self._passed_offsets: dict[TP, int] = {}

    # -- decoding (called by the runtime for each message) -------------------------

    def _decoder(self, model: type[Any]) -> Decoder:
        max_bytes = self.settings.max_event_bytes

        def decode_message(message: Any, now: float) -> Accepted[Any] | Rejected:
            outcome = decode(message.value, model, max_bytes=max_bytes)
            return self._timely(outcome, message, now) if isinstance(outcome, Accepted) else outcome

        return decode_message

    def _decode_rekeyed(self, message: Any, now: float) -> Accepted[Any] | Rejected:
        """A re-keyed copy, decoded as the kind of event its origin header names.

        Its timestamp was checked once, against the producer's message: the copy
        carries the time it was re-sent.
        """
        origin = origin_in(message.headers)
        kinds = {self.topics.inference: InferenceLog, self.topics.feedback: Feedback}
        if origin is None or origin.source.topic not in kinds:
            return Rejected(
                DeadLetterReason.MISSING_FIELD,
                f"{self.topics.rekey} is internal: its messages need the loopwatch-source header naming"
                f" {self.topics.inference} or {self.topics.feedback}, which ingest writes",
            )
        model: type[Any] = kinds[origin.source.topic]
        outcome = decode(message.value, model, max_bytes=self.settings.max_event_bytes)
        return dataclasses.replace(outcome, origin=origin) if isinstance(outcome, Rejected) else outcome

    def _timely(self, accepted: Accepted[Any], message: Any, now: float) -> Accepted[Any] | Rejected:
        """The event with its epoch time, or its rejection when that is too far from its Kafka message's."""
        stamp = accepted.event.timestamp.timestamp()
        rejected = out_of_range(
            accepted.event.timestamp,
            message.timestamp,
            now,
            max_past=self.settings.max_timestamp_past_seconds,
            max_future=self.settings.max_timestamp_future_seconds,
            stamp=stamp,
        )
        return Accepted(accepted.event, accepted.text, stamp) if rejected is None else rejected

    # -- a batch -------------------------------------------------------------------

    async def handle(self, batch: Batch, now: float) -> Effects:
        """Re-key the wrongly keyed, pass the rest on: enriched, joined, sampled into windows; count."""
        effects = self.effects()
        topic = batch.topic
        rekeyed = topic == self.topics.rekey
        self._written.clear()
        latest: dict[int, float] = {}  # per partition, the latest event time this batch passed
        oldest: dict[int, float] = {}  # and the oldest
        for done, (message, accepted) in enumerate(batch.accepted, 1):
            if done % self.yield_every == 0:
                await asyncio.sleep(0)
            # The message says where it was read (no SourceRef validated per event); a copy, its origin.
            source: ReadAt = cast(Origin, origin_in(message.headers)).source if rekeyed else message
            key = accepted.event.request_id.encode()
            if message.key != key and self._rekeyed(effects.records, message, key):
                continue
            stamp = accepted.stamp
            if stamp is None:  # a re-keyed copy (its time was checked on the producer's message)
                stamp = accepted.event.timestamp.timestamp()
            latest[message.partition] = max(latest.get(message.partition, stamp), stamp)
            oldest[message.partition] = min(oldest.get(message.partition, stamp), stamp)
            if isinstance(accepted.event, InferenceLog):
                self._inference(effects, message, source, accepted, key, stamp, now)
            else:
                self._feedback(effects, message, source, accepted, key, now)
        messages = batch.messages
        ends = {message.partition: message.offset for message in messages}  # the last of each
        self._flush_summaries(effects, topic, latest, ends, now)
        for partition, stamp in oldest.items():
            self.progress.read(source_of(topic, partition), stamp, now)
        for partition, offset in ends.items():
            self.last_offset[TP(topic, partition)] = offset
        self._in[topic].inc(len(messages))
        self._valid[topic].inc(len(batch.accepted))
        self._seconds[topic].observe((time.perf_counter() - batch.started) / len(messages))
        return effects

    def _inference(
        self,
        effects: Effects,
        message: Any,
        source: ReadAt,
        accepted: Accepted[InferenceLog],
        key: bytes,
        stamp: float,
        now: float,
    ) -> None:
        event = accepted.event
        descriptors = descriptor_values(event)  # the model is built only for the rows kept (_row)
        effects.records.add(
            self.topics.enriched,
            key,
            enriched_json(message.value, descriptors, source),
            partition=message.partition,
        )
        if self.settings.detection:
            self._sample_inference(event, descriptors, stamp, message)
        partition = message.partition
        stored = self._written.get(key)
        if stored is None:
            stored = self.join_store.get(partition, key)
        if stored is None:  # the request's first event (nearly always): its state straight from the bytes
            stored = self._written[key] = join.encode_first_inference(message.value, source, partition, now)
            effects.put(self.join_store, key, stored, partition)
            return
        result = join.on_inference(
            join.decode(stored), accepted.text, event, source, now, partition=partition
        )
        self._store(effects, key, result, message)

    def _feedback(
        self,
        effects: Effects,
        message: Any,
        source: ReadAt,
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
        self._store(effects, key, result, message)

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
        stored = self._written.get(key)
        if stored is None:
            stored = self.join_store.get(partition, key)
        return None if stored is None else join.decode(stored)

    def _store(self, effects: Effects, key: bytes, result: join.JoinResult, message: Any) -> None:
        """Write the new join state and queue the joined records (``message``: the one read)."""
        partition = message.partition
        if not result.duplicate:
            stored = self._written[key] = join.encode(result.state)
            effects.put(self.join_store, key, stored, partition)
        for record in result.joined:
            effects.records.add(
                self.topics.joined, key, record.model_dump_json().encode(), partition=partition
            )
            if self.settings.detection:
                self._sample_feedback(record)
        if result.joined:  # nearly always empty: a counter's lock per event was 1.6% of the handler's time
            self.metrics.feedback_joined.inc(len(result.joined))

    # -- window summaries for the detect stage -----------------------------------

    def _sample_inference(
        self, event: InferenceLog, descriptors: dict[str, int | bool], stamp: float, message: Any
    ) -> None:
        """Count the event into its window; keep it for a row only if the window's sample wants it.

        The offset read (``message``'s) lets the detect stage count the event once
        should this input be read again (:mod:`streams.window_dedup`). The rows of
        the events kept are built when the batch's summaries are (:meth:`_row`).
        """
        model = event.model
        self.summaries.keeps(
            (model.name, model.version, event.app, event.route, event.tenant),
            "inference",
            stamp,
            source_of(message.topic, message.partition),
            message.offset,
            (event, descriptors),
        )

    def _sample_feedback(self, record: JoinedFeedback) -> None:
        log = record.inference  # the segment of feedback_row(record)
        # Counted where the feedback was read, not at the message that joined it: a run that joins it
        # from its inference's batch and one that re-reads it and joins it from its own count it once.
        read = record.feedback_source
        self.summaries.keeps(
            (log.model.name, log.model.version, log.app, log.route, log.tenant),
            "feedback",
            record.feedback.timestamp.timestamp(),
            source_of(read.topic, read.partition),
            read.offset,
            record,
        )

    def _row(self, kept: Any) -> dict[str, Any]:
        """The window row of what :meth:`_sample_inference` or :meth:`_sample_feedback` kept."""
        if isinstance(kept, JoinedFeedback):
            return feedback_row(kept)
        event, descriptors = kept
        return log_row(event, descriptors, self.settings.window_text_chars)

    def _flush_summaries(
        self, effects: Effects, topic: str, latest: dict[int, float], ends: dict[int, int], now: float
    ) -> None:
        """Publish this batch's window summaries with its other outputs (before the commit).

        Keyed by model: the stable version's windows and its canaries' are
        merged (and compared) on one worker. Each carries the watermarks of the
        batch's sources; every summaries partition hears all of them now and
        then (:meth:`_broadcast_progress`). A batch's event times count as
        passed only once its outputs and those of every batch before it are
        acknowledged (``after`` callbacks, which units in flight run in any
        order): they hand their records to the producer concurrently, so a
        later batch's progress could otherwise reach a partition before an
        earlier batch's partials, and close their window without them.
        """
        if not self.settings.detection:
            return
        self._follow_sources()
        self._batches += 1
        effects.after.append(functools.partial(self._passed, self._batches, topic, latest, ends))
        outbox = effects.records
        progress = self.progress.of({source_of(topic, partition) for partition in latest})
        for partial in self.summaries.all():
            partial.sample.build_rows(self._row)
            partial.progress = progress
            # Strict JSON whatever a row holds: a NaN (none gets past validation) would be null.
            value = to_json(partial.to_json(), inf_nan_mode="null")
            outbox.add(self.topics.summaries, (partial.segment.get("model") or "").encode(), value)
        if self.summaries.partials:
            self.summaries = BatchSummaries(self.window_spec, _ROWS_PER_PARTIAL, self.rng, self.cut)
            self.cut.expire()
        self._broadcast_progress(outbox, now)

    def _passed(self, batch: int, topic: str, latest: dict[int, float], ends: dict[int, int]) -> None:
        """Batch ``batch`` is acknowledged: every batch acknowledged without a gap before it is passed."""
        self._acknowledged[batch] = (topic, latest, ends)
        while self._passed_upto + 1 in self._acknowledged:
            self._passed_upto += 1
            passed_topic, passed, passed_ends = self._acknowledged.pop(self._passed_upto)
            for partition, stamp in passed.items():
                self.progress.advance(source_of(passed_topic, partition), stamp)
            for partition, offset in passed_ends.items():
                self._passed_offsets[TP(passed_topic, partition)] = offset
        if self.progress.is_due(time.time()):
            self.runtime.tick(self.name)  # the tick broadcasts it, should no batch come to do it

    def _broadcast_progress(self, outbox: Outbox, now: float) -> None:
        """A progress-only record on every summaries partition, when one is due (throttled)."""
        due = self.progress.due(now)
        if not due:
            return
        value = to_json({"progress": due})
        for partition in range(self.settings.partitions):
            outbox.add(self.topics.summaries, None, value, partition=partition)

    def _catch_up(self) -> None:
        """The input partitions passed up to the end offset a fetch last saw: nothing older is pending."""
        consumer = cast(Any, self.app).consumer
        for tp, offset in self._passed_offsets.items():
            fetched = consumer.fetched_end(tp)
            if fetched is not None and offset + 1 >= fetched[1]:
                self.progress.caught_up(source_of(tp.topic, tp.partition), fetched[0])

    def _follow_sources(self) -> None:
        """After a rebalance, forget the watermarks of input partitions another worker reads now."""
        generation = cast(Any, self.app).consumer_generation_id
        if generation == self._progress_generation:
            return
        self._progress_generation = generation
        actives = self.app.assignor.assigned_actives()
        owned = {source_of(tp.topic, tp.partition) for tp in actives}
        self.progress.drop(owned.__contains__)
        self._passed_offsets = {tp: offset for tp, offset in self._passed_offsets.items() if tp in actives}

    # -- the expiry sweep (the stage's tick) -------------------------------------

    async def tick(self, now: float) -> Effects:
        """Expire joins older than the TTL: publish their unmatched feedback, then forget them.

        A chunk at a time: a large backlog expiring at once stays bounded in RAM,
        and the next chunk is the stage's next unit of work.
        """
        effects = self.effects()
        app = cast(Any, self.app)
        if self.settings.detection:
            self._follow_sources()
            self._catch_up()
            self._broadcast_progress(effects.records, now)  # and progress held back by the throttle
        if now - self._swept_at < self.settings.join_sweep_seconds:
            return effects
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return effects  # entries recovered from now on would be missing from the expiry index
        self._swept_at = now
        if app.consumer_generation_id != self._indexed_generation:
            self.join_store.on_rebalance()
            self._indexed_generation = app.consumer_generation_id
        partitions = {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == self.topics.inference
        }
        await self.join_store.reindex(partitions)
        before = now - self.settings.join_ttl_seconds
        expired = list(islice(self.join_store.expired(partitions, before), SWEEP_CHUNK))
        unmatched = 0
        for partition, key, stored in expired:
            for record in join.unmatched(join.decode(stored), key.decode(), now):
                value = record.model_dump_json().encode()
                effects.records.add(self.topics.unmatched, key, value, partition=partition)
                unmatched += 1
            # Forgotten once its feedback is published: the tombstone goes to the changelog after it.
            effects.put(self.join_store, key, None, partition)
        self.metrics.feedback_unmatched.inc(unmatched)
        self.metrics.join_entries.set(self.join_store.count(partitions) - len(expired))
        if len(expired) == SWEEP_CHUNK:
            self._swept_at = -math.inf  # the next chunk at the next tick
            self.runtime.tick(self.name)
        return effects

    def update_lag(self) -> None:
        """Consumer lag per partition: the high-water mark minus the next offset to process."""
        for tp in self.app.assignor.assigned_actives():
            if tp.topic in self._in and tp in self.last_offset:
                highwater = self.app.consumer.highwater(tp)
                if highwater is None:
                    # Not fetched since a rebalance assigned it (again): no mark yet, and this
                    # timer raising crashed the worker (exit 5) on the survivor of a kill -9.
                    continue
                lag = highwater - (self.last_offset[tp] + 1)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))
