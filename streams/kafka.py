"""Plain Kafka administration (kafka-python): wait for the cluster, create topics.

Only standard Kafka APIs are used, so the same code runs against the embedded
broker, Apache Kafka, Redpanda, MSK or Confluent.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from core.settings import Settings
from schemas.errors import BrokerError, ConfigError

log = logging.getLogger("loopwatch.kafka")


def admin_client(bootstrap: str) -> KafkaAdminClient:
    """An admin client, or KafkaError when the cluster cannot be reached."""
    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="loopwatch-admin",
        request_timeout_ms=10_000,
        # Give up (callers retry) rather than back off for up to 30 s: a broker that
        # just restarted is seen at the next check.
        bootstrap_timeout_ms=10_000,
        reconnect_backoff_max_ms=1_000,
    )


def wait_for_kafka(bootstrap: str, *, give_up_after: float = 0.0) -> None:
    """Block until the cluster answers; log each retry. ``give_up_after`` 0 waits forever."""
    started = time.monotonic()
    delay = 0.5
    attempt = 1
    while True:
        try:
            _connect_any(bootstrap)
            admin_client(bootstrap).close()
            if attempt > 1:
                log.info("kafka is up at %s after %d attempts", bootstrap, attempt)
            return
        except (KafkaError, OSError) as exc:
            waited = time.monotonic() - started
            if give_up_after and waited >= give_up_after:
                raise BrokerError(
                    f"Kafka at {bootstrap} did not answer within {give_up_after:.0f}s: {exc}"
                ) from exc
            log.warning(
                "waiting for kafka at %s (attempt %d, %.0fs so far): %s; retrying in %.1fs",
                bootstrap,
                attempt,
                waited,
                exc.__class__.__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            attempt += 1


def _connect_any(bootstrap: str) -> None:
    """Fail fast (OSError) when no bootstrap server accepts TCP connections.

    kafka-python's own bootstrap retries silently for a long time; this lets
    the worker log each attempt.
    """
    error: OSError = OSError(f"no bootstrap server in {bootstrap!r}")
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
            return
        except OSError as exc:
            error = exc
    raise error


def existing_topics(bootstrap: str) -> set[str]:
    """The topics the cluster has now; BrokerError when it does not answer (blocking: run in a thread)."""
    try:
        _connect_any(bootstrap)
        admin = admin_client(bootstrap)
    except (KafkaError, OSError) as exc:
        raise BrokerError(f"Kafka at {bootstrap} does not answer: {exc.__class__.__name__}") from exc
    try:
        return set(admin.list_topics())
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {bootstrap} could not list topics: {exc!r}") from exc
    finally:
        admin.close()


def ensure_topics(settings: Settings) -> list[str]:
    """Create the topics loopwatch uses when they are missing; return the ones created.

    Refuses to start when the request_id-keyed topics exist with different
    partition counts: the feedback join would silently miss matches.
    """
    admin = admin_client(settings.kafka_bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in settings.topics.all() if t not in existing]
        if missing:
            new = [
                NewTopic(
                    t,
                    # The control topic (silences, stable versions) is read whole by every
                    # worker and keeps the latest value per key.
                    num_partitions=1 if t == settings.topics.control else settings.partitions,
                    replication_factor=settings.replication_factor,
                    # Large enough for every record loopwatch writes (its default is 1 MB on Kafka).
                    topic_configs={
                        **settings.record_topic_configs(),
                        **({"cleanup.policy": "compact"} if t == settings.topics.control else {}),
                    },
                )
                for t in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                admin.create_topics(new)
            log.info("created topics %s with %d partitions", ", ".join(missing), settings.partitions)
        counts = _partition_counts(admin, settings.topics.co_partitioned())
    finally:
        admin.close()
    if len(set(counts.values())) > 1:
        raise ConfigError(
            "the feedback join needs these topics to have the same partition count, but they "
            f"have {counts}; recreate or repartition them"
        )
    return missing


def _partition_counts(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    for _ in range(50):  # new topics can take a moment to show in metadata
        described = admin.describe_topics(topics)
        counts = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
        if all(counts.get(t) for t in topics):
            return counts
        time.sleep(0.1)
    return counts
