"""Replay recorded events (JSONL or Parquet) into a Kafka topic with kafka-python.

JSONL lines are sent byte for byte, malformed ones included, so a replay
exercises the dead-letter path exactly as production traffic would. The key
is the event's ``request_id`` when the line parses, so inference and
feedback land on co-partitioned partitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from core.settings import Settings
from schemas.errors import BrokerError, ConfigError, PublishError
from streams.kafka import checked_options


def read_events(path: Path) -> Iterator[bytes]:
    """The events of a ``.jsonl`` / ``.ndjson`` or ``.parquet`` file, as message values."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _jsonl_lines(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise ConfigError(f"cannot replay {path.name}: expected a .jsonl or .parquet file")


def _jsonl_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as lines:
        for line in lines:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def _parquet_rows(path: Path) -> Iterator[bytes]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1_000):
        for row in batch.to_pylist():
            yield json.dumps(row, default=str).encode()


def event_key(value: bytes) -> bytes | None:
    """The request_id of an event, used as its Kafka key; None when it has none."""
    try:
        event = json.loads(value)
    except ValueError:
        return None
    request_id = event.get("request_id") if isinstance(event, dict) else None
    return request_id.encode() if isinstance(request_id, str) else None


class Replayer:
    """A kafka-python producer that counts deliveries and never loses a failure silently."""

    def __init__(self, settings: Settings) -> None:
        options = checked_options(settings)
        try:
            self.producer = KafkaProducer(
                **options, acks="all", linger_ms=5, retries=5, max_request_size=8 * 1024 * 1024
            )
        except KafkaError as exc:
            raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc!r}") from exc
        self.sent = 0
        self.failures: list[str] = []

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one message; delivery errors are collected and raised by :meth:`flush`."""
        future = self.producer.send(
            topic, value=value, key=key if key is not None else event_key(value), headers=headers
        )
        future.add_errback(lambda exc: self.failures.append(repr(exc)))
        self.sent += 1

    def flush(self) -> None:
        """Wait for every queued message; raise PublishError if any was not delivered."""
        self.producer.flush()
        if self.failures:
            raise PublishError(
                f"{len(self.failures)} of {self.sent} messages were not delivered; first: {self.failures[0]}",
                recoverable=True,
            )

    def close(self) -> None:
        """Flush and close the producer."""
        try:
            self.flush()
        finally:
            self.producer.close()


def replay(
    values: Iterable[bytes],
    topic: str,
    settings: Settings,
    *,
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> int:
    """Send ``values`` to ``topic``, at most ``rate`` per second; return how many were sent."""
    replayer = Replayer(settings)
    started = time.monotonic()
    try:
        with tqdm(total=limit, unit="event", disable=not progress, desc=topic) as bar:
            for n, value in enumerate(values):
                if limit is not None and n >= limit:
                    break
                if rate:
                    ahead = n / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                replayer.send(topic, value)
                bar.update()
    finally:
        replayer.close()
    return replayer.sent
