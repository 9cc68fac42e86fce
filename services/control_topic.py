"""The CLI's side of the control topic: publish signed silences and stable marks, read the topic back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from kafka import TopicPartition

from core.settings import Settings
from retrain_trigger.control import ControlEvent, Refused, check, signature_headers
from retrain_trigger.silence import Silences
from retrain_trigger.stable import StableVersions
from schemas.errors import BrokerError
from services.replay import Replayer
from services.topic_reader import connected_consumer


def publish(settings: Settings, event: ControlEvent) -> None:
    """Send one control event (signed when a control key is set) and wait until the broker has it."""
    value = event.model_dump_json().encode()
    replayer = Replayer(settings)
    try:
        headers = signature_headers(value, settings.control_key)
        replayer.send(settings.topics.control, value, event.key(), headers=headers)
    finally:
        replayer.close()


@dataclass(frozen=True)
class RefusedRecord:
    """A record of the control topic that workers refuse, where it is and why."""

    offset: int
    key: bytes | None
    refused: Refused


@dataclass
class ControlLog:
    """The control topic as the workers apply it: silences, stable versions, and the refused records."""

    silences: Silences = field(default_factory=Silences)
    stable: StableVersions = field(default_factory=StableVersions)
    refused: list[RefusedRecord] = field(default_factory=list)


def read(settings: Settings, timeout: float = 30.0) -> ControlLog:
    """Read the whole control topic and check every record exactly as a worker does."""
    topic = settings.topics.control
    consumer = connected_consumer(settings, enable_auto_commit=False, group_id=None)
    log = ControlLog()
    max_silence = timedelta(seconds=settings.silence_max_seconds)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        polled: dict[TopicPartition, list[Any]] = {}
        # Past the reported end, one more empty poll: some brokers (Tansu) report the
        # last batch's base offset + 1, and a batch may come over several polls.
        while polled or any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                where = f"{topic} at {settings.kafka_bootstrap}"
                raise BrokerError(f"could not read {where} within {timeout:.0f}s")
            polled = consumer.poll(timeout_ms=500)
            for records in polled.values():
                for record in records:
                    if record.value is None:
                        continue
                    outcome = check(
                        record.key,
                        record.value,
                        record.headers or [],
                        key=settings.control_key,
                        max_silence=max_silence,
                    )
                    if isinstance(outcome, Refused):
                        log.refused.append(RefusedRecord(record.offset, record.key, outcome))
                        continue
                    if outcome.silence is not None:
                        log.silences.add(outcome.silence)
                    if outcome.stable is not None:
                        log.stable.apply(outcome.stable)
    finally:
        consumer.close()
    return log
