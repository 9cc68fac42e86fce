"""The generic JSON webhook: the Notification itself, versioned."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SecretStr

from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers.base import Notifier, Receiver


class WebhookReceiver(Receiver):
    """A generic JSON webhook: the Notification as JSON."""

    kind: Literal["webhook"] = "webhook"
    url: SecretStr


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """The generic webhook body: the Notification itself, versioned."""
    return {"version": "1", **notification.model_dump(mode="json")}


class WebhookNotifier(Notifier[WebhookReceiver]):
    """Posts the page as it is to a URL."""

    config = WebhookReceiver

    def request(self, notification: Notification) -> tuple[str, dict[str, Any]]:
        """The webhook URL and the versioned Notification."""
        return self.receiver.url.get_secret_value(), webhook_payload(notification)
