"""Slow detectors and Evidently reports, in a process of their own at a lower CPU priority.

They used to run in a worker thread, which shared the stream's GIL: while an
embedding detector or a report held it, the event loop waited for the GIL at
every turn, and the hops of a rollback (summaries -> detections -> decision)
each took up to a second longer (``bench/rollback_latency_bench.py``). A
separate process has its own interpreter, and its raised nice value lets the
operating system give the stream the CPU first.

One child process, started with ``spawn`` (the worker has threads, so it is
not forked) when the first slow job comes, so a worker whose windows never
need it does not pay for its imports. It dies with the worker, however the
worker dies: Linux sends it SIGTERM when the worker ends (``PR_SET_PDEATHSIG``),
and a worker that died while the child was still importing, before it asked
for that signal, is seen in the child's parent pid (trial 17a: a ``kill -9``
then left the child and its resource tracker running for 14 minutes). It keeps its own
:class:`~streams.detect.Judge`, so detectors fitted on a reference
(embedding the reference texts, calibrating) are reused across windows. If
the child dies (out of memory, say), the next job starts a new one.

Memory: the child's RSS used to grow by hundreds of MB per window (357 ->
860 -> 1,333 MB over three windows, issue 15). No Python object leaked; glibc's
allocator kept what torch freed. The permutation tests allocate and free
kernel matrices of 2,000 x 2,000 floats (16 MB) from several threads; glibc
raises its mmap threshold after the first such free, so later ones come from
the heap arenas, and freed arena memory stays in the process. Fixing the
threshold at 1 MiB (``mallopt``) makes every large block an ``mmap`` that goes
back to the system when freed, and a ``malloc_trim`` after each job returns
what smaller blocks left behind: on the same windows one MMD test went from
+640 MB to +10 MB (``bench/soak_bench.py`` shows the child over time).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.logs import configure_logging
from core.processes import die_with_parent
from streams.detect import DetectorSpec, Judge, Judged, Reference
from streams.windows import ClosedWindow

log = logging.getLogger("loopwatch.detect")

#: Added to the child's nice value: the stream gets the CPU before the slow detectors.
NICENESS = 10

#: Blocks at least this large are mmap-ed by glibc, and so returned to the system when freed.
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)

_judge: Judge | None = None  # the child's own, built once by _start_child
_libc: Any = None  # glibc, when the child runs on it
_failed: list[str] = []
_not_ready: list[str] = []


def _start_child(worker: int, specs: list[DetectorSpec], alpha: float, log_level: str) -> None:
    global _judge
    die_with_parent()
    if os.getppid() != worker:
        os._exit(0)  # the worker died before the signal was asked for: it will never come
    os.nice(NICENESS)
    configure_logging(log_level)
    # The embedding models' progress bars take tqdm's lock, by default one shared between
    # processes: a named semaphore that, when stop() ends this child, the worker's resource
    # tracker reported as leaked at exit. Only this process draws them: a thread lock will do.
    tqdm.set_lock(threading.RLock())
    _return_freed_memory_to_the_system()
    _judge = Judge(specs, alpha=alpha, on_failure=_failed.append, on_not_ready=_not_ready.append)


def _return_freed_memory_to_the_system() -> None:
    """Set glibc's mmap threshold once, so large freed blocks leave the process (see the module doc)."""
    global _libc
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only: musl and macOS have neither)
    except (OSError, AttributeError):
        log.info("not glibc: the slow-detector child keeps the allocator's defaults")
        return
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        _libc = libc


def _trim() -> None:
    """Give the system back the free memory the allocator still holds (after each job)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _judge_in_child(
    window: ClosedWindow, reference: Reference, specs: list[DetectorSpec]
) -> tuple[list[Judged], list[str], list[str]]:
    assert _judge is not None, "the child was not started by _start_child"
    _failed.clear()
    _not_ready.clear()
    try:
        return _judge.run(window, reference, specs), list(_failed), list(_not_ready)
    finally:
        _trim()


def _report_in_child(
    reference: Reference, rows: list[dict[str, Any]], columns: list[str], path: Path
) -> None:
    import pandas as pd

    from detectors.report import render_drift_report

    try:
        render_drift_report(reference.frame, pd.DataFrame(rows), columns, path)
    finally:
        _trim()


class SlowDetectors:
    """Runs slow detectors and reports in one lower-priority child process."""

    def __init__(
        self,
        specs: list[DetectorSpec],
        *,
        alpha: float,
        log_level: str,
        on_not_ready: Callable[[str], None] = lambda detector_id: None,
    ) -> None:
        self._start_args = (os.getpid(), specs, alpha, log_level)
        self.on_not_ready = on_not_ready
        self._stopped = False
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
        """The slow specs' findings on ``window``, and the ids of detectors that failed.

        Detectors that were not ready go to ``on_not_ready`` (the child logs them once).
        """
        loop = asyncio.get_running_loop()
        try:
            judged, failed, not_ready = await loop.run_in_executor(
                self._pool, _judge_in_child, window, reference, specs
            )
        except BrokenProcessPool:
            if self._stopped:
                return [], []  # ended by stop(): nothing to judge or to restart
            log.error("the slow-detector process died; starting a new one for the next window")
            self._pool = self._new_pool()
            raise
        for detector_id in not_ready:
            self.on_not_ready(detector_id)
        return judged, failed

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
            if future.cancelled():
                return
            error = future.exception()
            if error is None:
                return
            if self._stopped and isinstance(error, BrokenProcessPool):
                log.warning("stopping: the drift report %s is not rendered", path)
                return
            on_failure(error)

        try:
            self._pool.submit(_report_in_child, reference, window.rows, columns, path).add_done_callback(done)
        except BrokenProcessPool as error:
            self._pool = self._new_pool()
            on_failure(error)

    def stop(self) -> None:
        """Stop the child; work in flight is abandoned (its windows' fast detections are out)."""
        # The pool's exit hook joins a child still busy with a window (embedding it can
        # take seconds on a loaded machine), so the worker outlasted its SIGTERM grace:
        # the child is ended instead. concurrent.futures has no public way to do this before 3.14.
        self._stopped = True
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
