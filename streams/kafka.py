"""Kafka connections: the options every client gets, waiting for the cluster, creating topics.

:func:`client_options` is the one place that turns the ``LOOPWATCH_KAFKA_*``
settings into what a client needs (servers, TLS, SASL): the faust worker gets
them as :func:`broker_credentials`, and every kafka-python and aiokafka client
loopwatch opens is built with them. Only standard Kafka APIs are used, so the
same code runs against the embedded broker, Apache Kafka, Redpanda, MSK,
Confluent Cloud or Aiven.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiokafka.abc import AbstractTokenProvider as AsyncTokenProvider
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.net.sasl.oauth import AbstractTokenProvider as SyncTokenProvider

from core.logs import hide_in_logs
from core.settings import Settings
from schemas.errors import BrokerError, ConfigError
from streams.kafka_probe import connection_problem, unreachable_servers

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

log = logging.getLogger("loopwatch.kafka")


def servers(settings: Settings) -> list[str]:
    """The bootstrap servers, one ``host:port`` each."""
    return [server.strip() for server in settings.kafka_bootstrap.split(",") if server.strip()]


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every connection, or None for PLAINTEXT and SASL_PLAINTEXT.

    ConfigError names the setting whose file cannot be read or used.
    """
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"LOOPWATCH_KAFKA_SSL_CAFILE={cafile} cannot be used as a CA file: {exc}") from exc
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile is not None:
        keyfile = settings.kafka_ssl_keyfile
        try:
            context.load_cert_chain(str(settings.kafka_ssl_certfile), str(keyfile) if keyfile else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"LOOPWATCH_KAFKA_SSL_CERTFILE={settings.kafka_ssl_certfile}"
                + (f" with LOOPWATCH_KAFKA_SSL_KEYFILE={keyfile}" if keyfile else "")
                + f" is not a usable client certificate and key: {exc}"
            ) from exc
    return context


class _StaticToken(SyncTokenProvider, AsyncTokenProvider):
    """An OAUTHBEARER token given in the settings, for kafka-python (sync) and aiokafka (async)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> Any:
        """The token; aiokafka awaits the call, so it gets an awaitable."""
        return _Token(self._token)

    def extensions(self) -> dict[str, str]:
        """No SASL extensions."""
        return {}


class _Token(str):
    """A token string that can also be awaited (aiokafka awaits ``token()``, kafka-python does not)."""

    def __await__(self) -> Any:
        async def value() -> str:
            return str(self)

        return value().__await__()


def client_options(settings: Settings) -> dict[str, Any]:
    """The connection options of a kafka-python or aiokafka client (both take the same names)."""
    options: dict[str, Any] = {
        "bootstrap_servers": servers(settings),
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        secret = password.get_secret_value() if password is not None else ""
        hide_in_logs(secret)  # the clients get it in the clear, and some log their configuration
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = _StaticToken(secret)
        else:
            options["sasl_plain_username"] = settings.kafka_sasl_username
            options["sasl_plain_password"] = secret
    return options


def checked_options(settings: Settings) -> dict[str, Any]:
    """:func:`client_options` once a broker accepted them; BrokerError says why none did.

    For the CLI's clients: kafka-python would retry a refused connection quietly
    until a request times out, with no word about the cause.
    """
    options = client_options(settings)
    problem = connection_problem(settings, options)
    if problem is not None:
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {problem}")
    return options


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """The same options as faust's ``broker_credentials`` (its consumer, producer and admin use them)."""
    # Imported here: faust takes over a second to import, and the CLI's clients do not need it.
    from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials

    options = client_options(settings)
    context = options.get("ssl_context")
    mechanism = options.get("sasl_mechanism")
    if mechanism == "OAUTHBEARER":
        return OAuthCredentials(oauth_cb=options["sasl_oauth_token_provider"], ssl_context=context)
    if mechanism is not None:
        return SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            ssl_context=context,
            mechanism=mechanism,
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def admin_client(settings: Settings) -> KafkaAdminClient:
    """An admin client, or KafkaError when the cluster cannot be reached."""
    return KafkaAdminClient(
        **client_options(settings),
        client_id="loopwatch-admin",
        request_timeout_ms=10_000,
        # Give up (callers retry) rather than back off for up to 30 s: a broker that
        # just restarted is seen at the next check.
        bootstrap_timeout_ms=10_000,
        reconnect_backoff_max_ms=1_000,
    )


def wait_for_kafka(
    settings: Settings, *, give_up_after: float = 0.0, on_problem: Callable[[str], None] | None = None
) -> None:
    """Block until the cluster accepts loopwatch's connection settings; log each retry with its cause.

    ``give_up_after`` 0 waits forever. Each failed attempt logs one line saying
    what is wrong and which setting to check (a wrong CA, password or mechanism,
    TLS against a plaintext port or the other way round, an advertised broker
    that does not answer), then backs off; ``on_problem`` gets the same cause.
    """
    bootstrap = settings.kafka_bootstrap
    options = client_options(settings)  # a settings file that cannot be read is not worth retrying
    started = time.monotonic()
    delay = 0.5
    attempt = 1
    while True:
        problem = connection_problem(settings, options)
        if problem is None:
            try:
                admin_client(settings).close()
            except KafkaError as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
        if problem is None:
            if attempt > 1:
                log.info("kafka is up at %s after %d attempts", bootstrap, attempt)
            return
        if on_problem is not None:
            on_problem(problem)
        waited = time.monotonic() - started
        if give_up_after and waited >= give_up_after:
            raise BrokerError(f"Kafka at {bootstrap} did not answer within {give_up_after:.0f}s: {problem}")
        log.warning(
            "waiting for kafka at %s (attempt %d, %.0fs so far): %s; retrying in %.1fs",
            bootstrap,
            attempt,
            waited,
            problem,
            delay,
        )
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
        attempt += 1


def existing_topics(settings: Settings) -> set[str]:
    """The topics the cluster has now; BrokerError when it does not answer (blocking: run in a thread)."""
    bootstrap = settings.kafka_bootstrap
    options = client_options(settings)
    # Fail fast while the broker is down: kafka-python's bootstrap retries quietly for 10 s.
    problem = unreachable_servers(options)
    if problem is not None:
        raise BrokerError(f"Kafka at {bootstrap} does not answer: {problem}")
    try:
        admin = admin_client(settings)
    except KafkaError as exc:
        # Only now the whole probe (TLS, SASL): it costs a connection, not worth it on every check.
        problem = connection_problem(settings, options) or exc.__class__.__name__
        raise BrokerError(f"Kafka at {bootstrap} does not answer: {problem}") from exc
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
    admin = admin_client(settings)
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
