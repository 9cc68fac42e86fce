"""One notifier per integration, chosen by the type of its receiver settings.

To add an integration: a module here with its ``Receiver`` subclass (with a
``kind`` literal) and its ``Notifier`` subclass, listed in ``NOTIFIERS`` and in
``ReceiverConfig``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from retrain_trigger.notifiers.alertmanager import AlertmanagerNotifier, AlertmanagerReceiver
from retrain_trigger.notifiers.base import Notifier, Receiver
from retrain_trigger.notifiers.pagerduty import PagerDutyNotifier, PagerDutyReceiver
from retrain_trigger.notifiers.slack import SlackNotifier, SlackReceiver
from retrain_trigger.notifiers.webhook import WebhookNotifier, WebhookReceiver

#: The receiver settings of every integration, told apart by ``kind`` in the config file.
ReceiverConfig = Annotated[
    WebhookReceiver | SlackReceiver | PagerDutyReceiver | AlertmanagerReceiver, Field(discriminator="kind")
]

#: Receiver settings class -> its notifier.
NOTIFIERS: dict[type[Receiver], type[Notifier[Any]]] = {
    notifier.config: notifier
    for notifier in (WebhookNotifier, SlackNotifier, PagerDutyNotifier, AlertmanagerNotifier)
}


def notifier_for(receiver: Receiver) -> Notifier[Any]:
    """The notifier of a receiver's integration."""
    try:
        return NOTIFIERS[type(receiver)](receiver)
    except KeyError:
        raise TypeError(f"no notifier for receiver settings {type(receiver).__name__}") from None
