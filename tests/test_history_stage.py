"""The history stage without a broker, and a topic that two stages read (acked once both are done)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faust.types.tuples import Message

from core.settings import Settings
from curation.history_store import HistoryStore
from streams.history_stage import HistoryStage
from streams.metrics import Metrics, metric_total
from streams.runtime import Runtime
from tests.test_history import action, alert, detection, letter
from tests.test_runtime import Recorder, runtime


def kafka_message(topic: str, offset: int, value: bytes) -> Message:
    """A consumer message as faust's aiokafka driver hands it over (its refcount included)."""
    return Message(topic, 0, offset, 0.0, 0, [], None, value, None)


def test_a_topic_two_stages_read_is_acked_once_both_handled_it_and_dead_lettered_once() -> None:
    class First(Recorder):
        name = "first"

    class Second(Recorder):
        name = "second"

    async def scenario() -> list[Any]:
        rt = runtime()
        first, second = rt.add(First(rt)), rt.add(Second(rt))
        batch = [kafka_message("inference", 1, b"ok"), kafka_message("inference", 2, b"bad")]
        await rt.put_batch("inference", batch)
        first.release.set()
        await rt.queues["first"].join()
        acked_by_one = list(rt.app.log)  # type: ignore[attr-defined]
        second.release.set()
        await rt.join()
        assert first.handled == second.handled == [("inference", [1])]
        return [acked_by_one, rt.app.log]  # type: ignore[attr-defined]

    acked_by_one, log = asyncio.run(scenario())
    assert not [entry for entry in acked_by_one if entry[0] == "ack"]
    assert [entry for entry in log if entry[0] == "ack"] == [("ack", 1), ("ack", 2)]
    assert len([entry for entry in log if entry[:2] == ("sent", "dead")]) == 1  # by the first reader only


def _stage(tmp_path: Path) -> tuple[Runtime, HistoryStage, Metrics]:
    rt = runtime()
    settings = Settings(history_root=str(tmp_path / "history"))
    stage = HistoryStage(rt, settings, rt.metrics)
    rt.add(stage)
    return rt, stage, rt.metrics


def test_each_input_topic_becomes_rows_of_its_table_written_before_the_ack(tmp_path: Path) -> None:
    rt, _, metrics = _stage(tmp_path)
    topics = Settings().topics
    inputs = {
        topics.detections: [detection(1).model_dump_json().encode(), detection(2).model_dump_json().encode()],
        topics.alerts: [alert().model_dump_json().encode(), b"{not json"],
        topics.rollback_requests: [action(1).model_dump_json().encode()],
        topics.promotion_requests: [action(2).model_dump_json().encode()],
        topics.deadletter: [letter(0).letter.model_dump_json().encode()],
    }

    async def scenario() -> None:
        for topic, values in inputs.items():
            await rt.put_batch(topic, [kafka_message(topic, n, v) for n, v in enumerate(values)])
        await rt.join()

    asyncio.run(scenario())
    store = HistoryStore(tmp_path / "history")
    counts = {table: store.read(table).num_rows for table in ("windows", "detections", "alerts", "actions")}
    assert counts == {"windows": 1, "detections": 2, "alerts": 1, "actions": 2}
    assert sorted(store.read("actions").column("topic").to_pylist()) == sorted(
        [topics.rollback_requests, topics.promotion_requests]
    )
    # The bad alert was dead-lettered (sent before the acks), every message acked after its write.
    log = rt.app.log  # type: ignore[attr-defined]
    dead = [entry for entry in log if entry[:2] == ("sent", "dead")]
    assert len(dead) == 1 and b"malformed_json" in dead[0][2]
    assert len([entry for entry in log if entry[0] == "ack"]) == sum(map(len, inputs.values()))
    assert metric_total(metrics.render().decode(), "loopwatch_history_rows_total", table="detections") == 2
    assert sum(store.read("deadletters").column("count").to_pylist()) == 1


def test_maintenance_waits_for_its_interval(tmp_path: Path) -> None:
    _, stage, _ = _stage(tmp_path)
    stage._maintainer = lambda: True  # type: ignore[method-assign]
    assert not asyncio.run(stage.tick(0.0)).calls  # the first one comes an interval after start
    stage.maintained -= stage.compact_seconds
    assert asyncio.run(stage.tick(0.0)).calls == [stage._maintain]
    assert not asyncio.run(stage.tick(0.0)).calls
