"""The worker notices when its broker is gone or has lost its topics.

The embedded broker keeps everything in memory: after a restart it has no
topics, no consumer group and no committed offsets. faust does not notice:
the worker answered ``/health`` 200 while it wrote to topics that no longer
existed, and its changelog and summaries topics never came back. Every
``topic_check_seconds`` the watch lists the cluster's topics, and

- reports the worker unhealthy (``/health`` 503 with the reason) while the
  broker does not answer or a topic is missing;
- recreates missing topics (loopwatch's own as at start-up, faust's changelog
  and leader topics with faust's own settings), then makes the consumer rejoin
  its group so that it is assigned their partitions again, or, with
  ``LOOPWATCH_ON_MISSING_TOPICS=exit``, stops the worker with the reason and
  exit code :data:`EXIT_TOPICS_MISSING`;
- logs one line when a condition starts and one when it ends, with how long it
  lasted and how many checks failed, instead of a line per failed check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from core.settings import Settings
from schemas.errors import LoopwatchError
from streams.kafka import ensure_topics, existing_topics
from streams.metrics import Metrics

log = logging.getLogger("loopwatch.broker")

#: The worker's exit code when it stopped because topics vanished (``on_missing_topics=exit``).
EXIT_TOPICS_MISSING = 3


@dataclass
class Condition:
    """Something wrong with the broker, since when, and how many checks have seen it."""

    kind: str
    reason: str
    since: float
    checks: int = 1


class BrokerWatch:
    """Checks the broker and the worker's topics; recreates them or stops the worker."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        metrics: Metrics,
        *,
        list_topics: Callable[[Settings], set[str]] = existing_topics,
        create_topics: Callable[[Settings], list[str]] = ensure_topics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.list_topics = list_topics
        self.create_topics = create_topics
        self.condition: Condition | None = None
        #: Why the worker stopped itself, if it did (``on_missing_topics=exit``).
        self.exit_reason: str | None = None
        self._listing: asyncio.Future[set[str]] | None = None

    @property
    def problem(self) -> str | None:
        """What makes the worker unhealthy now (None when the broker and all topics are there)."""
        return None if self.condition is None else self.condition.reason

    async def check(self) -> None:
        """One check: broker reachable, every topic present; act on what is missing."""
        if self.app.should_stop or self.exit_reason is not None:
            return
        bootstrap = self.settings.kafka_bootstrap
        # Less than the interval, so that faust's timer does not report a check overlapping the next.
        timeout = 0.8 * self.settings.topic_check_seconds
        if self._listing is None or self._listing.done():
            # kafka-python retries a broker that accepts connections but does not
            # answer for a long time: one listing at a time, waited on for one interval.
            self._listing = asyncio.ensure_future(asyncio.to_thread(self.list_topics, self.settings))
        try:
            existing = await asyncio.wait_for(asyncio.shield(self._listing), timeout)
            if self.app.should_stop:
                return  # stopping: a check that lasted into the shutdown says nothing
        except TimeoutError:
            if self.app.should_stop:
                return
            self._report(
                "unreachable", f"the broker at {bootstrap} did not list its topics within {timeout:.0f}s"
            )
            return
        except LoopwatchError as exc:
            self._report("unreachable", f"the broker at {bootstrap} does not answer: {exc}")
            return
        internal = self._faust_topics()
        missing = sorted(t for t in [*self.settings.topics.all(), *internal] if t not in existing)
        if not missing:
            self._resolved()
            return
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        self._report("topics_missing", f"{len(missing)} topics are missing on {bootstrap}: {shown}")
        if self.settings.on_missing_topics == "exit":
            self._stop(f"{len(missing)} topics are missing on {bootstrap} ({shown})")
            return
        try:
            await self._recreate(missing, internal)
        except Exception as exc:
            # Any error (broker gone again, a timeout, a refused config): the next check
            # tries again, and the condition (and /health) stay as they are.
            log.warning(
                "recreating topics failed, retrying in %.0fs: %r", self.settings.topic_check_seconds, exc
            )

    def _faust_topics(self) -> dict[str, Any]:
        """faust's own topics by name: the tables' changelogs and the leader topic."""
        app = cast(Any, self.app)
        topics = [table.changelog_topic for table in app.tables.values()]
        topics.append(app._leader_assignor._leader_topic)
        return {topic.get_topic_name(): topic for topic in topics}

    async def _recreate(self, missing: list[str], internal: dict[str, Any]) -> None:
        created = await asyncio.to_thread(self.create_topics, self.settings)
        timeout = self.settings.topic_check_seconds * 2
        for name in missing:
            if name in internal:
                # faust's declare knows each topic's partitions and compaction.
                await asyncio.wait_for(internal[name].declare(), timeout)
                created.append(name)
        self.metrics.topics_recreated.inc(len(created))
        await asyncio.wait_for(self.app.consumer.rejoin_group(), timeout)
        log.warning(
            "recreated %d topics (%s); rejoining the consumer group", len(created), ", ".join(sorted(created))
        )

    def _report(self, kind: str, reason: str) -> None:
        self.metrics.broker_ok.set(0)
        if self.condition is not None and self.condition.kind == kind:
            self.condition.checks += 1
            self.condition.reason = reason
            return
        self._resolved()
        self.condition = Condition(kind, reason, time.monotonic())
        log.warning("%s; /health answers 503 until this is resolved", reason)

    def _resolved(self) -> None:
        self.metrics.broker_ok.set(1)
        condition, self.condition = self.condition, None
        if condition is not None:
            log.info(
                "resolved after %.0fs (%d failed checks): %s",
                time.monotonic() - condition.since,
                condition.checks,
                condition.reason,
            )

    def _stop(self, reason: str) -> None:
        self.exit_reason = reason
        log.error(
            "stopping the worker: %s, and LOOPWATCH_ON_MISSING_TOPICS=exit (exit code %d)",
            reason,
            EXIT_TOPICS_MISSING,
        )
        # The same path as a SIGTERM from outside, grace period included.
        os.kill(os.getpid(), signal.SIGTERM)
