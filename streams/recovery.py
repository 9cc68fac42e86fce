"""faust's table recovery, made safe against a rebalance that lands while a recovery runs.

faust 0.15.3 (``faust/tables/recovery.py``, unchanged upstream) crashed a worker
with ``ValueError('Offset must be a positive integer')`` from aiokafka's
``seek`` (trial 17d: a third worker joined while the survivor of a ``kill -9``
was still recovering). The path:

1. ``Recovery.on_rebalance`` refills, in place, the very ``standby_tps`` set a
   running ``_restart_recovery`` holds, and gives every changelog partition
   new to the worker the offset ``None`` (``_add``: ``offsets.setdefault(tp,
   None)``; the stores loopwatch uses have no persisted offset for it). Only
   ``_build_offsets`` turns ``None`` into a real offset.
2. That rebalance sets ``signal_recovery_start``, which ``_wait`` turns into
   ``RebalanceAgain``; but while the actives are read (``await
   self._wait(self.signal_recovery_end.wait())``) an ``except Exception``
   swallows it, so the stale recovery goes on to seek the standbys, with the
   new set, without building their offsets.
3. ``_seek_offsets`` maps only ``-1`` to ``0`` and hands ``None`` to aiokafka,
   which raises. ``mode``'s ``wait_first`` raises a finished coroutine's
   exception before it looks at the rebalance signal, so whether faust
   restarts the recovery or crashes depends on which finishes first: hence
   one crash in two runs.

:class:`SafeSeekRecovery` builds the offsets of such partitions the way faust
does for any fresh partition (from the earliest offset the broker still has)
before seeking, so every partition is still recovered and none is skipped;
faust then notices the rebalance at the next wait and restarts the recovery
as it intended. :class:`LoopwatchTableManager` is how the app uses it.
"""

from __future__ import annotations

import logging
from collections import Counter

from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.types.transports import ConsumerT

log = logging.getLogger("loopwatch.recovery")


class SafeSeekRecovery(Recovery):
    """faust's Recovery, which never seeks a changelog partition to an offset it did not build."""

    async def _seek_offsets(
        self, consumer: ConsumerT, tps: set[TP], offsets: Counter[TP], title: str
    ) -> None:
        unbuilt = {tp for tp in tps if tp in offsets and offsets[tp] is None}
        if unbuilt:
            log.info(
                "%s changelog partitions %s came with a rebalance during recovery: "
                "reading them from their earliest offset",
                title,
                sorted((tp.topic, tp.partition) for tp in unbuilt),
            )
            await self._build_offsets(consumer, unbuilt, offsets, title)
        await super()._seek_offsets(consumer, tps, offsets, title)


class LoopwatchTableManager(TableManager):
    """faust's TableManager, whose tables recover with :class:`SafeSeekRecovery`."""

    @property
    def recovery(self) -> Recovery:
        """The recovery service of this app's tables (created on first use, as faust does)."""
        if self._recovery is None:
            self._recovery = SafeSeekRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
