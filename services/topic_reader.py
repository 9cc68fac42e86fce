"""Read a whole topic once, from its start to where it ends now (kafka-python, no consumer group).

For commands that look back over what a topic holds, such as ``loopwatch
policy backtest --bootstrap``: the read stops once every partition is read up
to its end offset as of the start (and the batch that reaches it), so records
produced meanwhile do not make it run forever.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from schemas.errors import BrokerError, ConfigError


@dataclass(frozen=True)
class TopicRecord:
    """One record's place and value."""

    partition: int
    offset: int
    value: bytes


def read_topic(bootstrap: str, topic: str, *, timeout: float = 120.0) -> list[TopicRecord]:
    """Every record of ``topic`` up to (at least) its current end, each partition in offset order.

    Raises ConfigError when the topic does not exist and BrokerError when Kafka
    cannot be reached or the read does not finish within ``timeout`` seconds.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            client_id="loopwatch-topic-reader",
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ConfigError(f"topic {topic!r} does not exist at {bootstrap}")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end = consumer.end_offsets(assigned)
        records: list[TopicRecord] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in assigned):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"reading {topic!r} at {bootstrap} did not finish within {timeout:g}s"
                    f" ({len(records)} records so far)"
                )
            for tp, batch in consumer.poll(timeout_ms=500).items():
                # Not cut at the end offset: the embedded broker (Tansu) reports the last record
                # batch's base offset + 1 as a partition's end, so the end is where a fetch reaches.
                records.extend(
                    TopicRecord(tp.partition, r.offset, r.value) for r in batch if r.value is not None
                )
    except KafkaError as exc:
        raise BrokerError(f"reading {topic!r} at {bootstrap} failed: {exc}") from exc
    finally:
        consumer.close()
    return records
