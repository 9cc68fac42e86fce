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
from click.testing import CliRunner

from retrain_trigger.actions import RETRAIN_REQUESTED, ROLLBACK_REQUESTED, from_kafka
from retrain_trigger.policy import DEFAULT_POLICY
from schemas.events import Detection, Segment
from services.cli import main
from tests.helpers import WorkerStack

pytestmark = pytest.mark.broker

# Recent windows: the rollback watch's deadline (an hour) is measured on the wall clock.
START = datetime.fromtimestamp((time.time() // 60 - 10) * 60, UTC)


def _detection(
    minute: int, verdict: str, *, version: str = "2026-11-20", detector: str = "quality.negative_feedback.v1"
) -> bytes:
    """A Detection (negative feedback, by default) of model ``m`` for the one-minute window ``minute``."""
    start = START + timedelta(minutes=minute)
    return (
        Detection(
            detection_id=str(uuid.uuid4()),
            detector_id=detector,
            detector_version="v1",
            config={"alpha": 0.01},
            segment=Segment(model="m", model_version=version, app="chat"),
            window_start=start,
            window_end=start + timedelta(minutes=1),
            reference_size=200,
            current_size=500,
            p_value=1e-9 if verdict == "drift" else 0.6,
            effect_size=0.4 if verdict == "drift" else 0.0,
            verdict=verdict,
            measurements={"current_rate": 0.7 if verdict == "drift" else 0.1},
            reference="stable:m",
            # Detected now, as a live detect stage would: silences and cooldowns apply at this time.
            detected_at=datetime.now(UTC),
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
        # The history stage also reads the detections: a stop before it acked would leave their
        # offsets uncommitted, which the kill test checks against for the decide stage alone.
        history="false",
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
    stack.wait(lambda: hook.pages, "no page before the kill", 30)
    # Pages are at-least-once: the notify stage records the page as handled just after
    # delivering it, and a kill -9 between the two would page again (tests/test_open_windows_stream.py).
    notified = f"{stack.env['LOOPWATCH_APP_ID']}-notified-changelog"
    stack.wait(lambda: stack.read_all(notified), "the page was never recorded as handled", 30)
    stack.kill9()
    stack.start()
    try:
        # The restarted worker decides the same detections again, from the restored state.
        stack.wait_metric("loopwatch_detections_decided_total", len(incident))
    finally:
        stack.stop()
    # A graceful stop commits what the worker handled: every detection was, so every record
    # they caused is on its topic now.
    assert not any(stack.uncommitted(stack.topics.detections).values()), stack.log()[-3000:]
    records = stack.read_all(stack.topics.rollback_requests)
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


def test_a_malformed_detection_is_dead_lettered_and_the_next_one_is_decided(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, _ = webhook
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url)).start()
    try:
        # An external detector's broken message must not stop decisions for everyone else.
        stack.send(stack.topics.detections, [b'{"detector_id": ', _detection(0, "drift")], keys=[b"m", b"m"])
        [letter] = stack.read(stack.topics.deadletter, 1, timeout=60)
        rollbacks = stack.read(stack.topics.rollback_requests, 1, timeout=60)
    finally:
        stack.stop()
    record = json.loads(letter.value)
    assert record["reason"] == "malformed_json" and record["source"]["topic"] == stack.topics.detections
    assert len(rollbacks) == 1


def test_a_malformed_policy_edit_is_refused_and_the_previous_policy_keeps_running(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, _ = webhook
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text())
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url), policy_file=policy).start()
    try:
        policy.write_text("name: broken\nrules:\n  - name: x\n    action: explode\n")
        stack.wait_metric("loopwatch_policy_rejected_total", 1, timeout=30)
        stack.send(stack.topics.detections, [_detection(0, "drift")], keys=[b"m"])
        rollbacks = stack.read(stack.topics.rollback_requests, 1, timeout=60)
    finally:
        stack.stop()
    assert len(rollbacks) == 1
    log = stack.log()
    assert "refused, the previous policy keeps running" in log and f"{policy}:4" in log, log[-2000:]


def test_a_rollback_holds_back_the_retrain_of_its_model_until_it_resolves(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, _ = webhook
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url)).start()

    def canary(minute: int, verdict: str) -> bytes:  # negative feedback on the new version
        return _detection(minute, verdict)

    def inputs(minute: int) -> bytes:  # input drift on the stable version
        return _detection(minute, "drift", detector="drift.ks.v1", version="2026-10-01")

    try:
        # The canary's replies are rejected (a rollback) while the inputs drift for three
        # windows (a retrain, but it would train on the bad version's traffic).
        stack.send(
            stack.topics.detections,
            [canary(0, "drift"), inputs(0), inputs(1), inputs(2)],
            keys=[b"m"] * 4,
        )
        assert len(stack.read(stack.topics.rollback_requests, 1, timeout=60)) == 1
        stack.wait_metric("loopwatch_actions_stopped_total", 1, stage="inhibit")
        stack.wait_committed(stack.topics.detections)  # all decided, and what they caused is out
        assert stack.read_all(stack.topics.retrain_requests) == []
        # Six calm windows (the default resolve_windows) resolve the rollback alert: the held-back
        # retrain goes out.
        stack.send(stack.topics.detections, [canary(m, "ok") for m in range(1, 7)], keys=[b"m"] * 6)
        retrains = stack.read(stack.topics.retrain_requests, 1, timeout=60)
        settled = stack.read_settled(stack.topics.alerts, 3, (stack.topics.detections,))
        alerts = [json.loads(r.value) for r in settled]
    finally:
        stack.stop()
    assert [from_kafka(r.value).type for r in retrains] == [RETRAIN_REQUESTED]
    transitions = [(a["labels"]["alertname"], a["status"]) for a in alerts]
    # The retrain alert fired only after the rollback alert resolved.
    assert transitions.index(("bad-replies", "resolved")) < transitions.index(("input-drift", "firing"))


