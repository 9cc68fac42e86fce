"""A window judged again for its reference says so, and no on-time window is revised (trial 12k).

Trial 12k: two windows of the canary c2 read "revised once as late events came in" on its Segment
page, though every event was sent on time and no count of late events was given. The canary's
feedback was sparse: its window's segment went quiet for the idle time and the window closed (by the
idle timeout) while the stable version's window of the same time was still open, so it was judged
against the stable version's previous window, and judged again as revision 1 (``closed_by``
``revision``) when the stable window closed. Now such a window waits for the stable window while it
is open (up to the idle time); one judged again all the same says why (``closed_by`` ``reference``)
and the console says ``judged again when its reference (t1, stable) window closed``. The demo's
backdated traffic closes windows ~10 min after their end in window time: the note says its events
were stamped that long before they were read.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curation.history import WINDOWS, window_closed_row
from schemas.events import WindowClosed
from services.console.window_close import close_notes, closes_by_kind, rejudged_by_reference
from streams.detect_stage import DetectStage
from streams.windows import Partial, Sample, Windows, WindowSpec
from tests.test_open_windows import MINUTE, T, _apply
from tests.test_stable_revision_rejudge import PAST, START, _feedback, _partial, _stage
from tests.test_window_marks import _batch, _out

DURING = START + 60 + 20  # event time within the second window, before its end
SECOND_END = datetime.fromtimestamp(START + 120, UTC)


class Traffic:
    """On-time feedback of the stable version t1 and the canary t2 through a real detect stage."""

    def __init__(self, stage: DetectStage, data_dir: Path) -> None:
        self.stage, self.data_dir = stage, data_dir
        self.offset = 0
        self.closed: list[WindowClosed] = []
        self.detections: list[dict[str, Any]] = []

    def send(self, now: float, *summaries: Partial | dict[str, Any]) -> list[WindowClosed]:
        """One unit of summaries at wall time ``now``; the WindowClosed events it published."""
        numbered = []
        for summary in summaries:
            self.offset += 1
            numbered.append((self.offset, summary))
        return self._keep(asyncio.run(self.stage.handle(_batch(self.stage, *numbered), now)))

    def tick(self, now: float) -> list[WindowClosed]:
        return self._keep(asyncio.run(self.stage.tick(now)))

    def feedback(self, version: str, first: int, pairs: int, progress: float, window: int) -> Partial:
        return _partial(
            self.stage, version, _feedback(self.data_dir, version, first, pairs), progress, window
        )

    def passed(self, event_time: float) -> dict[str, Any]:
        """A progress-only record: every input's event time at ``event_time``."""
        return {"progress": dict.fromkeys(self.stage.windows.spec.sources, event_time)}

    def _keep(self, effects: Any) -> list[WindowClosed]:
        detections, closed = _out(self.stage, effects)
        _apply(self.stage, effects)
        self.detections += detections
        self.closed += closed
        return closed

    def canary(self) -> list[tuple[int, str, str | None, str | None]]:
        """The canary's second window's closes: (revision, outcome, closed_by, reference)."""
        return [
            (c.revision, c.outcome, c.closed_by, c.reference)
            for c in self.closed
            if c.segment.model_version == "t2" and c.window_end == SECOND_END
        ]


def _first_window_then_a_quiet_canary(traffic: Traffic) -> None:
    """Both versions' first window closes; in the second the canary's thumbs stop at T + 1, the stable
    version's go on (its window stays open): at T + 31.5 the canary's window closes by the idle timeout."""
    traffic.send(T, traffic.feedback("t1", 0, 40, PAST, 0), traffic.feedback("t2", 0, 40, PAST, 0))
    traffic.send(T + 1, traffic.feedback("t1", 40, 40, DURING, 1), traffic.feedback("t2", 40, 40, DURING, 1))
    traffic.send(T + 20, traffic.feedback("t1", 80, 30, DURING + 10, 1))
    traffic.tick(T + 31.5)


def test_an_on_time_canary_window_closed_before_its_stable_window_is_judged_once_against_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    traffic = Traffic(_stage(tmp_path, monkeypatch), data_dir)
    _first_window_then_a_quiet_canary(traffic)
    # It waits for the stable window of its time (before: judged at once against the previous one).
    assert traffic.canary() == [(0, "waiting", "idle_timeout", None)]
    traffic.send(T + 40, traffic.passed(START + 130))  # the stable window closes by the watermark
    traffic.tick(T + 40.1)
    stable = f"stable:feedback|{traffic.closed[-1].segment.model}|t1|support-bot|chat|hh_rlhf@1:"
    [*_, judged] = traffic.canary()
    assert judged == (0, "judged", "idle_timeout", f"{stable}{SECOND_END.isoformat()}")
    # Judged once, against the stable window of its time: no revision of an on-time window.
    negative = [
        d
        for d in traffic.detections
        if d["segment"]["model_version"] == "t2" and d["detector_id"] == "quality.negative_feedback.v1"
    ]
    assert [(d["revision"], d["reference_size"]) for d in negative] == [(0, 40), (0, 70)]


