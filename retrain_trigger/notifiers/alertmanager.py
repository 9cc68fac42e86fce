"""Receivers that understand Alertmanager's webhook payload (version 4)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SecretStr

from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers.base import Notifier, Receiver, format_time


class AlertmanagerReceiver(Receiver):
    """A receiver that understands Alertmanager's webhook payload (version 4)."""

    kind: Literal["alertmanager"] = "alertmanager"
    url: SecretStr
    external_url: str = ""


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
                "startsAt": format_time(a.starts_at),
                "endsAt": format_time(a.ends_at),
                "generatorURL": "",
                "fingerprint": a.fingerprint,
            }
            for a in alerts
        ],
    }


class AlertmanagerNotifier(Notifier[AlertmanagerReceiver]):
    """Posts the page in Alertmanager's webhook format."""

    config = AlertmanagerReceiver

    def request(self, notification: Notification) -> tuple[str, dict[str, Any]]:
        """The receiver's URL and the version 4 payload named after the receiver."""
        receiver = self.receiver
        return receiver.url.get_secret_value(), alertmanager_payload(
            notification, receiver.name, receiver.external_url
        )
