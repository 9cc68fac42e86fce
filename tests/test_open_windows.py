"""The windows table: open windows written, restored once and deleted; slow work pending re-queued."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from faust.types import TP

from core.settings import Settings, Topics
from detectors.run import Judged
from streams.app import create_app
from streams.detect_stage import DetectStage, SlowResult, decode_summary
from streams.ingest import Accepted
from streams.metrics import Metrics
from streams.runtime import Batch, Effects
from streams.windows import Partial, Sample, Windows, WindowSpec

FAST = {"detector_id": "drift.ks.v1", "kind": "inference", "config": {"column": "response_chars"}}
SLOW = {**FAST, "config": {"column": "prompt_chars"}, "slow": True}
T = 1.8e9  # the stage's clock
MINUTE = int(T // 60)


def detect_stage(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    detectors: list[dict[str, Any]],
    *,
    owned: Iterable[int] = (3,),
    reference_file: bool = True,
    **settings: Any,
) -> DetectStage:
    """A detect stage of one-minute windows owning summaries partitions ``owned``, its tables recovered.

    Compared with a reference file of 200 rows unless ``reference_file`` is False;
    ``settings`` go to :class:`Settings` as they are. A revision is judged in the unit
    its late partials came in (``window_revision_quiet_seconds`` 0) unless they say otherwise.
    """
    settings.setdefault("window_revision_quiet_seconds", 0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    detectors_file = tmp_path / "detectors.yaml"
    detectors_file.write_text(yaml.safe_dump(detectors))
    if reference_file:
        reference = tmp_path / "reference.jsonl"
        rng = random.Random(5)
        reference.write_text("".join(json.dumps(_row(rng, "ref", i)) + "\n" for i in range(200)))
        settings.setdefault("reference_file", reference)
    config = Settings(
        data_dir=tmp_path / "data",
        curation=False,
        decide=False,
        window_seconds=60,
        detectors_file=detectors_file,
        **settings,
    )
    stage = create_app(config, Metrics()).runtime.stages["detect"]
    assert isinstance(stage, DetectStage)
    app: Any = stage.app
    app.tables.recovery.completed.set()
    assigned = {TP(config.topics.summaries, p) for p in owned}
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: assigned)
    return stage


def _stage(tmp_path: Path, detectors: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> DetectStage:
    # What these tests check was built on the timer rule, with closed windows deleted at once
    # (the watermark rule and revisions: tests/test_window_marks.py).
    return detect_stage(
        tmp_path,
        monkeypatch,
        detectors,
        window_grace_seconds=0.5,
        window_close="timer",
        window_revision_seconds=0,
    )


def _row(rng: random.Random, tag: str, i: int) -> dict[str, Any]:
    chars = rng.gauss(500, 50)
    return {"request_id": f"{tag}-{i}", "response_chars": chars, "prompt_chars": chars}


def _partial(minute: int, events: int, seed: int) -> Partial:
    rng = random.Random(seed)
    sample = Sample(200)
    for i in range(events):
        sample.offer(_row(rng, f"{minute}-{seed}", i), rng)
    segment = {"model": "m", "model_version": "v1", "app": "a", "route": None, "tenant": None}
    return Partial(segment, "inference", minute, minute * 60.0, minute * 60.0 + 59, sample)


def _batch(stage: DetectStage, *partials: tuple[int, Partial]) -> Batch:
    """Summaries at the given offsets of partition 3, decoded as the runtime does."""
    accepted = []
    for offset, partial in partials:
        value = json.dumps(partial.to_json()).encode()
        message = SimpleNamespace(
            topic=stage.settings.topics.summaries, partition=3, offset=offset, key=b"seg", value=value
        )
        outcome = decode_summary(message, 0.0)
        assert isinstance(outcome, Accepted)
        accepted.append((message, outcome))
    return Batch(stage.settings.topics.summaries, [m for m, _ in accepted], accepted, 0.0)


def _apply(stage: DetectStage, effects: Effects, *also: DetectStage) -> None:
    """The runtime's local writes, and the changelog as the restarted stages recover it."""
    for write in effects.writes:
        for table in [write.table, *(_same_table(other, write.table) for other in also)]:
            table.apply(write.key, write.value, write.partition)


def _same_table(stage: DetectStage, table: Any) -> Any:
    return stage.window_table.table if table.changelog.endswith("windows-changelog") else stage.table


def _detections(effects: Effects) -> list[dict[str, Any]]:
    records = effects.records.take()
    detections = records.get((Topics().detections, None), [])  # not the WindowClosed events
    return [json.loads(value or b"") for _, value, _ in detections]


def _window_writes(stage: DetectStage, effects: Effects) -> list[tuple[bytes, bool]]:
    """The unit's writes to the windows table: (key, whether it is a deletion)."""
    return [(w.key, w.value is None) for w in effects.writes if w.table is stage.window_table.table]


