"""Retrain dispatch: a retrain request becomes a run of the user's training job.

The trigger is one of:

- ``http``: a POST of a JSON body from a template (``LOOPWATCH_RETRAIN_TRIGGER_BODY``);
- ``github``: GitHub Actions ``workflow_dispatch``, ``POST
  /repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches`` with
  ``{"ref": ..., "inputs": {...}}`` (string inputs), answered ``204 No Content``
  (https://docs.github.com/en/rest/actions/workflows#create-a-workflow-dispatch-event);
- ``airflow``: the Airflow stable REST API, ``POST /api/v1/dags/{dag_id}/dagRuns``
  with ``{"dag_run_id": ..., "conf": {...}}``
  (https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html#operation/post_dag_run);
  the run id comes from the CloudEvent id, so a request dispatched twice is
  refused by Airflow with ``409 Conflict``, which counts as dispatched;
- ``command``: a program run with templated arguments, dispatched when it exits 0.

The request's dataset table, Delta version and table URI go into the job's
parameters (``$table``, ``$delta_version``, ``$dataset_uri``; the GitHub preset
leaves the URI out, since a workflow refuses inputs it does not declare).
Templates use ``$name`` placeholders; in a
JSON body each is replaced by its value as JSON (quoted, escaped), so a reason
with quotes in it cannot break the body. Recoverable failures (timeouts,
connection errors, 5xx, 429, a command's non-zero exit) are tried again with a
doubling backoff. The token is a ``SecretStr``: it goes only into the
``Authorization`` header, never into a log line, an error or an event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, SecretStr

from retrain_trigger.actions import RetrainRequest
from retrain_trigger.notifiers.base import DeliveryError, post_once
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("loopwatch.dispatch")

RETRAIN_DISPATCHED = "io.loopwatch.retrain.dispatched"
RETRAIN_DISPATCH_FAILED = "io.loopwatch.retrain.dispatch_failed"

TriggerKind = Literal["http", "github", "airflow", "command"]

#: Each preset's body; every value a string, as workflow_dispatch inputs are.
GITHUB_BODY = (
    '{"ref": $ref, "inputs": {"model": $model, "dataset_table": $table,'
    ' "dataset_version": $delta_version_text, "cloudevent_id": $event_id}}'
)
AIRFLOW_BODY = (
    '{"dag_run_id": $dag_run_id, "conf": {"model": $model, "dataset_table": $table,'
    ' "dataset_version": $delta_version, "dataset_uri": $dataset_uri, "cloudevent_id": $event_id,'
    ' "reason": $reason}}'
)
HTTP_BODY = (
    '{"cloudevent_id": $event_id, "model": $model, "dataset": {"table": $table, "version": $delta_version},'
    ' "dataset_uri": $dataset_uri, "reason": $reason, "policy": $policy, "rule": $rule}'
)
_PRESET_BODIES = {"github": GITHUB_BODY, "airflow": AIRFLOW_BODY, "http": HTTP_BODY}
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]")  # Airflow's default allowed_run_id_pattern


class JobTrigger(BaseModel):
    """Where and how retrain requests are dispatched (from the ``LOOPWATCH_RETRAIN_TRIGGER*`` settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TriggerKind
    url: SecretStr | None = None  # secret: a hook URL may carry its token
    token: SecretStr | None = None
    username: str | None = None
    body: str | None = None
    ref: str = "main"
    command: tuple[str, ...] = ()
    attempts: int = 4
    backoff_seconds: float = 0.5
    timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> JobTrigger | None:
        """The configured trigger (None: retrain requests are not dispatched); a bad template is refused."""
        if settings.retrain_trigger == "none":
            return None
        trigger = cls(
            kind=settings.retrain_trigger,
            url=settings.retrain_trigger_url,
            token=settings.retrain_trigger_token,
            username=settings.retrain_trigger_username,
            body=settings.retrain_trigger_body,
            ref=settings.retrain_trigger_ref,
            command=tuple(settings.retrain_trigger_command),
            attempts=settings.retrain_trigger_attempts,
            backoff_seconds=settings.retrain_trigger_backoff_seconds,
            timeout_seconds=settings.retrain_trigger_timeout_seconds,
        )
        trigger.check()
        return trigger

    def check(self) -> None:
        """Refuse a body or command template that names an unknown placeholder or is not a JSON object."""
        sample = job_parameters("check", _SAMPLE, self.ref)
        if self.kind == "command":
            command_line(self, sample)
        else:
            render_body(self.body_template(), sample)

    def body_template(self) -> str:
        """The configured body template, or the preset's."""
        return self.body or _PRESET_BODIES[self.kind]


@dataclass(frozen=True)
class DispatchOutcome:
    """What became of one dispatch: whether the job was started, after how many tries, and why not."""

    dispatched: bool
    attempts: int
    detail: str  # "accepted (HTTP 2xx)", "exit 0", "already dispatched (HTTP 409)", or the last error
    http_status: int | None = None


def job_parameters(event_id: str, request: RetrainRequest, ref: str = "main") -> dict[str, Any]:
    """The values templates can use: the request's model, dataset table and Delta version, and why."""
    dataset = request.dataset
    return {
        "event_id": event_id,
        "model": request.model,
        "reason": request.reason,
        "policy": request.policy,
        "rule": request.rule,
        "table": dataset.table if dataset else None,
        "delta_version": dataset.version if dataset else None,
        "delta_version_text": str(dataset.version) if dataset else "",
        "dataset_uri": dataset.uri if dataset else None,
        "window_start": request.window_start.isoformat(),
        "window_end": request.window_end.isoformat(),
        "ref": ref,
        "dag_run_id": "loopwatch-" + _RUN_ID_UNSAFE.sub("_", event_id),
    }


def render_body(template: str, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body: each ``$name`` replaced by its value as JSON (ConfigError for a bad template)."""
    try:
        text = Template(template).substitute({k: json.dumps(v) for k, v in params.items()})
        body = json.loads(text)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"retrain_trigger_body: not a JSON template of known placeholders ({exc})") from exc
    if not isinstance(body, dict):
        raise ConfigError("retrain_trigger_body: the template must give a JSON object")
    return body


def command_line(trigger: JobTrigger, params: dict[str, Any]) -> list[str]:
    """The command's arguments, each ``$name`` replaced by its value as text (empty for none)."""
    text = {k: "" if v is None else str(v) for k, v in params.items()}
    try:
        return [Template(arg).substitute(text) for arg in trigger.command]
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"retrain_trigger_command: unknown placeholder ({exc})") from exc


def request_headers(trigger: JobTrigger, event_id: str) -> dict[str, str]:
    """Authorization (Bearer, or Basic with a username) and each preset's own headers."""
    headers = {"Idempotency-Key": event_id}
    if trigger.token is not None:
        secret = trigger.token.get_secret_value()
        if trigger.username is not None:
            pair = base64.b64encode(f"{trigger.username}:{secret}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
        else:
            headers["Authorization"] = f"Bearer {secret}"
    if trigger.kind == "github":
        headers["Accept"] = "application/vnd.github+json"
        headers["X-GitHub-Api-Version"] = "2022-11-28"
    return headers


Sleep = Callable[[float], Awaitable[None]]


async def dispatch(
    trigger: JobTrigger,
    event_id: str,
    request: RetrainRequest,
    session: aiohttp.ClientSession,
    *,
    sleep: Sleep = asyncio.sleep,
) -> DispatchOutcome:
    """Start the job for one retrain request, retrying recoverable failures; never raises for a failure."""
    params = job_parameters(event_id, request, trigger.ref)
    last = DispatchOutcome(False, 0, "not tried")
    for attempt in range(1, trigger.attempts + 1):
        try:
            detail = await _once(trigger, params, session)
            return DispatchOutcome(True, attempt, detail)
        except DeliveryError as exc:
            if trigger.kind == "airflow" and exc.http_status == 409:
                return DispatchOutcome(True, attempt, "already dispatched (HTTP 409)", 409)
            last = DispatchOutcome(False, attempt, str(exc), exc.http_status)
            if not exc.recoverable or attempt == trigger.attempts:
                break
            delay = trigger.backoff_seconds * 2 ** (attempt - 1)
            log.warning(
                "retrain dispatch %s via %s: %s, try %d in %.2fs",
                event_id,
                trigger.kind,
                exc,
                attempt + 1,
                delay,
            )
            await sleep(delay)
    log.error(
        "retrain dispatch %s via %s failed after %d tries: %s",
        event_id,
        trigger.kind,
        last.attempts,
        last.detail,
    )
    return last


async def _once(trigger: JobTrigger, params: dict[str, Any], session: aiohttp.ClientSession) -> str:
    if trigger.kind == "command":
        return await _run_command(trigger, command_line(trigger, params))
    assert trigger.url is not None, "checked by Settings"
    body = render_body(trigger.body_template(), params)
    await post_once(
        session,
        trigger.url.get_secret_value(),
        body,
        trigger.timeout_seconds,
        request_headers(trigger, params["event_id"]),
    )
    return "accepted (HTTP 2xx)"


async def _run_command(trigger: JobTrigger, argv: list[str]) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        raise DeliveryError(f"command could not start ({type(exc).__name__})", recoverable=False) from exc
    try:
        code = await asyncio.wait_for(process.wait(), trigger.timeout_seconds)
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise DeliveryError(
            f"command timed out after {trigger.timeout_seconds:g}s", recoverable=True
        ) from exc
    if code != 0:
        raise DeliveryError(f"command exited {code}", recoverable=True)
    return "exit 0"


_SAMPLE = RetrainRequest.model_validate(
    {
        "reason": "check",
        "policy": "check",
        "rule": "check",
        "mode": "auto",
        "model": "check",
        "incident_start": "2026-01-01T00:00:00Z",
        "window_start": "2026-01-01T00:00:00Z",
        "window_end": "2026-01-01T00:00:00Z",
        "detections": [],
        "dataset": {"table": "sft", "version": 1, "uri": "file:///datasets/sft"},
    }
)
