"""The stage runtime: each stage's work one unit at a time, and every unit's effects in one order.

A *stage* (ingest, curate, detect, decide) is a class with a name, the topics it
reads (each with the decoder that turns a Kafka message into an event), and
three handlers. Each handler returns :class:`Effects`: what should happen, not
done yet.

- ``handle(batch, now)``: a batch of its input messages, already decoded (the
  runtime dead-letters those its decoder rejects, with the reason);
- ``tick(now)``: time-based work, every ``tick_seconds``;
- ``receive(message, now)``: anything else addressed to it: the result of its
  own slow work (``Effects.background``), an event from the control topic.

The runtime runs all of a stage's units (batches, ticks, messages) through one
queue, one at a time, so a stage's state is touched by one coroutine only.
Then it performs the unit's effects in this order:

1. state writes are applied to the local tables at once, so the stage's next
   unit reads them (the local store is a cache: a restarted worker rebuilds it
   from the changelog);
2. output records (including dead letters) are sent and acknowledged by the broker;
3. blocking calls (a Delta commit) run in a thread;
4. the state writes' changelog records are sent and acknowledged;
5. ``after`` callbacks run (e.g. pages handed to the notifiers);
6. the unit's input messages are acked, so faust's next commit covers them.

Messages fetched under an assignment that was revoked since (a rebalance) are
neither handled nor acked (:meth:`Runtime.stale`), as faust's own streams skip
them: their partition's owner in the new assignment reads them again from the
committed offset. Handled and acked, they were lost: faust forgets a revoked
partition's committed offset, so on the partition's next assignment (to this
worker too, as every rebalance revokes everything) its commit covered those acks
before it sought back to the committed offset.

A crash anywhere before 6 replays the unit from the state of the last changelog
record: every output is at-least-once and no state is durable before the outputs
it produced. A failure to deliver (after :mod:`streams.outbox`'s retries) or a
batch handler that raises crashes the worker, so its messages are processed
again after the restart; a tick or message handler that raises is logged and
the stage carries on (the next tick is a retry).

Steps 2-6 of a unit may overlap the next unit's handler (``max_in_flight``
units at once, acked in order): ingest keeps the broker's round trip off its
hot path that way. Units in flight still keep their order where it matters: a
unit hands its records to the producer only once the unit before it handed
all of its own (aiokafka sends one batch per partition at a time, so records
reach each partition in unit order, while the round trips overlap), and sends
its changelog only once the outputs of the unit before it are acknowledged: a
later unit's state is never durable before an earlier unit's outputs, so a
crash replays the earlier unit from a state that had not seen the later one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, cast

from streams.ingest import Accepted, Rejected
from streams.metrics import Metrics
from streams.outbox import Delivery, Outbox, OutputLimit

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.runtime")

#: Turns one Kafka message into an event (``now`` is the handling time), or says why not.
Decoder = Callable[[Any, float], Accepted[Any] | Rejected]


@dataclass
class Batch:
    """Messages of one topic for one stage, in offset order, with the events decoded from the valid ones."""

    topic: str
    messages: list[Any]
    accepted: list[tuple[Any, Accepted[Any]]]
    #: ``time.perf_counter()`` when the runtime took the batch up (decoding included).
    started: float


class StateTable(Protocol):
    """Where a stage keeps state: a local store whose every write also goes to a changelog topic."""

    @property
    def changelog(self) -> str:
        """The changelog topic's name."""
        ...

    def apply(self, key: bytes, value: bytes | None, partition: int) -> None:
        """Write ``value`` under ``key`` in the local store (None deletes)."""
        ...


class ChangelogTable:
    """A faust table of bytes (changelog-backed, recovered by faust) written only through Effects."""

    def __init__(self, app: LoopwatchApp, name: str, partitions: int) -> None:
        self.table = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes)

    @property
    def changelog(self) -> str:
        """The changelog topic's name."""
        return cast(str, self.table.changelog_topic.get_topic_name())

    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        return cast(bytes | None, self.table.data.get(key))

    def apply(self, key: bytes, value: bytes | None, partition: int) -> None:
        """Write ``value`` under ``key`` in the local store (None deletes)."""
        if value is None:
            self.table.data.pop(key, None)
        else:
            self.table.data[key] = value


