"""Notifiers: pages for alert groups to a webhook, Slack, PagerDuty (Events API v2) or Alertmanager.

Payloads are built by pure functions. Delivery is asynchronous: :class:`Dispatcher`
keeps one bounded queue and a few sender tasks per receiver, so a slow or dead
endpoint delays nobody else and never the stream. Each delivery has a timeout and
retries with exponential backoff when retrying can help (timeouts, connection
errors, 5xx, 429); a 4xx is final. Every delivery that finally fails, and every
page that does not fit in a full queue, becomes a :class:`DeliveryFailure` record
(the stream layer publishes them): nothing is dropped silently. Webhook URLs and
routing keys are ``SecretStr`` and appear in no log line, error or record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from retrain_trigger.alerts import Notification
from retrain_trigger.policy import Severity
from schemas.errors import PublishError

log = logging.getLogger(__name__)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
_ZERO_TIME = "0001-01-01T00:00:00Z"


class _Receiver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Receiver name, used in logs and failure records")
    min_severity: Severity = Field("info", description="Pages below this severity are not sent here")
    timeout_seconds: float = Field(5.0, gt=0, description="Per attempt")
    retries: int = Field(3, ge=0, description="Retries after the first attempt (recoverable errors only)")
    backoff_seconds: float = Field(0.5, ge=0, description="First retry delay; doubles each retry")
    max_backoff_seconds: float = Field(30.0, ge=0)


class WebhookReceiver(_Receiver):
    """A generic JSON webhook: the Notification as JSON."""

    kind: Literal["webhook"] = "webhook"
    url: SecretStr


class SlackReceiver(_Receiver):
    """A Slack incoming webhook (the URL holds the token)."""

    kind: Literal["slack"] = "slack"
    url: SecretStr


class PagerDutyReceiver(_Receiver):
    """PagerDuty Events API v2: trigger and resolve with ``dedup_key`` = the alert group."""

    kind: Literal["pagerduty"] = "pagerduty"
    routing_key: SecretStr
    url: str = PAGERDUTY_EVENTS_URL


class AlertmanagerReceiver(_Receiver):
    """A receiver that understands Alertmanager's webhook payload (version 4)."""

    kind: Literal["alertmanager"] = "alertmanager"
    url: SecretStr
    external_url: str = ""


ReceiverConfig = Annotated[
    WebhookReceiver | SlackReceiver | PagerDutyReceiver | AlertmanagerReceiver, Field(discriminator="kind")
]


class DeliveryFailure(BaseModel):
    """A page that could not be delivered, with why; published so it can be seen and re-sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["1"] = "1"
    receiver: str
    kind: str
    group_key: str
    status: Literal["firing", "resolved"]
    fingerprints: list[str]
    attempts: int
    recoverable: bool
    error: str
    http_status: int | None = None
    failed_at: datetime
    notification: Notification


# --------------------------------------------------------------------------
# Payloads (pure)


def _time(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value else _ZERO_TIME


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """The generic webhook body: the Notification itself, versioned."""
    return {"version": "1", **notification.model_dump(mode="json")}


def slack_payload(notification: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message: a fallback ``text`` and one block per alert."""
    icon = ":white_check_mark:" if notification.status == "resolved" else ":rotating_light:"
    title = f"{icon} [{notification.status.upper()}] {notification.severity} {notification.group_key}"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    for alert in notification.alerts[:20]:
        notes = notification.annotations.get(alert.fingerprint, {})
        line = f"*{alert.summary}*\nsince {_time(alert.starts_at)}"
        if "runbook_url" in notes:
            line += f" · <{notes['runbook_url']}|runbook>"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line[:3000]}})
    return {"text": title, "blocks": blocks}


def pagerduty_dedup_key(group_key: str) -> str:
    """One PagerDuty incident per alert group: later triggers update it, resolve closes it."""
    return "loopwatch-" + hashlib.sha256(group_key.encode()).hexdigest()[:32]


