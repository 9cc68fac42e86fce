"""Windows complete by event-time progress, revised by late partials, handed over on revocation.

The pure close rule (:class:`~streams.windows.Windows` with :mod:`streams.watermarks`)
and the detect stage's units around it: table entries, restores, ``WindowClosed``.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from core.settings import Settings
from schemas.events import DeadLetterReason, WindowClosed
from streams.app import create_app
from streams.detect_stage import DetectStage, ProgressOnly, decode_summary
from streams.ingest import Accepted, Rejected
from streams.runtime import Batch, Effects
from streams.watermarks import Progress
from streams.windows import Partial, Sample, Windows, WindowSpec
from tests.test_open_windows import FAST, MINUTE, T, _apply, _row, detect_stage

SPEC = WindowSpec(seconds=60, grace_seconds=1.0, idle_seconds=30, close="watermark", revision_seconds=300)
SEGMENT = {"model": "m", "model_version": "v1", "app": "a", "route": None, "tenant": None}


def _partial(window: int, events: int, seed: int, **progress: float) -> Partial:
    rng = random.Random(seed)
    sample = Sample(200)
    for i in range(events):
        sample.offer(_row(rng, f"{window}-{seed}", i), rng)
    start = window * 60.0
    return Partial(dict(SEGMENT), "inference", window, start, start + 59, sample, progress=dict(progress))


def test_a_source_held_back_keeps_the_window_open_until_it_passes_the_end_plus_the_lateness() -> None:
    windows = Windows(SPEC)
    assert windows.add(_partial(0, 30, 1, a=75.0, b=58.0), now=0.0, partition=3) == []
    assert windows.tick(now=10.0) == []  # b is behind: its events for window 0 may still come
    assert (
        windows.add(_partial(0, 20, 2, b=60.5), now=11.0, partition=3) == []
    )  # past the end, not the lateness
    [closed] = windows.add(_partial(1, 5, 3, b=61.0), now=12.0, partition=3)
    assert (closed.window_id, closed.seen, closed.revision) == (0, 50, 0)
    # Progress on another summaries partition says nothing about this one.
    windows.progress(4, {"a": 500.0, "b": 500.0}, now=13.0)
    assert windows.tick(now=13.0) == [] and list(windows.open) == [("m|v1|a||", "inference", 1)]


def test_a_source_that_went_quiet_holds_nothing_back_after_the_idle_time() -> None:
    windows = Windows(SPEC)
    assert windows.add(_partial(0, 30, 1, a=61.0, b=20.0), now=0.0, partition=3) == []
    windows.progress(3, {"a": 65.0}, now=20.0)  # a moves on; b has not moved since 0
    assert windows.tick(now=29.0) == []
    [closed] = windows.tick(
        now=30.0
    )  # b quiet for idle_seconds: left out (the window got a partial at 0 too)
    assert closed.seen == 30


def test_an_input_partition_not_heard_yet_holds_windows_until_its_topic_was_heard_for_the_idle_time() -> None:
    spec = WindowSpec(
        seconds=60, grace_seconds=1.0, idle_seconds=30, close="watermark", sources=("x|0", "x|1")
    )
    windows = Windows(spec)
    assert (
        windows.add(_partial(0, 30, 1, a=61.0), now=0.0, partition=3) == []
    )  # x not heard of: x|0, x|1 hold
    windows.progress(3, {"x|0": 61.0}, now=20.0)  # the topic starts (later than a): x|1 is quiet from now
    assert windows.add(_partial(0, 5, 2, a=62.0), now=25.0, partition=3) == []
    assert windows.tick(now=49.0) == []
    [closed] = windows.tick(now=50.0)  # x|1 never came: left out 30 s after x was first heard
    assert closed.seen == 35


def test_the_feedback_topic_holds_back_feedback_windows_only() -> None:
    spec = WindowSpec(seconds=60, grace_seconds=1.0, close="watermark", feedback_topic="fb")
    windows = Windows(spec)
    progress = {"in|0": 70.0, "fb|0": 10.0}
    [closed] = windows.add(_partial(0, 10, 1, **progress), now=0.0, partition=0)
    assert closed.kind == "inference"


def test_late_partials_in_one_unit_give_one_revision_and_beyond_the_horizon_they_are_only_counted() -> None:
    windows = Windows(SPEC)
    [first] = windows.add(_partial(0, 40, 1, a=62.0), now=0.0, partition=3, entry="e1")
    assert first.revision == 0 and windows.revisions() == []
    windows.add(_partial(0, 3, 2), now=5.0, partition=3, entry="e2")
    windows.add(_partial(0, 4, 3), now=5.0, partition=3, entry="e3")
    [revised] = windows.revisions()
    assert (revised.window_id, revised.seen, revised.revision) == (0, 47, 1)
    assert (revised.start, revised.end) == (first.start, first.end) and revised.entries == ("e1", "e2", "e3")
    assert windows.revisions() == [] and windows.late_events == 0
    [expired] = windows.expire(now=300.0)
    assert expired.entries == ("e1", "e2", "e3")
    assert not windows.merges(_partial(0, 1, 4))
    windows.add(_partial(0, 6, 4), now=301.0, partition=3)
    assert windows.revisions() == [] and windows.late_events == 6


def test_the_timer_rule_stays_selectable() -> None:
    windows = Windows(WindowSpec(seconds=60, grace_seconds=0.5, close="timer"))
    assert windows.add(_partial(0, 10, 1, a=1e9), now=0.0, partition=3) == []  # progress is not what closes
    assert windows.add(_partial(1, 10, 2), now=0.1, partition=3) == []
    [closed] = windows.tick(now=0.6)
    assert closed.window_id == 0


def test_ingest_broadcasts_progress_when_a_window_can_close_and_otherwise_at_most_every_200_ms() -> None:
    progress = Progress(window_seconds=60, lateness=1.0)
    progress.advance("in|0", 30.0)
    assert progress.due(now=0.0) == {"in|0": 30.0}  # a new source
    progress.advance("in|0", 40.0)
    progress.advance("in|0", 35.0)  # watermarks never go back
    assert progress.due(now=0.1) == {}
    assert progress.due(now=0.2) == {"in|0": 40.0}
    progress.advance("in|0", 61.0)  # past window 0's end plus the lateness: window 0 can close
    assert progress.due(now=0.25) == {"in|0": 61.0}
    assert progress.due(now=5.0) == {}  # nothing moved
    assert progress.of({"in|0", "in|9"}) == {"in|0": 61.0}
    progress.drop(lambda source: source != "in|0")
    assert progress.marks == {}


def _message(value: bytes, offset: int, partition: int = 3) -> Any:
    return SimpleNamespace(topic="s", partition=partition, offset=offset, key=None, value=value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"progress": []}, DeadLetterReason.WRONG_TYPE),
        ({"progress": {"in|0": "soon"}}, DeadLetterReason.WRONG_TYPE),
        ({"progress": {"in|0": True}}, DeadLetterReason.WRONG_TYPE),
        ({"progress": {"in|0": float("inf")}}, DeadLetterReason.NON_FINITE_NUMBER),
        ({"progress": {"in|0": 1.0}, "kind": "inference"}, DeadLetterReason.MISSING_FIELD),
    ],
)
def test_malformed_progress_is_dead_lettered_with_a_reason(value: dict[str, Any], reason: str) -> None:
    outcome = decode_summary(_message(json.dumps(value).encode(), 0), 0.0)
    assert isinstance(outcome, Rejected) and outcome.reason == reason


def test_progress_only_records_and_partials_with_progress_are_summaries() -> None:
    alone = decode_summary(_message(b'{"progress": {"in|0": 61.5}}', 0), 0.0)
    assert isinstance(alone, Accepted) and alone.event == ProgressOnly({"in|0": 61.5})
    partial = _partial(0, 5, 1, a=3.0)
    with_it = decode_summary(_message(json.dumps(partial.to_json()).encode(), 1), 0.0)
    assert isinstance(with_it, Accepted) and with_it.event.progress == {"a": 3.0}


# -- the detect stage ---------------------------------------------------------------


def _stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owned: set[int] | None = None) -> DetectStage:
    """A detect stage of one-minute windows closed by watermarks, owning summaries partition 3."""
    return detect_stage(tmp_path, monkeypatch, [FAST], owned=owned or {3}, window_grace_seconds=1)


def _batch(stage: DetectStage, *summaries: tuple[int, Partial | dict[str, Any]], partition: int = 3) -> Batch:
    accepted = []
    for offset, summary in summaries:
        data = summary.to_json() if isinstance(summary, Partial) else summary
        message = SimpleNamespace(
            topic=stage.settings.topics.summaries,
            partition=partition,
            offset=offset,
            key=b"m",
            value=json.dumps(data).encode(),
        )
        outcome = decode_summary(message, 0.0)
        assert isinstance(outcome, Accepted)
        accepted.append((message, outcome))
    return Batch(stage.settings.topics.summaries, [m for m, _ in accepted], accepted, 0.0)


def _out(stage: DetectStage, effects: Effects) -> tuple[list[dict[str, Any]], list[WindowClosed]]:
    """The unit's Detections (as JSON) and WindowClosed events."""
    records = effects.records.take()
    topics = stage.settings.topics
    detections = [json.loads(v or b"") for _, v, _ in records.get((topics.detections, None), [])]
    closed = [
        WindowClosed.model_validate_json(v or b"") for _, v, _ in records.get((topics.windows, None), [])
    ]
    return detections, closed


