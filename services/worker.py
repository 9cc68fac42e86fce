"""Run the faust worker, and supervise broker + workers for ``loopwatch up``."""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import Any

import faust

from core.logs import configure_logging, flush_repeats
from core.processes import spawn_worker, stop_process
from core.settings import Settings
from services.broker import start_broker
from streams.app import create_app
from streams.broker_watch import EXIT_TOPICS_MISSING
from streams.kafka import ensure_topics, wait_for_kafka

log = logging.getLogger("loopwatch.worker")


#: The worker's exit code when its shutdown outlasted ``stop_grace_seconds`` and it was cut short.
EXIT_STOP_TIMEOUT = 4


def run_worker(settings: Settings) -> None:
    """Wait for Kafka, create missing topics, then run the faust worker until stopped.

    Exits 0 when stopped, :data:`~streams.broker_watch.EXIT_TOPICS_MISSING` when it
    stopped itself because topics vanished (``on_missing_topics=exit``), and
    :data:`EXIT_STOP_TIMEOUT` when its shutdown outlasted ``stop_grace_seconds``.
    """
    configure_logging(settings.log_level)
    log.info("starting worker app_id=%s kafka=%s", settings.app_id, settings.kafka_bootstrap)
    wait_for_kafka(settings.kafka_bootstrap, give_up_after=settings.broker_wait_seconds)
    ensure_topics(settings)
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
        flush_repeats()
        for handler in logging.getLogger().handlers:
            handler.flush()
        # Where each thread is stuck: what an operator needs to know about a hung shutdown.
        faulthandler.dump_traceback(all_threads=True)
        os._exit(code)  # the event loop is stuck: no clean exit is possible


def keep_garbage_collection_off_the_hot_path() -> None:
    """Tune Python's cyclic garbage collector for a long-running stream worker.

    The modules, classes and app built at start-up live as long as the process,
    yet every full collection walked them again (about 110 ms each, 14 of them
    while one worker ingested 200,000 events). Freezing them moves them out of
    the collector's sight. A larger young generation means the records of a
    fetch, all alive while the fetch is handled, are not re-examined every 700
    allocations. Nothing is disabled: cycles are still collected.
    ``bench/ingest_bench.py`` measures the effect.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run_up(settings: Settings, *, workers: int = 1, embedded_broker: bool = True) -> None:
    """Broker (optional) plus ``workers`` worker processes; Ctrl-C stops them all.

    A worker that dies is restarted after a short pause; the broker is never
    restarted because its storage is in memory.
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
    for i in range(workers):
        log.info(
            "worker %d: metrics on http://%s:%d/metrics",
            i,
            settings.web_host,
            settings.web_port + i,
        )
    try:
        while not stopping:
            time.sleep(0.5)
            for i, child in enumerate(children):
                if child.poll() is not None and not stopping:
                    log.warning("worker %d exited with code %s; restarting in 2s", i, child.returncode)
                    time.sleep(2)
                    children[i] = start_worker(i)
    finally:
        log.info("stopping %d worker(s)%s", len(children), " and the broker" if broker else "")
        for child in children:
            stop_process(child, timeout=30)
        if broker is not None:
            stop_process(broker)
