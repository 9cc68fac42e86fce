"""A summary not merged because its partition was revoked is never acked (issue 17, trial 17a finding 3).

faust forgets a revoked partition's committed offset and starts its acks
afresh; on the partition's next assignment (to this worker too: the eager
protocol revokes everything) its commit timer commits whatever was acked
since, before it seeks back to the committed offset. A summary the detect
stage skipped as revoked and acked anyway was committed that way and merged
by no one: its window was judged without those events, and nothing revised it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from streams.ingest import Accepted
from streams.runtime import Batch, Effects, Stage
from tests.test_runtime import message, runtime
from tests.test_window_marks import END, _batch, _minute, _stage


class _Skipper(Stage):
    """A stage that leaves the messages of odd offsets unacked."""

    name = "skipper"

    def __init__(self, rt: Any) -> None:
        super().__init__(rt)
        self.inputs = {"summaries": lambda message, now: Accepted(message.offset, "x")}

    async def handle(self, batch: Batch, now: float) -> Effects:
        effects = self.effects()
        effects.unacked.extend(m for m in batch.messages if m.offset % 2)
        return effects


def test_the_runtime_acks_every_message_of_a_unit_but_those_it_left_unacked() -> None:
    rt = runtime()
    rt.add(_Skipper(rt))

    async def run() -> None:
        await rt.put_batch("summaries", [message("summaries", n) for n in range(1, 6)])
        await rt.join()

    asyncio.run(run())
    assert [entry for entry in rt.app.log if entry[0] == "ack"] == [("ack", 2), ("ack", 4)]  # type: ignore[attr-defined]


def test_a_batch_of_a_revoked_partition_is_left_unacked_and_merged_when_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path, monkeypatch, owned={3})
    topic = stage.settings.topics.summaries
    asyncio.run(stage._on_revoked(stage.app, {TP(topic, 3)}, signal=None))
    # Queued before the revocation, handled after it while the group rebalances: not merged, not acked.
    monkeypatch.setattr(stage.app, "rebalancing", True)
    queued = _batch(stage, (7, _minute(0, 40, 1, a=END - 10)))
    skipped = asyncio.run(stage.handle(queued, 100.0))
    assert skipped.unacked == queued.messages and stage.windows.open == {} and not skipped.writes
    # The partition comes back (here, to the same worker): read again from the committed offset, merged.
    monkeypatch.setattr(stage.app, "rebalancing", False)
    again = asyncio.run(stage.handle(_batch(stage, (7, _minute(0, 40, 1, a=END - 10))), 101.0))
    assert again.unacked == [] and [p.sample.seen for p in stage.windows.open.values()] == [40]