def _minute(window: int, events: int, seed: int, **progress: float) -> Partial:
    return _partial(MINUTE + window, events, seed, **progress)


END = (MINUTE + 1) * 60.0  # the end of minute 0


def test_a_restarted_stage_keeps_the_watermarks_and_revises_a_closed_window_from_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = _stage(tmp_path / "a", monkeypatch)
    restarted = _stage(tmp_path / "b", monkeypatch)
    behind, *others = crashed.windows.spec.sources  # every input partition: one of them is behind
    ahead = dict.fromkeys(others, END + 5)
    first = asyncio.run(
        crashed.handle(_batch(crashed, (1, _minute(0, 70, 1, **ahead, **{behind: END - 30}))), T)
    )
    assert _out(crashed, first) == ([], [])
    _apply(crashed, first, restarted)
    # The restarted worker knows which one is behind: the window stays open though the others are far ahead.
    progress = {"progress": dict.fromkeys(others, END + 50)}
    waiting = asyncio.run(restarted.handle(_batch(restarted, (2, progress)), T + 1))
    assert _out(restarted, waiting) == ([], [])
    _apply(restarted, waiting)
    caught_up = _minute(0, 30, 2, **{behind: END + 2})
    closing = asyncio.run(restarted.handle(_batch(restarted, (3, caught_up)), T + 2))
    [detection], [closed] = _out(restarted, closing)
    assert detection["measurements"]["window_events"] == 100 and detection["revision"] == 0
    assert (closed.outcome, closed.events, closed.revision, closed.reference) == (
        "judged",
        100,
        0,
        detection["reference"],
    )
    _apply(restarted, closing)
    # Late partials, after another restart: merged into the closed window, judged again as revision 1.
    again = _stage(tmp_path / "c", monkeypatch)
    for effects in (first, waiting, closing):  # the changelog, in order
        _apply(crashed, effects, again)
    late = asyncio.run(again.handle(_batch(again, (4, _minute(0, 4, 3)), (5, _minute(0, 6, 4))), T + 3))
    [revised], [reclosed] = _out(again, late)
    assert (revised["measurements"]["window_events"], revised["revision"]) == (110, 1)
    assert (revised["window_start"], revised["window_end"]) == (
        detection["window_start"],
        detection["window_end"],
    )
    assert (reclosed.revision, reclosed.events, reclosed.outcome) == (1, 110, "judged")
    # Beyond the revision horizon the window and its entries go; a late partial then is only counted.
    _apply(again, late)
    expired = asyncio.run(again.tick(T + 3 + 300))
    deleted = {w.key for w in expired.writes if w.value is None}
    assert f"done|inference|m|v1|a|||{MINUTE}".encode() in deleted and len(deleted) == 5
    counted = asyncio.run(again.handle(_batch(again, (6, _minute(0, 9, 5))), T + 400))
    assert _out(again, counted) == ([], []) and again.windows.late_events == 9


