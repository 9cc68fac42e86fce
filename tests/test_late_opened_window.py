"""A window late partials open after the watermarks passed it waits the revision quiet time (trial 17e, 3).

In the trial a rolled-back version had no event in a window whose time had long
passed (every input's watermark beyond it) when 4 late events came 0.19 s apart:
the window closed on the first of them (1 event), the other 3 made revision 1.
No later window of that version had closed, so only the watermarks said the
window was passed.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from detectors.frame import describe, log_row
from schemas.events import InferenceLog
from services.sample_data import MODEL, hh_rlhf, inference_event
from streams.windows import Partial, Sample, Windows, WindowSpec

INFERENCE, FEEDBACK = "llm.inference.v1", "llm.feedback.v1"
SPEC = WindowSpec(
    seconds=10,
    grace_seconds=1.0,
    idle_seconds=30,
    close="watermark",
    revision_seconds=300,
    revision_quiet_seconds=3.0,
    feedback_topic=FEEDBACK,
    sources=(f"{INFERENCE}|0", f"{FEEDBACK}|0"),
)


def _rows(data_dir: Path, version: str, window: int, first: int, count: int) -> list[dict[str, Any]]:
    """Inference rows of real HH-RLHF exchanges in ``window``, as ingest publishes them."""
    rng = random.Random(first)
    at = datetime.fromtimestamp(window * 10 + 2, UTC)
    rows = []
    for chosen, _ in islice(hh_rlhf(data_dir), first, first + count):
        log = InferenceLog.model_validate(inference_event(chosen, at, rng, version=version))
        rows.append(log_row(log, describe(log), 1000))
    return rows


def _partial(rows: list[dict[str, Any]], window: int, progress: float) -> Partial:
    """One inference partial of ``window`` whose batch took every input's watermark to ``progress``."""
    rng = random.Random(len(rows))
    sample = Sample(200)
    for row in rows:
        sample.offer(row, rng)
    segment: dict[str, str | None] = {
        "model": MODEL,
        "model_version": rows[0]["model_version"],
        "app": rows[0]["app"],
        "route": rows[0]["route"],
        "tenant": rows[0]["tenant"],
    }
    start = window * 10.0
    marks = dict.fromkeys(SPEC.sources, progress)
    return Partial(segment, "inference", window, start, start + 9, sample, progress=marks)


def _traffic_moved_on(windows: Windows, data_dir: Path) -> None:
    """v4 closed window 3 and got no event since; v1's traffic took every watermark past window 9."""
    [v4] = windows.add(_partial(_rows(data_dir, "v4", 3, 0, 5), 3, 41.5), now=0.0, partition=0)
    [v1] = windows.add(_partial(_rows(data_dir, "v1", 9, 5, 5), 9, 101.5), now=1.0, partition=0)
    assert (v4.window_id, v1.window_id) == (3, 9) and windows.open == {}


def test_late_partials_into_a_passed_window_get_one_first_verdict_after_they_went_quiet(
    data_dir: Path,
) -> None:
    windows = Windows(SPEC)
    _traffic_moved_on(windows, data_dir)
    late = _rows(data_dir, "v4", 5, 10, 4)  # v4's window 5: its time passed long ago, nothing of it came yet
    for n, row in enumerate(late):
        assert windows.add(_partial([row], 5, 101.5), now=20.0 + n / 10, partition=0) == []
    assert windows.tick(now=23.29) == []  # 3 s after the first, not yet after the last
    [first] = windows.tick(now=23.3)
    assert (first.window_id, first.revision, first.seen, first.closed_by) == (5, 0, 4, "revision")
    assert sorted(r["request_id"] for r in first.rows) == sorted(r["request_id"] for r in late)
    assert windows.tick(now=40.0) == [] and windows.revisions(now=40.0) == []
    assert windows.late_events == 0


def test_windows_one_batch_passes_as_it_opens_them_still_close_at_once(data_dir: Path) -> None:
    windows = Windows(SPEC)
    _traffic_moved_on(windows, data_dir)
    # One batch of v1 with events of windows 10 and 11 took the watermarks past both: in time, not late.
    ten = windows.add(_partial(_rows(data_dir, "v1", 10, 20, 3), 10, 121.5), now=30.0, partition=0)
    eleven = windows.add(_partial(_rows(data_dir, "v1", 11, 23, 3), 11, 121.5), now=30.0, partition=0)
    assert [(w.window_id, w.seen, w.closed_by) for w in ten + eleven] == [
        (10, 3, "watermark"),
        (11, 3, "watermark"),
    ]
