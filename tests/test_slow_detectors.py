"""Slow detectors in their own lower-priority process: same findings, failures reported, survives a crash."""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd
import pytest

from streams.detect import DetectorSpec, Judge, Reference
from streams.slow_detectors import NICENESS, SlowDetectors

from .helpers import process_alive, wait_until
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