def test_a_window_passed_before_it_opened_is_judged_when_its_partials_come_within_the_horizon() -> None:
    windows = Windows(SPEC)
    [closed] = windows.add(_partial(2, 40, 1, a=182.0), now=0.0, partition=3)  # windows 0 and 1 never opened
    assert closed.window_id == 2
    [gap] = windows.add(_partial(1, 25, 2), now=10.0, partition=3)  # all its events came after 2 closed
    assert (gap.window_id, gap.seen, gap.revision) == (1, 25, 0) and windows.late_events == 0
    windows.add(_partial(1, 5, 3), now=20.0, partition=3)  # and then it is revised like any closed window
    [revised] = windows.revisions()
    assert (revised.window_id, revised.seen, revised.revision) == (1, 30, 1)
    windows.expire(now=300.0)  # window 2 closed 300 s ago: what it passed is late for good
    windows.add(_partial(0, 7, 4), now=301.0, partition=3)
    assert windows.revisions() == [] and windows.late_events == 7
    assert windows.open == {}


def test_a_window_that_closed_is_never_opened_again_by_its_partials_even_if_its_kept_state_is_gone() -> None:
    windows = Windows(SPEC)
    [closed] = windows.add(_partial(1, 40, 1, a=122.0), now=0.0, partition=3)
    windows.add(_partial(2, 30, 2, a=182.0), now=1.0, partition=3)
    # A worker restored from a table without window 1's kept state (partials re-read, say):
    restored = Windows(SPEC)
    restored.closed_upto = dict(windows.closed_upto)
    for stream in windows.gaps.shut:
        restored.gaps.restore(stream, json.loads(json.dumps(windows.gaps.to_json(stream))))
    assert not restored.merges(_partial(1, 9, 3)) and restored.merges(_partial(0, 9, 4))
    restored.add(_partial(1, 9, 3), now=2.0, partition=3)
    assert restored.open == {} and restored.late_events == 9 and closed.window_id == 1


