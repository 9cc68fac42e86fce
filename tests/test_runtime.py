"""The stage runtime: one unit of a stage at a time, merged batches, back-pressure, effects in one order.

No broker here: the runtime's Kafka edge is a producer and the consumer's
``ack``/``crash``, replaced by recorders so the order of effects can be read.
The stages' stream tests run the same runtime on the real broker.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

from core.settings import Settings
from schemas.events import DeadLetterReason
from streams.ingest import Accepted, Rejected
from streams.metrics import Metrics, metric_total
from streams.outbox import Outbox, OutputLimit
from streams.runtime import Batch, Effects, Runtime, Stage

SETTINGS = Settings()


class Producer:
    """An AIOKafkaProducer stand-in: logs what is sent; the broker acknowledges once ``acks`` is set."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.acks = asyncio.Event()
        self.acks.set()

    async def send(self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any) -> Any:
        self.log.append(("sent", topic, value))
        return asyncio.ensure_future(self._ack(topic, [value]))

    def create_batch(self) -> list[bytes | None]:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        for value in batch:
            self.log.append(("sent", topic, value))
        return asyncio.ensure_future(self._ack(topic, list(batch)))

    async def _ack(self, topic: str, values: list[bytes | None]) -> None:
        await self.acks.wait()
        for value in values:
            self.log.append(("acked", topic, value))


class _Batch(list):  # type: ignore[type-arg]
    def append(self, **record: Any) -> object:  # type: ignore[override]
        super().append(record["value"])
        return record


class App:
    """What the runtime uses of the faust app: the producer and the consumer's ack and crash."""

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.producer = Producer(self.log)
        self.crashed: list[BaseException] = []
        self.consumer = SimpleNamespace(ack=self._ack, crash=self._crash)

    def kafka_producer(self) -> Producer:
        return self.producer

    def _ack(self, message: Any) -> None:
        self.log.append(("ack", message.offset))

    async def _crash(self, error: BaseException) -> None:
        self.crashed.append(error)


def runtime() -> Runtime:
    metrics = Metrics()
    runtime = Runtime(OutputLimit(SETTINGS, metrics), metrics, "dead")
    runtime.app = App()  # type: ignore[assignment]
    return runtime


def message(topic: str, offset: int, value: bytes = b"ok") -> Any:
    return SimpleNamespace(
        topic=topic, partition=0, offset=offset, key=None, value=value, headers=[], timestamp=0
    )


def accept_ok(message: Any, now: float) -> Accepted[Any] | Rejected:
    if message.value != b"ok":
        return Rejected(DeadLetterReason.MALFORMED_JSON, "not ok")
    return Accepted(message.offset, "ok")


class Recorder(Stage):
    """A stage whose handling of each unit waits until the test releases it, and checks it is alone."""

    name = "recorder"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.inputs = {"inference": accept_ok, "feedback": accept_ok}
        self.handled: list[tuple[str, list[int]]] = []
        self.release = asyncio.Event()
        self.busy = 0

    async def _unit(self, what: str, items: list[int]) -> Effects:
        self.busy += 1
        assert self.busy == 1, "a stage handles one unit at a time"
        await self.release.wait()
        self.handled.append((what, items))
        self.busy -= 1
        return self.effects()

    async def handle(self, batch: Batch, now: float) -> Effects:
        return await self._unit(batch.topic, [accepted.event for _, accepted in batch.accepted])

    async def tick(self, now: float) -> Effects:
        return await self._unit("tick", [])

    async def receive(self, message: Any, now: float) -> Effects:
        return await self._unit("message", [message])


def test_batches_that_arrive_while_the_stage_is_busy_are_merged_in_order() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        rt = runtime()
        rt.max_batch = 5
        stage = rt.add(Recorder(rt))
        await rt.put_batch("inference", [message("inference", 1), message("inference", 2)])
        await asyncio.sleep(0)  # the first batch is taken up, held by the test
        await rt.put_batch("inference", [message("inference", 3)])
        await rt.put_batch("inference", [message("inference", 4), message("inference", 5)])  # joins [3]
        await rt.put_batch("feedback", [message("feedback", 6)])  # another topic: its own batch
        # would exceed max_batch: a new batch
        await rt.put_batch("feedback", [message("feedback", n) for n in range(7, 12)])
        stage.release.set()
        await rt.join()
        return stage.handled

    assert asyncio.run(scenario()) == [
        ("inference", [1, 2]),
        ("inference", [3, 4, 5]),
        ("feedback", [6]),
        ("feedback", [7, 8, 9, 10, 11]),
    ]


def test_put_batch_waits_once_too_many_messages_wait() -> None:
    async def scenario() -> None:
        rt = runtime()
        rt.max_batch, rt.max_waiting = 10, 3
        stage = rt.add(Recorder(rt))
        await rt.put_batch("inference", [message("inference", 1)])
        await asyncio.sleep(0)
        await rt.put_batch("inference", [message("inference", n) for n in (2, 3, 4)])  # 3 wait: the limit
        blocked = asyncio.ensure_future(rt.put_batch("inference", [message("inference", 5)]))
        for _ in range(20):  # give the blocked put every chance to go through
            await asyncio.sleep(0)
        assert not blocked.done(), "the fetch loop must wait for a stage this far behind"
        stage.release.set()
        await asyncio.wait_for(blocked, 5)
        await rt.join()
        assert [m for _, batch in stage.handled for m in batch] == [1, 2, 3, 4, 5]

    asyncio.run(scenario())


