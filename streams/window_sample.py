"""The bounded uniform sample of a window's rows (a bottom-k reservoir): :class:`Sample` (no Kafka in here).

Split out of :mod:`streams.windows`, which merges and closes the windows
these samples belong to.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from streams.window_dedup import Origin


class Sample:
    """A bounded uniform sample of rows (a bottom-k reservoir), mergeable with other samples.

    Every event draws a random key and the sample keeps the rows with the
    largest keys. ``floor`` is the largest key it ever let go: every event
    with a key above it is in the sample. Merging keeps the rows above both
    floors, so the result is again "all events above a floor", a uniform
    sample of the union, however unequal the parts were.

    >>> rng = random.Random(0)
    >>> a, b = Sample(capacity=3), Sample(capacity=3)
    >>> for i in range(10):
    ...     a.offer({"i": i}, rng)
    >>> for i in range(100):
    ...     b.offer({"i": i}, rng)
    >>> a.seen, b.seen, len(a.rows)
    (10, 100, 3)
    >>> a.merge(b); a.seen, len(a.rows)
    (110, 3)
    """

    def __init__(
        self,
        capacity: int,
        seen: int = 0,
        entries: list[tuple[float, dict[str, Any]]] | None = None,
        floor: float = 0.0,
        origins: list[Origin | None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.seen = seen
        self.floor = floor
        self._counter = itertools.count()
        # (key, tie-breaker, row, where its event came from: streams.window_dedup)
        self._heap: list[tuple[float, int, dict[str, Any], Origin | None]] = []
        for (key, row), origin in zip(entries or [], origins or itertools.repeat(None), strict=False):
            self._push(key, row, origin)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The sampled rows (in no particular order)."""
        return [row for _, _, row, _ in self._heap]

    @property
    def entries(self) -> list[tuple[float, dict[str, Any]]]:
        """The sampled rows with their keys."""
        return [(key, row) for key, _, row, _ in self._heap]

    @property
    def origins(self) -> list[Origin | None]:
        """Where each entry's event came from, in the order of :attr:`entries` (None: not known)."""
        return [origin for _, _, _, origin in self._heap]

    def wants(self, rng: random.Random) -> float | None:
        """Count one more event; return its key if its row should be kept.

        Callers ask first and build the row only when it is wanted: most
        events of a busy window are never materialised.
        """
        self.seen += 1
        key = rng.random()
        heap = self._heap
        if len(heap) < self.capacity or key > heap[0][0]:
            return key
        if key > self.floor:  # max() with no call: this runs for most events of a busy window
            self.floor = key
        return None

    def keep(self, row: dict[str, Any], key: float, origin: Origin | None = None) -> None:
        """Keep ``row`` under the key :meth:`wants` returned (``origin``: its event's source and offset)."""
        self._push(key, row, origin)

    def offer(self, row: dict[str, Any], rng: random.Random) -> None:
        """Count an event and keep its row if the sample wants it."""
        key = self.wants(rng)
        if key is not None:
            self.keep(row, key)

    def merge(self, other: Sample) -> None:
        """Fold ``other`` in; the result is a uniform sample of both populations."""
        self.seen += other.seen
        self.floor = max(self.floor, other.floor)
        entries = [entry for entry in self._heap + other._heap if entry[0] > self.floor]
        self._heap = []
        for key, _, row, origin in entries:
            self._push(key, row, origin)

    def drop(self, counted: Callable[[Origin | None], bool]) -> None:
        """Drop the entries whose event ``counted`` says was counted already (the count is the caller's)."""
        kept = [entry for entry in self._heap if not counted(entry[3])]
        if len(kept) < len(self._heap):
            self._heap = kept
            heapq.heapify(self._heap)

    def build_rows(self, build: Callable[[Any], dict[str, Any]]) -> None:
        """Replace each kept row by ``build(row)``: rows kept as what makes them, made for the survivors only.

        A batch's sample takes about a third of its events into the heap and
        evicts most of them again; :class:`~streams.windows.BatchSummaries`
        keeps the event instead and ingest builds the rows of the survivors
        when it publishes. Keys, tie-breakers and the heap's order stay.
        """
        self._heap = [(key, tie, build(row), origin) for key, tie, row, origin in self._heap]

    def _push(self, key: float, row: dict[str, Any], origin: Origin | None = None) -> None:
        entry = (key, next(self._counter), row, origin)
        heap = self._heap
        if len(heap) < self.capacity:
            heapq.heappush(heap, entry)
        else:
            evicted = heapq.heappushpop(heap, entry)[0]
            if evicted > self.floor:
                self.floor = evicted