def test_a_canary_window_judged_again_for_its_stable_window_says_so_on_its_segment_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    traffic = Traffic(_stage(tmp_path, monkeypatch), data_dir)
    _first_window_then_a_quiet_canary(traffic)
    # The stable window stays open longer than the idle time: the canary is judged against the last one.
    traffic.send(T + 40, traffic.feedback("t1", 110, 10, DURING + 20, 1))
    traffic.send(T + 55, traffic.feedback("t1", 120, 10, DURING + 30, 1))
    traffic.tick(T + 62)
    first_end = datetime.fromtimestamp(START + 60, UTC).isoformat()
    assert [c[:3] for c in traffic.canary()][-1] == (0, "judged", "idle_timeout")
    assert str(traffic.canary()[-1][3]).endswith(first_end)
    traffic.send(T + 70, traffic.passed(START + 130))
    # Judged again when the stable window closed: closed by its reference, not "revision" (late events).
    [*_, again] = traffic.canary()
    assert again == (1, "judged", "reference", f"{str(again[3]).split('@')[0]}@1:{SECOND_END.isoformat()}")
    assert "|t1|" in str(again[3])
    # The history's rows of them; closed 10 s after their end (WindowClosed stamps the real wall clock).
    closes = [
        dict(window_closed_row(c), closed_at=c.window_end + timedelta(seconds=10)) for c in traffic.closed
    ]
    rows = pa.Table.from_pylist(closes, WINDOWS)
    canary = rows.filter(pc.equal(rows["model_version"], "t2"))
    latest = canary.filter(pc.equal(canary["revision"], 1))
    assert rejudged_by_reference(canary) == {
        latest["window_start"][0].as_py(): "judged again when its reference (t1, stable) window closed"
    }
    [note] = close_notes(latest)
    assert note == "judged again 10 s after its end, when its reference (t1, stable) window closed"
    # Read without the reference column (the Segment page's columns): the stable window is not named.
    [unnamed] = close_notes(latest.drop_columns(["reference"]))
    assert str(unnamed).endswith(
        "when its reference (the stable version's window of its time) closed or was revised"
    )


def test_a_history_written_before_reference_closes_reads_as_it_did() -> None:
    end = datetime(2027, 1, 15, 8, 1, tzinfo=UTC)
    rows = _rows([(end, end + timedelta(seconds=30), "revision", 1, None)])
    assert close_notes(rows) == ["closed 30 s after its end by a revision"]
    assert rejudged_by_reference(rows) == {}


def test_a_window_with_late_events_waiting_is_a_revision_even_when_its_reference_asks() -> None:
    windows = Windows(WindowSpec(seconds=60, close="watermark", revision_seconds=300))
    sample = Sample(10)
    sample.offer({"request_id": "a"}, random.Random(1))
    partial = Partial({"model": "m"}, "feedback", MINUTE, START, START + 1, sample)
    windows.add(partial, T, close=False)
    assert [w.closed_by for w in windows.tick(T + 30)] == ["idle_timeout"]
    slot = windows.slot(partial)
    later = Sample(10)
    later.offer({"request_id": "b"}, random.Random(2))
    windows.add(Partial({"model": "m"}, "feedback", MINUTE, START, START + 2, later), T + 31)
    assert windows.again(slot, "reference").closed_by == "revision"  # its late partial came too
    assert windows.again(slot, "reference").closed_by == "reference"


def test_a_backdated_replay_says_its_events_were_stamped_before_they_were_read() -> None:
    ends = [datetime(2027, 1, 15, 8, n, tzinfo=UTC) for n in range(1, 6)]
    replay = _rows(
        [(end, end + timedelta(seconds=598), "watermark", 0, None) for end in ends[:4]]
        + [(ends[4], ends[4] + timedelta(seconds=598), "revision", 0, None)]
    )
    notes = close_notes_of(replay)
    assert notes[0] == (
        "closed 9 min 58 s after its end in window time (the segment's events were stamped a median"
        " ~10 min before they were read) by the watermark"
    )
    assert str(notes[4]).startswith(
        "first judged 9 min 58 s after its end in window time (the segment's events were stamped a"
        " median ~10 min before they were read), once its late events went quiet"
    )
    # Live traffic with one window held back: that one waited for its events, nothing was backdated.
    live = _rows(
        [(end, end + timedelta(seconds=1), "watermark", 0, None) for end in ends[:4]]
        + [(ends[4], ends[4] + timedelta(seconds=598), "watermark", 0, "llm.feedback.v1 partition 3")]
    )
    assert (
        close_notes_of(live)[4]
        == "closed 9 min 58 s after its end by the watermark, waited for llm.feedback.v1 partition 3"
    )


def close_notes_of(rows: pa.Table) -> list[str | None]:
    """The notes the Segment page gives each window (one kind: feedback)."""
    return closes_by_kind(rows, rows["window_start"])["feedback"]


def _rows(closes: Sequence[tuple[datetime, datetime, str, int, str | None]]) -> pa.Table:
    """Feedback rows of the windows table: (end, closed_at, closed_by, revision, waited_for)."""
    return pa.Table.from_pylist(
        [
            {
                "window_start": end - timedelta(minutes=1),
                "window_end": end,
                "kind": "feedback",
                "revision": revision,
                "closed_at": at,
                "closed_by": by,
                "waited_for": waited,
            }
            for end, at, by, revision, waited in closes
        ],
        WINDOWS,
    )
