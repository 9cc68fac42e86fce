"""The decide stage on the real broker: one rollback per incident through kill -9, pages, policies."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from retrain_trigger.actions import ROLLBACK_REQUESTED, from_kafka
from retrain_trigger.policy import DEFAULT_POLICY
from schemas.events import Detection, Segment
from tests.helpers import WorkerStack

pytestmark = pytest.mark.broker

# Recent windows: the rollback watch's deadline (an hour) is measured on the wall clock.
START = datetime.fromtimestamp((time.time() // 60 - 10) * 60, UTC)


def _detection(minute: int, verdict: str, *, version: str = "2026-11-20") -> bytes:
    """A negative-feedback Detection of model ``m`` for the one-minute window ``minute``."""
    start = START + timedelta(minutes=minute)
    return (
        Detection(
            detection_id=str(uuid.uuid4()),
            detector_id="quality.negative_feedback.v1",
            detector_version="v1",
            config={"alpha": 0.01},
            segment=Segment(model="m", model_version=version, app="chat"),
            window_start=start,
            window_end=start + timedelta(minutes=1),
            reference_size=200,
            current_size=120,
            p_value=1e-9 if verdict == "drift" else 0.6,
            effect_size=0.4 if verdict == "drift" else 0.0,
            verdict=verdict,  # type: ignore[arg-type]
            measurements={"current_rate": 0.7 if verdict == "drift" else 0.1},
            reference="stable:m",
            detected_at=start + timedelta(minutes=1, seconds=2),
        )
        .model_dump_json()
        .encode()
    )


class _Webhook(BaseHTTPRequestHandler):
    """Records every page; answers with the status the test chose."""

    pages: list[dict[str, Any]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).pages.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Webhook]]]:
    handler = type("Webhook", (_Webhook,), {"pages": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()


def _receivers(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "receivers.yaml"
    path.write_text(yaml.safe_dump([{"kind": "webhook", "name": "oncall", "url": url, "timeout_seconds": 2}]))
    return path


def _stack(broker: str, tmp_path: Path, receivers: Path, **settings: Any) -> WorkerStack:
    return WorkerStack(
        broker,
        tmp_path,
        detection="false",
        curation="false",
        stable_versions=json.dumps({"m": "2026-10-01"}),
        receivers_file=receivers,
        **settings,
    )


def test_one_rollback_per_incident_through_a_kill_9_before_the_commit(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, hook = webhook
    # Offsets are committed only every 60 s: a kill after the decision always replays it.
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url), commit_interval_seconds=60).start()
    incident = [_detection(minute, "drift") for minute in range(3)]
    stack.send(stack.topics.detections, incident, keys=[b"m"] * len(incident))
    [first] = stack.read(stack.topics.rollback_requests, 1, timeout=60)
    deadline = time.monotonic() + 30
    while not hook.pages and time.monotonic() < deadline:
        time.sleep(0.1)
    stack.kill9()
    stack.start()
    try:
        # The restarted worker decides the same detections again, from the restored state.
        deadline = time.monotonic() + 60
        while stack.metric("loopwatch_detections_decided_total") < len(incident):
            assert time.monotonic() < deadline, stack.log()[-3000:]
            time.sleep(0.2)
        records = stack.read_settled(stack.topics.rollback_requests, 1, settle=3)
    finally:
        stack.stop()
    assert [from_kafka(r.value).type for r in records] == [ROLLBACK_REQUESTED], records
    event = from_kafka(first.value)
    assert event.type == ROLLBACK_REQUESTED and event.subject == "m"
    assert event.data["target_version"] == "2026-10-01"
    headers = dict(first.headers)
    assert headers["ce_id"].decode() == event.id and headers["ce_specversion"] == b"1.0"
    assert len([p for p in hook.pages if p.get("status") == "firing"]) == 1, hook.pages


def test_a_failing_webhook_is_recorded_and_never_blocks_decisions(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, hook = webhook
    hook.status = 500
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url)).start()
    try:
        stack.send(stack.topics.detections, [_detection(0, "drift")], keys=[b"m"])
        [failure] = stack.read(stack.topics.delivery_failures, 1, timeout=90)
        # Decisions went on while the webhook failed: the rollback was published.
        assert len(stack.read(stack.topics.rollback_requests, 1, timeout=30)) == 1
    finally:
        stack.stop()
    record = json.loads(failure.value)
    assert record["receiver"] == "oncall" and record["recoverable"] is True and record["http_status"] == 500
    assert record["attempts"] > 1 and len(hook.pages) == record["attempts"]
    assert url not in failure.value.decode()  # the webhook URL is a secret


def test_a_malformed_policy_edit_is_refused_and_the_previous_policy_keeps_running(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, _ = webhook
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text())
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url), policy_file=policy).start()
    try:
        policy.write_text("name: broken\nrules:\n  - name: x\n    action: explode\n")
        deadline = time.monotonic() + 30
        while stack.metric("loopwatch_policy_rejected_total") < 1:
            assert time.monotonic() < deadline, stack.log()[-3000:]
            time.sleep(0.2)
        stack.send(stack.topics.detections, [_detection(0, "drift")], keys=[b"m"])
        rollbacks = stack.read(stack.topics.rollback_requests, 1, timeout=60)
    finally:
        stack.stop()
    assert len(rollbacks) == 1
    log = stack.log()
    assert "refused, the previous policy keeps running" in log and f"{policy}:4" in log, log[-2000:]
