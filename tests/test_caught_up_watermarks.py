"""An input partition read to its end advances its watermark with the wall clock.

Without it a window waited for an event past its end on every input partition:
on sparse traffic (a few events a second per partition) up to a second more
before the verdict (``./run bench rollback_latency``), and on a partition that
went quiet until the idle timeout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from faust.types import TP

from core.settings import Settings
from streams.app import create_app
from streams.watermarks import Marks, Progress


def test_a_partition_read_to_its_end_passes_window_ends_by_the_wall_clock_minus_how_late_events_ran() -> None:
    progress = Progress(window_seconds=60, lateness=1.0, behind_seconds=30)
    progress.caught_up("in|0", at=100.0)
    assert progress.marks == {}  # no event read yet: how far behind they run is not known
    progress.read("in|0", oldest=59.8, now=60.0)  # read 0.2 s after its event time
    progress.advance("in|0", 59.9)
    progress.caught_up("in|0", at=60.5)
    assert progress.marks["in|0"] == 59.9  # 60.3 would not pass window 0's end plus the lateness (61)
    progress.caught_up("in|0", at=61.3)
    assert progress.marks["in|0"] == 61.3 - 0.2  # passed 61: window 0 can close
    assert progress.due(now=61.3) == {"in|0": 61.3 - 0.2}
    progress.caught_up("in|0", at=70.0)
    assert progress.marks["in|0"] == 61.3 - 0.2  # within window 1: nothing to tell, an idle worker is silent


def test_a_producer_that_holds_events_back_keeps_its_watermark_that_far_behind() -> None:
    progress = Progress(window_seconds=5, lateness=0.5, behind_seconds=30)
    progress.read("in|3", oldest=97.0, now=100.0)  # events sent 3 s late
    progress.read("in|3", oldest=100.9, now=101.0)  # then one on time: the 3 s are remembered
    progress.advance("in|3", 100.9)
    progress.caught_up("in|3", at=103.6)
    assert progress.marks["in|3"] == 100.9  # 100.6: behind its latest event
    progress.caught_up("in|3", at=108.6)
    assert progress.marks["in|3"] == 108.6 - 3.0
    # After the period and one more, reads replace what was remembered.
    progress.read("in|3", oldest=139.9, now=140.0)
    progress.read("in|3", oldest=179.9, now=180.0)
    progress.caught_up("in|3", at=190.0)
    assert progress.marks["in|3"] == 190.0 - 0.1


def test_a_backdated_replay_still_follows_its_events_times() -> None:
    progress = Progress(window_seconds=20, lateness=0.5, behind_seconds=30)
    progress.read("in|0", oldest=1_000.0 - 600, now=1_000.0)  # stamped ten minutes before it is read
    progress.caught_up("in|0", at=1_001.0)
    assert progress.marks["in|0"] == 401.0
    progress.drop(lambda source: False)
    progress.caught_up("in|0", at=1_002.0)
    assert progress.marks == {}  # a partition another worker reads now: forgotten


def test_with_it_a_window_closes_by_the_watermark_though_one_partition_has_no_event_past_its_end() -> None:
    marks = Marks(lateness=0.5, idle_seconds=30.0, expected=("in|0", "in|1"))
    progress = Progress(window_seconds=5, lateness=0.5)
    for source, stamp in (("in|0", 4.9), ("in|1", 4.0)):
        progress.read(source, oldest=stamp, now=stamp + 0.05)
        progress.advance(source, stamp)
    progress.advance("in|0", 5.6)  # in|0 has an event past the end plus the lateness; in|1 none
    marks.observe(0, progress.due(now=5.6), now=5.6)
    assert not marks.complete(0, end=5.0, now=5.6)
    progress.caught_up("in|1", at=5.6)  # in|1 read to its end at 5.6: 5.55 is past 5.5
    marks.observe(0, progress.due(now=5.7), now=5.7)
    assert marks.complete(0, end=5.0, now=5.7)
    assert marks.closing(0, end=5.0, now=5.7) == (
        "watermark",
        "in partition 1 (event time reached 00:00:05 at 00:00:05)",
    )


class _Consumer:
    """What ingest asks the consumer: when a fetch last told each partition's end offset."""

    def __init__(self, ends: dict[TP, tuple[float, int]]) -> None:
        self.ends = ends

    def fetched_end(self, tp: TP) -> tuple[float, int] | None:
        return self.ends.get(tp)


def test_ingest_counts_a_partition_caught_up_only_once_its_last_fetched_offset_is_acknowledged(
    tmp_path: Path,
) -> None:
    ingest = create_app(Settings(data_dir=tmp_path / "data", curation=False, decide=False)).ingest  # type: ignore[attr-defined]
    ingest.progress = Progress(window_seconds=5, lateness=0.5)

    async def catch_up() -> None:
        ingest.progress.read("in|0", oldest=9.9, now=10.0)
        ingest.progress.read("in|1", oldest=9.9, now=10.0)
        ingest._passed(1, "in", {0: 9.9, 1: 9.9}, {0: 41, 1: 7})
        ingest.app = SimpleNamespace(consumer=_Consumer({TP("in", 0): (20.0, 42), TP("in", 1): (20.0, 12)}))
        ingest._catch_up()
        # in|0: offsets up to 41 passed, the end fetched at 20.0 is 42: caught up; in|1 has 8-11 pending.
        assert ingest.progress.marks == {"in|0": 20.0 - 0.1, "in|1": 9.9}

    asyncio.run(catch_up())
