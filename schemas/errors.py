"""The exception tree shared by every loopwatch package."""

from __future__ import annotations


class LoopwatchError(Exception):
    """Root of every error loopwatch raises on purpose."""


class ConfigError(LoopwatchError):
    """A setting or configuration file is invalid."""


class BrokerError(LoopwatchError):
    """The Kafka broker cannot be started or reached."""


class PublishError(LoopwatchError):
    """An event or alert could not be delivered.

    ``recoverable`` says whether retrying can help (Alertmanager's
    ``(recoverable, err)`` convention).
    """

    def __init__(self, message: str, *, recoverable: bool) -> None:
        super().__init__(message)
        self.recoverable = recoverable
