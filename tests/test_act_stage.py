"""The act stage on the real broker and a real MLflow server: rollbacks applied once, promotions
rejected when the alias moved meanwhile, retrains dispatched, bad requests dead-lettered.

One worker is killed with ``kill -9`` at the worst moment: right after MLflow
moved the alias and before the worker could publish the result. A proxy in
front of MLflow does it, so the crash falls exactly there. The restarted worker
gets the request again and must not move the alias a second time.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from retrain_trigger.act import MoveRequest, incident_tags
from retrain_trigger.actions import (
    PROMOTION_REQUESTED,
    RETRAIN_REQUESTED,
    ROLLBACK_REQUESTED,
    RetrainRequest,
    cloud_event,
    to_kafka,
)
from retrain_trigger.registry import marker_key
from schemas.events import CloudEvent

from .helpers import WorkerStack, values_json
from .http_recorder import Recorded, recording_server
from .mlflow_fixture import alias_target, register_model, version_tags

pytestmark = pytest.mark.broker

ALIAS_SET = "/api/2.0/mlflow/registered-models/alias"
AT = datetime(2026, 12, 1, 12, tzinfo=UTC)


def request(event_id: str, event_type: str, model: str, from_version: str, target_version: str) -> CloudEvent:
    """A rollback or promotion request as the decide stage publishes it (the fields the actuator reads)."""
    data = _incident(
        model,
        "rollback-on-quality",
        f"quality.negative_feedback.v1 0.871 on {model}/{from_version}",
        from_version=from_version,
        target_version=target_version,
    )
    return CloudEvent(id=event_id, source="/test", type=event_type, subject=model, time=AT, data=data)


def send(stack: WorkerStack, topic: str, event: CloudEvent) -> None:
    key, value, _ = to_kafka(event)
    stack.send(topic, [value], [key])


def results(stack: WorkerStack, topic: str, count: int) -> list[dict[str, Any]]:
    """The first ``count`` events on ``topic`` that are not requests."""

    def found() -> list[dict[str, Any]]:
        events = [e for e in values_json(stack.read_all(topic)) if not e["type"].endswith(".requested")]
        return events if len(events) >= count else []

    return list(stack.wait(found, f"{count} result(s) on {topic}", timeout=90))


def test_rollback_applied_once_across_kill_9_promotion_rejected_retrain_dispatched(
    broker: str, mlflow_server: str, tmp_path: Path
) -> None:
    model = register_model(mlflow_server, 3, aliases={"champion": "2"})
    worker: dict[str, WorkerStack] = {}
    armed = {"kill": True}

    def forward(seen: Recorded) -> tuple[int, bytes, str]:
        """Pass the call to MLflow; on the first alias move, kill the worker before it hears back."""
        target = urllib.request.Request(
            mlflow_server + seen.path,
            data=seen.body or None,
            method=seen.method,
            headers={"Content-Type": seen.headers.get("Content-Type", "application/json")},
        )
        try:
            with urllib.request.urlopen(target, timeout=30) as response:
                answer = (response.status, response.read(), response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as exc:
            answer = (exc.code, exc.read(), exc.headers.get("Content-Type", ""))
        if seen.method == "POST" and seen.path.startswith(ALIAS_SET) and armed.pop("kill", False):
            process = worker["first"].process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
        return answer

    with recording_server() as proxy, recording_server([204]) as jobs:
        proxy.respond = forward
        settings = {
            "actuator": "mlflow",
            "mlflow_tracking_uri": proxy.url,
            "retrain_trigger": "http",
            "retrain_trigger_url": f"{jobs.url}/train",
            "retrain_trigger_token": "tok-never-logged",
            "detection": "false",
            "decide": "false",
            "curation": "false",
        }
        first = worker["first"] = WorkerStack(broker, tmp_path / "a", **settings)
        (tmp_path / "a").mkdir()
        first.start()
        topics = first.topics
        rollback = request("rb-1", ROLLBACK_REQUESTED, model, "2", "1")
        send(first, topics.rollback_requests, rollback)
        first.wait(lambda: first.process is not None and first.process.poll() is not None, "killed mid-move")
        # The crash left the alias moved and no result event.
        assert alias_target(mlflow_server, model, "champion") == "1"
        assert version_tags(mlflow_server, model, "1")[marker_key("rb-1")] == "pending"
        assert [e["type"] for e in values_json(first.read_all(topics.rollback_requests))] == [
            ROLLBACK_REQUESTED
        ]

        second = first.peer(tmp_path / "b")
        second.start()
        [applied] = results(second, topics.rollback_requests, 1)
        assert (applied["type"], applied["data"]["applied"], applied["data"]["reason"]) == (
            "io.loopwatch.rollback.applied",
            True,
            "moved",
        )
        assert applied["id"] == "rb-1:applied"
        moves = [r for r in proxy.requests if r.method == "POST" and r.path.startswith(ALIAS_SET)]
        assert len(moves) == 1, "the alias was moved again after the restart"
        tags = incident_tags("rb-1", "rollback", MoveRequest.model_validate(rollback.data))
        assert version_tags(mlflow_server, model, "2") == tags
        assert version_tags(mlflow_server, model, "1") == {**tags, marker_key("rb-1"): "applied"}
        assert json.loads(next(iter(tags.values())))["reason"] == rollback.data["reason"]

        # A promotion that still thinks 2 is champion: the rollback moved it meanwhile. Then a fresh one.
        send(second, topics.promotion_requests, request("pr-1", PROMOTION_REQUESTED, model, "2", "3"))
        send(second, topics.promotion_requests, request("pr-2", PROMOTION_REQUESTED, model, "1", "3"))
        broken = request("rb-bad", ROLLBACK_REQUESTED, model, "1", "2")
        send(second, topics.rollback_requests, broken.model_copy(update={"data": {"model": model}}))
        retrain = cloud_event(
            event_id="rt-1",
            source="/test",
            event_type=RETRAIN_REQUESTED,
            subject=model,
            time=AT,
            data=_retrain(model),
        )
        send(second, topics.retrain_requests, retrain)
        promotions = results(second, topics.promotion_requests, 2)
        assert [(e["id"], e["data"]["current_version"]) for e in promotions] == [
            ("pr-1:rejected", "1"),
            ("pr-2:applied", "3"),
        ]
        assert "champion points to 1, not 2: moved meanwhile" in promotions[0]["data"]["reason"]
        assert alias_target(mlflow_server, model, "champion") == "3"
        [letter] = values_json(second.read(topics.deadletter, 1))
        assert (letter["reason"], letter["source"]["topic"]) == ("invalid_value", topics.rollback_requests)
        assert "data.from_version" in letter["error"]
        [dispatched] = results(second, topics.retrain_requests, 1)
        assert dispatched["type"] == "io.loopwatch.retrain.dispatched"
        [job] = jobs.requests
        assert job.json()["dataset"] == {"table": "sft", "version": 3}
        assert job.headers["Authorization"] == "Bearer tok-never-logged"
        assert "tok-never-logged" not in first.log() + second.log()
        second.stop()


def _retrain(model: str) -> RetrainRequest:
    return RetrainRequest.model_validate(
        _incident(model, "retrain-on-drift", "drift", dataset={"table": "sft", "version": 3})
    )


def _incident(model: str, rule: str, reason: str, **fields: Any) -> dict[str, Any]:
    """The fields every action request carries, for one incident of ``model`` at ``AT``, and ``fields``."""
    return {
        "reason": reason,
        "policy": "default",
        "rule": rule,
        "mode": "auto",
        "model": model,
        "incident_start": AT.isoformat(),
        "window_start": AT.isoformat(),
        "window_end": AT.isoformat(),
        "detections": [],
        **fields,
    }
