"""Run the faust worker, and supervise broker + workers for ``loopwatch up``."""

from __future__ import annotations

import faulthandler
import gc
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import faust

from core.logs import configure_logging, flush_repeats
from core.processes import spawn, spawn_worker, stop_process
from core.settings import Settings
from services.broker import start_broker
from services.waiting_web import WaitingWeb
from streams.app import create_app
from streams.broker_watch import EXIT_TOPICS_MISSING
from streams.kafka import ensure_topics, wait_for_kafka
from streams.runtime import Stage

log = logging.getLogger("loopwatch.worker")


#: The worker's exit code when its shutdown outlasted ``stop_grace_seconds`` and it was cut short.
EXIT_STOP_TIMEOUT = 4
#: The worker's exit code when it crashed (a stage failed): it exits at once, and its supervisor restarts it.
EXIT_CRASHED = 5


def run_worker(settings: Settings) -> None:
    """Wait for Kafka, create missing topics, then run the faust worker until stopped.

    Exits 0 when stopped, :data:`~streams.broker_watch.EXIT_TOPICS_MISSING` when it
    stopped itself because topics vanished (``on_missing_topics=exit``),
    :data:`EXIT_STOP_TIMEOUT` when its shutdown outlasted ``stop_grace_seconds``, and
    :data:`EXIT_CRASHED` at once when it crashed.
    """
    configure_logging(settings.log_level)
    log.info("starting worker app_id=%s kafka=%s", settings.app_id, settings.kafka_bootstrap)
    # The port answers /health (503, why) from now on, not only once the broker did.
    placeholder = WaitingWeb(settings)
    try:
        wait_for_kafka(settings, give_up_after=settings.broker_wait_seconds, on_problem=placeholder.waiting)
        ensure_topics(settings)
    finally:
        placeholder.close()  # the worker's own web server takes the port
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    keep_garbage_collection_off_the_hot_path()
    worker = GracefulWorker(
        app,
        grace_seconds=settings.stop_grace_seconds,
        loglevel=settings.log_level,
        # Logging is configure_logging's: mode's own setup would replace its handler
        # and format and let every library log at INFO.
        override_logging=False,
        redirect_stdouts=False,
        quiet=not sys.stdout.isatty(),
    )
    try:
        worker.execute_from_commandline()
    finally:
        flush_repeats()
        reason = app.broker_watch.exit_reason  # type: ignore[attr-defined]
        if reason is not None:
            sys.exit(EXIT_TOPICS_MISSING)


