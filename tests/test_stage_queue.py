"""StageQueue: a stage's batches in order, one at a time, merged while it is busy, with back-pressure."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.consumer import StageQueue


class Recorder:
    """A stage whose handling of each batch waits until the test releases it."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, list[int]]] = []
        self.release = asyncio.Event()
        self.busy = 0

    async def handle(self, handler: Any, messages: list[Any]) -> None:
        self.busy += 1
        assert self.busy == 1, "a stage handles one batch at a time"
        await self.release.wait()
        self.handled.append((handler.__name__, list(messages)))
        self.busy -= 1


async def inference(messages: list[Any]) -> None: ...


async def feedback(messages: list[Any]) -> None: ...


def test_batches_that_arrive_while_the_stage_is_busy_are_merged_in_order() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        stage = Recorder()
        queue = StageQueue(stage.handle, max_batch=5, max_waiting=100)
        await queue.put(inference, [1, 2])  # starts at once, held by the test
        await asyncio.sleep(0)
        await queue.put(inference, [3])
        await queue.put(inference, [4, 5])  # joins [3]
        await queue.put(feedback, [6])  # another handler: its own batch
        await queue.put(feedback, [7, 8, 9, 10, 11])  # would exceed max_batch: a new batch
        stage.release.set()
        await queue.join()
        return stage.handled

    assert asyncio.run(scenario()) == [
        ("inference", [1, 2]),
        ("inference", [3, 4, 5]),
        ("feedback", [6]),
        ("feedback", [7, 8, 9, 10, 11]),
    ]


def test_put_waits_once_too_many_messages_wait() -> None:
    async def scenario() -> None:
        stage = Recorder()
        queue = StageQueue(stage.handle, max_batch=10, max_waiting=3)
        await queue.put(inference, [1])
        await asyncio.sleep(0)
        await queue.put(inference, [2, 3, 4])  # now 3 wait: the limit
        blocked = asyncio.ensure_future(queue.put(inference, [5]))
        await asyncio.sleep(0.05)
        assert not blocked.done(), "the fetch loop must wait for a stage this far behind"
        stage.release.set()
        await asyncio.wait_for(blocked, 5)
        await queue.join()
        assert [m for _, batch in stage.handled for m in batch] == [1, 2, 3, 4, 5]

    asyncio.run(scenario())


def test_join_returns_at_once_when_nothing_was_queued() -> None:
    async def scenario() -> None:
        queue = StageQueue(Recorder().handle, max_batch=10, max_waiting=10)
        await asyncio.wait_for(queue.join(), 1)

    asyncio.run(scenario())
