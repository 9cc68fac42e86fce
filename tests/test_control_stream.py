"""The control topic on the real broker: stable marks drive references, forged silences are refused."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import SecretStr

from core.settings import Settings
from retrain_trigger.actions import ROLLBACK_REQUESTED, from_kafka
from retrain_trigger.control import SIGNATURE_HEADER, sign
from schemas.events import Detection
from services import sample_data
from services.cli import main
from services.replay import Replayer
from tests.helpers import WorkerStack, forged_silence
from tests.test_decide_stream import _detection, _receivers, _Webhook

pytestmark = pytest.mark.broker

CANARY = "2026-11-20"
KEY = "operators-only"


def _ab_traffic(data_dir: Path, start: datetime) -> tuple[list[bytes], list[bytes]]:
    """Window 0: the stable version with the replies people chose; window 1: it again, beside a
    canary serving the replies they rejected (HH-RLHF), with the thumbs each reply got."""
    rng = random.Random(11)
    pairs = [pair for _, pair in zip(range(300), sample_data.hh_rlhf(data_dir), strict=False)]
    windows = [
        [(chosen, sample_data.STABLE_VERSION) for chosen, _ in pairs[:150]],
        [
            served
            for chosen, rejected in pairs[150:]
            for served in ((chosen, sample_data.STABLE_VERSION), (rejected, CANARY))
        ],
    ]
    inferences, feedback = [], []
    for minute, served in enumerate(windows):
        for i, (exchange, version) in enumerate(served):
            at = start + timedelta(minutes=minute, seconds=i * 50 / len(served))
            event = sample_data.inference_event(exchange, at, rng, version=version)
            event["tenant"] = "acme"
            inferences.append(json.dumps(event).encode())
            feedback += [
                json.dumps(f).encode()
                for f in sample_data.feedback_events(exchange, at)
                if f["kind"] == "thumbs"
            ]
    return inferences, feedback


def test_a_version_marked_stable_from_the_cli_only_is_the_canarys_reference_and_rollback_target(
    broker: str, tmp_path: Path, data_dir: Path
) -> None:
    detectors = tmp_path / "detectors.yaml"
    detectors.write_text(
        yaml.safe_dump([{"detector_id": "quality.negative_feedback.v1", "kind": "feedback", "config": {}}])
    )
    # No LOOPWATCH_STABLE_VERSIONS: the only stable mark is the one from the CLI.
    stack = WorkerStack(
        broker,
        tmp_path,
        curation="false",
        window_seconds=60,
        window_grace_seconds=1,
        window_idle_seconds=3,
        detectors_file=detectors,
    ).start()
    cli = CliRunner(
        env={"LOOPWATCH_TOPIC_CONTROL": stack.topics.control, "LOOPWATCH_DATA_DIR": str(tmp_path)}
    )
    try:
        marked = cli.invoke(
            main,
            ["model", "mark-stable", sample_data.MODEL, sample_data.STABLE_VERSION, "--bootstrap", broker],
        )
        assert marked.exit_code == 0, marked.output
        stack.wait_metric("loopwatch_control_events_total", 1)
        start = datetime.fromtimestamp((time.time() // 60 - 10) * 60, UTC)
        inferences, feedback = _ab_traffic(data_dir, start)
        stack.send(stack.topics.inference, inferences)
        stack.send(stack.topics.feedback, feedback)
        judged = stack.read(stack.topics.detections, 2, timeout=90)
        detections = [Detection.model_validate_json(r.value) for r in judged]
        rollbacks = stack.read_settled(stack.topics.rollback_requests, 1, (stack.topics.detections,))
    finally:
        stack.stop()
    assert [from_kafka(r.value).type for r in rollbacks] == [ROLLBACK_REQUESTED], stack.log()[-3000:]
    rollback = from_kafka(rollbacks[0].value)
    assert (rollback.data["from_version"], rollback.data["target_version"]) == (
        CANARY,
        sample_data.STABLE_VERSION,
    )
    [canary] = [d for d in detections if d.segment.model_version == CANARY]
    assert canary.verdict == "drift"
    assert canary.reference.startswith(f"stable:feedback|{sample_data.MODEL}|{sample_data.STABLE_VERSION}|")


@pytest.fixture
def pages() -> Iterator[tuple[str, type[_Webhook]]]:
    handler = type("Webhook", (_Webhook,), {"pages": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()


def test_with_a_key_a_forged_silence_is_refused_and_a_signed_one_is_announced(
    broker: str, tmp_path: Path, pages: tuple[str, type[_Webhook]]
) -> None:
    url, hook = pages
    stack = WorkerStack(
        broker,
        tmp_path,
        detection="false",
        curation="false",
        stable_versions=json.dumps({"m": "2026-10-01"}),
        receivers_file=_receivers(tmp_path, url),
        control_key=KEY,
    ).start()
    forged = forged_silence()
    value = forged.model_dump_json().encode()
    try:
        # Written with a plain producer: once unsigned, once signed with a guessed key.
        replayer = Replayer(Settings(kafka_bootstrap=broker))
        replayer.send(stack.topics.control, value, forged.key())
        replayer.send(
            stack.topics.control,
            value,
            forged.key(),
            headers=[(SIGNATURE_HEADER, sign(value, SecretStr("guess")))],
        )
        replayer.close()
        stack.wait_metric("loopwatch_control_rejected_total", 1, reason="unsigned")
        stack.wait_metric("loopwatch_control_rejected_total", 1, reason="bad_signature")
        # Nothing is muted: the bad canary is still rolled back.
        stack.send(stack.topics.detections, [_detection(0, "drift")], keys=[b"m"])
        rollbacks = stack.read(stack.topics.rollback_requests, 1, timeout=60)
        # A silence from the CLI, signed with the key, is applied and announced as an info alert.
        cli = CliRunner(env={"LOOPWATCH_TOPIC_CONTROL": stack.topics.control, "LOOPWATCH_CONTROL_KEY": KEY})
        state = ["--state-dir", str(tmp_path / "cli"), "--bootstrap", broker]
        added = cli.invoke(main, ["silence", "add", "-m", "model=other", "--comment", "db upgrade", *state])
        assert added.exit_code == 0, added.output
        stack.wait_metric("loopwatch_control_events_total", 1)
        alerts = stack.read(stack.topics.alerts, 2, timeout=30)
        stack.wait(lambda: any(p["severity"] == "info" for p in hook.pages), "no info page", 30)
    finally:
        stack.stop()
    assert [from_kafka(r.value).type for r in rollbacks] == [ROLLBACK_REQUESTED]
    assert stack.log().count("control record refused (unsigned)") == 1
    by_name = {json.loads(r.value)["labels"]["alertname"]: json.loads(r.value) for r in alerts}
    assert by_name["bad-replies"]["status"] == "firing"
    silence_id = added.output.splitlines()[0]
    announced = by_name["silence"]
    assert (announced["severity"], announced["status"]) == ("info", "firing")
    assert announced["labels"]["silence_id"] == silence_id and "db upgrade" in announced["summary"]
    [page] = [p for p in hook.pages if p["severity"] == "info"]
    assert page["group_labels"]["silence_id"] == silence_id and page["status"] == "firing"
