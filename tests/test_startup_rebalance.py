"""A rebalance loses no summary: stale messages are left unacked, fresh ones merged (trial 17a finding 3).

Two ways a rebalance right after start-up lost part of the first windows, both
by a summary skipped and acked: faust forgets a revoked partition's committed
offset, so on its next assignment (to the same worker too: every rebalance
revokes everything) the ack was committed and nobody merged the summary.

- A summary fetched under the revoked assignment and still queued: the
  runtime now neither hands it to the stage nor acks it (as faust's streams
  skip a message of another generation); the next owner reads it again.
- A summary fetched under the new assignment while faust still said it was
  rebalancing (the moment between resuming the fetch and the end of the
  rebalance): the detect stage skipped it as revoked; now such a summary
  means the new assignment is complete, and it is merged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.ingest import Accepted
from streams.runtime import Batch, Effects, Stage
from tests.test_runtime import runtime
from tests.test_window_marks import END, _batch, _minute, _stage


class _Handled(Stage):
    """A stage that records the offsets it was handed."""

    name = "handled"

    def __init__(self, rt: Any) -> None:
        super().__init__(rt)
        self.inputs = {"summaries": lambda message, now: Accepted(message.offset, "x")}
        self.offsets: list[int] = []

    async def handle(self, batch: Batch, now: float) -> Effects:
        self.offsets.extend(message.offset for message in batch.messages)
        return self.effects()


def _fetched(offset: int, generation: int) -> Any:
    return SimpleNamespace(
        topic="summaries",
        partition=0,
        offset=offset,
        key=None,
        value=b"x",
        headers=[],
        generation_id=generation,
    )


def test_messages_fetched_under_a_revoked_assignment_are_neither_handled_nor_acked() -> None:
    rt = runtime()
    stage = rt.add(_Handled(rt))
    assert isinstance(stage, _Handled)

    async def run() -> None:
        app: Any = rt.app
        app.consumer_generation_id = 4
        await rt.put_batch("summaries", [_fetched(1, 4), _fetched(2, 4)])
        await rt.join()
        rt.revoked()  # faust gives the assignment of generation 4 up; these were still queued
        await rt.put_batch("summaries", [_fetched(3, 4), _fetched(4, 4)])
        await rt.join()
        app.consumer_generation_id = 5
        rt.assigned()
        await rt.put_batch("summaries", [_fetched(5, 4)])  # still queued from generation 4
        await rt.put_batch("summaries", [_fetched(3, 5)])  # read again under generation 5
        await rt.join()

    asyncio.run(run())
    assert stage.offsets == [1, 2, 3]
    assert [entry for entry in rt.app.log if entry[0] == "ack"] == [("ack", 1), ("ack", 2), ("ack", 3)]  # type: ignore[attr-defined]


def test_a_summary_of_the_new_assignment_is_merged_while_faust_still_says_rebalancing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path, monkeypatch, owned={3})
    topic = stage.settings.topics.summaries
    asyncio.run(stage._on_revoked(stage.app, {TP(topic, 3)}, signal=None))
    # Partition 3 is assigned again (here, to the same worker) and its fetch resumed; faust ends
    # the rebalance a moment later. The runtime hands over nothing fetched before the revocation.
    monkeypatch.setattr(stage.app, "rebalancing", True)
    merged = asyncio.run(stage.handle(_batch(stage, (7, _minute(0, 40, 1, a=END - 10))), 100.0))
    assert [p.sample.seen for p in stage.windows.open.values()] == [40]
    assert [write.partition for write in merged.writes] == [3, 3]  # its entry and watermarks: durable
    assert stage.revoked == set() and stage.assigned == {3}
