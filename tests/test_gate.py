"""Promotion and the CD gate end to end: real broker, real MLflow server, a decide-only worker, the actuator.

Model versions "1" (champion), "2" (challenger, as good) and "3" (users reject
most of its replies) serve side by side; their negative-feedback detections go
to the detections topic as the detect stage would write them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrain_trigger.actions import PROMOTION_REQUESTED, PromotionRequest, from_kafka
from schemas.events import Segment
from services.cli import main
from tests.helpers import WorkerStack
from tests.mlflow_fixture import alias_target, register_model, version_tags
from tests.test_rollback_verify import NEG, detection

pytestmark = pytest.mark.broker

#: Rejected replies per 150 feedback events of each version, every minute.
REJECTED = {"1": 18, "2": 15, "3": 90}


def windows(model: str, minutes: range) -> list[bytes]:
    """Each version's negative-feedback detection of each minute."""
    out = []
    for minute in minutes:
        for version, hits in REJECTED.items():
            d = detection(minute, NEG, version, "ok", hits, 150)
            segment = Segment(model=model, model_version=version, app="chat")
            out.append(d.model_copy(update={"segment": segment}).model_dump_json().encode())
    return out


def gate(stack: WorkerStack, model: str, candidate: str, *extra: str) -> tuple[int, dict[str, Any]]:
    """``loopwatch gate --json`` against the stack's topics: exit code and evidence."""
    env = {k: v for k, v in stack.env.items() if k.startswith("LOOPWATCH_")}
    args = ["gate", "--model", model, "--candidate", candidate, "--stable", "1", "--json", *extra]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def test_a_good_challenger_is_promoted_after_its_windows_and_the_gate_tells_the_three_apart(
    broker: str, mlflow_server: str, tmp_path: Path
) -> None:
    model = register_model(mlflow_server, 3, aliases={"champion": "1", "challenger": "2"})
    stack = WorkerStack(
        broker,
        tmp_path,
        detection="false",
        curation="false",
        registry="mlflow",
        actuator="mlflow",
        mlflow_tracking_uri=mlflow_server,
        stable_versions=json.dumps({model: "1"}),
    ).start()
    topics = stack.topics
    try:
        early = windows(model, range(2))
        stack.send(topics.detections, early, keys=[model.encode()] * len(early))
        stack.wait_metric("loopwatch_detections_decided_total", len(early))
        stack.wait_committed(topics.detections)
        # Two windows of three: no promotion, and the gate says not enough data.
        assert stack.read_all(topics.promotion_requests) == []
        code, evidence = gate(stack, model, "2")
        assert (code, evidence["status"], evidence["windows"]) == (2, "not_enough_data", 2), evidence

        late = windows(model, range(2, 4))
        stack.send(topics.detections, late, keys=[model.encode()] * len(late))
        # The request, then the act stage's result on the same topic.
        records = stack.read(topics.promotion_requests, 2, timeout=60)
        events = [from_kafka(r.value) for r in records]
        assert [e.type for e in events] == [PROMOTION_REQUESTED, "io.loopwatch.promotion.applied"], events
        request = PromotionRequest.model_validate(events[0].data)
        assert (request.from_version, request.target_version) == ("1", "2")
        assert request.evidence.windows >= 3 and request.evidence.status == "non_inferior"
        assert alias_target(mlflow_server, model, "champion") == "2"
        assert any(events[0].id in value for value in version_tags(mlflow_server, model, "2").values())
        # The promoted challenger is no longer a canary, and remembers the champion it replaced.
        assert alias_target(mlflow_server, model, "challenger") is None
        assert version_tags(mlflow_server, model, "2")["loopwatch.previous_champion"] == "1"

        code, evidence = gate(stack, model, "2")
        assert (code, evidence["status"]) == (0, "non_inferior"), evidence
        [measure] = evidence["comparisons"]
        assert measure["ci_high"] < measure["margin"] and measure["candidate_samples"] >= 450
        code, evidence = gate(stack, model, "3", "--wait", "1s", "--interval", "0.5s")
        assert (code, evidence["status"]) == (1, "worse"), evidence
        assert evidence["comparisons"][0]["judgement"] == "worse"
        stack.wait_committed(topics.detections)
        # Exactly one request for the challenger, whatever came after it.
        types = [from_kafka(r.value).type for r in stack.read_all(topics.promotion_requests)]
        assert types.count(PROMOTION_REQUESTED) == 1, types
    finally:
        stack.stop()


def test_the_gate_exits_3_when_it_cannot_run(tmp_path: Path) -> None:
    env = {"LOOPWATCH_STABLE_VERSIONS": "{}", "LOOPWATCH_DATA_DIR": str(tmp_path)}
    same = CliRunner().invoke(main, ["gate", "--model", "m", "--candidate", "2", "--stable", "2"], env=env)
    assert same.exit_code == 3 and "nothing to gate" in same.output
    # Not click's usage code 2, which a pipeline would read as "not enough data".
    typo = CliRunner().invoke(main, ["gate", "--model", "m", "--candidat", "2"], env=env)
    assert typo.exit_code == 3 and "No such option" in typo.output
