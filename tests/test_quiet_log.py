"""The worker's log at the default INFO level is quiet and true."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import streams.detect
from core.logs import RepeatFilter, configure_logging
from detectors.base import DetectorNotReady
from services import sample_data
from streams.detect import DetectorSpec, Judge, Reference
from streams.windows import ClosedWindow

from .helpers import WorkerStack


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loopwatch_level = logging.getLogger("loopwatch").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("loopwatch").setLevel(loopwatch_level)


def test_libraries_speak_at_warning_and_loopwatch_at_info_unless_debug(restore_logging, capsys):
    configure_logging("info")
    logging.getLogger("kafka.net.connection").info("Connected")
    logging.getLogger("faust.transport").info("Starting...")
    logging.getLogger("aiokafka").warning("Heartbeat failed")
    logging.getLogger("loopwatch.worker").info("starting worker")
    written = capsys.readouterr().err
    assert "Connected" not in written and "Starting..." not in written
    assert "level=WARNING logger=aiokafka" in written and "starting worker" in written

    configure_logging("debug")
    logging.getLogger("kafka.net.connection").info("Connected")
    assert "logger=kafka.net.connection" in capsys.readouterr().err


def test_a_flood_of_one_error_is_one_line_and_a_count():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(repeats := RepeatFilter(window=3600))
    logger = logging.getLogger("aiokafka.test_flood")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for offset in range(5000):
            logger.error("OffsetCommit failed on partition %d with offset %d", offset % 4, offset)
        logger.error("another condition")
        repeats.flush()
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["OffsetCommit failed on partition 0 with offset 0", "another condition"]
    assert len(lines) == 3 and lines[2].startswith("4999 more like this in ")


def _window(rows: int) -> ClosedWindow:
    segment = {"model": "m", "model_version": "1", "app": None, "route": None, "tenant": None}
    start = sample_data.now()
    data = [{"request_id": f"r{i}", "prompt": "hi"} for i in range(rows)]
    return ClosedWindow(segment, "inference", start, start + timedelta(minutes=1), rows, data)


class _TooSmall:
    """A detector whose reference is too small to fit, as an embedding detector's is with one row."""

    def fit(self, reference: pd.DataFrame) -> None:
        raise DetectorNotReady("the reference needs at least two embedded rows")


def test_a_detector_not_ready_is_counted_and_logged_once_at_info_without_a_traceback(monkeypatch, caplog):
    monkeypatch.setattr(streams.detect, "create", lambda detector_id, config: _TooSmall())
    not_ready: list[str] = []
    failed: list[str] = []
    spec = DetectorSpec("drift.embedding_mmd.v1", "inference", {"column": "prompt"})
    judge = Judge([spec], on_failure=failed.append, on_not_ready=not_ready.append)
    reference = Reference("pinned", pd.DataFrame(_window(1).rows), 1)
    with caplog.at_level(logging.INFO, logger="loopwatch"):
        for _ in range(3):
            assert judge.run(_window(2), reference, [spec]) == []
    assert not_ready == ["drift.embedding_mmd.v1"] * 3 and failed == []
    records = [r for r in caplog.records if r.name == "loopwatch.detect"]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.INFO, None)]
    assert "at least two embedded rows" in records[0].getMessage()


def _inference(exchange: Any, rng: Any) -> bytes:
    return json.dumps(sample_data.inference_event(exchange, sample_data.now(), rng)).encode()


@pytest.mark.broker
def test_a_normal_run_with_traffic_logs_no_error_and_a_few_lines(broker: str, tmp_path: Path, exchanges, rng):
    # faust's stall check after 10 s instead of 300 s: it logged "Stream has not started
    # processing" (an ERROR) for batch partitions of a healthy worker, because batches
    # bypass faust's streams. (Much less than 10 s and faust's other check, "no fetch
    # request since start", fires while the worker is still recovering its tables.)
    stack = WorkerStack(broker, tmp_path, stream_stall_seconds=10, window_events=50)
    stack.start()
    sent = inference_sent = rounds = 0
    healthy_at = time.monotonic()
    # Rounds of traffic until well past the stall timeout, so that the checks see records arriving.
    # (faust's check runs on its own timer and logs nothing when all is well: there is no marker to
    # poll for, so the traffic goes on for longer than its timeout.)
    while rounds < 4 or time.monotonic() - healthy_at < 10:
        rounds += 1
        values = [_inference(e, rng) for e in exchanges]
        feedback = [
            json.dumps(f).encode()
            for e in exchanges
            for f in sample_data.feedback_events(e, sample_data.now())
        ]
        stack.send(stack.topics.inference, values)
        stack.send(stack.topics.feedback, feedback)
        sent += len(values) + len(feedback)
        inference_sent += len(values)
        assert len(stack.read(stack.topics.enriched, inference_sent, timeout=30)) >= inference_sent
    assert stack.read(stack.topics.detections, 1, timeout=60), "no window was judged"
    stack.wait_metric("loopwatch_events_in_total", sent, timeout=30)
    assert stack.metric("loopwatch_events_in_total") == sent
    stack.stop()
    log = stack.log()
    lines = log.splitlines()
    assert not [line for line in lines if "level=ERROR" in line or "Traceback" in line], log
    # Before: about 170 lines in the first 25 s, mostly kafka-python and faust INFO.
    assert len(lines) <= 30, log
