"""Workers sharing one history root: a merge that lost a race is merged again, never given up."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from curation.history import detection_row
from curation.history_store import HistoryStore
from curation.store import ConflictLog, with_retries

from .test_history import T0, batch, detection


def test_a_history_merge_that_lost_a_race_is_merged_again_on_the_new_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "history"
    winner, loser = HistoryStore(root), HistoryStore(root)
    winner.write(batch(detections=[detection_row(detection(0))]), now=T0)
    loser.write(batch(detections=[detection_row(detection(0))]), now=T0)  # both have the table open
    theirs = batch(detections=[detection_row(detection(n)) for n in (1, 2, 3)])
    ours = batch(detections=[detection_row(detection(n)) for n in (2, 3, 4, 5)])  # two in both
    opened = loser._writable
    raced: list[dict[str, int]] = []

    def writable_then_race(table: str) -> Any:
        delta = opened(table)
        if not raced:  # the other worker commits between our snapshot and our commit
            raced.append(winner.write(theirs, now=T0))
        return delta

    monkeypatch.setattr(loser, "_writable", writable_then_race)
    conflicts = ConflictLog("history write")

    # attempts=1: a conflict that used up an attempt, as any other failure does, would raise here.
    def write() -> dict[str, int]:
        return loser.write(ours, now=T0, conflicts=conflicts)

    inserted = with_retries(write, "history write", attempts=1, conflicts=conflicts)

    assert raced == [{"detections": 3}]
    assert inserted == {"detections": 2} and conflicts.total == 1
    held = Counter(HistoryStore(root).read("detections").column("detection_id").to_pylist())
    assert held == Counter({f"d-{n}": 1 for n in range(6)})