def pagerduty_payload(notification: Notification, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event (trigger or resolve)."""
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "resolve" if notification.status == "resolved" else "trigger",
        "dedup_key": pagerduty_dedup_key(notification.group_key),
    }
    if notification.status == "resolved":
        return body
    first = notification.alerts[0]
    summary = (
        first.summary
        if len(notification.alerts) == 1
        else f"{len(notification.alerts)} alerts: {first.summary}"
    )
    body["payload"] = {
        "summary": summary[:1024],
        "source": notification.group_labels.get("model", "loopwatch"),
        "severity": notification.severity,
        "timestamp": _time(notification.sent_at),
        "component": first.labels.get("model_version", ""),
        "group": notification.group_key,
        "class": first.labels.get("detector", ""),
        "custom_details": {a.fingerprint: a.labels for a in notification.alerts},
    }
    runbooks = {n["runbook_url"] for n in notification.annotations.values() if "runbook_url" in n}
    body["links"] = [{"href": url, "text": "runbook"} for url in sorted(runbooks)]
    return body


def alertmanager_payload(notification: Notification, receiver: str, external_url: str = "") -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4): groupKey, status, common labels, alerts[]."""
    alerts = notification.alerts
    common = dict(set.intersection(*(set(a.labels.items()) for a in alerts))) if alerts else {}
    notes = [notification.annotations.get(a.fingerprint, {}) for a in alerts]
    common_notes = dict(set.intersection(*(set(n.items()) for n in notes))) if notes else {}
    return {
        "version": "4",
        "groupKey": notification.group_key,
        "truncatedAlerts": 0,
        "status": notification.status,
        "receiver": receiver,
        "groupLabels": notification.group_labels,
        "commonLabels": common,
        "commonAnnotations": common_notes,
        "externalURL": external_url,
        "alerts": [
            {
                "status": a.status,
                "labels": a.labels,
                "annotations": notification.annotations.get(a.fingerprint, {}),
                "startsAt": _time(a.starts_at),
                "endsAt": _time(a.ends_at),
                "generatorURL": "",
                "fingerprint": a.fingerprint,
            }
            for a in alerts
        ],
    }


def render(receiver: ReceiverConfig, notification: Notification) -> tuple[str, dict[str, Any]]:
    """The URL and JSON body for one receiver (the only place secrets are revealed)."""
    if isinstance(receiver, SlackReceiver):
        return receiver.url.get_secret_value(), slack_payload(notification)
    if isinstance(receiver, PagerDutyReceiver):
        return receiver.url, pagerduty_payload(notification, receiver.routing_key.get_secret_value())
    if isinstance(receiver, AlertmanagerReceiver):
        return receiver.url.get_secret_value(), alertmanager_payload(
            notification, receiver.name, receiver.external_url
        )
    return receiver.url.get_secret_value(), webhook_payload(notification)


# --------------------------------------------------------------------------
# Delivery


class DeliveryError(PublishError):
    """One failed delivery; the message names no URL or key, and ``attempts`` counts the tries."""

    def __init__(self, message: str, *, recoverable: bool, attempts: int = 1, http_status: int | None = None):
        super().__init__(message, recoverable=recoverable)
        self.attempts = attempts
        self.http_status = http_status


async def _post_once(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float) -> None:
    """One POST; raises DeliveryError saying whether a retry can help."""
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            await response.read()
            status = response.status
    except TimeoutError as exc:
        raise DeliveryError(f"timed out after {timeout:g}s", recoverable=True) from exc
    except aiohttp.ClientError as exc:
        # str(exc) of aiohttp errors can contain the URL (and so a token): only the type is kept.
        raise DeliveryError(f"connection failed ({type(exc).__name__})", recoverable=True) from exc
    if 200 <= status < 300:
        return
    recoverable = status >= 500 or status == 429
    raise DeliveryError(f"HTTP {status}", recoverable=recoverable, http_status=status)


def backoff(receiver: _Receiver, attempt: int, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): doubling, capped, with jitter of up to +25%."""
    base = min(receiver.max_backoff_seconds, receiver.backoff_seconds * 2**attempt)
    return base * (1 + 0.25 * rng.random())


async def deliver(
    session: aiohttp.ClientSession,
    receiver: ReceiverConfig,
    notification: Notification,
    rng: random.Random | None = None,
) -> int:
    """Send one page with retries; returns the attempts used, raises DeliveryError when it finally fails."""
    rng = rng or random.Random()
    url, body = render(receiver, notification)
    for attempt in range(receiver.retries + 1):
        try:
            await _post_once(session, url, body, receiver.timeout_seconds)
            return attempt + 1
        except DeliveryError as exc:
            exc.attempts = attempt + 1
            if not exc.recoverable or attempt == receiver.retries:
                raise
            delay = backoff(receiver, attempt, rng)
            log.warning(
                "notify %s: %s for %s, retry %d in %.2fs",
                receiver.name,
                exc,
                notification.group_key,
                attempt + 1,
                delay,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


OnFailure = Callable[[DeliveryFailure], Awaitable[None] | None]


class Dispatcher:
    """Sends pages in the background: per receiver a bounded queue and ``concurrency`` sender tasks.

    ``submit`` never blocks; a full queue becomes a DeliveryFailure. ``on_failure``
    (sync or async) receives every failure; they are also kept in ``failures``.
    """

    def __init__(
        self,
        receivers: list[ReceiverConfig],
        *,
        queue_size: int = 1000,
        concurrency: int = 2,
        on_failure: OnFailure | None = None,
        seed: int | None = None,
        history: int = 10_000,
    ) -> None:
        self.receivers = receivers
        self.queue_size = queue_size
        self.concurrency = concurrency
        self.on_failure = on_failure
        # Recent history for inspection; the record of every failure is what on_failure receives.
        self.failures: deque[DeliveryFailure] = deque(maxlen=history)
        self.delivered: deque[tuple[str, str]] = deque(maxlen=history)
        self._rng = random.Random(seed)
        self._queues: dict[str, asyncio.Queue[Notification]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Open the HTTP session and start the sender tasks."""
        self._session = aiohttp.ClientSession()
        for receiver in self.receivers:
            queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=self.queue_size)
            self._queues[receiver.name] = queue
            for _ in range(self.concurrency):
                self._tasks.append(asyncio.create_task(self._send_loop(receiver, queue)))

    async def stop(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` for queued pages, then stop; pages still queued are recorded as failures."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues.values())), timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for receiver in self.receivers:
            queue = self._queues.get(receiver.name)
            while queue is not None and not queue.empty():
                await self._failed(receiver, queue.get_nowait(), "not sent before shutdown", True, 0, None)
        if self._session is not None:
            await self._session.close()

    def submit(self, notification: Notification) -> None:
        """Queue a page for every receiver whose ``min_severity`` it reaches (never blocks)."""
        for receiver in self.receivers:
            if _SEVERITY_RANK[notification.severity] < _SEVERITY_RANK[receiver.min_severity]:
                continue
            try:
                self._queues[receiver.name].put_nowait(notification)
            except asyncio.QueueFull:
                failure = self._record(receiver, notification, "queue full", True, 0, None)
                result = self.on_failure(failure) if self.on_failure else None
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    async def _send_loop(self, receiver: ReceiverConfig, queue: asyncio.Queue[Notification]) -> None:
        assert self._session is not None
        while True:
            notification = await queue.get()
            try:
                await deliver(self._session, receiver, notification, self._rng)
                self.delivered.append((receiver.name, notification.group_key))
            except DeliveryError as exc:
                await self._failed(
                    receiver, notification, str(exc), exc.recoverable, exc.attempts, exc.http_status
                )
            except Exception as exc:  # a bug in one page must not kill the sender
                await self._failed(receiver, notification, f"unexpected {type(exc).__name__}", False, 1, None)
            finally:
                queue.task_done()

    def _record(
        self,
        receiver: ReceiverConfig,
        notification: Notification,
        error: str,
        recoverable: bool,
        attempts: int,
        http_status: int | None,
    ) -> DeliveryFailure:
        failure = DeliveryFailure(
            receiver=receiver.name,
            kind=receiver.kind,
            group_key=notification.group_key,
            status=notification.status,
            fingerprints=[a.fingerprint for a in notification.alerts],
            attempts=attempts,
            recoverable=recoverable,
            error=error,
            http_status=http_status,
            failed_at=datetime.now(UTC),
            notification=notification,
        )
        self.failures.append(failure)
        log.error(
            "notify %s: page for %s failed after %d attempt(s): %s",
            receiver.name,
            failure.group_key,
            attempts,
            error,
        )
        return failure

    async def _failed(
        self,
        receiver: ReceiverConfig,
        notification: Notification,
        error: str,
        recoverable: bool,
        attempts: int,
        http_status: int | None,
    ) -> None:
        failure = self._record(receiver, notification, error, recoverable, attempts, http_status)
        if self.on_failure is not None:
            result = self.on_failure(failure)
            if inspect.isawaitable(result):
                await result
