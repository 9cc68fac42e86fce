"""PagerDuty Events API v2: trigger and resolve one incident per alert group."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import SecretStr

from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers.base import Notifier, Receiver, format_time

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class PagerDutyReceiver(Receiver):
    """PagerDuty Events API v2: trigger and resolve with ``dedup_key`` = the alert group."""

    kind: Literal["pagerduty"] = "pagerduty"
    routing_key: SecretStr
    url: str = PAGERDUTY_EVENTS_URL


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
        "timestamp": format_time(notification.sent_at),
        "component": first.labels.get("model_version", ""),
        "group": notification.group_key,
        "class": first.labels.get("detector", ""),
        "custom_details": {a.fingerprint: a.labels for a in notification.alerts},
    }
    runbooks = {n["runbook_url"] for n in notification.annotations.values() if "runbook_url" in n}
    body["links"] = [{"href": url, "text": "runbook"} for url in sorted(runbooks)]
    return body


class PagerDutyNotifier(Notifier[PagerDutyReceiver]):
    """Sends the page as a PagerDuty event; the routing key goes in the body."""

    config = PagerDutyReceiver

    def request(self, notification: Notification) -> tuple[str, dict[str, Any]]:
        """The Events API URL and the trigger or resolve event."""
        receiver = self.receiver
        return receiver.url, pagerduty_payload(notification, receiver.routing_key.get_secret_value())
