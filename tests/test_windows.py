"""Mergeable window summaries: samples stay uniform, windows close on time and on count."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from scipy import stats

from streams.window_batch import BatchSummaries
from streams.windows import Partial, Sample, Windows, WindowSpec, segment_key

SEGMENT = {"model": "m", "model_version": "1", "app": None, "route": None, "tenant": None}


def _partial(window_id: int, count: int, start: float, spec: WindowSpec, rng: random.Random) -> Partial:
    batch = BatchSummaries(spec, rows_per_partial=50, rng=rng)
    for i in range(count):
        wanted = batch.wants(SEGMENT, "inference", start + i * 0.001)
        if wanted is not None:
            partial, key = wanted
            partial.sample.keep({"i": i, "window": window_id}, key)
    [partial] = batch.all()
    return partial


def test_a_merged_sample_is_uniform_over_unequal_parts() -> None:
    """A 100-event part and a 9,900-event part: the merged sample takes ~1% from the small one."""
    rng = random.Random(1)
    small_share = []
    for _ in range(200):
        small, large = Sample(100), Sample(100)
        for i in range(100):
            small.offer({"part": "small", "i": i}, rng)
        for i in range(9_900):
            large.offer({"part": "large", "i": i}, rng)
        small.merge(large)
        assert small.seen == 10_000 and len(small.rows) == 100
        small_share.append(sum(row["part"] == "small" for row in small.rows))
    # 200 merges x 100 rows; the expected share of the small part is 1%.
    total = sum(small_share)
    assert stats.binomtest(total, 200 * 100, 0.01).pvalue > 0.001, total


def test_sample_keeps_everything_below_capacity_and_a_uniform_sample_above() -> None:
    rng = random.Random(2)
    sample = Sample(10)
    for i in range(5):
        sample.offer({"i": i}, rng)
    assert sorted(row["i"] for row in sample.rows) == [0, 1, 2, 3, 4]
    counts = [0] * 100
    for _ in range(2_000):
        sample = Sample(10)
        for i in range(100):
            sample.offer({"i": i}, rng)
        for row in sample.rows:
            counts[row["i"]] += 1
    # Each of the 100 events is kept with probability 10%: a chi-square test of uniformity.
    assert stats.chisquare(counts).pvalue > 0.001


def test_time_windows_close_after_the_grace_once_the_segment_moved_on() -> None:
    spec = WindowSpec(seconds=60, sample_size=100, grace_seconds=5, idle_seconds=30)
    windows = Windows(spec)
    rng = random.Random(0)
    assert windows.add(_partial(0, 30, start=0.0, spec=spec, rng=rng), now=1.0) == []
    # The next window has started, but a slower partition may still send window 0.
    assert windows.add(_partial(1, 10, start=61.0, spec=spec, rng=rng), now=2.0) == []
    assert windows.add(_partial(0, 5, start=59.0, spec=spec, rng=rng), now=3.0) == []
    assert windows.tick(now=7.0) == []
    [closed] = windows.tick(now=8.0)
    assert (closed.start, closed.end) == (datetime.fromtimestamp(0, UTC), datetime.fromtimestamp(60, UTC))
    assert closed.seen == 35
    assert {row["window"] for row in closed.rows} == {0}
    assert list(windows.open) == [(segment_key(SEGMENT), "inference", 1)]
    # Window 0 is closed: a partial for it now is late, counted and not judged.
    assert windows.add(_partial(0, 4, start=58.0, spec=spec, rng=rng), now=9.0) == []
    assert windows.late_events == 4
    # The newest window closes when the segment goes quiet.
    [last] = windows.tick(now=32.0)
    assert last.seen == 10


def test_count_windows_close_at_the_count_and_quiet_segments_close_when_idle() -> None:
    spec = WindowSpec(seconds=None, events=100, sample_size=50, idle_seconds=30)
    windows = Windows(spec)
    rng = random.Random(0)
    assert windows.add(_partial(0, 60, 0.0, spec, rng), now=0.0) == []
    [closed] = windows.add(_partial(0, 60, 1.0, spec, rng), now=1.0)
    assert closed.seen == 120 and len(closed.rows) == 50
    assert windows.add(_partial(0, 10, 2.0, spec, rng), now=2.0) == []
    assert windows.tick(now=20.0) == []
    [quiet] = windows.tick(now=40.0)
    assert quiet.seen == 10


def test_a_partial_survives_its_json_form() -> None:
    spec = WindowSpec(seconds=60, sample_size=50)  # one partial of 80 events, whose sample let 30 go
    partial = _partial(3, 80, 180.0, spec, random.Random(0))
    again = Partial.from_json(partial.to_json())
    assert again.to_json() == partial.to_json()


def test_a_window_is_by_time_or_by_count_not_both() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        WindowSpec(seconds=60, events=100)
