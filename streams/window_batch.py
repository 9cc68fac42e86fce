"""The partials of one ingest batch: :class:`BatchSummaries` (no Kafka in here).

Split out of :mod:`streams.windows`, which merges the partials this builds
and closes their windows.
"""

from __future__ import annotations

import math
import random
from typing import Any

from streams.watermarks import Source
from streams.window_dedup import Origin, add_offset
from streams.window_sample import KeyCut, Sample
from streams.windows import SEGMENT_PARTS, Partial, WindowKind, WindowSpec, segment_key


class BatchSummaries:
    """Partials of one ingest batch: per (segment, kind, window), one for every ``rows_per_partial`` rows.

    A partial keeps the row of each of its events, up to ``rows_per_partial``
    (which bounds a summary message). When that is below the window's
    ``sample_size``, the slot's next events go to a fresh partial: one partial
    of 600 events would keep a third of them, and a window merging it keeps
    only rows above that partial's floor, a uniform sample but far smaller
    than ``sample_size`` (trial 17c: 368 rows of a 1,051-event window after a
    backlog). With a ``cut`` (ingest's, kept across batches) an event no window
    sample can want is counted without a row (:class:`~streams.window_sample.KeyCut`).
    """

    def __init__(
        self, spec: WindowSpec, rows_per_partial: int, rng: random.Random, cut: KeyCut | None = None
    ) -> None:
        self.spec = spec
        self.capacity = min(rows_per_partial, spec.sample_size)
        # A partial as large as the window's sample thins nothing the window would keep.
        self._fills_at = self.capacity if self.capacity < spec.sample_size else math.inf
        self.rng = rng
        # Count windows all have id 0 and close by count, which ingest does not see: no cut for them.
        self.cut = cut if spec.seconds is not None else None
        #: The partial each slot counts its next event into.
        self.partials: dict[tuple[str, WindowKind, int], Partial] = {}
        #: Partials that filled (``capacity`` rows, below ``sample_size``), in the order they filled.
        self.filled: list[Partial] = []
        # keeps(): (segment values, kind, window, source) -> the partial, its runs of that source and
        # the cut's keys of its window.
        self._found: dict[
            tuple[tuple[str | None, ...], str, int, Source],
            tuple[Partial, list[list[int]], list[float] | None],
        ] = {}

    def wants(
        self, segment: dict[str, str | None], kind: WindowKind, timestamp: float, origin: Origin | None = None
    ) -> tuple[Partial, float] | None:
        """Count an event (read at ``origin``: source, offset); return where to keep its row if wanted."""
        partial, tops = self._partial(segment, kind, self.spec.window_id(timestamp), timestamp)
        if origin is not None:
            add_offset(partial.counted.setdefault(origin[0], []), origin[1])
        key = partial.sample.wants(self.rng)
        return None if key is None or not self._cut_wants(partial, tops, key) else (partial, key)

    def keeps(
        self,
        segment: tuple[str | None, ...],
        kind: WindowKind,
        timestamp: float,
        source: Source,
        offset: int,
        row: Any,
    ) -> None:
        """:meth:`wants` then :meth:`Sample.keep` in one call, for ingest: the same draws, the same partials.

        ``segment`` holds the values of :data:`SEGMENT_PARTS`; the event was read at
        ``offset`` of ``source``. ``row`` is kept as it is, if wanted: what ingest
        turns into the row when it publishes (:meth:`Sample.build_rows`), so that
        no row is built for the events the sample lets go. Per event this looks
        up one dict instead of building the segment, its key and the slot.
        """
        window_id = self.spec.window_id(timestamp)
        found = self._found.get((segment, kind, window_id, source))
        if found is None or len(found[0].sample) >= self._fills_at:
            partial, tops = self._partial(
                dict(zip(SEGMENT_PARTS, segment, strict=True)), kind, window_id, timestamp
            )
            found = self._found[segment, kind, window_id, source] = (
                partial,
                partial.counted.setdefault(source, []),
                tops,
            )
        else:
            partial = found[0]
            partial.saw(timestamp)
        add_offset(found[1], offset)
        key = partial.sample.wants(self.rng)
        if key is not None and self._cut_wants(partial, found[2], key):
            partial.sample.keep(row, key, (source, offset))

    def _cut_wants(self, partial: Partial, tops: list[float] | None, key: float) -> bool:
        """Whether the cut lets the event drawing ``key`` keep a row (if not, ``key`` is a floor)."""
        if self.cut is None or tops is None or self.cut.wants(tops, key):
            return True
        partial.sample.let_go(key)
        return False

    def all(self) -> list[Partial]:
        """Every partial of the batch, to publish."""
        return [*self.filled, *self.partials.values()]

    def _partial(
        self, segment: dict[str, str | None], kind: WindowKind, window_id: int, timestamp: float
    ) -> tuple[Partial, list[float] | None]:
        """The partial of a slot (new on its first event or once the last one filled) and the cut's keys."""
        slot = (segment_key(segment), kind, window_id)
        partial = self.partials.get(slot)
        if partial is not None and len(partial.sample) >= self._fills_at:
            self.filled.append(partial)
            partial = None
        if partial is None:
            partial = self.partials[slot] = Partial(
                segment, kind, window_id, timestamp, timestamp, Sample(self.capacity)
            )
        else:
            partial.saw(timestamp)
        return partial, None if self.cut is None else self.cut.tops(slot)