def test_a_silence_from_the_cli_mutes_actions_until_it_is_expired(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, _ = webhook
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url)).start()
    cli = CliRunner(env={"LOOPWATCH_TOPIC_CONTROL": stack.topics.control})
    state = ["--state-dir", str(tmp_path / "cli"), "--bootstrap", broker]
    try:
        added = cli.invoke(main, ["silence", "add", "-m", "model=m", "--comment", "maintenance", *state])
        assert added.exit_code == 0, added.output
        stack.wait_metric("loopwatch_control_events_total", 1)
        stack.send(stack.topics.detections, [_detection(0, "drift")], keys=[b"m"])
        stack.wait_metric("loopwatch_actions_stopped_total", 1, stage="silence")
        stack.wait_committed(stack.topics.detections)
        assert stack.read_all(stack.topics.rollback_requests) == []
        silence_id = added.output.splitlines()[0]
        expired = cli.invoke(main, ["silence", "expire", silence_id, *state])
        assert expired.exit_code == 0, expired.output
        stack.wait_metric("loopwatch_control_events_total", 2)
        # The alert is still firing; once the silence is gone, the held-back rollback goes out.
        stack.send(stack.topics.detections, [_detection(1, "drift")], keys=[b"m"])
        rollbacks = stack.read(stack.topics.rollback_requests, 1, timeout=60)
    finally:
        stack.stop()
    assert [from_kafka(r.value).type for r in rollbacks] == [ROLLBACK_REQUESTED]


def test_dry_run_decides_but_publishes_no_action(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, _ = webhook
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace("mode: auto", "mode: dry-run", 1))
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url), policy_file=policy).start()
    try:
        stack.send(stack.topics.detections, [_detection(m, "drift") for m in range(3)], keys=[b"m"] * 3)
        stack.wait_metric("loopwatch_actions_dry_run_total", 1)
        alerts = stack.read(stack.topics.alerts, 1, timeout=30)
        stack.wait_committed(stack.topics.detections)
        assert stack.read_all(stack.topics.rollback_requests) == []
    finally:
        stack.stop()
    assert json.loads(alerts[0].value)["status"] == "firing"  # dry-run still alerts


def test_no_second_retrain_request_during_the_cooldown(
    broker: str, tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, _ = webhook
    stack = _stack(broker, tmp_path, _receivers(tmp_path, url)).start()

    def windows(first: int, verdict: str) -> list[bytes]:
        return [
            _detection(m, verdict, detector="drift.ks.v1", version="2026-10-01")
            for m in range(first, first + 3)
        ]

    try:
        # Input drift for three windows: a retrain request (the default policy's input-drift rule).
        stack.send(stack.topics.detections, windows(0, "drift"), keys=[b"m"] * 3)
        assert len(stack.read(stack.topics.retrain_requests, 1, timeout=60)) == 1
        # Three calm windows resolve that incident; three more drifting ones open a new one,
        # within the rule's 24 h cooldown.
        stack.send(stack.topics.detections, windows(3, "ok") + windows(6, "drift"), keys=[b"m"] * 6)
        stack.wait_metric("loopwatch_actions_stopped_total", 1, stage="cooldown")
        retrains = stack.read_settled(stack.topics.retrain_requests, 1, (stack.topics.detections,))
    finally:
        stack.stop()
    assert len(retrains) == 1
