"""Slack incoming webhooks: a fallback text and one block per alert."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SecretStr

from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers.base import Notifier, Receiver, format_time


class SlackReceiver(Receiver):
    """A Slack incoming webhook (the URL holds the token)."""

    kind: Literal["slack"] = "slack"
    url: SecretStr


def slack_payload(notification: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message: a fallback ``text`` and one block per alert."""
    icon = ":white_check_mark:" if notification.status == "resolved" else ":rotating_light:"
    title = f"{icon} [{notification.status.upper()}] {notification.severity} {notification.group_key}"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    for alert in notification.alerts[:20]:
        notes = notification.annotations.get(alert.fingerprint, {})
        line = f"*{alert.summary}*\nsince {format_time(alert.starts_at)}"
        if "runbook_url" in notes:
            line += f" · <{notes['runbook_url']}|runbook>"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line[:3000]}})
    return {"text": title, "blocks": blocks}


class SlackNotifier(Notifier[SlackReceiver]):
    """Posts the page as a Slack message."""

    config = SlackReceiver

    def request(self, notification: Notification) -> tuple[str, dict[str, Any]]:
        """The incoming-webhook URL and the Slack message."""
        return self.receiver.url.get_secret_value(), slack_payload(notification)
