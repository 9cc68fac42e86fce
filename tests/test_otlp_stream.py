"""The OTLP bridge on the real broker: Collector-shaped spans in; enriched logs, joins, a detection out."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from schemas.events import Detection, EnrichedInference, JoinedFeedback
from services import sample_data
from services.demo.otlp import Family, SpanWriter, collector_message, export_request
from tests.helpers import WorkerStack, values_json

pytestmark = pytest.mark.broker

WINDOW = 60
SPANS_PER_MESSAGE = 20


def _messages(events: list[dict[str, Any]], encoding: str, evaluate: bool) -> list[bytes]:
    """The events as LLM spans of the three families, SPANS_PER_MESSAGE per Collector message."""
    writer = SpanWriter()
    families = get_args(Family)
    messages = []
    for n, event in enumerate(events):
        evaluation = {"gen_ai.evaluation.name": "helpfulness", "gen_ai.evaluation.score.value": 2}
        writer.record(event, families[n % len(families)], [evaluation] if evaluate else None)
        if (n + 1) % SPANS_PER_MESSAGE == 0 or n == len(events) - 1:
            messages.append(collector_message(export_request(writer.take()), encoding))
    return messages


def test_collector_spans_become_enriched_logs_joined_feedback_and_a_detection(
    broker: str, tmp_path: Path, data_dir: Path
) -> None:
    detectors_file = tmp_path / "detectors.yaml"
    detectors_file.write_text(
        yaml.safe_dump(
            [
                {
                    "detector_id": "drift.text_length.v1",
                    "kind": "inference",
                    "config": {"column": "response_chars"},
                }
            ]
        )
    )
    stack = WorkerStack(
        broker,
        tmp_path,
        window_events=WINDOW,
        window_idle_seconds=3,
        detectors_file=detectors_file,
        curation="false",
        decide="false",
    )
    rng = random.Random(3)
    now = sample_data.now()
    calm = [pair[0] for _, pair in zip(range(WINDOW), sample_data.hh_rlhf(data_dir), strict=False)]
    long_replies = [e for e in sample_data.oasst1(data_dir) if len(e.response) > 800][:WINDOW]
    # One segment: the same tenant whatever the source dataset.
    first = [{**sample_data.inference_event(e, now, rng), "tenant": "acme"} for e in calm]
    second = [{**sample_data.inference_event(e, now, rng), "tenant": "acme"} for e in long_replies]
    stack.start()
    try:
        otlp = stack.topics.otlp_spans
        stack.send(otlp, [*_messages(first, "otlp_proto", evaluate=False), b"\x0a\x07garbage"])
        stack.read(stack.topics.enriched, WINDOW)
        stack.send(otlp, _messages(second, "otlp_json", evaluate=True))
        enriched = [
            EnrichedInference.model_validate_json(r.value)
            for r in stack.read(stack.topics.enriched, 2 * WINDOW, timeout=90)
        ]
        joined = [
            JoinedFeedback.model_validate_json(r.value)
            for r in stack.read(stack.topics.joined, WINDOW, timeout=90)
        ]
        detections = [
            Detection.model_validate_json(r.value) for r in stack.read(stack.topics.detections, 1, timeout=90)
        ]
        letters = values_json(stack.read(stack.topics.deadletter, 1))
        skipped = stack.metric("loopwatch_otlp_skipped_total", reason="not_genai")
    finally:
        stack.stop()
    assert len(enriched) == 2 * WINDOW, stack.log()[-3000:]
    by_response = {e.inference.response: e.inference for e in enriched}
    for event in first + second:
        log = by_response[event["response"]]
        assert (log.model.name, log.model.version, log.app) == (
            sample_data.MODEL,
            event["model"]["version"],
            "support-bot",
        )
        assert log.tokens is not None and log.tokens.model_dump() == event["tokens"]
        assert log.latency_ms == pytest.approx(event["latency_ms"])
        assert [m.model_dump() for m in log.prompt or [] if not isinstance(m, str)] == event["prompt"]
    # Every evaluation event joined the request its span stands for, as automatic feedback.
    assert len(joined) == WINDOW and all(j.feedback.source == "automatic" for j in joined)
    assert {j.inference.response for j in joined} == {e["response"] for e in second}
    assert skipped == 2 * WINDOW  # each request's HTTP server span
    assert [(letter["reason"], letter["source"]["topic"]) for letter in letters] == [("malformed_otlp", otlp)]
    (detection,) = detections
    assert detection.detector_id == "drift.text_length.v1" and detection.verdict == "drift", detection
    assert detection.segment.model == sample_data.MODEL and detection.segment.app == "support-bot"
    assert json.loads(detection.model_dump_json())["reference"].startswith("pinned:")
