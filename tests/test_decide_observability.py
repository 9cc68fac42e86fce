"""On the real broker: alert transitions in the worker's log and on /metrics; backtest straight from Kafka."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka.admin import NewTopic

from core.settings import Settings
from schemas.events import Detection, Segment
from services.cli import main
from streams.kafka import admin_client
from tests.helpers import WorkerStack
from tests.test_decide_pipeline import POLICY, detection
from tests.test_policy_cli import _policy_file

pytestmark = pytest.mark.broker

# Recent windows, so that the worker's wall-clock resolve timeout does not close the alert first.
START = datetime.fromtimestamp((time.time() // 60 - 10) * 60, UTC)
BAD, STABLE = "2026-11-20", "2026-10-01"


def _feedback(minute: int, verdict: str) -> bytes:
    """Negative feedback of model ``m``'s new version, with the numbers its detector reports."""
    start = START + timedelta(minutes=minute)
    rate = 0.871 if verdict == "drift" else 0.19
    return (
        Detection(
            detection_id=str(uuid.uuid4()),
            detector_id="quality.negative_feedback.v1",
            detector_version="v1",
            config={"alpha": 0.01},
            segment=Segment(model="m", model_version=BAD),
            window_start=start,
            window_end=start + timedelta(minutes=1),
            reference_size=400,
            current_size=80,
            p_value=2e-9 if verdict == "drift" else 0.5,
            threshold=0.01,
            effect_size=rate - 0.2,
            verdict=verdict,
            measurements={"reference_rate": 0.2, "current_rate": rate, "current_samples": 62.0},
            reference="stable:m",
            detected_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode()
    )


def test_alert_transitions_are_logged_at_warning_and_counted_on_metrics(broker: str, tmp_path: Path) -> None:
    stack = WorkerStack(
        broker, tmp_path, detection="false", curation="false", stable_versions=json.dumps({"m": STABLE})
    ).start()
    firing = {"severity": "critical", "model": "m", "alertname": "bad-replies"}
    try:
        stack.send(stack.topics.detections, [_feedback(0, "drift")], keys=[b"m"])
        stack.wait(lambda: stack.metric("loopwatch_alerts_firing", **firing) == 1, "alert never fired")
        assert (
            stack.metric("loopwatch_model_detections_total", model="m", model_version=BAD, verdict="drift")
            == 1
        )
        # The default policy's bad-replies rule resolves after six clear windows.
        stack.send(stack.topics.detections, [_feedback(n, "ok") for n in range(1, 7)], keys=[b"m"] * 6)
        stack.wait(lambda: stack.metric("loopwatch_alerts_firing", **firing) == 0, "alert never resolved")
        stack.wait(lambda: "alert resolved" in stack.log(), "no resolved line")
    finally:
        stack.stop()
    lines = [
        line for line in stack.log().splitlines() if " alert " in line and "logger=loopwatch.decide" in line
    ]
    fired = [line for line in lines if re.search(r"alert firing [0-9a-f]{16} m/2026-11-20 critical: ", line)]
    resolved = [
        line for line in lines if re.search(r"alert resolved [0-9a-f]{16} m/2026-11-20 critical: ", line)
    ]
    assert len(fired) == 1 and len(resolved) == 1, lines
    assert "level=WARNING" in fired[0] and "level=WARNING" in resolved[0]
    assert "current_rate 0.2 -> 0.871, effect 0.671, p 2e-09, n 400/80" in fired[0]
    assert fired[0].endswith("| runbook https://runbooks.example.com/loopwatch/bad-replies")


def test_backtest_reads_the_detections_topic_from_its_start_to_its_end(broker: str, tmp_path: Path) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.detections"
    admin = admin_client(Settings(kafka_bootstrap=broker))
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    # The incident of the file-based backtest test, spread over two partitions, plus a broken record.
    stream = [detection(m, "neg", "v1", "ok", rate=0.1) for m in range(3)]
    stream += [detection(m, "neg", "v2", "drift", rate=0.4) for m in range(3, 6)]
    stream += [detection(m, "neg", "v1", "ok", rate=0.1) for m in range(6, 9)]
    stack = WorkerStack(broker, tmp_path)
    values = [d.model_dump_json().encode() for d in reversed(stream)] + [b'{"detector_id": "x"}']
    stack.send(topic, values, keys=[str(n % 2).encode() for n in range(len(values))])
    args = [
        "policy",
        "backtest",
        str(_policy_file(tmp_path, POLICY)),
        "--bootstrap",
        broker,
        "--topic",
        topic,
    ]
    state = ["--stable", "chat=v1", "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(main, [*args, *state, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["detections"] == 9
    assert report["counts"] == {
        "alerts firing": 1,
        "alerts resolved": 1,  # by the verification (issue 12, trial 12e)
        "pages": 2,
        "actions rollback.requested": 1,
        "actions rollback.verified": 1,
    }
    [skipped] = report["skipped"]
    assert re.match(rf"{re.escape(topic)}/[01]@\d+: not a Detection", skipped), skipped
    assert f"read 10 records from {topic} at {broker}" in result.stderr

    missing = CliRunner().invoke(main, [*args[:-1], f"{topic}-missing", *state])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    both = CliRunner().invoke(main, [*args, "--detections", str(_policy_file(tmp_path, POLICY))])
    assert both.exit_code == 2 and "exactly one of --detections FILE and --bootstrap" in both.output