class GracefulWorker(faust.Worker):
    """faust's worker that exits within ``grace_seconds`` of SIGTERM or SIGINT, whatever the broker does.

    faust's shutdown commits offsets and flushes the producer; with the broker gone
    it waited 40-60 s and longer, until the process was killed. A watchdog thread
    starts with the signal, and if the shutdown is still running when the grace
    period ends it says so in one line and exits with :data:`EXIT_STOP_TIMEOUT`.

    A crash (a stage whose batch or effects failed, any service of faust's that
    crashed) ends the process at once with :data:`EXIT_CRASHED` and one line
    (:func:`crash_line`); see :meth:`_crash`.
    """

    def __init__(self, *args: Any, grace_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None  # a terminal spinner's escape codes have no place in a service log
        self.grace_seconds = grace_seconds
        self._watchdog: threading.Timer | None = None

    def _on_sigterm(self) -> None:
        self._start_watchdog("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._start_watchdog("SIGINT")
        super()._on_sigint()

    def _crash(self, reason: BaseException) -> None:
        # mode marks every service crashed, then its shutdown stops them all, waiting on the
        # work still under way (the next unit of the crashed stage and its retries, the other
        # stages, a producer without a broker): the process stayed up for 17 s to over 2.5 min,
        # and a supervisor that restarts on exit could not restart it meanwhile. Ending here
        # loses nothing: no input is acked before its outputs and state are on the broker, so
        # the restart processes again what was under way, as after a kill -9.
        super()._crash(reason)
        if self._watchdog is not None:
            return  # already stopping for a signal, within the grace period: its exit code stands
        log.critical("%s", crash_line(reason))
        _exit_now(EXIT_CRASHED)

    def _start_watchdog(self, signal_name: str) -> None:
        if self._watchdog is not None:
            return
        log.info("%s: stopping (at most %.0fs)", signal_name, self.grace_seconds)
        self._watchdog = threading.Timer(self.grace_seconds, self._cut_short, args=(signal_name,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _cut_short(self, signal_name: str) -> None:
        # A worker that stopped itself because topics vanished keeps saying so in its code.
        watch = getattr(self.app, "broker_watch", None)
        code = EXIT_TOPICS_MISSING if watch is not None and watch.exit_reason else EXIT_STOP_TIMEOUT
        log.error(
            "the worker did not stop within %.0fs of %s (its shutdown waits on the broker);"
            " exiting with code %d",
            self.grace_seconds,
            signal_name,
            code,
        )
        _flush_logs()
        # Where each thread is stuck: what an operator needs to know about a hung shutdown.
        faulthandler.dump_traceback(all_threads=True)
        _exit_now(code)  # the event loop is stuck: no clean exit is possible


def _flush_logs() -> None:
    flush_repeats()
    for handler in logging.getLogger().handlers:
        handler.flush()


def _exit_now(code: int) -> NoReturn:
    # The slow-detector process first: the pool's own stop is skipped, and a child still
    # starting has not yet asked to die with its parent (it stayed, blocked on its queue).
    for child in multiprocessing.active_children():
        child.terminate()
    _flush_logs()
    os._exit(code)  # not sys.exit: the interpreter's exit would join the threads still busy


# Frames in these are the Python library's or a dependency's, not where loopwatch went wrong.
_LIBRARIES = tuple(sorted({sysconfig.get_paths()[name] for name in ("stdlib", "purelib", "platlib")}))
_ROOT = Path(__file__).resolve().parent.parent


def crash_line(reason: BaseException) -> str:
    """The one line a crash logs: the stage that crashed, the exception, where it was raised, the exit code.

    The stage is the innermost in the traceback (a frame of its own methods or of
    its queue in the runtime); the place is the innermost frame of loopwatch's
    code, not a library's.
    """
    frames = list(traceback.walk_tb(reason.__traceback__))
    stage = None
    for frame, _ in frames:
        owner = frame.f_locals.get("self")
        found = owner if isinstance(owner, Stage) else getattr(owner, "stage", None)
        if isinstance(found, Stage):
            stage = found.name
    what = " ".join(str(reason).split())  # one line, whatever the message holds
    if len(what) > 300:
        what = what[:300] + "..."
    line = "the worker crashed" + (f" in the {stage} stage" if stage else "")
    line += f": {type(reason).__name__}" + (f": {what}" if what else "")
    ours = [(f, n) for f, n in frames if not f.f_code.co_filename.startswith(_LIBRARIES)]
    if ours or frames:
        frame, number = (ours or frames)[-1]
        path = Path(frame.f_code.co_filename)
        line += f" (raised at {path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path}:{number})"
    return f"{line}; exiting with code {EXIT_CRASHED}"


def keep_garbage_collection_off_the_hot_path() -> None:
    """Tune Python's cyclic garbage collector for a long-running stream worker.

    The modules, classes and app built at start-up live as long as the process,
    yet every full collection walked them again (about 110 ms each, 14 of them
    while one worker ingested 200,000 events). Freezing them moves them out of
    the collector's sight. A larger young generation means the records of a
    fetch, all alive while the fetch is handled, are not re-examined every 700
    allocations. Nothing is disabled: cycles are still collected.
    ``bench/ingest_bench.py`` measures the effect: (10,000, 10, 10) still spent
    1.26-1.71 s in the collector per 100,000 events (about 15 us an event, inside
    whatever allocated: mostly the events' models); (100,000, 20, 100) 0.45-0.48 s.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)


class Restarts:
    """When to restart a worker: 2 s after it exits, doubling up to 60 s while it keeps crashing.

    A worker that stayed up a minute is healthy again: its next restart waits 2 s.

    >>> r = Restarts()
    >>> [r.exited(0.0), (r.started(3.0), r.exited(4.0))[1], (r.started(9.0), r.exited(100.0))[1]]
    [2.0, 4.0, 2.0]
    """

    first, longest, healthy_after = 2.0, 60.0, 60.0

    def __init__(self) -> None:
        self.delay = self.first
        self.since = 0.0
        #: When the exited worker is due to start again (None: it is running).
        self.due: float | None = None

    def exited(self, now: float) -> float:
        """The worker exited at ``now``: schedule its restart; returns the pause."""
        if now - self.since >= self.healthy_after:
            self.delay = self.first
        pause = self.delay
        self.delay = min(self.delay * 2, self.longest)
        self.due = now + pause
        return pause

    def started(self, now: float) -> None:
        """The worker was started again at ``now``."""
        self.since, self.due = now, None


def run_up(settings: Settings, *, workers: int = 1, embedded_broker: bool = True) -> None:
    """Broker (optional) plus ``workers`` worker processes; Ctrl-C stops them all.

    A worker that dies is restarted after a pause that grows while it keeps
    crashing (:class:`Restarts`); the broker is never restarted because its
    storage is in memory.
    """
    configure_logging(settings.log_level)
    bootstrap = settings.kafka_bootstrap
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    broker = None
    if embedded_broker:
        broker = start_broker(settings.broker_port)
        bootstrap = f"127.0.0.1:{settings.broker_port}"
        log.info("embedded broker (tansu, in-memory) listening on %s", bootstrap)

    def start_worker(index: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["LOOPWATCH_KAFKA_BOOTSTRAP"] = bootstrap
        env["LOOPWATCH_WEB_PORT"] = str(settings.web_port + index)
        return spawn_worker(env)

    children = [start_worker(i) for i in range(workers)]
    restarts = [Restarts() for _ in children]
    for i in range(workers):
        log.info(
            "worker %d: metrics on http://%s:%d/metrics",
            i,
            settings.web_host,
            settings.web_port + i,
        )
    # The console reads the history the workers write; it has no state, so it is not restarted.
    # It is told the workers' Kafka, so its replay commands name it.
    console_env = {**os.environ, "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap}
    console = spawn([sys.executable, "-m", "services.cli", "console", "--this-run"], env=console_env)
    log.info("console on http://%s:%d/", settings.console_host, settings.console_port)
    try:
        while not stopping:
            time.sleep(0.5)
            now = time.monotonic()
            for i, child in enumerate(children):
                if stopping or child.poll() is None:
                    continue
                due = restarts[i].due
                if due is None:
                    delay = restarts[i].exited(now)
                    code = child.returncode
                    log.warning("worker %d exited with code %s; restarting in %.0fs", i, code, delay)
                elif now >= due:
                    children[i] = start_worker(i)
                    restarts[i].started(now)
    finally:
        log.info("stopping %d worker(s)%s", len(children), " and the broker" if broker else "")
        for child in children:
            stop_process(child, timeout=30)
        stop_process(console)
        if broker is not None:
            stop_process(broker)
        codes = ", ".join(f"worker {i} exited with {child.returncode}" for i, child in enumerate(children))
        log.info("stopped: %s; the console%s too", codes, " and the broker" if broker else "")
