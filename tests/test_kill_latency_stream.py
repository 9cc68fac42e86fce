"""On the real broker: after a kill -9 of the worker judging a model, its verdicts resume by watermark.

Issue 17 (trial 17c) saw a model's verdicts stall about 30 s after ``kill -9``
of the worker whose detect stage owned it, the window idle timeout's length.
The window idle timeout here is 600 s: a survivor that needed it (restored
watermarks of input partitions that nobody moves again, a window waiting for
a partial that never comes) would judge nothing within the test's deadline.
What a crash does cost is the group noticing (``session_timeout_seconds``,
short here), the broker's rebalance and the tables' recovery; the test prints
how long it took from the kill to the next Detection (no assertion on wall time).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schemas.events import Detection
from tests.helpers import WorkerStack, wait_until
from tests.scaleout_traffic import Sender, Verdicts, build, missing, score, worker_settings
from tests.test_rekey_stream import split_partitions

pytestmark = [pytest.mark.broker]

MODEL = "kill-latency-bot"


def _detecting(workers: list[WorkerStack]) -> WorkerStack | None:
    """The worker whose detect stage merges the model's summaries (it has counted window events)."""
    for worker in workers:
        if worker.metric("loopwatch_window_events_total") > 0:
            return worker
    return None


def test_verdicts_resume_after_a_kill_without_the_idle_timeout(
    broker: str, tmp_path: Path, data_dir: Path
) -> None:
    settings = worker_settings(
        tmp_path, (MODEL,), window_close="watermark", window_idle_seconds=600, session_timeout_seconds=4
    )
    first = WorkerStack(broker, tmp_path, **settings)
    second = first.peer(tmp_path / "second")
    workers = [first, second]
    traffic = build(data_dir, inference=1_200, feedback=960, windows=3, model=MODEL)
    try:
        split_partitions([first.start(wait=False), second.start(wait=False)])
        sender = Sender(traffic, first.bootstrap, first.topics, speed=8.0)
        try:
            sender.send_until(0.4)
            victim: WorkerStack = first.wait(lambda: _detecting(workers), "no worker merged a window summary")
            survivor = second if victim is first else first
            killed_at = time.time()
            victim.kill9()
            sender.send_until(1.0)
        finally:
            sender.close()

        def verdicts() -> Verdicts:
            return Verdicts.of(survivor.read_all(survivor.topics.detections), MODEL)

        wait_until(
            lambda: not missing(traffic.truth, verdicts()),
            90,
            "the survivor judged no window after the kill (waiting for the idle timeout?)",
            detail=lambda: f"{missing(traffic.truth, verdicts())}\n{survivor.log()[-3000:]}",
            interval=1.0,
        )
        records = survivor.read_all(survivor.topics.detections)
        result = score(traffic.truth, Verdicts.of(records, MODEL))
        assert result.wrong == {}, survivor.log()[-3000:]
        # No window closed early: every first verdict already counted every event of its window.
        assert result.first_complete == result.windows, (result, survivor.log()[-3000:])
        # The partitions it took over were restored before it merged their summaries: merged before,
        # their table writes were dropped as not its own, and their offsets never all committed.
        assert "not ours" not in survivor.log(), survivor.log()[-3000:]
        topics = survivor.topics
        wait_until(
            lambda: not any(survivor.uncommitted(topics.summaries, topics.detections).values()),
            60,
            "the survivor did not commit what it merged",
            detail=lambda: f"{survivor.uncommitted(topics.summaries, topics.detections)}",
        )
        after = [
            r.timestamp / 1000
            for r in records
            if r.timestamp / 1000 > killed_at
            and Detection.model_validate_json(r.value).segment.model == MODEL
        ]
        print(f"kill -9 -> next Detection: {min(after) - killed_at:.1f} s (session timeout 4 s)")
    finally:
        first.stop()
        second.stop()
