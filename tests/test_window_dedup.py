"""Each event counted once in its window when ingest reads its input twice; units hand records over in order.

Pure code: :mod:`streams.window_dedup` through :class:`~streams.windows.Windows`
(partials built as ingest builds them, with the offsets they counted), the
windows table's restore, and the runtime's hand-off order with a recording
producer (tests/test_runtime.py's). The kill -9 run on the broker is
tests/test_scaleout_stream.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from types import SimpleNamespace
from typing import Any

from schemas.events import DeadLetterReason
from streams.ingest import Accepted, Rejected
from streams.runtime import Batch, Effects
from streams.summaries import decode_summary
from streams.window_batch import BatchSummaries
from streams.window_dedup import Coverage
from streams.window_table import Restored, restore_windows
from streams.windows import Partial, Sample, Windows, WindowSpec
from tests.test_runtime import App, Producer, Writer, message, runtime

SPEC = WindowSpec(seconds=60, grace_seconds=1.0, idle_seconds=30, close="watermark", revision_seconds=300)
SEGMENTS = [
    {"model": "m", "model_version": v, "app": "a", "route": None, "tenant": None} for v in ("v1", "v2")
]
SOURCE = "in|0"


def _read(offsets: range, seed: int, cuts: list[int]) -> list[Partial]:
    """The partials ingest publishes reading ``offsets`` of one source in batches cut before ``cuts``.

    Events alternate between two segments by offset (as a re-read sees them
    again), all in window 0; each draws a new random key on every reading.
    """
    rng = random.Random(seed)
    partials: list[Partial] = []
    bounds = [offsets.start, *cuts, offsets.stop]
    for first, stop in itertools.pairwise(bounds):
        batch = BatchSummaries(SPEC, 10, rng)
        for offset in range(first, stop):
            segment = SEGMENTS[(offset * 7) % 3 % 2]
            wanted = batch.wants(segment, "inference", 1.0 + offset * 0.01, (SOURCE, offset))
            if wanted is not None:
                partial, key = wanted
                partial.sample.keep(
                    {"offset": offset, "segment": segment["model_version"]}, key, (SOURCE, offset)
                )
        partials += batch.all()
    # As the detect stage reads them: from the summaries topic's JSON.
    return [Partial.from_json(json.loads(json.dumps(p.to_json()))) for p in partials]


def _true_counts(offsets: range) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for offset in offsets:
        version = SEGMENTS[(offset * 7) % 3 % 2]["model_version"]
        counts[version] = counts.get(version, 0) + 1
    return counts


def _close(windows: Windows) -> dict[str | None, tuple[int, list[int]]]:
    """Close every window: its count and the offsets of its sample rows, per version."""
    windows.progress(3, {SOURCE: 1_000.0}, now=1.0)
    return {
        w.segment["model_version"]: (w.seen, [r["offset"] for r in w.rows]) for w in windows.tick(now=1.0)
    }


def test_a_reread_cut_at_other_boundaries_counts_each_event_once_and_keeps_no_duplicate_row() -> None:
    windows = Windows(SPEC)
    first = _read(range(0, 100), seed=1, cuts=[40])
    # Killed after the first reading's outputs, before its offsets: the next owner re-reads from 20.
    again = _read(range(20, 130), seed=2, cuts=[55, 70, 101])
    for partial in first + again:
        assert windows.add(partial, now=0.0, partition=3) == []
    assert windows.duplicate_events == 80
    closed = _close(windows)
    assert {version: seen for version, (seen, _) in closed.items()} == _true_counts(range(0, 130))
    for _, rows in closed.values():
        assert rows and len(rows) == len(set(rows)), "a duplicate's sample row must be dropped"


def test_an_offset_with_two_events_counts_both_once_and_a_replay_revises_nothing() -> None:
    windows = Windows(SPEC)

    def joined(seed: int, offsets: tuple[int, ...] = (5, 5, 6)) -> Partial:
        # One inference joined to two feedbacks waiting for it: two events read at one offset.
        rng = random.Random(seed)
        batch = BatchSummaries(SPEC, 10, rng)
        for offset in offsets:
            wanted = batch.wants(SEGMENTS[0], "feedback", 1.0, (SOURCE, offset))
            if wanted is not None:
                wanted[0].sample.keep({"offset": offset}, wanted[1], (SOURCE, offset))
        [partial] = batch.all()
        return partial

    assert joined(1).counted == {SOURCE: [[5, 5], [5, 6]]}
    windows.add(joined(1), now=0.0, partition=3)
    windows.progress(3, {SOURCE: 100.0}, now=1.0)
    [closed] = windows.tick(now=1.0)
    assert closed.seen == 3
    windows.add(joined(2), now=2.0, partition=3)  # the same input read again, after the window closed
    assert windows.revisions() == [] and windows.duplicate_events == 3
    windows.add(joined(3, (6, 7, 8)), now=3.0, partition=3)  # 7 and 8 are new: a revision
    [revised] = windows.revisions()
    assert (revised.revision, revised.seen, windows.duplicate_events) == (1, 5, 4)


def test_what_a_window_counted_is_rebuilt_from_the_partials_the_table_kept_in_any_order() -> None:
    first = _read(range(0, 100), seed=1, cuts=[30, 60])
    again = _read(range(50, 120), seed=2, cuts=[90])
    kept = first + again[:2]  # merged before the detect stage's worker was killed
    restored = Restored(partials=[(f"open|summaries|3|{offset}", p) for offset, p in enumerate(kept)])
    restored.partials.reverse()  # the table gives its entries in no particular order
    windows = Windows(SPEC)
    assert restore_windows(windows, restored, now=0.0) == []
    for partial in again[2:]:  # read again by the next owner after the restore
        windows.add(partial, now=0.0, partition=3)
    closed = _close(windows)
    assert {version: seen for version, (seen, _) in closed.items()} == _true_counts(range(0, 120))
    for _, rows in closed.values():
        assert len(rows) == len(set(rows))


def test_partials_without_offsets_merge_as_before() -> None:
    windows = Windows(SPEC)
    rng = random.Random(0)
    for _ in range(2):
        sample = Sample(10)
        for i in range(30):
            sample.offer({"offset": i}, rng)
        windows.add(Partial(dict(SEGMENTS[0]), "inference", 0, 1.0, 2.0, sample), now=0.0, partition=3)
    assert _close(windows)["v1"][0] == 60 and windows.duplicate_events == 0


def test_coverage_merges_spans_and_counts_overlaps() -> None:
    coverage = Coverage()
    for first, last in ((10, 19), (30, 39), (20, 25), (50, 50)):
        coverage.add(first, last)
    assert (coverage.firsts, coverage.lasts) == ([10, 30, 50], [25, 39, 50])
    assert coverage.overlap(0, 100) == 16 + 10 + 1 and coverage.overlap(26, 29) == 0
    assert coverage.overlap(24, 31) == 4 and coverage.covers(25) and not coverage.covers(26)


def test_summaries_with_malformed_offsets_are_dead_lettered() -> None:
    [partial] = _read(range(0, 1), seed=1, cuts=[])
    good = partial.to_json()
    assert good["counted"] == {SOURCE: [[0, 0]]} and len(good["origins"]) == 1
    for bad, reason in (
        ({"counted": [[0, 0]]}, DeadLetterReason.WRONG_TYPE),
        ({"counted": {SOURCE: [[3, 1]]}}, DeadLetterReason.INVALID_VALUE),
        ({"origins": [[1, 0]]}, DeadLetterReason.INVALID_VALUE),
        ({"origins": [[0, 0], [0, 1]]}, DeadLetterReason.INVALID_VALUE),
    ):
        value = json.dumps({**good, **bad}).encode()
        outcome = decode_summary(SimpleNamespace(value=value), 0.0)
        assert isinstance(outcome, Rejected) and outcome.reason == reason, bad
    assert isinstance(decode_summary(SimpleNamespace(value=json.dumps(good).encode()), 0.0), Accepted)


# -- the runtime: records handed over in unit order --------------------------------------


class GatedProducer(Producer):
    """Hands a record over only once its gate opens; the broker acknowledges it once its ack gate opens."""

    def __init__(self, log: list[Any]) -> None:
        super().__init__(log)
        self.hand_gates: dict[bytes, asyncio.Event] = {}
        self.ack_gates: dict[bytes, asyncio.Event] = {}

    async def send(self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any) -> Any:
        gate = self.hand_gates.get(value or b"")
        if gate is not None:  # aiokafka's send waits like this while the accumulator is full
            await gate.wait()
        self.log.append(("sent", topic, value))
        return asyncio.ensure_future(self._ack_after(topic, value))

    async def _ack_after(self, topic: str, value: bytes | None) -> None:
        gate = self.ack_gates.get(value or b"")
        if gate is not None:
            await gate.wait()
        self.log.append(("acked", topic, value))


class TwoPartitions(Writer):
    """Each batch writes one record to each of two partitions chosen by the producer, and a state write."""

    max_in_flight = 4

    async def handle(self, batch: Batch, now: float) -> Effects:
        effects = self.effects()
        for _, accepted in batch.accepted:
            effects.records.add("out", b"a", b"a-%d" % accepted.event)
            effects.records.add("other", b"b", b"b-%d" % accepted.event)
            effects.put(self.table, b"k", b"state-%d" % accepted.event)
        return effects


def test_a_slow_units_records_reach_the_producer_before_the_next_units_and_its_state_waits() -> None:
    async def scenario() -> list[Any]:
        rt = runtime()
        app: App = rt.app  # type: ignore[assignment]
        producer = app.producer = GatedProducer(app.log)
        slow, unacked = asyncio.Event(), asyncio.Event()
        producer.hand_gates[b"b-1"] = slow  # unit 1's second record waits to be handed over
        producer.ack_gates[b"a-1"] = unacked
        rt.add(TwoPartitions(rt, app.log))
        for offset in (1, 2):
            await rt.put_batch("in", [message("in", offset)])
            await asyncio.sleep(0)  # two units, not one merged batch
        for _ in range(30):
            await asyncio.sleep(0)
        assert ("sent", "out", b"a-2") not in app.log, "unit 2 handed over before unit 1 had"
        slow.set()
        for _ in range(30):
            await asyncio.sleep(0)
        assert ("acked", "other", b"b-2") in app.log, "the round trips overlap"
        assert ("sent", "changelog", b"state-2") not in app.log, "unit 2's state before unit 1's outputs"
        unacked.set()
        await rt.join()
        return [entry for entry in app.log if entry[0] in ("sent", "ack")]

    log = asyncio.run(scenario())
    assert log == [
        ("sent", "out", b"a-1"),
        ("sent", "other", b"b-1"),
        ("sent", "out", b"a-2"),
        ("sent", "other", b"b-2"),
        ("sent", "changelog", b"state-1"),
        ("sent", "changelog", b"state-2"),
        ("ack", 1),
        ("ack", 2),
    ]
