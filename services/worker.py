"""Run the faust worker, and supervise broker + workers for ``loopwatch up``."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import faust

from services.broker import start_broker
from services.kafka import ensure_topics, wait_for_kafka
from services.logs import configure_logging
from services.processes import spawn_worker, stop_process
from services.settings import Settings
from streams.app import create_app

log = logging.getLogger("loopwatch.worker")


def run_worker(settings: Settings) -> None:
    """Wait for Kafka, create missing topics, then run the faust worker until stopped."""
    configure_logging(settings.log_level)
    log.info("starting worker app_id=%s kafka=%s", settings.app_id, settings.kafka_bootstrap)
    wait_for_kafka(settings.kafka_bootstrap, give_up_after=settings.broker_wait_seconds)
    ensure_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    keep_garbage_collection_off_the_hot_path()
    worker = faust.Worker(
        app, loglevel=settings.log_level, redirect_stdouts=False, quiet=not sys.stdout.isatty()
    )
    worker.execute_from_commandline()


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
