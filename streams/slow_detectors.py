"""Slow detectors and Evidently reports, in a process of their own at a lower CPU priority.

They used to run in a worker thread, which shared the stream's GIL: while an
embedding detector or a report held it, the event loop waited for the GIL at
every turn, and the hops of a rollback (summaries -> detections -> decision)
each took up to a second longer (``bench/rollback_latency_bench.py``). A
separate process has its own interpreter, and its raised nice value lets the
operating system give the stream the CPU first.

One child process, started with ``spawn`` (the worker has threads, so it is
not forked) when the first slow job comes, so a worker whose windows never
need it does not pay for its imports. It keeps its own
:class:`~streams.detect.Judge`, so detectors fitted on a reference
(embedding the reference texts, calibrating) are reused across windows. If
the child dies (out of memory, say), the next job starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from services.logs import configure_logging
from services.processes import die_with_parent
from streams.detect import DetectorSpec, Judge, Judged, Reference
from streams.windows import ClosedWindow

log = logging.getLogger("loopwatch.detect")

#: Added to the child's nice value: the stream gets the CPU before the slow detectors.
NICENESS = 10

_judge: Judge | None = None  # the child's own, built once by _start_child
_failed: list[str] = []


def _start_child(specs: list[DetectorSpec], alpha: float, log_level: str) -> None:
    global _judge
    die_with_parent()
    os.nice(NICENESS)
    configure_logging(log_level)
    _judge = Judge(specs, alpha=alpha, on_failure=_failed.append)


def _judge_in_child(
    window: ClosedWindow, reference: Reference, specs: list[DetectorSpec]
) -> tuple[list[Judged], list[str]]:
    assert _judge is not None, "the child was not started by _start_child"
    _failed.clear()
    return _judge.run(window, reference, specs), list(_failed)


def _report_in_child(
    reference: Reference, rows: list[dict[str, Any]], columns: list[str], path: Path
) -> None:
    import pandas as pd

    from detectors.report import render_drift_report

    render_drift_report(reference.frame, pd.DataFrame(rows), columns, path)


class SlowDetectors:
    """Runs slow detectors and reports in one lower-priority child process."""

    def __init__(self, specs: list[DetectorSpec], *, alpha: float, log_level: str) -> None:
        self._start_args = (specs, alpha, log_level)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=self._start_args,
        )

    async def judge(
        self, window: ClosedWindow, reference: Reference, specs: list[DetectorSpec]
    ) -> tuple[list[Judged], list[str]]:
        """The slow specs' findings on ``window``, and the ids of detectors that failed."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _judge_in_child, window, reference, specs)
        except BrokenProcessPool:
            log.error("the slow-detector process died; starting a new one for the next window")
            self._pool = self._new_pool()
            raise

    def report(
        self,
        reference: Reference,
        window: ClosedWindow,
        columns: list[str],
        path: Path,
        on_failure: Callable[[BaseException], None],
    ) -> None:
        """Render an Evidently report in the child; ``on_failure`` hears of any error."""

        def done(future: Future[None]) -> None:
            error = future.exception()
            if error is not None:
                on_failure(error)

        try:
            self._pool.submit(_report_in_child, reference, window.rows, columns, path).add_done_callback(done)
        except BrokenProcessPool as error:
            self._pool = self._new_pool()
            on_failure(error)

    def stop(self) -> None:
        """Stop the child; work in flight is abandoned (its windows' fast detections are out)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
