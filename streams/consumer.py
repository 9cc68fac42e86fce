"""A faust consumer with a cheaper fetch loop, batch delivery and correct end offsets.

Fetch loop:

faust's ``Consumer._drain_messages`` wraps the delivery of *every* message in
``Service.wait_first(callback(message), suspend_flow.wait())``, which creates
four asyncio tasks (the callback, the suspend wait, and faust's own stopped
and crashed waits), runs ``asyncio.wait`` and cancels three of them. Profiling
a plain faust agent here showed that bookkeeping as the largest single cost of
the consume loop (8,300 events/s before, 13,700 after, for 1 KB JSON events).

This subclass awaits the callback directly while the flow is running and
falls back to faust's original race only while the flow is suspended (during
a rebalance), so the rebalance behaviour is unchanged. Offsets, gaps, acks
and commits go through faust's own methods as before.

Batch delivery: messages of the stages' input topics (``app.runtime.route``)
skip faust's per-message Event and stream machinery altogether; each fetch is
handed to the stage runtime (:mod:`streams.runtime`) as one list, and the
runtime acks the messages once their effects are performed, so faust's commit
covers exactly what was handled. The stages run concurrently and the fetch
loop goes on while they work: before, a curation batch waiting for its Delta
commit (a few hundred ms) held up the fetch loop and with it every hop from an
incident to its rollback.

End offsets: see :meth:`FastDrainConsumer.highwaters`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, cast

from aiokafka import AIOKafkaConsumer
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

FETCH_MAX_WAIT_MS = 50


class FastDrainConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer: per-batch (not per-message) task cost, true end offsets."""

    #: Yield to the event loop every this many messages so web requests and
    #: timers are served while a large fetch is drained.
    yield_every = 1_000

    #: Most messages handed to a stage at once: large fetches keep the
    #: consumer busy, bounded batches keep latency and memory in check.
    max_batch = 2_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The offset of the last message of each partition handed to a stage under this assignment.
        self._delivered: dict[TP, int] = {}

    async def _drain_messages(self, fetcher: Any) -> None:
        callback = self.callback
        runtime = cast(Any, self.app).runtime
        batch_routes = runtime.route
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        suspended = self.suspend_flow.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        delivered = self._delivered
        since_yield = 0
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched = self.getmany(timeout=1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    break
                batches: dict[str, list[Any]] = {}
                async for tp, message in fetched:
                    since_yield += 1
                    if since_yield >= self.yield_every:
                        since_yield = 0
                        await asyncio.sleep(0)
                    offset = message.offset
                    read_offset = get_read_offset(tp)
                    if read_offset is not None and offset < read_offset:
                        continue  # already delivered before a seek
                    if read_offset and offset - read_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if message.topic in batch_routes:
                        if suspended():
                            continue  # a rebalance: faust seeks back to the committed offset
                        if offset <= delivered.get(tp, -1):
                            continue  # handed to the stages under this assignment before a seek
                        delivered[tp] = offset
                        batch = batches.setdefault(message.topic, [])
                        batch.append(message)
                        if len(batch) >= self.max_batch:
                            await runtime.put_batch(message.topic, batch)
                            batches[message.topic] = []
                    elif suspended():
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    set_read_offset(tp, offset)
                for topic, messages in batches.items():
                    if messages:
                        await runtime.put_batch(topic, messages)
                self._report_progress(batch_routes)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _report_progress(self, batch_routes: Mapping[str, Any]) -> None:
        """Tell faust's stall check that the batch partitions are being taken in.

        faust's ``verify_event_path`` reads when a stream last took an event of each
        partition (``monitor.stream_inbound_time``). Batch topics bypass faust's
        streams, so it logged their partitions as "Stream has not started processing"
        (an ERROR with a troubleshooting block) after ``stream_processing_timeout`` in
        a healthy worker. Stamped once per fetch-loop turn: while the loop waits for a
        stage far behind, the stamps age and the check fires as it should.
        """
        inbound = self.app.monitor.stream_inbound_time
        now = time.monotonic()
        for tp in self.assignment():
            if tp.topic in batch_routes:
                inbound[tp] = now

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_empty(self) -> None:
        """Also wait for the stages' work (faust waits only for its own streams' messages).

        faust calls this before it commits and gives partitions up in a
        rebalance, and when it stops. What the stages take up after it is stale
        (:meth:`~streams.runtime.Runtime.stale`): fetched under the assignment
        given up, it is left for the next owner, unacked.
        """
        runtime = cast(Any, self.app).runtime
        await runtime.join()
        runtime.revoked()
        await super().wait_empty()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Forget what the stages took under the assignment given up (faust forgets its read offsets)."""
        self._delivered.clear()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """A new assignment: what the stages take up from now on and was fetched under it is theirs."""
        self._delivered.clear()
        cast(Any, self.app).runtime.assigned()
        await super().on_partitions_assigned(assigned, generation_id)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, without handing the stages again what this assignment handed them.

        faust's recovery may resume the flow and the partitions before it seeks
        (when no table needs recovering), so the stages can take records from
        the committed offsets on before the seek. faust's seek then set each read
        offset back to the committed one: those records were handed over twice,
        and the rest of the fetch still being handed out, now far past the read
        offset, was taken for a gap in the partition and counted as acked. Acked
        twice (gap and stage), the offsets made each commit advance by one:
        after a kill -9 the survivor took minutes to commit a few hundred
        summaries (tests/test_kill_latency_stream.py).
        """
        await super().perform_seek()
        # The last offset handed over, not the next one: a gap after it is still seen as one.
        read_offset = self._read_offset
        for tp, offset in self._delivered.items():
            if read_offset[tp] is None or offset > cast(int, read_offset[tp]):
                read_offset[tp] = offset

    async def rejoin_group(self) -> None:
        """Refresh topic metadata and rejoin the consumer group (after topics were recreated).

        A broker that restarted empty forgets the group; the worker rejoined it
        while its topics were missing and so was assigned none of their partitions.
        """
        thread: ShortWaitConsumerThread = self._thread  # type: ignore[assignment]
        await thread.call_thread(thread.rejoin_group)

    def fetched_end(self, tp: TP) -> tuple[float, int] | None:
        """When (wall time) a fetch last told ``tp``'s end offset, and that end (None: not fetched yet).

        aiokafka updates both on every fetch response, empty ones included. The
        time is read first: an end read after it is as new or newer, so the
        pair never claims an end earlier than it was.
        """
        consumer = cast(ShortWaitConsumerThread, self._thread)._ensure_consumer()
        try:
            at = consumer.last_poll_timestamp(tp)
            end = consumer.highwater(tp)
        except (AssertionError, KeyError):  # aiokafka's check: tp was revoked meanwhile
            return None
        return None if at is None or end is None else (at / 1000, end)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """End offsets, corrected for brokers that report the last *batch's* base offset + 1.

        faust's table recovery reads each changelog partition up to its end
        offset. The embedded Tansu broker answers ListOffsets with the base
        offset of the last record batch + 1, so recovery stopped before the
        other records of that batch and those table entries were lost. Fetching
        from ``reported - 1`` returns that whole batch, whose last record gives
        the true end. On Apache Kafka the answer is already right and the probe
        only confirms it (one small fetch per partition, at recovery only).
        """
        reported = await super().highwaters(*partitions)
        stale = {tp: end for tp, end in reported.items() if end > 0}
        if not stale:
            return reported
        return {**reported, **await self._probe_ends(stale)}

    async def _probe_ends(self, reported: dict[TP, int]) -> dict[TP, int]:
        options = cast(Any, self.app).kafka_options
        probe = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
        await probe.start()
        ends = dict(reported)
        try:
            probe.assign(list(reported))
            for tp, end in reported.items():
                probe.seek(tp, end - 1)
            pending = set(reported)
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                batches = await probe.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                    pending.discard(tp)
            if pending:
                self.log.warning("could not confirm end offsets of %s; using the reported ones", pending)
        finally:
            await probe.stop()
        return ends


class ShortWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, with a short fetch wait.

    faust fixes aiokafka's ``fetch_max_wait_ms`` at 1,500 ms. A broker that
    holds an empty fetch that long (Tansu does, even when records arrive
    meanwhile) delays every hop of the pipeline (ingest -> summaries ->
    detections -> decisions) by up to 1.5 s. At 50 ms an idle worker sends
    twenty small fetches a second instead of one; each hop waits 25 ms on
    average, and the inputs' watermarks (how far behind their events were
    when read, streams/watermarks.py) lag as little (at 100 ms the rollback
    latency bench's p99 was about 0.15 s longer).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer

    async def rejoin_group(self) -> None:
        """Fetch fresh metadata, then ask the group coordinator for a new assignment (runs in this thread)."""
        consumer = self._ensure_consumer()
        await consumer._client.force_metadata_update()
        consumer._coordinator.request_rejoin()


class FastDrainTransport(faust_aiokafka.Transport):
    """The aiokafka transport, using :class:`FastDrainConsumer`."""

    Consumer = FastDrainConsumer