def test_join_returns_at_once_when_nothing_was_queued() -> None:
    async def scenario() -> None:
        rt = runtime()
        rt.add(Recorder(rt))
        await asyncio.wait_for(rt.join(), 1)

    asyncio.run(scenario())


def test_ticks_and_messages_share_the_queue_with_batches_and_ticks_do_not_pile_up() -> None:
    async def scenario() -> list[tuple[str, list[Any]]]:
        rt = runtime()
        stage = rt.add(Recorder(rt))
        await rt.put_batch("inference", [message("inference", 1)])
        await asyncio.sleep(0)
        rt.tick("recorder")
        rt.tick("recorder")  # one is waiting already
        rt.post("recorder", "slow result")
        rt.tick("recorder")  # the waiting tick is still there
        stage.release.set()
        await rt.join()
        return stage.handled

    assert asyncio.run(scenario()) == [("inference", [1]), ("tick", []), ("message", ["slow result"])]


class Writer(Stage):
    """A stage whose every batch has outputs, a blocking call, a state write and an after-callback."""

    name = "writer"
    max_in_flight = 1

    def __init__(self, runtime: Runtime, log: list[Any]) -> None:
        super().__init__(runtime)
        self.inputs = {"in": accept_ok}
        self.log = log
        self.table = Table(log)

    async def handle(self, batch: Batch, now: float) -> Effects:
        effects = self.effects()
        for _, accepted in batch.accepted:
            effects.records.add("out", None, b"out-%d" % accepted.event)
            effects.put(self.table, b"k", b"state-%d" % accepted.event)
        effects.calls.append(lambda: self.log.append(("call",)))
        effects.after.append(lambda: self.log.append(("after",)))
        return effects


class Table:
    """A state table that logs its local writes."""

    changelog = "changelog"

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def apply(self, key: bytes, value: bytes | None, partition: int) -> None:
        self.log.append(("local", value))


def test_effects_go_in_one_order_and_rejected_messages_are_dead_lettered_first() -> None:
    async def scenario() -> list[Any]:
        rt = runtime()
        log = rt.app.log  # type: ignore[attr-defined]
        rt.add(Writer(rt, log))
        await rt.put_batch("in", [message("in", 1), message("in", 2, b"{bad")])
        await rt.join()
        return list(log)

    log = asyncio.run(scenario())
    [(_, _, letter)] = [entry for entry in log if entry[:2] == ("sent", "dead")]
    assert json.loads(letter)["reason"] == "malformed_json"
    assert [entry for entry in log if entry[0] != "acked" or entry[1] != "dead"] == [
        ("local", b"state-1"),  # at once: the stage's next unit reads it
        ("sent", "dead", letter),
        ("sent", "out", b"out-1"),
        ("acked", "out", b"out-1"),
        ("call",),  # after the outputs are acknowledged
        ("sent", "changelog", b"state-1"),  # the state is durable only after its outputs
        ("acked", "changelog", b"state-1"),
        ("after",),
        ("ack", 1),  # the input offsets last
        ("ack", 2),
    ]


def test_units_in_flight_are_acked_in_order_and_a_failed_delivery_crashes_the_worker() -> None:
    class Pipelined(Writer):
        max_in_flight = 3

    async def scenario() -> App:
        rt = runtime()
        app: App = rt.app  # type: ignore[assignment]
        rt.add(Pipelined(rt, app.log))
        app.producer.acks.clear()  # the broker holds every acknowledgement
        for offset in (1, 2, 3):
            await rt.put_batch("in", [message("in", offset)])
            await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        handled = [entry for entry in app.log if entry[0] == "local"]
        assert len(handled) == 3, "the next units are handled while the broker has not answered"
        assert not [entry for entry in app.log if entry[0] == "ack"]
        app.producer.acks.set()
        await rt.join()
        return app

    app = asyncio.run(scenario())
    assert [entry for entry in app.log if entry[0] == "ack"] == [("ack", 1), ("ack", 2), ("ack", 3)]
    assert not app.crashed


class Failing(Stage):
    """A stage whose batch handler raises, and whose tick raises once."""

    name = "failing"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.inputs = {"in": accept_ok}
        self.ticks = 0

    async def handle(self, batch: Batch, now: float) -> Effects:
        raise RuntimeError("a bug")

    async def tick(self, now: float) -> Effects:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("a passing problem")
        return self.effects()