class Write(NamedTuple):
    """One state write: a local store write plus its changelog record (same key, value and partition).

    A named tuple, not a frozen dataclass: ingest builds one per event, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about
    530 ns per write against 240 ns, issue 16). Immutable and compared by value as before.
    """

    table: StateTable
    key: bytes
    value: bytes | None
    partition: int


@dataclass
class Effects:
    """What one unit of a stage's work wants done; only the runtime does it (in the order above)."""

    records: Outbox
    writes: list[Write] = field(default_factory=list)
    #: Blocking work (a Delta commit), run in a thread after the records are acknowledged.
    calls: list[Callable[[], Any]] = field(default_factory=list)
    #: Run once the unit's state is durable (e.g. hand pages to the notifiers).
    after: list[Callable[[], None]] = field(default_factory=list)
    #: Slow work: each result that is not None comes back to the stage's ``receive``.
    background: list[Awaitable[Any]] = field(default_factory=list)

    def put(self, table: StateTable, key: bytes, value: bytes | None, partition: int = 0) -> None:
        """Write ``value`` under ``key`` (None deletes), locally and on the changelog."""
        self.writes.append(Write(table, key, value, partition))


class Stage:
    """A stage: its name, its input topics and their decoders, and what it does with each unit of work."""

    name: ClassVar[str]
    #: Input topic -> decoder. Batches of the stage's topics are handled one at a time, in order.
    inputs: Mapping[str, Decoder] = {}
    #: Run ``tick`` this often (None: never).
    tick_seconds: float | None = None
    #: Units whose effects may be in flight while the next unit is handled.
    max_in_flight: int = 1

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def effects(self) -> Effects:
        """Empty effects whose records are held to the output limit."""
        return self.runtime.effects()

    async def handle(self, batch: Batch, now: float) -> Effects:
        """What a batch of decoded input messages leads to."""
        raise NotImplementedError(f"{self.name} reads no topic")

    async def tick(self, now: float) -> Effects:
        """Time-based work (every ``tick_seconds``)."""
        return self.effects()

    async def receive(self, message: Any, now: float) -> Effects:
        """A message addressed to this stage (its own slow results, control events)."""
        raise NotImplementedError(f"{self.name} takes no {type(message).__name__}")

    async def start(self) -> None:
        """Called once the worker runs (start background senders and the like)."""

    async def stop(self) -> None:
        """Called while the worker stops, before the producer does."""


# -- the units of work in a stage's queue -------------------------------------------


@dataclass
class _Messages:
    topic: str
    messages: list[Any]


@dataclass
class _Tick:
    pass


@dataclass
class _Message:
    payload: Any


_Unit = _Messages | _Tick | _Message


@dataclass
class _Order:
    """How far a unit in flight is: its records handed to the producer, then acknowledged (False: failed)."""

    handed: asyncio.Future[None]
    delivered: asyncio.Future[bool]