def test_a_restarted_stage_still_judges_a_window_passed_before_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = _stage(tmp_path / "a", monkeypatch)
    restarted = _stage(tmp_path / "b", monkeypatch)
    passed = dict.fromkeys(crashed.windows.spec.sources, END + 65)  # past minute 1 and its lateness
    first = asyncio.run(crashed.handle(_batch(crashed, (1, _minute(1, 70, 1, **passed))), T))
    [detection], _ = _out(crashed, first)
    assert detection["window_start"] == _utc_iso(END)  # minute 1 judged; minute 0 never opened
    _apply(crashed, first, restarted)
    late = asyncio.run(restarted.handle(_batch(restarted, (2, _minute(0, 30, 2))), T + 60))
    [gap], [closed] = _out(restarted, late)
    assert (gap["measurements"]["window_events"], gap["revision"]) == (30, 0)
    assert gap["window_end"] == _utc_iso(END) and (closed.events, closed.outcome) == (30, "judged")


def test_one_late_delivery_read_in_several_units_is_one_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = detect_stage(tmp_path, monkeypatch, [FAST], owned={3}, window_revision_quiet_seconds=1.0)
    passed = dict.fromkeys(stage.windows.spec.sources, END + 5)
    first = asyncio.run(stage.handle(_batch(stage, (1, _minute(0, 70, 1, **passed))), T))
    [detection], _ = _out(stage, first)
    assert detection["revision"] == 0
    for offset, at in ((2, T + 10), (3, T + 10.4), (4, T + 10.8)):  # one late delivery, three batches
        late = asyncio.run(stage.handle(_batch(stage, (offset, _minute(0, 5, offset))), at))
        assert _out(stage, late) == ([], [])  # its partials keep coming: not yet
    assert _out(stage, asyncio.run(stage.tick(T + 11.5))) == ([], [])  # 0.7 s after the last one
    [revised], [closed] = _out(stage, asyncio.run(stage.tick(T + 12)))
    assert (revised["revision"], revised["measurements"]["window_events"]) == (1, 85)
    assert (closed.revision, closed.events) == (1, 85)
    assert _out(stage, asyncio.run(stage.tick(T + 20))) == ([], [])


def _utc_iso(timestamp: float) -> str:
    """A Detection's window bound as JSON writes it."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def test_on_revocation_the_stage_drops_the_partitions_windows_and_never_writes_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path, monkeypatch, owned={3, 4})
    topic = stage.settings.topics.summaries
    merged = asyncio.run(stage.handle(_batch(stage, (1, _minute(0, 30, 1, a=END - 10))), T))
    _apply(stage, merged)
    assert stage.windows.open
    revoked = {TP(topic, 3), TP("other", 4)}
    asyncio.run(stage._on_revoked(stage.app, revoked, signal=None))
    monkeypatch.setattr(stage.app.assignor, "assigned_actives", lambda: {TP(topic, 4)})  # the new assignment
    assert stage.windows.open == {} and stage.windows.marks.partitions == {} and stage.assigned == {4}
    # A batch of partition 3 still queued is not merged, and nothing closes for it.
    queued = asyncio.run(stage.handle(_batch(stage, (2, _minute(0, 5, 2, a=END + 9))), T + 1))
    assert not queued.writes and _out(stage, queued) == ([], []) and stage.windows.open == {}
    # A write for a partition not ours is refused where it is made.
    effects = stage.effects()
    stage._put(effects, "pinned", b"x", 3)
    stage.window_table.marks(effects, 3, {"a": 1.0})
    stage.window_table.marks(effects, 4, {"a": 1.0})
    assert [w.partition for w in effects.writes] == [4]


def test_ingest_counts_a_batch_passed_only_once_every_batch_before_it_is_acknowledged(tmp_path: Path) -> None:
    ingest = create_app(Settings(data_dir=tmp_path / "data", curation=False, decide=False)).ingest  # type: ignore[attr-defined]

    async def acknowledge() -> None:
        ingest._passed(2, "in", {0: 100.0}, {0: 20})  # the later batch's effects finished first
        assert ingest.progress.marks == {} and ingest._passed_offsets == {}
        ingest._passed(1, "in", {0: 50.0, 1: 70.0}, {0: 10, 1: 4})
        assert ingest.progress.marks == {"in|0": 100.0, "in|1": 70.0}
        assert ingest._passed_offsets == {TP("in", 0): 20, TP("in", 1): 4}

    asyncio.run(acknowledge())
