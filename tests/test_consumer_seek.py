"""faust's seek to the committed offsets after a rebalance, with records the stages took before it.

After a ``kill -9`` the survivor's recovery resumed the flow before it sought
(no table needed recovering), so the stages took the summaries from the
committed offset on; faust's seek then set the read offset back to the
committed one. The records re-fetched were handed over again, and the rest of
the fetch still being handed out, far past the read offset, was taken for a
gap and counted as acked: acked twice, each commit advanced one offset
(tests/test_kill_latency_stream.py failed waiting for the commits). No broker:
the seek to committed is stubbed, the read offsets are faust's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from faust.types import TP

from core.settings import Settings
from streams.app import create_app
from streams.consumer import FastDrainConsumer

SUMMARIES = TP("loopwatch.window-summaries.v1", 7)
COMMITTED = 335


def _seek(tmp_path: Path, delivered: dict[TP, int]) -> FastDrainConsumer:
    app = create_app(Settings(data_dir=tmp_path / "data", join_store="memory", curation=False, decide=False))

    async def run() -> FastDrainConsumer:
        assert isinstance(app.consumer, FastDrainConsumer)
        consumer: Any = app.consumer

        async def seek_to_committed() -> dict[TP, int]:
            return {SUMMARIES: COMMITTED}

        consumer.seek_to_committed = seek_to_committed
        consumer._delivered.update(delivered)
        await consumer.perform_seek()
        return consumer

    return asyncio.run(run())


def test_a_seek_keeps_the_read_offset_of_what_the_stages_took_under_this_assignment(tmp_path: Path) -> None:
    consumer = _seek(tmp_path, {SUMMARIES: 699})  # 335..699 handed to the detect stage before the seek
    # Re-fetched from 335, records up to 699 are skipped as delivered; 700 follows 699 with no gap.
    assert consumer._read_offset[SUMMARIES] == 699
    assert consumer._committed_offset[SUMMARIES] == COMMITTED


def test_a_seek_with_nothing_taken_reads_from_the_committed_offset(tmp_path: Path) -> None:
    consumer = _seek(tmp_path, {})
    assert consumer._read_offset[SUMMARIES] == COMMITTED


def test_records_fetched_around_the_seek_are_handed_over_once_each_with_no_gap(tmp_path: Path) -> None:
    """The survivor's sequence: a fetch from the committed offset, faust's seek amid it, all fetched again."""
    settings = Settings(data_dir=tmp_path / "data", join_store="memory", curation=False, decide=False)
    app = create_app(settings)
    topic = settings.topics.summaries
    tp = TP(topic, 7)
    handed: list[int] = []

    async def run() -> None:
        consumer: Any = app.consumer
        fetcher = SimpleNamespace(_stopped=asyncio.Event())

        async def seek_to_committed() -> dict[TP, int]:
            return {tp: COMMITTED}

        async def put_batch(_topic: str, messages: list[Any]) -> None:
            handed.extend(message.offset for message in messages)

        def records(offsets: range) -> list[tuple[TP, Any]]:
            return [(tp, SimpleNamespace(topic=topic, offset=offset)) for offset in offsets]

        # The first fetch is still being handed out when the seek completes; then all is fetched again.
        fetches = iter([(records(range(335, 345)), records(range(345, 355))), ([], records(range(335, 365)))])

        async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Any]]:
            fetched = next(fetches, None)
            if fetched is None:
                fetcher._stopped.set()
                return
            before, after = fetched
            for record in before:
                yield record
            if before:
                await consumer.perform_seek()
            for record in after:
                yield record

        consumer.seek_to_committed = seek_to_committed
        consumer.getmany = getmany
        consumer.assignment = lambda: {tp}
        cast(Any, app.runtime).put_batch = put_batch
        await consumer._drain_messages(fetcher)
        # No offset was taken for a gap: the commit covers what the stages ack, offset by offset.
        assert not consumer._gap.get(tp)

    asyncio.run(run())
    assert handed == list(range(335, 365))