class Runtime:
    """Every stage's queue, and the one place where effects are performed."""

    #: Most messages handed to a stage at once (batches that wait are merged up to this).
    max_batch = 2_000
    #: Messages that may wait for a busy stage before :meth:`put_batch` waits too.
    max_waiting = 10_000

    #: The app this runtime serves (set by :class:`~streams.app.LoopwatchApp`).
    app: LoopwatchApp

    def __init__(self, limit: OutputLimit, metrics: Metrics, deadletter_topic: str) -> None:
        self.limit = limit
        self.metrics = metrics
        self.deadletter_topic = deadletter_topic
        self.stages: dict[str, Stage] = {}
        self.queues: dict[str, _StageQueue] = {}
        self.route: dict[str, list[str]] = {}  # input topic -> the stages that read it
        self._background: set[asyncio.Future[Any]] = set()
        # The consumer gave its assignment up and has no new one yet.
        self.assignment_revoked = False

    def effects(self) -> Effects:
        """Empty effects whose records are held to the output limit."""
        return Effects(Outbox(self.limit))

    def add(self, stage: Stage) -> Stage:
        """Run ``stage``: subscribe to its inputs and tick it."""
        self.stages[stage.name] = stage
        self.queues[stage.name] = _StageQueue(self, stage)
        for topic in stage.inputs:
            self.route.setdefault(topic, []).append(stage.name)
        return stage

    # -- putting work in ---------------------------------------------------------

    async def put_batch(self, topic: str, messages: list[Any]) -> None:
        """Queue fetched messages of ``topic`` for its stages (waits only while one is far behind).

        A topic several stages read (detections: decide and history) is acked
        once every one of them has acked it: each message counts its readers
        (faust's ``Message.refcount``), and the last ack commits it.
        """
        stages = self.route[topic]
        if len(stages) > 1:
            for message in messages:
                message.incref(len(stages))
        for name in stages:
            await self.queues[name].put_messages(topic, messages)

    def tick(self, stage: str) -> None:
        """Queue a tick for ``stage`` unless one is waiting already."""
        self.queues[stage].put_tick()

    def post(self, stage: str, message: Any) -> None:
        """Queue ``message`` for ``stage``'s ``receive``."""
        self.queues[stage].put(_Message(message))

    def revoked(self) -> None:
        """The consumer gave its assignment up: what it fetched and is still queued is stale."""
        self.assignment_revoked = True

    def assigned(self) -> None:
        """The consumer has a new assignment (a new consumer generation)."""
        self.assignment_revoked = False

    def stale(self, message: Any) -> bool:
        """Whether ``message`` was fetched under an assignment given up since (not ours to handle or ack)."""
        fetched_in: int | None = getattr(message, "generation_id", None)
        if fetched_in is None:
            return False
        # Compared for equality, as faust's streams do: a broker that restarted empty numbers anew.
        current = getattr(self.app, "consumer_generation_id", fetched_in)
        return self.assignment_revoked or fetched_in != current

    async def join(self) -> None:
        """Wait until every queued unit of every stage has been handled and its effects performed."""
        for queue in self.queues.values():
            await queue.join()

    async def start(self) -> None:
        """Start every stage."""
        for stage in self.stages.values():
            await stage.start()

    async def stop(self) -> None:
        """Abandon slow work and waiting batches, finish the units under way, then stop the stages.

        Waiting batches are not handled: their messages are unacked, so the next
        worker handles them. faust calls this while the consumer still fetches; a
        stage that took every batch in before stopping would not stop under traffic.
        """
        for task in list(self._background):
            task.cancel()
        for queue in self.queues.values():
            queue.stop_taking_batches()
        for name, stage in self.stages.items():
            try:
                await self.queues[name].join()
                await stage.stop()
                await self.queues[name].join()  # what stopping posted (e.g. failed deliveries)
            except Exception:
                log.exception("stopping the %s stage failed", name)

    # -- running a unit ------------------------------------------------------------

    async def run(self, stage: Stage, unit: _Unit) -> Effects:
        """The effects of one unit, from the stage's handler (dead letters of a batch included)."""
        now = time.time()
        if isinstance(unit, _Tick):
            return await stage.tick(now)
        if isinstance(unit, _Message):
            return await stage.receive(unit.payload, now)
        return await self._handle(stage, unit, now)

    async def _handle(self, stage: Stage, unit: _Messages, now: float) -> Effects:
        started = time.perf_counter()
        decode = stage.inputs[unit.topic]
        letters = Outbox(self.limit)
        accepted: list[tuple[Any, Accepted[Any]]] = []
        # A topic several stages read is dead-lettered by its first reader only: one letter per message.
        first_reader = self.route[unit.topic][0] == stage.name
        for message in unit.messages:
            outcome = decode(message, now)
            if isinstance(outcome, Rejected):
                if first_reader:
                    letters.add_dead_letter(self.deadletter_topic, message, outcome, outcome.origin)
                    self.metrics.rejected(message.topic, outcome.reason)
            else:
                accepted.append((message, outcome))
        effects = await stage.handle(Batch(unit.topic, unit.messages, accepted, started), now)
        letters.extend(effects.records)  # dead letters first: they come from the earliest step
        effects.records = letters
        return effects

    def start_background(self, stage: Stage, work: Awaitable[Any]) -> None:
        """Run slow work; post its result (unless None) back to ``stage``."""
        task = asyncio.ensure_future(work)
        self._background.add(task)  # a task nobody references can be garbage-collected mid-run
        task.add_done_callback(lambda done: self._finished(stage.name, done))

    def _finished(self, stage: str, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("slow work of the %s stage failed", stage, exc_info=error)
        elif task.result() is not None:
            self.post(stage, task.result())

    async def perform(self, effects: Effects) -> None:
        """Steps 2-5: outputs acknowledged, blocking calls, changelog acknowledged, callbacks."""
        await (await self.hand_over(effects)).wait()
        await self.settle(effects)

    async def hand_over(self, effects: Effects) -> Delivery:
        """Step 2's first half: the outputs handed to the producer (:meth:`Delivery.wait` for the broker)."""
        return await effects.records.send(self.app.kafka_producer())

    async def settle(self, effects: Effects) -> None:
        """Steps 3-5, once the outputs are acknowledged: blocking calls, changelog acknowledged, callbacks."""
        producer = self.app.kafka_producer()
        for call in effects.calls:
            await asyncio.get_running_loop().run_in_executor(None, call)
        if effects.writes:
            changelog = Outbox(self.limit)
            add = changelog.add
            # Each table's changelog name once per unit, not once per write (faust builds it per call).
            topics: dict[int, str] = {}
            for write in effects.writes:
                topic = topics.get(id(write.table))
                if topic is None:
                    topic = topics[id(write.table)] = write.table.changelog
                add(topic, write.key, write.value, partition=write.partition)
            await changelog.send_and_wait(producer)
        for callback in effects.after:
            callback()


class _StageQueue:
    """One stage's waiting units, run in order by one task at a time; effects may trail by max_in_flight.

    A batch that arrives while the stage is busy joins the last waiting batch of
    the same topic (up to ``max_batch`` messages), so a stage that waits on I/O
    gets fewer, larger batches. :meth:`put_messages` waits only once
    ``max_waiting`` messages are waiting: that is the back-pressure on the fetch loop.
    """

    def __init__(self, runtime: Runtime, stage: Stage) -> None:
        self.runtime = runtime
        self.stage = stage
        self.waiting: deque[_Unit] = deque()
        self.waiting_messages = 0
        self.running: asyncio.Future[None] | None = None
        self.in_flight: deque[asyncio.Future[None]] = deque()
        # The last unit put in flight: the next one hands over and settles after it (see the module).
        self.last_order: _Order | None = None
        # Units queued and units finished so far: join() waits for the units queued
        # before it was called, not for a stage that new ticks or batches keep busy.
        self.queued = 0
        self.finished = 0
        self.progress = asyncio.Event()
        self.taking_batches = True
        self.crashed = False

    async def put_messages(self, topic: str, messages: list[Any]) -> None:
        """Queue ``messages``, merged into the last waiting batch of ``topic`` when it has room."""
        while self.waiting_messages >= self.runtime.max_waiting and self.running is not None:
            await asyncio.shield(self.running)
        if not self.taking_batches:
            return  # stopping: unacked, the messages go to the next worker
        last = self.waiting[-1] if self.waiting else None
        if (
            isinstance(last, _Messages)
            and last.topic == topic
            and len(last.messages) + len(messages) <= self.runtime.max_batch
        ):
            last.messages.extend(messages)
        else:
            self.put(_Messages(topic, list(messages)))
        self.waiting_messages += len(messages)

    def put_tick(self) -> None:
        """Queue a tick, unless one is already waiting (ticks of a busy stage do not pile up)."""
        if self.taking_batches and not any(isinstance(unit, _Tick) for unit in self.waiting):
            self.put(_Tick())

    def put(self, unit: _Unit) -> None:
        """Queue one unit."""
        self.waiting.append(unit)
        self.queued += 1
        self._wake()

    def stop_taking_batches(self) -> None:
        """Drop the waiting batches and ticks, and take no more (messages posted still count)."""
        self.taking_batches = False
        kept: deque[_Unit] = deque(unit for unit in self.waiting if isinstance(unit, _Message))
        self._finish(len(self.waiting) - len(kept))
        self.waiting, self.waiting_messages = kept, 0

    def _finish(self, units: int = 1) -> None:
        self.finished += units
        self.progress.set()

    def _wake(self) -> None:
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self._run())

    async def join(self) -> None:
        """Wait until every unit queued so far has been handled and its effects performed."""
        target = self.queued
        while self.finished < target and not self.crashed:
            self.progress.clear()
            await self.progress.wait()
        for performing in list(self.in_flight):  # a unit that failed fast may have finished first
            await asyncio.shield(performing)

    async def _run(self) -> None:
        # Units queued while one is handled are picked up by this same loop.
        while self.waiting:
            unit = self.waiting.popleft()
            messages = unit.messages if isinstance(unit, _Messages) else []
            self.waiting_messages -= len(messages)
            if isinstance(unit, _Messages):
                fresh = [message for message in messages if not self.runtime.stale(message)]
                if len(fresh) < len(messages):
                    # Unacked: the partitions' owners now read them again from the committed offsets.
                    log.info(
                        "%d %s messages of a revoked assignment not handled by the %s stage",
                        len(messages) - len(fresh),
                        messages[0].topic,
                        self.stage.name,
                    )
                    if not fresh:
                        self._finish()
                        continue
                    unit.messages = messages = fresh
            started = time.perf_counter()
            try:
                effects = await self.runtime.run(self.stage, unit)
            except Exception as exc:
                if not messages:
                    log.exception("the %s stage failed on a %s; carrying on", self.stage.name, _what(unit))
                    self._finish()
                    continue
                # Unacked, its messages are handled again after the restart (at-least-once).
                log.exception("the %s stage failed on %d messages", self.stage.name, len(messages))
                await self._crash(exc)
                return
            for write in effects.writes:
                write.table.apply(write.key, write.value, write.partition)
            for work in effects.background:
                self.runtime.start_background(self.stage, work)
            while len(self.in_flight) >= self.stage.max_in_flight:
                await asyncio.shield(self.in_flight[0])
            previous = self.in_flight[-1] if self.in_flight else None
            loop = asyncio.get_running_loop()
            order = _Order(loop.create_future(), loop.create_future())
            before, self.last_order = self.last_order, order
            performing = self._perform(effects, messages, previous, (before, order), started)
            self.in_flight.append(asyncio.ensure_future(performing))

    async def _perform(
        self,
        effects: Effects,
        messages: list[Any],
        previous: asyncio.Future[None] | None,
        orders: tuple[_Order | None, _Order],
        started: float,
    ) -> None:
        """Steps 2-5 in unit order (see the module), then step 6 after the previous unit's acks."""
        before, order = orders
        try:
            if before is not None:
                await asyncio.shield(before.handed)
            try:
                delivery = await self.runtime.hand_over(effects)
            finally:
                order.handed.set_result(None)
            await delivery.wait()
            order.delivered.set_result(True)
            if before is not None and not await asyncio.shield(before.delivered):
                return  # the worker is crashing on the earlier unit: this one's state must not be durable
            await self.runtime.settle(effects)
            if previous is not None:
                await asyncio.shield(previous)
            ack = self.runtime.app.consumer.ack
            shared = bool(messages) and len(self.runtime.route[messages[0].topic]) > 1
            for message in messages:
                if not shared or not message.decref():  # a shared message: the last reader acks it
                    ack(message)
            if messages:
                took = time.perf_counter() - started
                self.runtime.metrics.stage_seconds.labels(self.stage.name).observe(took)
        except Exception as exc:
            log.exception("the effects of the %s stage could not be delivered", self.stage.name)
            await self._crash(exc)
        finally:
            if not order.handed.done():  # cancelled while waiting its turn
                order.handed.set_result(None)
            if not order.delivered.done():  # failed or cancelled: later units must not settle
                order.delivered.set_result(False)
            # Removed by the task itself: a done task still listed would make join() spin.
            self.in_flight.remove(cast("asyncio.Future[None]", asyncio.current_task()))
            self._finish()

    async def _crash(self, error: BaseException) -> None:
        self.crashed = True
        self.progress.set()
        await self.runtime.app.consumer.crash(error)


def _what(unit: _Unit) -> str:
    return "tick" if isinstance(unit, _Tick) else type(cast(_Message, unit).payload).__name__
