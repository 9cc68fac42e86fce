"""faust's table recovery when a rebalance lands while it runs (issue 17, trial 17d's crash).

A third worker joined while the survivor of a ``kill -9`` was recovering; the
survivor died with ``ValueError('Offset must be a positive integer')`` from
aiokafka's ``seek``. These tests drive faust's Recovery through the steps its
``_restart_recovery`` takes (see streams/recovery.py for the faust lines):
the first rebalance's offsets are built, a second rebalance brings a standby
changelog partition, and the stale recovery seeks the standbys. No broker: a
stub consumer answers the two calls involved, and checks offsets with
aiokafka's own ``seek``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer
from faust.tables.recovery import RebalanceAgain, Recovery
from faust.types import TP

from core.settings import Settings
from streams.app import LoopwatchApp, create_app
from streams.recovery import SafeSeekRecovery

# A changelog partition's earliest offset on the broker: records before it were compacted away.
EARLIEST = {0: 0, 1: 7}


class _Consumer:
    """The consumer calls of faust's offset building and seeking; aiokafka's ``seek`` checks each offset."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.sought: dict[TP, int] = {}
        self._fetcher = self  # what AIOKafkaConsumer.seek hands a valid offset to

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        """The broker's earliest offset of each partition."""
        return {tp: EARLIEST[tp.partition] for tp in tps}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        """Seek as faust's aiokafka driver does: aiokafka's ``seek`` for each partition."""
        for tp, offset in partitions.items():
            AIOKafkaConsumer.seek(cast(Any, self), tp, offset)

    def seek_to(self, tp: TP, offset: int) -> None:
        """Where aiokafka's ``seek`` moves a partition."""
        self.sought[tp] = offset


def _app(tmp_path: Path) -> LoopwatchApp:
    return create_app(Settings(data_dir=tmp_path / "data", join_store="memory", curation=False, decide=False))


async def _rebalance(app: LoopwatchApp, recovery: Recovery, generation: int, standbys: set[TP]) -> None:
    """A rebalance as faust's table manager reports it, giving this worker ``standbys``."""
    app.consumer_generation_id = generation
    app.assignor.assigned_standbys = lambda: set(standbys)  # type: ignore[method-assign]
    app.assignor.assigned_actives = lambda: set()  # type: ignore[method-assign]
    await recovery.on_rebalance(set(standbys), set(), set(), generation)


async def _stale_recovery(
    app: LoopwatchApp, recovery: Recovery, seek: Callable[[Coroutine[Any, Any, None]], Any]
) -> _Consumer:
    """Generation 1's recovery builds its standby offsets; generation 2 adds a standby; the seek follows."""
    table = next(iter(app.tables.values()))
    topic = table.changelog_topic.get_topic_name()
    first, second = TP(topic, 0), TP(topic, 1)
    consumer = _Consumer(topic)
    stub = cast(Any, consumer)
    await _rebalance(app, recovery, 1, {first})
    recovery.signal_recovery_start.clear()  # what _restart_recovery does when it starts
    await recovery._build_offsets(stub, recovery.standby_tps, recovery.standby_offsets, "standby")
    await _rebalance(app, recovery, 2, {first, second})  # a worker joins while the actives are read
    assert recovery.standby_offsets[second] is None  # faust's mark of "no known offset"
    await seek(recovery._seek_offsets(stub, recovery.standby_tps, recovery.standby_offsets, "standby"))
    return consumer


def test_the_app_recovers_its_tables_with_the_safe_seek(tmp_path: Path) -> None:
    app = _app(tmp_path)

    async def recovery() -> Recovery:
        return cast(Any, app.tables).recovery

    assert isinstance(asyncio.run(recovery()), SafeSeekRecovery)


@pytest.mark.parametrize("under_wait", [False, True], ids=["seek", "seek-under-wait"])
def test_faust_seeks_a_standby_added_mid_recovery_to_none(tmp_path: Path, under_wait: bool) -> None:
    """The crash, with faust's own Recovery (failing once faust fixes it: then drop the override).

    Under ``_wait`` the second rebalance's signal is set, yet the seek's error is raised, not RebalanceAgain.
    """
    app = _app(tmp_path)

    async def run() -> None:
        recovery = Recovery(app, app.tables)
        await _stale_recovery(app, recovery, recovery._wait if under_wait else lambda coro: coro)

    with pytest.raises(ValueError, match="Offset must be a positive integer"):
        asyncio.run(run())


def test_a_standby_added_mid_recovery_is_read_from_its_earliest_offset(tmp_path: Path) -> None:
    app = _app(tmp_path)

    async def run() -> _Consumer:
        return await _stale_recovery(app, cast(Any, app.tables).recovery, lambda coro: coro)

    consumer = asyncio.run(run())
    topic = consumer.topic
    # faust's convention: the offset kept is the one before the first to read; -1 is sought as 0.
    assert consumer.sought == {TP(topic, 0): 0, TP(topic, 1): EARLIEST[1] - 1}


def test_the_pending_rebalance_then_restarts_the_recovery_instead_of_crashing(tmp_path: Path) -> None:
    """In the worker the seek runs under faust's ``_wait``, with the second rebalance's signal still set."""
    app = _app(tmp_path)

    async def run() -> None:
        recovery = cast(Any, app.tables).recovery
        await _stale_recovery(app, recovery, recovery._wait)

    with pytest.raises(RebalanceAgain):
        asyncio.run(run())
