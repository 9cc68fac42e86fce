"""Outgoing records collected while a batch is processed, sent as Kafka record batches.

faust's ``Topic.send_soon`` costs about 40 µs per record (a FutureMessage, a
trip through faust's producer buffer task, then one ``AIOKafkaProducer.send``).
The outbox appends records to one aiokafka ``BatchBuilder`` per topic
partition and sends each builder with a single ``send_batch``. It uses faust's
own aiokafka producer, so faust's commit, which flushes that producer before
committing offsets, still makes every output at-least-once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from schemas.events import SourceRef
from streams.ingest import Rejected, dead_letter

Headers = list[tuple[str, bytes]]


class Outbox:
    """Records to send, grouped by topic and partition."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, int | None], list[tuple[bytes | None, bytes | None, Headers]]] = {}

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record; ``partition=None`` lets the producer's partitioner choose."""
        self._records.setdefault((topic, partition), []).append((key, value, headers or []))

    def add_dead_letter(self, topic: str, message: Any, rejected: Rejected) -> None:
        """Queue the dead letter of a rejected Kafka message (its reason also in a header)."""
        source = SourceRef(topic=message.topic, partition=message.partition, offset=message.offset)
        record = dead_letter(rejected, source, message.key, message.value, datetime.now(UTC))
        self.add(
            topic,
            message.key,
            record.model_dump_json().encode(),
            headers=[("loopwatch-reason", rejected.reason.value.encode())],
        )

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    async def send(self, producer: Any) -> list[Awaitable[Any]]:
        """Hand every record to ``producer`` (an AIOKafkaProducer); return the delivery futures.

        The futures resolve when the broker acknowledged; faust's commit flushes the
        producer first, so callers need not wait for them.
        """
        futures: list[Awaitable[Any]] = []
        for (topic, partition), records in self._records.items():
            if partition is None:
                for key, value, headers in records:
                    futures.append(await producer.send(topic, value, key=key, headers=headers))
                continue
            batch = producer.create_batch()
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        self._records.clear()
        return futures
