"""What every integration shares: the receiver settings, the notifier contract and one HTTP attempt."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.alerts import Notification
from retrain_trigger.policy import Severity
from schemas.errors import PublishError

_ZERO_TIME = "0001-01-01T00:00:00Z"


class Receiver(BaseModel):
    """The settings every receiver has: its name, the least severity it takes, timeout and retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Receiver name, used in logs and failure records")
    min_severity: Severity = Field("info", description="Pages below this severity are not sent here")
    timeout_seconds: float = Field(5.0, gt=0, description="Per attempt")
    retries: int = Field(3, ge=0, description="Retries after the first attempt (recoverable errors only)")
    backoff_seconds: float = Field(0.5, ge=0, description="First retry delay; doubles each retry")
    max_backoff_seconds: float = Field(30.0, ge=0)


R = TypeVar("R", bound=Receiver)


class DeliveryError(PublishError):
    """One failed delivery; the message names no URL or key, and ``attempts`` counts the tries."""

    def __init__(self, message: str, *, recoverable: bool, attempts: int = 1, http_status: int | None = None):
        super().__init__(message, recoverable=recoverable)
        self.attempts = attempts
        self.http_status = http_status


def format_time(value: datetime | None) -> str:
    """RFC 3339 with ``Z``, or Go's zero time for none (what Alertmanager-style consumers expect)."""
    return value.isoformat().replace("+00:00", "Z") if value else _ZERO_TIME


def page_id(notification: Notification) -> str:
    """A page's identity: the same for every copy of one page (a redelivery, a replayed decision).

    Sent as the ``Idempotency-Key`` header, so a receiver can drop a second copy.
    """
    fingerprints = ",".join(sorted(a.fingerprint for a in notification.alerts))
    sent = notification.sent_at.isoformat()
    text = f"{notification.group_key}|{notification.status}|{sent}|{notification.repeat}|{fingerprints}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def post_once(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    timeout: float,
    headers: dict[str, str] | None = None,
) -> None:
    """One POST; raises DeliveryError saying whether a retry can help."""
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
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


class Notifier(Generic[R]):
    """One integration: turns a page into the request its endpoint understands, and makes one attempt.

    A subclass names its receiver settings class in ``config`` (the registry in
    ``notifiers/__init__.py`` maps that class to the notifier) and builds the
    request in :meth:`request`; retries and failure records are the Dispatcher's.
    """

    config: ClassVar[type[Receiver]]

    def __init__(self, receiver: R) -> None:
        self.receiver = receiver

    def request(self, notification: Notification) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body for this page (the only place secrets are revealed)."""
        raise NotImplementedError

    async def notify(self, session: aiohttp.ClientSession, notification: Notification) -> None:
        """One delivery attempt; raises DeliveryError (recoverable or not) when it fails."""
        url, body = self.request(notification)
        headers = {"Idempotency-Key": page_id(notification)}
        await post_once(session, url, body, self.receiver.timeout_seconds, headers)
