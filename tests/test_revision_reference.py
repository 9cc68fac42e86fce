"""What a new user found in revisions and canary checks (issue 17's trial).

- A revision is judged against the reference of the window's first verdict: the
  stable version's newest window may by then hold too few events to judge, and a
  drift window behind a rollback came out "not judged" once late feedback revised it.
- A canary-vs-stable detector does not judge a version against a pinned window of
  its own traffic: on the stable version itself it paged "rolling back" for nothing.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detectors.canary import CanaryDetector
from streams.detect import DetectorSpec, Judge, Reference
from streams.detect_stage import DetectStage
from streams.windows import ClosedWindow, Partial, Sample
from tests.test_open_windows import FAST, MINUTE, T, _apply, _row, detect_stage
from tests.test_window_marks import _batch, _out


def _stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DetectStage:
    """A detect stage owning summaries partition 3, v1 the stable version of model m, no reference file."""
    return detect_stage(
        tmp_path,
        monkeypatch,
        [FAST],
        reference_file=False,
        window_grace_seconds=1,
        stable_versions={"m": "v1"},
    )


def _version(stage: DetectStage, version: str, minute: int, events: int, seed: int, ahead: float) -> Partial:
    rng = random.Random(seed)
    sample = Sample(200)
    for i in range(events):
        sample.offer(_row(rng, f"{version}-{minute}-{seed}", i), rng)
    start = (MINUTE + minute) * 60.0
    segment = {"model": "m", "model_version": version, "app": "a", "route": None, "tenant": None}
    progress = dict.fromkeys(stage.windows.spec.sources, ahead)
    return Partial(segment, "inference", MINUTE + minute, start, start + 59, sample, progress=progress)


def test_a_revision_is_judged_against_the_reference_of_its_first_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path, monkeypatch)
    past_minute_0 = (MINUTE + 1) * 60.0 + 5
    first = asyncio.run(
        stage.handle(
            _batch(
                stage,
                (1, _version(stage, "v1", 0, 100, 1, past_minute_0)),
                (2, _version(stage, "v2", 0, 100, 2, past_minute_0)),
            ),
            T,
        )
    )
    [judged], _ = _out(stage, first)
    assert judged["segment"]["model_version"] == "v2" and judged["reference"].startswith("stable:")
    _apply(stage, first)
    # The stable version's next window is small; it is the stable reference from now on.
    moved = asyncio.run(
        stage.handle(_batch(stage, (3, _version(stage, "v1", 1, 5, 3, past_minute_0 + 60))), T + 1)
    )
    _apply(stage, moved)
    late = asyncio.run(
        stage.handle(_batch(stage, (4, _version(stage, "v2", 0, 10, 4, past_minute_0 + 60))), T + 2)
    )
    [revised], _ = _out(stage, late)
    assert (revised["revision"], revised["measurements"]["window_events"]) == (1, 110)
    assert revised["reference"] == judged["reference"]


def test_a_window_late_events_opened_is_judged_against_the_stable_window_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(tmp_path, monkeypatch)
    past = (MINUTE + 2) * 60.0 + 5  # minutes 0 and 1 complete
    stable = (_version(stage, "v1", 0, 100, 1, past), _version(stage, "v1", 1, 5, 2, past))
    first = asyncio.run(stage.handle(_batch(stage, (1, stable[0]), (2, stable[1])), T))
    _apply(stage, first)
    canary = asyncio.run(stage.handle(_batch(stage, (3, _version(stage, "v2", 1, 100, 3, past))), T + 1))
    [newest], _ = _out(stage, canary)  # v2's minute 1 closed: its minute 0 is passed, never opened
    assert newest["reference"].endswith(f"@1:{newest['window_end'].replace('Z', '+00:00')}")
    _apply(stage, canary)
    # All of v2's minute 0 comes late: judged against v1's minute 0 (100 events), not its newest (5).
    late = asyncio.run(stage.handle(_batch(stage, (4, _version(stage, "v2", 0, 100, 4, past))), T + 2))
    [gap], _ = _out(stage, late)
    assert (gap["revision"], gap["measurements"]["window_events"], gap["reference_size"]) == (0, 100, 100)
    assert gap["reference"].endswith(f"@1:{gap['window_end'].replace('Z', '+00:00')}")


def test_a_canary_check_does_not_judge_a_version_against_a_pinned_window_of_its_own_traffic() -> None:
    example = CanaryDetector.example()
    judge = Judge([DetectorSpec(CanaryDetector.id, "feedback", example.config.model_dump())], alpha=0.01)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = example.shifted.to_dict("records")
    current = ClosedWindow({"model": "m", "model_version": "v1"}, "feedback", start, start, len(rows), rows)
    pinned = Reference("pinned:feedback|m|v1||||", example.reference, len(example.reference))
    stable = Reference("stable:feedback|m|v0||||", example.reference, len(example.reference))
    assert judge.run(current, pinned, judge.specs) == []
    [finding] = judge.run(current, stable, judge.specs)
    assert finding.finding.verdict == "drift"
