"""The notify stage: pages in from ``loopwatch.pages.v1``, delivered to the receivers, acked after.

The decide stage publishes every page it decides on the pages topic (keyed by
alert group), with its alerts and actions, so a page is as durable as the
alert it is about. This stage reads them and delivers each one to every
receiver whose ``min_severity`` it reaches (:class:`~retrain_trigger.notify.Dispatcher`:
timeouts, retries with backoff, at most ``concurrency`` deliveries per receiver
at once). A batch is acked only once each of its pages was delivered to each
of its receivers or recorded as failed on ``loopwatch.delivery-failures.v1``:
a worker killed while a page is queued or being retried leaves it unacked, and
the next owner of the partition delivers it.

The last offset handled in each partition is a state write of the unit (the
``notified`` table), so a restart skips what was handled before it even when
its offsets were not committed yet. A page may still be delivered twice (the
worker died between a delivery and that write; or the decide stage replayed a
decision and published the page again). Every copy of a page
carries the same ``Idempotency-Key`` header (:func:`~retrain_trigger.notifiers.base.page_id`),
PagerDuty folds triggers with one ``dedup_key`` into one incident, and this
stage does not deliver a page again to a receiver it reached in this process.

A stop does not wait for a receiver that keeps failing: the pages still being
retried when the worker stops are published again on the pages topic, naming
the receivers still owed (header ``loopwatch-receivers``), and the batch is
acked; whoever owns the partition next delivers them to those receivers only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config_files import load_yaml_list
from core.settings import Settings
from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers.base import page_id
from retrain_trigger.notify import DeliveryFailure, Dispatcher, ReceiverConfig
from streams.ingest import Accepted, Rejected, decode
from streams.metrics import Metrics
from streams.runtime import Batch, ChangelogTable, Decoder, Effects, Runtime, Stage

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.notify")

#: Header of a page published again at a stop: the JSON list of receivers it still owes.
RECEIVERS_HEADER = "loopwatch-receivers"

#: (receiver, page id) pairs delivered in this process, remembered to skip a second copy.
_REMEMBERED = 10_000

#: How often a unit that is delivering looks whether the worker is stopping.
_STOP_CHECK_SECONDS = 0.2


def load_receivers(path: Path | None) -> list[Any]:
    """Notifier receivers from a YAML list (webhook, slack, pagerduty, alertmanager); none without a file."""
    return [] if path is None else load_yaml_list(path, ReceiverConfig, "receivers")


def owed_receivers(message: Any) -> set[str] | None:
    """The receivers a page still owes (from a re-published page's header), or None: all of them."""
    for name, value in message.headers or ():
        if name == RECEIVERS_HEADER:
            try:
                names = json.loads(value)
            except ValueError:
                return None
            return {str(n) for n in names} if isinstance(names, list) else None
    return None


class NotifyStage(Stage):
    """Delivers the pages on the pages topic; acks each once delivered or recorded as failed."""

    name = "notify"

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        super().__init__(runtime)
        self.app: LoopwatchApp = runtime.app
        self.settings = settings
        self.metrics = metrics
        self.topics = settings.topics
        self.inputs: dict[str, Decoder] = {self.topics.pages: self._decode}
        self.dispatcher = Dispatcher(load_receivers(settings.receivers_file))
        self.reached: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.started = False
        # Per pages partition, the last offset handled: offsets are committed only every
        # commit interval, and a restart must not deliver again what was handled before it.
        self.table = ChangelogTable(self.app, "notified", settings.partitions)

    def _decode(self, message: Any, now: float) -> Accepted[Notification] | Rejected:
        return decode(message.value, Notification, max_bytes=self.settings.max_record_bytes)

    async def start(self) -> None:
        """Open the notifiers' HTTP session (once; a batch may come before the runtime starts stages)."""
        if not self.started:
            self.started = True
            await self.dispatcher.start()

    async def stop(self) -> None:
        """Close the notifiers' HTTP session (no page is queued here: they wait on the topic)."""
        await self.dispatcher.stop()

    async def handle(self, batch: Batch, now: float) -> Effects:
        """Deliver a batch of pages; the failures become records, the pages left at a stop go back."""
        effects = self.effects()
        jobs: list[tuple[Any, Notification, ReceiverConfig]] = []
        planned: set[tuple[str, str]] = set()
        last: dict[int, int] = {}
        for message in batch.messages:
            last[message.partition] = max(last.get(message.partition, -1), message.offset)
        for partition, offset in last.items():  # a state write: durable after this unit's records
            effects.put(self.table, str(partition).encode(), str(offset).encode(), partition)
        for message, accepted in batch.accepted:
            if message.offset <= self._handled_upto(message.partition):
                continue  # handled before a restart, only not committed yet
            page: Notification = accepted.event
            owed, identity = owed_receivers(message), page_id(page)
            for receiver in self.dispatcher.receivers_for(page):
                target = (receiver.name, identity)
                wanted = owed is None or receiver.name in owed
                if wanted and target not in self.reached and target not in planned:
                    planned.add(target)  # a second copy in one batch goes out once
                    jobs.append((message, page, receiver))
        if not jobs:
            return effects
        await self.start()
        sends = [asyncio.ensure_future(self.dispatcher.send(receiver, page)) for _, page, receiver in jobs]
        await self._until_done_or_stopping(sends)
        left: dict[int, tuple[Any, Notification, list[str]]] = {}
        for (message, page, receiver), send in zip(jobs, sends, strict=True):
            if not send.done() or send.cancelled():
                entry = left.setdefault(id(message), (message, page, []))
                entry[2].append(receiver.name)
                continue
            failure = send.result()
            if failure is None:
                self._remember(receiver.name, page_id(page))
            else:
                self._record(effects, failure)
        for message, page, receivers in left.values():
            log.warning(
                "stopping: the page for %s goes back on %s for %s",
                page.group_key,
                self.topics.pages,
                ", ".join(receivers),
            )
            headers = [(RECEIVERS_HEADER, json.dumps(receivers).encode())]
            effects.records.add(
                self.topics.pages, message.key, message.value, partition=message.partition, headers=headers
            )
        return effects

    async def _until_done_or_stopping(self, sends: Sequence[asyncio.Future[DeliveryFailure | None]]) -> None:
        """Wait for every delivery; when the worker stops first, cancel the ones still retrying."""
        pending = set(sends)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=_STOP_CHECK_SECONDS)
            if pending and self.app.should_stop:
                for send in pending:
                    send.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return

    def _record(self, effects: Effects, failure: DeliveryFailure) -> None:
        self.metrics.delivery_failures.labels(failure.receiver).inc()
        value = failure.model_dump_json().encode()
        effects.records.add(self.topics.delivery_failures, failure.group_key.encode(), value)

    def _handled_upto(self, partition: int) -> int:
        stored = self.table.get(str(partition).encode())
        return -1 if stored is None else int(stored)

    def _remember(self, receiver: str, page: str) -> None:
        self.reached[(receiver, page)] = None
        if len(self.reached) > _REMEMBERED:
            self.reached.popitem(last=False)