def test_windows_track_entries_restore_partials_and_know_late_ones() -> None:
    windows = Windows(WindowSpec(seconds=60, grace_seconds=0.5))
    assert windows.add(_partial(MINUTE, 40, 1), T, "a") == []
    windows.restore(_partial(MINUTE, 60, 2), T, "b")  # as a restarted worker does: nothing closes
    [closed] = windows.add(_partial(MINUTE + 1, 5, 3), T + 1, "c")  # a newer window, past the grace
    assert (closed.seen, closed.entries) == (100, ("a", "b"))
    assert windows.is_late(_partial(MINUTE, 1, 4)) and not windows.is_late(_partial(MINUTE + 1, 1, 4))
    windows.forget(windows.slot(_partial(MINUTE + 1, 1, 4)))
    assert windows.open == {} and windows.entries == {}


def test_an_open_window_is_restored_from_the_table_once_and_judged_on_all_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = _stage(tmp_path / "a", [FAST], monkeypatch)
    restarted = _stage(tmp_path / "b", [FAST], monkeypatch)
    first = asyncio.run(crashed.handle(_batch(crashed, (10, _partial(MINUTE, 70, 1))), T))
    # The merged summary is an entry of the windows table, on its partition, before it is acked.
    [(key, deleted)] = _window_writes(crashed, first)
    assert key == f"open|{crashed.settings.topics.summaries}|3|10".encode() and not deleted
    assert [w.partition for w in first.writes] == [3] and not _detections(first)
    _apply(crashed, first, restarted)
    # The restarted worker gets the partial again (not acked before the crash) and then the rest.
    replayed = (10, _partial(MINUTE, 70, 1))
    rest = asyncio.run(restarted.handle(_batch(restarted, replayed, (11, _partial(MINUTE, 50, 2))), T + 1))
    _apply(restarted, rest)
    closing = asyncio.run(restarted.handle(_batch(restarted, (12, _partial(MINUTE + 1, 3, 3))), T + 2))
    [detection] = _detections(closing)
    assert detection["measurements"]["window_events"] == 120  # 70 restored + 50, the replay not again
    writes = _window_writes(restarted, closing)
    removed = {written for written, is_deletion in writes if is_deletion}
    assert removed == {key, f"open|{restarted.settings.topics.summaries}|3|11".encode()}
    # The window's last closed id is kept, so a late partial stays late after a restart too.
    assert any(key.startswith(b"closed|") and not d for key, d in writes)


def test_windows_of_a_partition_another_worker_took_are_dropped_unjudged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path, [FAST], monkeypatch)
    _apply(stage, asyncio.run(stage.handle(_batch(stage, (1, _partial(MINUTE, 30, 1))), T)))
    monkeypatch.setattr(stage.app.assignor, "assigned_actives", lambda: set())
    quiet = asyncio.run(stage.tick(T + 120))  # long idle: it would close, but it is not ours now
    assert not _detections(quiet) and stage.windows.open == {} and not quiet.writes


def test_slow_detections_pending_at_a_crash_are_re_queued_after_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = _stage(tmp_path / "a", [FAST, SLOW], monkeypatch)
    restarted = _stage(tmp_path / "b", [FAST, SLOW], monkeypatch)
    batch = _batch(crashed, (1, _partial(MINUTE, 80, 1)), (2, _partial(MINUTE + 1, 5, 2)))
    _apply(crashed, asyncio.run(crashed.handle(batch, T + 1)), restarted)
    closed = asyncio.run(crashed.tick(T + 2))  # minute 0 closes: a newer window, past the grace
    [fast] = _detections(closed)
    assert fast["config"]["column"] == "response_chars" and len(closed.background) == 1
    for never in closed.background:
        cast(Coroutine[Any, Any, Any], never).close()  # the crash: the slow detectors never answer
    [(pending, _)] = [(k, d) for k, d in _window_writes(crashed, closed) if k.startswith(b"slow|")]
    _apply(crashed, closed, restarted)
    recovered = asyncio.run(restarted.tick(T + 3))
    [requeued] = recovered.background
    assert restarted.slow_pending == 1

    async def judge(window: Any, reference: Any, specs: Any) -> tuple[list[Judged], list[str]]:
        assert window.seen == 80 and [s.config["column"] for s in specs] == ["prompt_chars"]
        return restarted.judge.run(window, reference, specs), []

    monkeypatch.setattr(restarted.slow, "judge", judge)
    result = asyncio.run(cast(Coroutine[Any, Any, SlowResult], requeued))
    assert isinstance(result, SlowResult) and result.pending == pending.decode()
    done = asyncio.run(restarted.receive(result, T + 4))
    [slow] = _detections(done)
    assert slow["config"]["column"] == "prompt_chars" and slow["measurements"]["window_events"] == 80
    assert _window_writes(restarted, done) == [(pending, True)]  # deleted after its Detection
