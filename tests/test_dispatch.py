"""Retrain dispatch against a local HTTP server that records requests: payload shapes, retries, secrets.

The GitHub shape follows "Create a workflow dispatch event"
(https://docs.github.com/en/rest/actions/workflows#create-a-workflow-dispatch-event:
``POST /repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches``, body
``{"ref", "inputs"}``, answer 204); the Airflow one "Trigger a new DAG run"
(https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html#operation/post_dag_run:
``POST /api/v1/dags/{dag_id}/dagRuns``, body ``{"dag_run_id", "conf"}``, 409 when the run exists).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.settings import Settings
from retrain_trigger.act import dispatch_event
from retrain_trigger.actions import RETRAIN_REQUESTED, DatasetRef, RetrainRequest, cloud_event
from retrain_trigger.dispatch import DispatchOutcome, JobTrigger, dispatch
from schemas.errors import ConfigError

from .http_recorder import recording_server

TOKEN = "ghp_not-a-real-token-0123456789"
REQUEST = RetrainRequest.model_validate(
    {
        "reason": 'negative feedback 0.87 > 0.2 on "helpdesk-bot"',
        "policy": "default",
        "rule": "retrain-on-drift",
        "mode": "auto",
        "model": "helpdesk-bot",
        "incident_start": "2026-12-01T12:00:00Z",
        "window_start": "2026-12-01T12:00:00Z",
        "window_end": "2026-12-01T12:01:00Z",
        "detections": [],
        "dataset": {"table": "sft", "version": 7},
    }
)


def run(trigger: JobTrigger, sleeps: list[float] | None = None) -> DispatchOutcome:
    async def go() -> DispatchOutcome:
        async def sleep(seconds: float) -> None:
            (sleeps if sleeps is not None else []).append(seconds)

        async with aiohttp.ClientSession() as session:
            return await dispatch(trigger, "ev-42", REQUEST, session, sleep=sleep)

    return asyncio.run(go())


def trigger_from(**settings: Any) -> JobTrigger:
    trigger = JobTrigger.from_settings(Settings(**settings))
    assert trigger is not None
    return trigger


def test_github_workflow_dispatch_has_the_documented_shape() -> None:
    with recording_server([204]) as server:
        url = f"{server.url}/repos/acme/models/actions/workflows/retrain.yml/dispatches"
        trigger = trigger_from(
            retrain_trigger="github",
            retrain_trigger_url=url,
            retrain_trigger_token=TOKEN,
            retrain_trigger_ref="prod",
        )
        outcome = run(trigger)
    assert (outcome.dispatched, outcome.attempts) == (True, 1)
    [request] = server.requests
    assert (request.method, request.path) == (
        "POST",
        "/repos/acme/models/actions/workflows/retrain.yml/dispatches",
    )
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    # workflow_dispatch inputs are strings.
    assert request.json() == {
        "ref": "prod",
        "inputs": {
            "model": "helpdesk-bot",
            "dataset_table": "sft",
            "dataset_version": "7",
            "cloudevent_id": "ev-42",
        },
    }


def test_airflow_dag_run_has_the_documented_shape_and_a_second_run_counts_as_dispatched() -> None:
    with recording_server([200, 409]) as server:
        trigger = trigger_from(
            retrain_trigger="airflow",
            retrain_trigger_url=f"{server.url}/api/v1/dags/retrain_llm/dagRuns",
            retrain_trigger_username="loopwatch",
            retrain_trigger_token="s3cret",
        )
        first, second = run(trigger), run(trigger)
    assert (first.dispatched, second.dispatched, second.detail) == (
        True,
        True,
        "already dispatched (HTTP 409)",
    )
    request = server.requests[0]
    assert request.path == "/api/v1/dags/retrain_llm/dagRuns"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"loopwatch:s3cret").decode()
    assert request.json() == {
        "dag_run_id": "loopwatch-ev-42",
        "conf": {
            "model": "helpdesk-bot",
            "dataset_table": "sft",
            "dataset_version": 7,
            "dataset_uri": None,
            "cloudevent_id": "ev-42",
            "reason": REQUEST.reason,
        },
    }
    assert server.requests[1].json()["dag_run_id"] == "loopwatch-ev-42"  # the same run: Airflow refuses it


def test_a_templated_body_quotes_every_value() -> None:
    template = '{"job": "retrain", "params": {"m": $model, "t": $table, "v": $delta_version, "why": $reason}}'
    with recording_server([201]) as server:
        trigger = trigger_from(
            retrain_trigger="http", retrain_trigger_url=server.url, retrain_trigger_body=template
        )
        assert run(trigger).dispatched
    [request] = server.requests
    assert request.json() == {
        "job": "retrain",
        "params": {"m": "helpdesk-bot", "t": "sft", "v": 7, "why": REQUEST.reason},
    }
    assert request.headers["Idempotency-Key"] == "ev-42"
    assert "Authorization" not in request.headers


def test_recoverable_failures_are_retried_with_a_doubling_backoff_and_4xx_is_final() -> None:
    sleeps: list[float] = []
    with recording_server([503, 429, 200]) as server:
        trigger = trigger_from(
            retrain_trigger="http", retrain_trigger_url=server.url, retrain_trigger_backoff_seconds=0.5
        )
        outcome = run(trigger, sleeps)
    assert (outcome.dispatched, outcome.attempts, len(server.requests), sleeps) == (True, 3, 3, [0.5, 1.0])
    with recording_server([400]) as server:
        outcome = run(trigger_from(retrain_trigger="http", retrain_trigger_url=server.url))
    assert (outcome.dispatched, outcome.attempts, outcome.detail, outcome.http_status) == (
        False,
        1,
        "HTTP 400",
        400,
    )


def test_a_failing_trigger_is_recorded_and_the_token_is_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    with recording_server([500]) as server:
        url = f"{server.url}/hook?token={TOKEN}"
        trigger = trigger_from(
            retrain_trigger="http",
            retrain_trigger_url=url,
            retrain_trigger_token=TOKEN,
            retrain_trigger_attempts=3,
        )
        outcome = run(trigger, sleeps)
    assert (outcome.dispatched, outcome.attempts, len(server.requests)) == (False, 3, 3)
    event = cloud_event(
        event_id="ev-42",
        source="/t",
        event_type=RETRAIN_REQUESTED,
        subject="helpdesk-bot",
        time=datetime(2026, 12, 1, tzinfo=UTC),
        data=REQUEST,
    )
    result = dispatch_event(event, "http", outcome, DatasetRef(table="sft", version=7), datetime.now(UTC))
    assert result.type == "io.loopwatch.retrain.dispatch_failed"
    assert result.data["dataset"] == {"table": "sft", "version": 7}
    assert "retrain dispatch ev-42 via http failed after 3 tries: HTTP 500" in caplog.text
    assert TOKEN not in caplog.text + json.dumps(result.model_dump(mode="json")) + repr(trigger)


def test_a_command_trigger_gets_the_dataset_in_its_arguments(tmp_path: Path) -> None:
    out = tmp_path / "args.json"
    script = f"import json, sys; json.dump(sys.argv[1:], open({str(out)!r}, 'w'))"
    command = [sys.executable, "-c", script, "--table=$table", "--version=$delta_version", "$event_id"]
    trigger = trigger_from(retrain_trigger="command", retrain_trigger_command=command)
    assert run(trigger).detail == "exit 0"
    assert json.loads(out.read_text()) == ["--table=sft", "--version=7", "ev-42"]
    failing = trigger_from(
        retrain_trigger="command",
        retrain_trigger_command=[sys.executable, "-c", "raise SystemExit(3)"],
        retrain_trigger_attempts=2,
    )
    outcome = run(failing)
    assert (outcome.dispatched, outcome.attempts, outcome.detail) == (False, 2, "command exited 3")


def test_a_template_with_an_unknown_placeholder_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="retrain_trigger_body"):
        trigger_from(
            retrain_trigger="http", retrain_trigger_url="http://x", retrain_trigger_body='{"a": $nope}'
        )
    with pytest.raises(ConfigError, match="retrain_trigger_body"):
        trigger_from(retrain_trigger="http", retrain_trigger_url="http://x", retrain_trigger_body="[$model]")
    with pytest.raises(ValueError, match="needs retrain_trigger_url"):
        Settings(retrain_trigger="github")