def test_a_failing_batch_crashes_the_worker_unacked_and_a_failing_tick_is_logged_and_retried() -> None:
    async def scenario() -> tuple[App, Failing]:
        rt = runtime()
        app: App = rt.app  # type: ignore[assignment]
        stage = rt.add(Failing(rt))
        rt.tick("failing")
        await rt.join()
        rt.tick("failing")
        await rt.join()
        await rt.put_batch("in", [message("in", 7)])
        await rt.join()
        return app, stage

    app, stage = asyncio.run(scenario())
    assert stage.ticks == 2, "the stage carries on after a tick that raised"
    assert [str(error) for error in app.crashed] == ["a bug"]
    assert not [entry for entry in app.log if entry[0] == "ack"], (
        "a failed batch is handled again after restart"
    )


def test_slow_work_comes_back_to_the_stage_as_a_message() -> None:
    class Slow(Recorder):
        async def handle(self, batch: Batch, now: float) -> Effects:
            effects = await super().handle(batch, now)
            effects.background.append(self.work())
            return effects

        async def work(self) -> str:
            await asyncio.sleep(0)
            return "judged"

    async def scenario() -> list[tuple[str, list[Any]]]:
        rt = runtime()
        stage = rt.add(Slow(rt))
        stage.release.set()
        await rt.put_batch("inference", [message("inference", 1)])
        for _ in range(100):
            await rt.join()
            if len(stage.handled) == 2:
                break
            await asyncio.sleep(0)
        return stage.handled

    assert asyncio.run(scenario()) == [("inference", [1]), ("message", ["judged"])]


class _YieldingProducer:
    """Takes every record, but yields to the event loop inside each send, as a real producer may."""

    def __init__(self) -> None:
        self.delivered: list[bytes | None] = []

    async def send(self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any) -> Any:
        await asyncio.sleep(0)
        self.delivered.append(value)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_a_record_added_while_an_outbox_is_sending_is_sent_later_not_lost() -> None:
    """The race of the issue: a shared outbox filled by another coroutine while it sends.

    The old ``Outbox.send`` iterated over its live dict across awaits and then
    cleared it: the new topic's record below raised "dictionary changed size
    during iteration", and a record for a topic already queued was cleared unsent.
    """
    limit = OutputLimit(SETTINGS, Metrics())

    async def scenario() -> list[bytes | None]:
        outbox = Outbox(limit)
        producer = _YieldingProducer()
        outbox.add("detections", None, b"first")
        outbox.add("detections", None, b"second")

        async def meanwhile() -> None:
            await asyncio.sleep(0)
            outbox.add("detections", None, b"from the tick")
            outbox.add("changelog", None, b"from a slow result")

        await asyncio.gather(outbox.send(producer), meanwhile())
        await outbox.send(producer)
        return producer.delivered

    assert sorted(asyncio.run(scenario())) == [b"first", b"from a slow result", b"from the tick", b"second"]


def test_stop_under_traffic_drops_waiting_batches_unacked_and_still_publishes_what_stopping_posts() -> None:
    """faust stops the app while its consumer still fetches: stop must not wait for the backlog."""

    class Busy(Writer):
        async def handle(self, batch: Batch, now: float) -> Effects:
            await asyncio.sleep(0)  # a unit takes a while; batches pile up meanwhile
            return await super().handle(batch, now)

        async def receive(self, message: Any, now: float) -> Effects:
            effects = self.effects()
            effects.records.add("failures", None, message)
            return effects

        async def stop(self) -> None:
            self.runtime.post(self.name, b"a page that failed while stopping")

    async def scenario() -> list[Any]:
        rt = runtime()
        app: App = rt.app  # type: ignore[assignment]
        rt.add(Busy(rt, app.log))
        feeding = True

        async def fetch_loop() -> None:
            offset = 0
            while feeding:
                offset += 1
                await rt.put_batch("in", [message("in", offset)])
                rt.tick("writer")
                await asyncio.sleep(0)

        fetching = asyncio.ensure_future(fetch_loop())
        for _ in range(10):
            await asyncio.sleep(0)
        await asyncio.wait_for(rt.stop(), 5)
        feeding = False
        await fetching
        return app.log

    log = asyncio.run(scenario())
    acked = [entry[1] for entry in log if entry[0] == "ack"]
    handled = [entry[1] for entry in log if entry[0] == "local"]
    assert acked == list(range(1, len(acked) + 1)), "acks stay in order"
    assert len(handled) == len(acked), "every unit handled before the stop is acked; the rest is not handled"
    assert ("acked", "failures", b"a page that failed while stopping") in log


def test_each_stage_records_how_long_a_batch_takes_until_it_is_acked() -> None:
    async def scenario() -> Runtime:
        rt = runtime()
        stage = Recorder(rt)
        rt.add(stage)
        stage.release.set()
        await rt.put_batch("inference", [message("inference", 1), message("inference", 2)])
        rt.tick(stage.name)  # ticks ack nothing: not timed
        await rt.join()
        assert ("ack", 2) in cast(App, rt.app).log
        return rt

    rendered = asyncio.run(scenario()).metrics.render().decode()
    assert metric_total(rendered, "loopwatch_stage_seconds_count", stage="recorder") == 1
    assert metric_total(rendered, "loopwatch_stage_seconds_sum", stage="recorder") > 0
