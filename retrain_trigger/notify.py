"""Notify: pages for alert groups to a webhook, Slack, PagerDuty (Events API v2) or Alertmanager.

Each integration is one notifier class in ``notifiers/`` (its receiver settings,
its payload as a pure function, and its request), chosen by the type of the
receiver settings (``notifiers.NOTIFIERS``). Delivery is asynchronous: :class:`Dispatcher`
keeps one bounded queue and a few sender tasks per receiver, so a slow or dead
endpoint delays nobody else and never the stream. Each delivery has a timeout and
retries with exponential backoff when retrying can help (timeouts, connection
errors, 5xx, 429); a 4xx is final. Every delivery that finally fails, and every
page that does not fit in a full queue, becomes a :class:`DeliveryFailure` record
(the stream layer publishes them): nothing is dropped silently. The stream's notify
stage does not queue: it calls :meth:`Dispatcher.send` for each page of a batch and acks the
batch once each page is delivered or its failure recorded. Webhook URLs and
routing keys are ``SecretStr`` and appear in no log line, error or record.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict

from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers import NOTIFIERS, ReceiverConfig, notifier_for
from retrain_trigger.notifiers.alertmanager import AlertmanagerReceiver, alertmanager_payload
from retrain_trigger.notifiers.base import DeliveryError, Notifier, Receiver
from retrain_trigger.notifiers.pagerduty import (
    PAGERDUTY_EVENTS_URL,
    PagerDutyReceiver,
    pagerduty_dedup_key,
    pagerduty_payload,
)
from retrain_trigger.notifiers.slack import SlackReceiver, slack_payload
from retrain_trigger.notifiers.webhook import WebhookReceiver, webhook_payload

__all__ = [
    "NOTIFIERS",
    "PAGERDUTY_EVENTS_URL",
    "AlertmanagerReceiver",
    "DeliveryError",
    "DeliveryFailure",
    "Dispatcher",
    "Notifier",
    "PagerDutyReceiver",
    "Receiver",
    "ReceiverConfig",
    "SlackReceiver",
    "WebhookReceiver",
    "alertmanager_payload",
    "backoff",
    "deliver",
    "notifier_for",
    "pagerduty_dedup_key",
    "pagerduty_payload",
    "render",
    "slack_payload",
    "webhook_payload",
]

log = logging.getLogger(__name__)

_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


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


def render(receiver: ReceiverConfig, notification: Notification) -> tuple[str, dict[str, Any]]:
    """The URL and JSON body for one receiver (its integration's notifier builds them)."""
    return notifier_for(receiver).request(notification)


# --------------------------------------------------------------------------
# Delivery


def backoff(receiver: Receiver, attempt: int, rng: random.Random) -> float:
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
    notifier = notifier_for(receiver)
    for attempt in range(receiver.retries + 1):
        try:
            await notifier.notify(session, notification)
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
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Open the HTTP session and start the sender tasks."""
        self._session = aiohttp.ClientSession()
        for receiver in self.receivers:
            self._limits[receiver.name] = asyncio.Semaphore(self.concurrency)
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

    def receivers_for(self, notification: Notification) -> list[ReceiverConfig]:
        """The receivers whose ``min_severity`` the page reaches."""
        rank = _SEVERITY_RANK[notification.severity]
        return [r for r in self.receivers if rank >= _SEVERITY_RANK[r.min_severity]]

    async def send(self, receiver: ReceiverConfig, notification: Notification) -> DeliveryFailure | None:
        """Deliver one page to one receiver now, with its retries: None once delivered, else the failure.

        At most ``concurrency`` deliveries per receiver run at once (needs :meth:`start`).
        """
        assert self._session is not None, "start() the dispatcher first"
        async with self._limits[receiver.name]:
            try:
                await deliver(self._session, receiver, notification, self._rng)
            except DeliveryError as exc:
                return self._record(
                    receiver, notification, str(exc), exc.recoverable, exc.attempts, exc.http_status
                )
            except Exception as exc:  # a bug in one page must not kill the sender
                error = f"unexpected {type(exc).__name__}"
                return self._record(receiver, notification, error, False, 1, None)
        self.delivered.append((receiver.name, notification.group_key))
        return None

    def submit(self, notification: Notification) -> None:
        """Queue a page for every receiver whose ``min_severity`` it reaches (never blocks)."""
        for receiver in self.receivers_for(notification):
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
                failure = await self.send(receiver, notification)
                if failure is not None:
                    await self._report(failure)
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
        await self._report(self._record(receiver, notification, error, recoverable, attempts, http_status))

    async def _report(self, failure: DeliveryFailure) -> None:
        if self.on_failure is not None:
            result = self.on_failure(failure)
            if inspect.isawaitable(result):
                await result
