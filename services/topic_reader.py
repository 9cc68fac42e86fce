"""Read a whole topic once, from its start to where it ends now (kafka-python, no consumer group).

For commands that look back over what a topic holds, such as ``loopwatch
policy backtest --bootstrap``: the read stops once every partition is read up
to its end offset as of the start (and the batch that reaches it), so records
produced meanwhile do not make it run forever. ``read_records`` fetches single
records by offset, such as the originals of dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from core.settings import Settings
from schemas.errors import BrokerError, ConfigError
from streams.kafka import checked_options


@dataclass(frozen=True)
class TopicRecord:
    """One record's place and value."""

    partition: int
    offset: int
    value: bytes
    key: bytes | None = None


def connected_consumer(settings: Settings, *topics: str, **config: Any) -> KafkaConsumer:
    """A kafka-python consumer with loopwatch's connection options; BrokerError says why it cannot connect."""
    options = checked_options(settings)
    try:
        return KafkaConsumer(*topics, **options, **config)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc!r}") from exc


def read_topic(settings: Settings, topic: str, *, timeout: float = 120.0) -> list[TopicRecord]:
    """Every record of ``topic`` up to (at least) its current end, each partition in offset order.

    Raises ConfigError when the topic does not exist and BrokerError when Kafka
    cannot be reached or the read does not finish within ``timeout`` seconds.
    """
    bootstrap = settings.kafka_bootstrap
    consumer = _consumer(settings)
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
                    TopicRecord(tp.partition, r.offset, r.value, r.key) for r in batch if r.value is not None
                )
    except KafkaError as exc:
        raise BrokerError(f"reading {topic!r} at {bootstrap} failed: {exc}") from exc
    finally:
        consumer.close()
    return records


#: Where one record sits: (topic, partition, offset).
Place = tuple[str, int, int]


@dataclass(frozen=True)
class Fetched:
    """The records found at the places asked for, and why each other place had none."""

    records: dict[Place, TopicRecord]
    missing: dict[Place, str]


def read_records(settings: Settings, places: Iterable[Place], *, timeout: float = 30.0) -> Fetched:
    """The record at each (topic, partition, offset) while the topic retains it (one consumer for all).

    A place comes back in ``missing`` with a reason when its partition does not
    exist, retention deleted its offset, or nothing is there (compacted away, or
    the topic was recreated and has not reached it) within ``timeout`` seconds.
    """
    wanted: dict[TopicPartition, set[int]] = {}
    for topic, partition, offset in places:
        wanted.setdefault(TopicPartition(topic, partition), set()).add(offset)
    found: dict[Place, TopicRecord] = {}
    missing: dict[Place, str] = {}
    bootstrap = settings.kafka_bootstrap
    consumer = _consumer(settings)
    deadline = time.monotonic() + timeout
    try:
        for tp, offsets in wanted.items():
            if tp.partition not in (consumer.partitions_for_topic(tp.topic) or ()):
                for offset in offsets:
                    missing[(tp.topic, tp.partition, offset)] = (
                        f"gone: {tp.topic} has no partition {tp.partition}"
                    )
                continue
            consumer.assign([tp])
            start = consumer.beginning_offsets([tp])[tp]
            for offset in sorted(o for o in offsets if o < start):
                missing[(tp.topic, tp.partition, offset)] = (
                    f"no longer retained ({tp.topic}/{tp.partition} now starts at offset {start})"
                )
            pending = sorted(o for o in offsets if o >= start)
            while pending:
                consumer.seek(tp, pending[0])
                reached = _fetch_from(consumer, tp, pending[0], deadline)
                for record in reached:
                    if record.offset in offsets:
                        found[(tp.topic, tp.partition, record.offset)] = TopicRecord(
                            tp.partition, record.offset, record.value, record.key
                        )
                last = reached[-1].offset if reached else None
                for offset in [o for o in pending if last is None or o <= last]:
                    if (tp.topic, tp.partition, offset) not in found:
                        missing[(tp.topic, tp.partition, offset)] = (
                            f"gone from {tp.topic}/{tp.partition}@{offset} (compacted away, or the topic"
                            " was recreated)"
                            if last is not None
                            else f"not found at {tp.topic}/{tp.partition}@{offset} within {timeout:g}s"
                        )
                pending = [o for o in pending if last is not None and o > last]
    except KafkaError as exc:
        raise BrokerError(f"reading records at {bootstrap} failed: {exc}") from exc
    finally:
        consumer.close()
    return Fetched(found, missing)


def _fetch_from(consumer: KafkaConsumer, tp: TopicPartition, offset: int, deadline: float) -> list[Any]:
    """The records of the first fetch that reaches ``offset`` or beyond; [] at the deadline."""
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=300).get(tp, [])
        reached = [r for r in batch if r.offset >= offset]
        if reached:
            return reached
    return []


def _consumer(settings: Settings) -> KafkaConsumer:
    """A consumer of no group that commits nothing; BrokerError when Kafka cannot be reached."""
    return connected_consumer(
        settings, group_id=None, enable_auto_commit=False, client_id="loopwatch-topic-reader"
    )
