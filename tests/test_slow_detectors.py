"""Slow detectors in their own lower-priority process: same findings, failures reported, survives a crash."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd
import pytest
from tqdm import tqdm

from streams.detect import DetectorSpec, Judge, Reference
from streams.slow_detectors import NICENESS, SlowDetectors

from .helpers import ROOT, process_alive, wait_until
from .test_detect import _window

SPECS = [
    DetectorSpec("drift.ks.v1", "inference", {"column": "response_chars"}, slow=True),
    DetectorSpec("drift.ks.v1", "inference", {"column": "no_such_column"}, slow=True),
]


def _reference() -> Reference:
    return Reference("pinned:test", pd.DataFrame(_window("1", 300, 500, 0).rows), 300)


def _child_pid(slow: SlowDetectors) -> int:
    [pid] = list(slow._pool._processes)
    return pid


def test_findings_match_the_in_process_judge_and_failures_are_reported(tmp_path: Path) -> None:
    reference, window = _reference(), _window("1", 300, 560, 1, seed=1)
    failed_here: list[str] = []
    expected = Judge(SPECS, on_failure=failed_here.append).run(window, reference, SPECS)
    slow = SlowDetectors(SPECS, alpha=0.05, log_level="warning")
    try:
        judged, failed = asyncio.run(slow.judge(window, reference, SPECS))
        child = _child_pid(slow)
        assert child != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, child) >= os.getpriority(os.PRIO_PROCESS, 0) + NICENESS
    finally:
        slow.stop()
    assert [j.finding.verdict for j in judged] == [j.finding.verdict for j in expected] == ["drift"]
    assert judged[0].finding.p_value == pytest.approx(expected[0].finding.p_value)
    assert failed == failed_here == ["drift.ks.v1"]  # the missing column, reported to the worker


def test_a_dead_child_fails_one_window_and_the_next_gets_a_new_one() -> None:
    reference, window = _reference(), _window("1", 300, 560, 1, seed=1)
    slow = SlowDetectors(SPECS[:1], alpha=0.05, log_level="warning")

    async def scenario() -> int:
        await slow.judge(window, reference, SPECS[:1])
        first = _child_pid(slow)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not process_alive(first), 30, "the killed child is still running")
        with pytest.raises(BrokenProcessPool):
            await slow.judge(window, reference, SPECS[:1])
        judged, _ = await slow.judge(window, reference, SPECS[:1])
        assert judged[0].finding.verdict == "drift"
        return first

    try:
        first = asyncio.run(scenario())
        assert _child_pid(slow) != first
    finally:
        slow.stop()


def test_a_report_is_rendered_in_the_child_and_errors_come_back(tmp_path: Path) -> None:
    reference, window = _reference(), _window("1", 300, 560, 1, seed=1)
    slow = SlowDetectors(SPECS, alpha=0.05, log_level="warning")
    errors: list[BaseException] = []
    try:
        path = tmp_path / "report.html"
        slow.report(reference, window, ["response_chars"], path, errors.append)
        slow.report(reference, window, ["no_such_column"], tmp_path / "bad.html", errors.append)
    finally:
        slow._pool.shutdown(wait=True)  # let both jobs finish
    assert "response_chars" in path.read_text()
    assert len(errors) == 1


def progress_bar() -> None:
    """What an embedding model does in the child: a tqdm bar, which takes tqdm's lock."""
    list(tqdm(range(3), file=io.StringIO()))


_STOP_WITH_A_BAR = """
from streams.slow_detectors import SlowDetectors
from tests.test_slow_detectors import SPECS, progress_bar
slow = SlowDetectors(SPECS, alpha=0.05, log_level="warning")
slow._pool.submit(progress_bar).result()
slow.stop()
"""


def test_stopping_a_child_that_drew_a_progress_bar_leaks_no_semaphore() -> None:
    # Trial 12t: Ctrl-C on `loopwatch up` ended with "resource_tracker: There appear to be 1
    # leaked semaphore objects": tqdm's process-shared lock, taken in the child stop() ends.
    done = subprocess.run(
        [sys.executable, "-c", _STOP_WITH_A_BAR], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "leaked semaphore" not in done.stderr
