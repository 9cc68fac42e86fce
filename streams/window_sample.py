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

    def let_go(self, key: float) -> None:
        """An event counted under ``key`` (from :meth:`wants`) is not kept after all: its key is a floor."""
        if key > self.floor:
            self.floor = key

    def __len__(self) -> int:
        """How many rows it holds."""
        return len(self._heap)

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
        heap = self._heap
        if heap and heap[0][0] <= self.floor:  # the other's floor cuts into this one's rows
            heap = self._heap = [entry for entry in heap if entry[0] > self.floor]
            heapq.heapify(heap)
        # Only the other's rows are pushed: re-pushing this one's whole sample for each partial a
        # window merged was about a fifth of the detect stage's time in a profile of the ingest bench.
        # The rows kept and the floor are the same; their order in the heap is not (it was none).
        for key, _, row, origin in other._heap:
            if key > self.floor:
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


class KeyCut:
    """Per time window, the ``size`` largest keys one ingest process drew: below them, no row is wanted.

    A window's sample is its ``size`` events with the largest keys. Once this
    process alone has counted ``size`` events of a window, an event whose key
    is below all of theirs can never be in that sample, so ingest lets it go
    (:meth:`Sample.let_go`: its key raises its partial's floor, and the
    partial stays "every event above its floor") instead of building, sending
    and merging a row the window would evict. The window comes out the same;
    a window of N events costs about ``size * (1 + ln(N / size))`` rows
    instead of N (trial 17c's chunking had made it N). Should the window take
    the events that set the cut out as counted already (input read twice), the
    floors keep its sample uniform, if smaller, as a partial's own floor did.

    Forgetting a window's keys is always safe (its next events are all kept,
    as without a cut), so only the two newest windows are remembered.

    >>> cut = KeyCut(2)
    >>> tops = cut.tops(("m|v1||||", "inference", 7))
    >>> [cut.wants(tops, key) for key in (0.5, 0.2, 0.1, 0.9, 0.3)]
    [True, True, False, True, False]
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._tops: dict[tuple[str, str, int], list[float]] = {}
        self._newest: int | None = None

    def tops(self, slot: tuple[str, str, int]) -> list[float]:
        """The largest keys drawn for ``slot`` (segment key, kind, window id): what :meth:`wants` is given."""
        tops = self._tops.get(slot)
        if tops is None:
            tops = self._tops[slot] = []
            self._newest = slot[2] if self._newest is None else max(self._newest, slot[2])
        return tops

    def wants(self, tops: list[float], key: float) -> bool:
        """Whether an event drawing ``key`` may be in its window's sample (then ``key`` joins ``tops``)."""
        if len(tops) < self.size:
            heapq.heappush(tops, key)
            return True
        if key > tops[0]:
            heapq.heapreplace(tops, key)
            return True
        return False

    def expire(self) -> None:
        """Forget the windows before the newest two (by window id) seen."""
        newest = self._newest
        if newest is not None:
            self._tops = {slot: tops for slot, tops in self._tops.items() if slot[2] >= newest - 1}
