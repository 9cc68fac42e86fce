"""Detection windows end to end, on the real broker: real traffic in, Detections out."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from schemas.events import Detection
from services import sample_data
from tests.helpers import WorkerStack

pytestmark = pytest.mark.broker

DETECTORS = [
    {"detector_id": "drift.text_length.v1", "kind": "inference", "config": {"column": "response_chars"}},
    {"detector_id": "quality.negative_feedback.v1", "kind": "feedback", "config": {}},
]


def _traffic(data_dir: Path, start: datetime) -> tuple[list[bytes], list[bytes], list[int]]:
    """Three one-minute windows: HH-RLHF chosen, HH-RLHF chosen, then HH-RLHF rejected + OASST1.

    The third window's replies are the ones people rejected (thumbs down)
    mixed with much longer OASST1 replies: its lengths drift and its
    negative-feedback rate rises.
    """
    rng = random.Random(7)
    pairs = list(zip(range(600), sample_data.hh_rlhf(data_dir), strict=False))
    oasst = [e for e in sample_data.oasst1(data_dir) if e.thumbs_up is not None][:150]
    chosen = [pair[0] for _, pair in pairs]
    rejected = [pair[1] for _, pair in pairs[400:550]]
    windows = [chosen[:200], chosen[200:400], rejected + oasst]
    inferences, feedback = [], []
    for minute, exchanges in enumerate(windows):
        for i, exchange in enumerate(exchanges):
            at = start + timedelta(minutes=minute, seconds=i * 55 / len(exchanges))
            event = sample_data.inference_event(exchange, at, rng)
            event["tenant"] = "acme"  # one segment, whatever the source dataset
            inferences.append(json.dumps(event).encode())
            thumbs = [
                json.dumps({**f, "timestamp": at.isoformat()}).encode()
                for f in sample_data.feedback_events(exchange, at)
                if f["kind"] == "thumbs"
            ]
            feedback.extend(thumbs)
    return inferences, feedback, [len(exchanges) for exchanges in windows]


def _detections(stack: WorkerStack, count: int) -> list[Detection]:
    records = stack.read(stack.topics.detections, count, timeout=90)
    return [Detection.model_validate_json(r.value) for r in records]


def test_windows_are_judged_against_the_pinned_first_window(
    broker: str, tmp_path: Path, data_dir: Path
) -> None:
    detectors_file = tmp_path / "detectors.yaml"
    detectors_file.write_text(yaml.safe_dump(DETECTORS))
    stack = WorkerStack(
        broker,
        tmp_path,
        window_seconds=60,
        window_grace_seconds=1,
        window_idle_seconds=3,
        detectors_file=detectors_file,
    )
    stack.start()
    try:
        start = datetime.fromtimestamp((datetime.now(UTC).timestamp() // 60 - 10) * 60, UTC)
        inferences, feedback, sizes = _traffic(data_dir, start)
        stack.send(stack.topics.inference, inferences)
        stack.send(stack.topics.feedback, feedback)
        # Windows 2 and 3 of each kind are judged (window 1 is the pinned reference).
        detections = _detections(stack, 4)
        # Every valid event was counted into its window; no partial came too late to count.
        assert stack.metric("loopwatch_window_events_total") == len(inferences) + len(feedback)
        assert stack.metric("loopwatch_window_late_events_total") == 0
        # The drifted window's Evidently report is rendered off the hot path; a worker that
        # stops first abandons it, so wait for it while the worker runs.
        shifted_reports = [d.evidence.report_path for d in detections if d.evidence.report_path]
        if shifted_reports:
            stack.wait(lambda: Path(shifted_reports[0]).exists(), "the drift report was never written")
    finally:
        stack.stop()
    assert len(detections) == 4, stack.log()[-3000:]
    by_window: dict[tuple[str, int], Detection] = {
        (d.detector_id, int((d.window_start - start).total_seconds() // 60)): d for d in detections
    }
    assert sorted(by_window) == [
        ("drift.text_length.v1", 1),
        ("drift.text_length.v1", 2),
        ("quality.negative_feedback.v1", 1),
        ("quality.negative_feedback.v1", 2),
    ]
    calm, shifted = by_window["drift.text_length.v1", 1], by_window["drift.text_length.v1", 2]
    assert calm.verdict == "ok" and shifted.verdict == "drift", (calm, shifted)
    # A window counts every event; the detectors see a uniform sample of at most 200 rows per
    # ingest batch, and this test's traffic arrives in one or two batches.
    assert (calm.measurements["window_events"], shifted.measurements["window_events"]) == tuple(sizes[1:])
    assert 100 <= shifted.current_size <= sizes[2]
    assert calm.reference.startswith("pinned:") and shifted.reference.startswith("pinned:"), (calm, shifted)
    assert shifted.segment.key() == f"{sample_data.MODEL}|{sample_data.STABLE_VERSION}|support-bot|chat|acme"
    assert shifted.config["column"] == "response_chars"
    # The drifted window got an Evidently report, rendered off the hot path and linked.
    assert calm.evidence.report_path is None and shifted.evidence.report_path is not None
    report = Path(shifted.evidence.report_path)
    assert report.exists(), stack.log()[-3000:]
    assert "response_chars" in report.read_text()
    feedback_calm = by_window["quality.negative_feedback.v1", 1]
    feedback_alarm = by_window["quality.negative_feedback.v1", 2]
    assert feedback_calm.verdict == "ok", feedback_calm
    assert feedback_alarm.verdict == "drift", feedback_alarm
