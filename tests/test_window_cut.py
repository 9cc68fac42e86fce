"""Issue 16, chunked summaries made cheap: ingest's cut and the merge give the windows they gave before.

Pure code, partials built as ingest builds them (:meth:`BatchSummaries.keeps`, the
stage's one :class:`KeyCut` across batches) and merged as the detect stage merges
them. The reference is the same draws without a cut: every event's row sent, as
since the chunking of trial 17c. With the same seed the closed window must hold
the same rows and count; only the rows sent shrink.
"""

from __future__ import annotations

import heapq
import json
import random

from streams.window_batch import BatchSummaries
from streams.window_sample import KeyCut, Sample
from streams.windows import ClosedWindow, Partial, Windows, WindowSpec
from tests.test_window_dedup import SOURCE

SPEC = WindowSpec(
    seconds=60, grace_seconds=1.0, idle_seconds=30, close="watermark", revision_seconds=300, sample_size=1_000
)
SEGMENT = ("m", "v1", "a", None, None)


def _read(offsets: range, rng: random.Random, cut: KeyCut | None, batch_size: int = 500) -> list[Partial]:
    """The partials of one worker reading ``offsets`` of one source in batches, every event in window 0."""
    partials: list[Partial] = []
    for first in range(offsets.start, offsets.stop, batch_size):
        batch = BatchSummaries(SPEC, 200, rng, cut)
        for offset in range(first, min(first + batch_size, offsets.stop)):
            batch.keeps(SEGMENT, "inference", 1.0 + offset * 0.001, SOURCE, offset, {"offset": offset})
        partials += batch.all()
        if cut is not None:
            cut.expire()
    # As the detect stage reads them: from the summaries topic's JSON.
    return [Partial.from_json(json.loads(json.dumps(p.to_json()))) for p in partials]


def _closed(partials: list[Partial]) -> ClosedWindow:
    windows = Windows(SPEC)
    for partial in partials:
        windows.add(partial, now=0.0, partition=0)
    windows.progress(0, {SOURCE: 1_000.0}, now=1.0)
    [closed] = windows.tick(now=1.0)
    return closed


def _rows(partials: list[Partial]) -> int:
    return sum(len(p.sample) for p in partials)


def test_the_cut_sends_a_third_of_the_rows_and_the_window_keeps_the_same_ones() -> None:
    with_cut = _read(range(10_000), random.Random(7), KeyCut(SPEC.sample_size))
    without = _read(range(10_000), random.Random(7), None)
    assert _rows(without) == 10_000  # chunked: every event's row
    # About 1,000 * (1 + ln 10) = 3,300 rows; 5,000 would mean the cut did little.
    assert _rows(with_cut) < 5_000
    assert all(len(p.sample) <= 200 for p in with_cut)  # a partial still bounds its message
    a, b = _closed(with_cut), _closed(without)
    assert a.seen == b.seen == 10_000
    assert len(a.rows) == SPEC.sample_size
    assert sorted(r["offset"] for r in a.rows) == sorted(r["offset"] for r in b.rows)


def test_a_window_below_its_sample_size_keeps_every_row_with_the_cut() -> None:
    partials = _read(range(900), random.Random(3), KeyCut(SPEC.sample_size))
    closed = _closed(partials)
    assert closed.seen == 900 and sorted(r["offset"] for r in closed.rows) == list(range(900))


def test_a_reread_by_another_worker_with_its_own_cut_counts_and_keeps_each_event_once() -> None:
    # Worker A published offsets 0-2999 and was killed before committing 1500-2999: B reads 1500-4499.
    def both(cut: bool) -> ClosedWindow:
        rng = random.Random(11)
        first = _read(range(3_000), rng, KeyCut(SPEC.sample_size) if cut else None)
        return _closed(first + _read(range(1_500, 4_500), rng, KeyCut(SPEC.sample_size) if cut else None))

    a, b = both(cut=True), both(cut=False)
    offsets = [r["offset"] for r in a.rows]
    assert a.seen == 4_500 and len(offsets) == len(set(offsets)) == SPEC.sample_size
    assert sorted(offsets) == sorted(r["offset"] for r in b.rows)


def test_the_cut_forgets_all_but_the_two_newest_windows() -> None:
    cut = KeyCut(2)
    for window in (1, 5, 6, 7):
        cut.wants(cut.tops(("m", "inference", window)), 0.5)
    cut.expire()
    assert sorted(slot[2] for slot in cut._tops) == [6, 7]


def _merged_before(a: Sample, b: Sample) -> tuple[int, float, list[tuple[float, int]]]:
    """What Sample.merge kept before it pushed only the other's rows: every row pushed again."""
    floor = max(a.floor, b.floor)
    entries = sorted(e for e in a._heap + b._heap if e[0] > floor)
    kept = heapq.nlargest(a.capacity, entries)
    floor = max([floor, *(e[0] for e in entries if e not in kept)])
    return a.seen + b.seen, floor, sorted((key, row["i"]) for key, _, row, _ in kept)


def test_merge_keeps_the_rows_and_floor_it_kept_when_it_pushed_every_row_again() -> None:
    rng = random.Random(5)
    for case in range(300):
        a, b = Sample(rng.choice([5, 50])), Sample(rng.choice([5, 50]))
        for i in range(rng.randrange(120)):
            a.offer({"i": i}, rng)
        for i in range(1_000, 1_000 + rng.randrange(120)):
            b.offer({"i": i}, rng)
        if case % 3 == 0:  # a floor from a cut: the other's floor above some of this one's rows
            b.let_go(rng.random())
        expected = _merged_before(a, b)
        a.merge(b)
        assert (a.seen, a.floor, sorted((key, row["i"]) for key, row in a.entries)) == expected
        assert all(key > a.floor for key, _ in a.entries)
        heap = [entry[:2] for entry in a._heap]
        assert all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap)))  # still a heap


def test_keeps_with_a_cut_draws_what_wants_does() -> None:
    # The stage's path and the public one agree with the cut too (the same draws, rows and floors).
    fast = BatchSummaries(SPEC, 200, random.Random(2), KeyCut(SPEC.sample_size))
    plain = BatchSummaries(SPEC, 200, random.Random(2), KeyCut(SPEC.sample_size))
    segment = dict(zip(("model", "model_version", "app", "route", "tenant"), SEGMENT, strict=True))
    for offset in range(3_000):
        fast.keeps(SEGMENT, "inference", 1.0, SOURCE, offset, {"offset": offset})
        wanted = plain.wants(segment, "inference", 1.0, (SOURCE, offset))
        if wanted is not None:
            wanted[0].sample.keep({"offset": offset}, wanted[1], (SOURCE, offset))
    assert [p.to_json() for p in fast.all()] == [p.to_json() for p in plain.all()]
    # One batch of 3,000 events of a 1,000-row window: the cut let some go, and every one is counted.
    assert _rows(fast.all()) < 3_000 and any(p.sample.floor > 0 for p in fast.all())
    assert sum(p.sample.seen for p in fast.all()) == 3_000


def test_count_windows_have_no_cut() -> None:
    # Every count window has id 0 and closes by count, which ingest does not see: a cut kept across
    # windows would let rows of the next window go.
    spec = WindowSpec(seconds=None, events=100, sample_size=50)
    batch = BatchSummaries(spec, 200, random.Random(1), KeyCut(spec.sample_size))
    for offset in range(500):
        batch.keeps(SEGMENT, "inference", 1.0, SOURCE, offset, {"offset": offset})
    [partial] = batch.all()
    assert batch.cut is None and partial.sample.seen == 500 and len(partial.sample) == 50
