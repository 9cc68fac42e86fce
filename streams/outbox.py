"""Outgoing records collected while a batch is processed, sent as Kafka record batches.

faust's ``Topic.send_soon`` costs about 40 µs per record (a FutureMessage, a
trip through faust's producer buffer task, then one ``AIOKafkaProducer.send``).
The outbox appends records to one aiokafka ``BatchBuilder`` per topic
partition and sends each builder with a single ``send_batch``. It uses faust's
own aiokafka producer, so faust's commit, which flushes that producer before
committing offsets, still makes every output at-least-once.

Every record must fit in ``max_record_bytes`` (:class:`OutputLimit`), which is
also the producer's ``max_request_size``. A record over it is not sent: it is
counted (``loopwatch_output_dropped_total{topic,reason}``), logged, and
replaced by a small dead letter that says which output it was and keeps its
first bytes, length and hash; it does not stop the rest of the batch, nor
crash the worker: before, one dead letter too large for the producer crashed
it on every restart. :meth:`Delivery.wait` sends again what the broker did not
take for another reason (a restart, a topic being recreated) for up to
``RETRY_SECONDS``; only then are those records counted and the error raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from core.settings import Settings
from schemas.events import DeadLetterReason
from streams.ingest import Rejected, dead_letter
from streams.metrics import Metrics
from streams.rekey import KEY_PREFIX_BYTES, Origin

Headers = list[tuple[str, bytes]]
Record = tuple[bytes | None, bytes | None, Headers]
#: A delivery future and how many records it stands for.
Sent = tuple["asyncio.Future[Any]", int]

# How long send_and_wait keeps re-sending a topic partition the broker did not take.
RETRY_SECONDS = 30.0

log = logging.getLogger("loopwatch.outbox")

# An upper bound of what aiokafka counts against max_request_size besides the key,
# value and header bytes (batch header 61, record framing 21, length varints); a
# test checks it against aiokafka's own estimate.
RECORD_OVERHEAD = 128
HEADER_OVERHEAD = 10

# What a producer or broker says when a record or batch is too large.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of the size the producer checks against its ``max_request_size``."""
    size = RECORD_OVERHEAD + (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
    for name, data in headers:
        size += HEADER_OVERHEAD + len(name.encode()) + len(data)
    return size


class OutputLimit:
    """The size every output record must fit, shared by all outboxes; counts and logs what did not fit."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.max_bytes = settings.max_record_bytes
        self.topic_configs = settings.record_topic_configs()
        self.deadletter_topic = settings.topics.deadletter
        self.prefix_bytes = settings.deadletter_value_bytes
        self.metrics = metrics
        self._dropped: Counter[tuple[str, str]] = Counter()

    def dropped(self, topic: str, reason: str, error: str, count: int = 1) -> None:
        """Count ``count`` records for ``topic`` that were not written; log the 1st, 10th, 100th..."""
        self.metrics.output_dropped.labels(topic, reason).inc(count)
        before = self._dropped[topic, reason]
        after = self._dropped[topic, reason] = before + count
        # One line per condition and order of magnitude: a flood of large records
        # must not become a flood of log lines.
        if before == 0 or math.floor(math.log10(after)) > math.floor(math.log10(before)):
            log.error(
                "%s (%d record(s) for %s not written so far, reason %s; see loopwatch_output_dropped_total)",
                error,
                after,
                topic,
                reason,
            )


class Outbox:
    """Records to send, grouped by topic and partition, each within the output limit."""

    def __init__(self, limit: OutputLimit) -> None:
        self.limit = limit
        self._room = limit.max_bytes - RECORD_OVERHEAD
        self._records: dict[tuple[str, int | None], list[Record]] = {}

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record (``partition=None``: the partitioner chooses); dead-letter it if too large."""
        headers = headers or []
        size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
        if size > self._room or (headers and record_size(key, value, headers) > self.limit.max_bytes):
            self._too_large(topic, key, value, record_size(key, value, headers))
            return
        self._records.setdefault((topic, partition), []).append((key, value, headers))

    def _too_large(self, topic: str, key: bytes | None, value: bytes | None, size: int) -> None:
        error = (
            f"a record for {topic} is {size:,} bytes, over the limit of {self.limit.max_bytes:,}"
            " (max_record_bytes); it was not written"
        )
        self.limit.dropped(topic, "too_large", error)
        if topic == self.limit.deadletter_topic:
            return  # a dead letter's dead letter could be too large again: counting it must do
        rejected = Rejected(DeadLetterReason.OUTPUT_TOO_LARGE, error)
        letter = dead_letter(
            rejected,
            None,
            key,
            value,
            datetime.now(UTC),
            prefix_bytes=self.limit.prefix_bytes,
            output_topic=topic,
        )
        self._add_letter(key, letter.model_dump_json().encode(), rejected)

    def add_dead_letter(
        self, topic: str, message: Any, rejected: Rejected, origin: Origin | None = None
    ) -> None:
        """Queue the dead letter of a rejected Kafka message (its reason also in a header).

        ``origin`` names the message the producer wrote when ``message`` is a copy of
        it (from the repartition topic); by default ``message`` is that message.
        """
        origin = origin or Origin.of(message)
        record = dead_letter(
            rejected,
            origin.source,
            origin.key,
            message.value,
            datetime.now(UTC),
            prefix_bytes=self.limit.prefix_bytes,
            key_bytes=origin.key_bytes,
        )
        self._add_letter(origin.key, record.model_dump_json().encode(), rejected, topic)

    def _add_letter(
        self, key: bytes | None, value: bytes, rejected: Rejected, topic: str | None = None
    ) -> None:
        self.add(
            topic or self.limit.deadletter_topic,
            None if key is None else key[:KEY_PREFIX_BYTES],
            value,
            headers=[("loopwatch-reason", rejected.reason.value.encode())],
        )

    def extend(self, other: Outbox) -> None:
        """Queue every record of ``other`` after this outbox's own (``other`` is emptied)."""
        for group, records in other.take().items():
            self._records.setdefault(group, []).extend(records)

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    def take(self) -> dict[tuple[str, int | None], list[Record]]:
        """Every queued record, grouped by topic partition; the outbox is empty afterwards.

        One swap, not an iteration over the live dict: a record added while an earlier
        take is being sent goes out with the next one, never lost nor raising.
        """
        records, self._records = self._records, {}
        return records

    async def send(self, producer: Any) -> Delivery:
        """Hand every record to ``producer`` (an AIOKafkaProducer); :meth:`Delivery.wait` for the broker."""
        pending = self.take()
        sent = {
            group: await _send_group(self.limit, producer, *group, records)
            for group, records in pending.items()
        }
        return Delivery(self.limit, producer, pending, sent)

    async def send_and_wait(self, producer: Any) -> None:
        """Send, then wait until the broker acknowledged every record (see :meth:`Delivery.wait`)."""
        await (await self.send(producer)).wait()


class Delivery:
    """Records handed to the producer, and the futures that say whether the broker took them."""

    def __init__(
        self,
        limit: OutputLimit,
        producer: Any,
        records: dict[tuple[str, int | None], list[Record]],
        sent: dict[tuple[str, int | None], list[Sent]],
    ) -> None:
        self.limit = limit
        self.producer = producer
        self.records = records
        self.sent = sent

    async def wait(self) -> None:
        """Wait until the broker acknowledged every record, sending again what it did not take.

        Records refused for their size are counted and logged, not raised: sending
        them again cannot help. A topic partition whose delivery fails otherwise (a
        broker restarting, a topic being recreated) is sent again with a backoff, for
        up to about ``RETRY_SECONDS``; then its records are counted as not written and
        the error is raised to the caller. A retried record may reach the broker
        twice: outputs are at-least-once.
        """
        delay = 0.2
        deadline = asyncio.get_running_loop().time() + RETRY_SECONDS
        sent = self.sent
        while True:
            failed: dict[tuple[str, int | None], list[Record]] = {}
            error: BaseException | None = None
            for (topic, partition), futures in sent.items():
                for delivered, count in futures:
                    try:
                        await delivered
                    except _TOO_LARGE as exc:
                        why = f"the broker refused {count} record(s) for {topic}: {exc}"
                        self.limit.dropped(topic, "too_large", why, count)
                    except Exception as exc:  # every future is awaited: none fails unread
                        failed[topic, partition] = self.records[topic, partition]
                        error = exc
            if error is None:
                return
            if asyncio.get_running_loop().time() + delay > deadline:
                for (topic, _), records in failed.items():
                    self.limit.dropped(
                        topic,
                        "failed",
                        f"the broker did not take records for {topic}: {error!r}",
                        len(records),
                    )
                raise error
            log.warning("delivery to %s failed (%r); sending again in %.1fs", sorted(failed), error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            sent = {
                group: await _send_group(self.limit, self.producer, *group, records)
                for group, records in failed.items()
            }


async def _send_group(
    limit: OutputLimit, producer: Any, topic: str, partition: int | None, records: list[Record]
) -> list[Sent]:
    """Send one topic partition's records (as record batches when the partition is known)."""
    futures: list[Sent] = []
    if partition is None:
        for key, value, headers in records:
            try:
                sent = await producer.send(topic, value, key=key, headers=headers)
            except _TOO_LARGE as exc:  # the producer's own check, should ours ever be short
                limit.dropped(topic, "too_large", f"the producer refused a record for {topic}: {exc}")
                continue
            futures.append((sent, 1))
        return futures
    batch = producer.create_batch()
    count = 0
    for key, value, headers in records:
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            futures.append((await producer.send_batch(batch, topic, partition=partition), count))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None, headers=headers)
            count = 0
        count += 1
    futures.append((await producer.send_batch(batch, topic, partition=partition), count))
    return futures
