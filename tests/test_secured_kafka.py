"""Secured Kafka for real: a worker, the CLI and consumer groups through TLS (stunnel in front of Tansu).

What each mistake a person can make looks like (a wrong CA, a plaintext client
on the TLS port, TLS on the plaintext port, no client certificate for mutual
TLS, a mechanism or password a SASL broker refuses): one line naming the
setting to check, the password in none of them. See tests/tls_fixture.py for
what the embedded broker can and cannot do.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner
from kafka import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from core.logs import SecretFilter
from core.settings import Settings
from schemas.errors import BrokerError, ConfigError
from services import sample_data
from services.broker import broker_command, free_port, port_is_free
from services.cli import main
from services.commands.common import LoopwatchGroup
from services.topic_reader import connected_consumer
from services.waiting_web import WaitingWeb
from streams import kafka_probe
from streams.kafka import broker_credentials, client_options, wait_for_kafka
from streams.kafka_probe import connection_problem
from tests.helpers import WorkerStack, wait_until
from tests.tls_fixture import TlsKafka

pytestmark = pytest.mark.broker

PASSWORD = f"pw-{uuid.uuid4().hex}"  # unique: any line that carries it is found


def _env(**settings: Any) -> dict[str, str]:
    return {f"LOOPWATCH_{k.upper()}": str(v) for k, v in settings.items()}


def _problem(timeout: float = 3, **settings: Any) -> str | None:
    resolved = Settings(**settings)
    return connection_problem(resolved, client_options(resolved), timeout=timeout)


# -- settings and options, no broker -----------------------------------------------------------


def test_security_settings_that_cannot_work_are_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=r"LOOPWATCH_KAFKA_SSL_CAFILE is set but .* PLAINTEXT"):
        Settings(kafka_ssl_cafile="ca.pem")
    with pytest.raises(
        ValueError, match="needs LOOPWATCH_KAFKA_SASL_USERNAME, LOOPWATCH_KAFKA_SASL_PASSWORD"
    ):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="LOOPWATCH_KAFKA_SASL_MECHANISM"):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="p")
    with pytest.raises(ConfigError, match="LOOPWATCH_KAFKA_SSL_CAFILE=/nonexistent"):
        client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/nonexistent/ca.pem"))


def test_one_function_gives_every_client_the_same_tls_and_sasl_options(tls_kafka: TlsKafka) -> None:
    settings = Settings(
        kafka_bootstrap="a:9093, b:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=tls_kafka.ca,
        kafka_ssl_certfile=tls_kafka.client_cert,
        kafka_ssl_keyfile=tls_kafka.client_key,
        kafka_ssl_check_hostname=False,
    )
    options = client_options(settings)
    assert options["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", PASSWORD)
    assert options["ssl_context"].check_hostname is False
    credentials = broker_credentials(settings)
    assert credentials is not None and credentials.protocol.value == "SASL_SSL"
    assert PASSWORD not in repr(credentials)
    assert broker_credentials(Settings()) is None
    token = Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER", kafka_sasl_password="tok"
    )
    provider = client_options(token)["sasl_oauth_token_provider"]
    assert provider.token() == "tok"  # kafka-python calls it, aiokafka awaits it

    async def awaited() -> str:
        return str(await provider.token())

    assert asyncio.run(awaited()) == "tok"
    # kafka-python's admin client logs its whole configuration at DEBUG, password included.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    library = logging.getLogger("kafka.admin.client")
    library.addHandler(handler)
    try:
        library.warning("Starting KafkaAdminClient with configuration: %s", options)
    finally:
        library.removeHandler(handler)
    assert "sasl_plain_password" in stream.getvalue() and PASSWORD not in stream.getvalue()


# -- TLS through stunnel ------------------------------------------------------------------------


def test_each_tls_mistake_is_one_line_naming_the_setting(tls_kafka: TlsKafka) -> None:
    tls: dict[str, Any] = {"kafka_bootstrap": tls_kafka.tls, "kafka_security_protocol": "SSL"}
    assert _problem(**tls, kafka_ssl_cafile=tls_kafka.ca) is None
    wrong_ca = _problem(**tls, kafka_ssl_cafile=tls_kafka.wrong_ca)
    assert wrong_ca is not None and "not trusted" in wrong_ca and "LOOPWATCH_KAFKA_SSL_CAFILE" in wrong_ca
    plaintext = _problem(kafka_bootstrap=tls_kafka.tls)
    assert plaintext is not None and "set LOOPWATCH_KAFKA_SECURITY_PROTOCOL=SSL" in plaintext
    # The broker waits for the rest of what it takes for a request: the probe's timeout ends it.
    not_tls = _problem(1, kafka_bootstrap=tls_kafka.plaintext, kafka_security_protocol="SSL")
    assert not_tls is not None and "set LOOPWATCH_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in not_tls, not_tls
    mtls: dict[str, Any] = {**tls, "kafka_bootstrap": tls_kafka.mtls, "kafka_ssl_cafile": tls_kafka.ca}
    no_cert = _problem(**mtls)
    assert no_cert is not None and "LOOPWATCH_KAFKA_SSL_CERTFILE" in no_cert, no_cert
    with_cert: dict[str, Any] = {
        **mtls,
        "kafka_ssl_certfile": tls_kafka.client_cert,
        "kafka_ssl_keyfile": tls_kafka.client_key,
    }
    assert _problem(**with_cert) is None
    # kafka-python itself over mutual TLS (it bootstraps there, then follows the advertised TLS port).
    admin = KafkaAdminClient(**client_options(Settings(**with_cert)), request_timeout_ms=10_000)
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def test_a_cli_command_with_the_wrong_ca_exits_with_that_line(tls_kafka: TlsKafka, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"not": "an event"}\n')
    env = _env(kafka_security_protocol="SSL", kafka_ssl_cafile=tls_kafka.wrong_ca)
    result = CliRunner(env=env).invoke(
        main, ["replay", str(events), "--topic", "x", "--bootstrap", tls_kafka.tls]
    )
    assert result.exit_code == 2, result.output
    assert "not trusted" in result.output and "check LOOPWATCH_KAFKA_SSL_CAFILE" in result.output


def test_worker_cli_and_consumers_through_tls_with_only_the_settings(
    tls_kafka: TlsKafka, tmp_path: Path, exchanges: list[sample_data.Exchange]
) -> None:
    secure: dict[str, Any] = {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": tls_kafka.ca}
    stack = WorkerStack(tls_kafka.tls, tmp_path, detection=False, curation=False, **secure)
    try:
        stack.start()  # healthy: its consumer group has its partitions, through TLS only
        cli = CliRunner(env={k: v for k, v in stack.env.items() if k.startswith("LOOPWATCH_")})
        rng = random.Random(7)
        now = datetime.now(UTC)
        valid = [json.dumps(sample_data.inference_event(e, now, rng)) for e in exchanges[:20]]
        events = tmp_path / "events.jsonl"
        events.write_text("\n".join([*valid, "{not json"]) + "\n")
        replay = cli.invoke(main, ["replay", str(events), "--topic", stack.topics.inference])
        assert replay.exit_code == 0, replay.output
        settings = Settings(kafka_bootstrap=tls_kafka.tls, **secure)
        reader = connected_consumer(
            settings,
            stack.topics.enriched,
            stack.topics.deadletter,
            group_id=None,  # the worker's own consumer group is the one through TLS
            auto_offset_reset="earliest",
        )
        counts = {stack.topics.enriched: 0, stack.topics.deadletter: 0}
        try:

            def arrived() -> bool:
                for tp, records in reader.poll(timeout_ms=300).items():
                    counts[tp.topic] += len(records)
                return counts[stack.topics.enriched] >= len(valid) and counts[stack.topics.deadletter] >= 1

            wait_until(arrived, 60, f"enriched and dead-lettered records through TLS: {counts}")
        finally:
            reader.close()
        state = ["--state-dir", str(tmp_path / "state")]
        added = cli.invoke(
            main,
            [
                "silence",
                "add",
                "-m",
                "model=tls-check",
                "--duration",
                "1h",
                "--comment",
                "tls",
                *state,
                "--bootstrap",
                tls_kafka.tls,
            ],
        )
        assert added.exit_code == 0 and "published to" in added.output, added.output
        listed = cli.invoke(main, ["silence", "list", "--bootstrap", tls_kafka.tls, *state])
        assert listed.exit_code == 0 and "model=tls-check" in listed.output, listed.output
        stack.wait(lambda: "model=tls-check" in stack.log(), "the worker's control follower got the silence")
    finally:
        stack.stop()


def test_a_worker_with_the_wrong_ca_keeps_retrying_and_never_logs_the_password(
    tls_kafka: TlsKafka, tmp_path: Path
) -> None:
    stack = WorkerStack(
        tls_kafka.tls,
        tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="loopwatch",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=tls_kafka.wrong_ca,
    )
    try:
        stack.start(wait=False)
        retries = stack.wait(
            lambda: [line for line in stack.log().splitlines() if "waiting for kafka" in line][1:],
            "a second attempt, after a backoff",
            timeout=45,
        )
        assert "not trusted" in retries[0] and "check LOOPWATCH_KAFKA_SSL_CAFILE" in retries[0], retries
        # While it waits, a liveness probe gets an answer: 503 with the same reason, as the worker's.
        health = stack.wait(
            lambda: (body := stack.health()) and "not trusted" in body.get("reason", "") and body,
            "/health answering 503 with the reason during the wait",
        )
        assert health["status"] == "unhealthy" and "LOOPWATCH_KAFKA_SSL_CAFILE" in health["reason"], health
        assert stack.process is not None and stack.process.poll() is None, "it retries, it does not exit"
    finally:
        stack.stop()
    assert PASSWORD not in stack.log()


# -- SASL against Tansu --authentication ------------------------------------------------------


def test_sasl_refusals_name_the_setting_and_never_the_password(
    tls_kafka: TlsKafka, caplog: pytest.LogCaptureFixture
) -> None:
    sasl: dict[str, Any] = {
        "kafka_bootstrap": tls_kafka.sasl,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_username": "loopwatch",
        "kafka_sasl_password": PASSWORD,
    }
    mechanism = _problem(**sasl, kafka_sasl_mechanism="PLAIN")
    # Tansu hangs up on a mechanism it does not offer (Kafka would list its own): either way, one line.
    assert mechanism is not None and "check LOOPWATCH_KAFKA_SASL_MECHANISM" in mechanism, mechanism
    settings = Settings(**sasl, kafka_sasl_mechanism="SCRAM-SHA-256")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BrokerError) as refused:
        # Long enough for one retry (and its warning) even when an attempt is slow on a busy machine.
        wait_for_kafka(settings, give_up_after=5.0)
    assert "refused SASL SCRAM-SHA-256 authentication as 'loopwatch'" in str(refused.value)
    assert "check LOOPWATCH_KAFKA_SASL_USERNAME and LOOPWATCH_KAFKA_SASL_PASSWORD" in str(refused.value)
    warned = [r.getMessage() for r in caplog.records if r.name == "loopwatch.kafka"]
    assert warned and "LOOPWATCH_KAFKA_SASL_PASSWORD" in warned[0], warned
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]
    assert PASSWORD not in str(refused.value)
    shown = CliRunner(env=_env(**sasl, kafka_sasl_mechanism="SCRAM-SHA-256")).invoke(main, ["settings"])
    assert shown.exit_code == 0 and '"kafka_sasl_password": "**********"' in shown.output, shown.output
    assert PASSWORD not in shown.output


# -- what a new user found ----------------------------------------------------------------------


def test_blank_optional_kafka_settings_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose writes `LOOPWATCH_KAFKA_SSL_CAFILE:` with nothing after it as an empty variable
    blank = ["SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE", "SASL_USERNAME", "SASL_MECHANISM"]
    # Settings with a default keep it when blank, like every other LOOPWATCH_* variable.
    for name in [*blank, "SECURITY_PROTOCOL", "SSL_CHECK_HOSTNAME", "BOOTSTRAP"]:
        monkeypatch.setenv(f"LOOPWATCH_KAFKA_{name}", "")
    monkeypatch.setenv("LOOPWATCH_PARTITIONS", "")
    settings = Settings()
    assert (settings.kafka_ssl_cafile, settings.kafka_sasl_username, settings.kafka_sasl_mechanism) == (
        None,
        None,
        None,
    )
    assert settings.kafka_ssl_check_hostname is True
    assert (settings.kafka_bootstrap, settings.partitions) == (
        Settings.model_fields["kafka_bootstrap"].default,
        4,
    )
    assert client_options(settings)["security_protocol"] == "PLAINTEXT"
    tls = Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=" ", kafka_ssl_keyfile="")
    assert tls.kafka_ssl_certfile is None and tls.kafka_ssl_keyfile is None


def test_a_mechanism_the_broker_refuses_with_error_33_names_the_mechanism_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="svc",
        kafka_sasl_password=PASSWORD,
    )
    options = client_options(settings)

    def refused(answers: list[Any]) -> str:
        monkeypatch.setattr(kafka_probe, "_request", lambda *_: answers.pop(0))
        with pytest.raises(kafka_probe.Refused) as caught:
            kafka_probe._authenticate(None, None, settings, options, "kafka", "kafka:9092")  # type: ignore[arg-type]
        return str(caught.value)

    # The handshake refused with the mechanisms the broker enables.
    listed = refused([SimpleNamespace(error_code=33, mechanisms=["SCRAM-SHA-256", "SCRAM-SHA-512"])])
    assert "check LOOPWATCH_KAFKA_SASL_MECHANISM" in listed and "SCRAM-SHA-256, SCRAM-SHA-512" in listed
    # A broker that accepted the handshake and refuses the mechanism at authentication.
    late = refused(
        [
            SimpleNamespace(error_code=0, mechanisms=["PLAIN"]),
            SimpleNamespace(error_code=33, error_message=None, auth_bytes=b""),
        ]
    )
    assert "check LOOPWATCH_KAFKA_SASL_MECHANISM" in late and "PASSWORD" not in late, late
    assert "PLAIN" in late and PASSWORD not in listed + late


def test_a_broker_advertising_a_listener_that_does_not_answer_tls_is_named(
    tls_kafka: TlsKafka, broker: str, tmp_path: Path
) -> None:
    # TLS at the bootstrap (stunnel), but the broker behind it advertises its plaintext port.
    secure: dict[str, Any] = {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": tls_kafka.ca}
    problem = _problem(1, kafka_bootstrap=tls_kafka.misadvertised, **secure)
    assert problem is not None and problem.startswith(f"{tls_kafka.misadvertised} answered"), problem
    assert f"at {broker}, which clients then connect to" in problem, problem
    assert "check the broker's advertised listeners" in problem, problem
    assert "\n" not in problem
    events = tmp_path / "events.jsonl"
    events.write_text('{"not": "an event"}\n')
    env = _env(**secure)
    result = CliRunner(env=env).invoke(
        main, ["replay", str(events), "--topic", "x", "--bootstrap", tls_kafka.misadvertised]
    )
    assert result.exit_code == 2, result.output
    assert f"at {broker}, which clients then connect to" in result.output, result.output


def test_a_kafka_client_that_gives_up_is_one_line_not_a_traceback() -> None:
    @click.group(cls=LoopwatchGroup)
    def group() -> None:
        """A group like loopwatch's."""

    @group.command()
    def timeout() -> None:
        """Fails the way a kafka-python client gives up."""
        raise KafkaTimeoutError("Failed to update metadata after 60.0 secs.")

    result = CliRunner().invoke(group, ["timeout"])
    assert result.exit_code == 2
    assert "error: Kafka: KafkaTimeoutError: Failed to update metadata after 60.0 secs." in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_web_port_answers_503_with_the_reason_while_kafka_does_not_then_frees_it() -> None:
    settings = Settings(web_port=free_port(), kafka_bootstrap="kafka.example.com:9093")
    web = WaitingWeb(settings)
    try:
        web.waiting("the certificate of kafka.example.com:9093 is not trusted")
        url = f"http://127.0.0.1:{settings.web_port}"
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{url}/health", timeout=5)
        assert answer.value.code == 503
        body = json.load(answer.value)
        assert body["status"] == "unhealthy" and body["app_id"] == settings.app_id
        assert body["reason"].endswith("the certificate of kafka.example.com:9093 is not trusted"), body
        with pytest.raises(urllib.error.HTTPError) as metrics:  # a failed scrape: Prometheus's up 0
            urllib.request.urlopen(f"{url}/metrics", timeout=5)
        assert metrics.value.code == 503 and "is not trusted" in metrics.value.read().decode()
    finally:
        web.close()
    assert port_is_free(settings.web_port)  # the worker's own web server gets it


def test_a_busy_web_port_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is in use: set LOOPWATCH_WEB_PORT"):
            WaitingWeb(Settings(web_port=port))
        # The whole command, as a person runs it: nothing answers on 1, so it would otherwise wait.
        env = {**os.environ, "LOOPWATCH_WEB_PORT": str(port), "LOOPWATCH_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
        env["LOOPWATCH_DATA_DIR"] = str(tmp_path)
        worker = subprocess.run(
            [sys.executable, "-m", "services.cli", "worker"], env=env, capture_output=True, timeout=60
        )
    assert worker.returncode == 2, worker.stderr
    errors = worker.stderr.decode()
    assert f"port {port} on 127.0.0.1 is in use: set LOOPWATCH_WEB_PORT" in errors
    assert "Traceback" not in errors, errors


def test_broker_advertised_url_must_be_host_and_port() -> None:
    assert broker_command(9092, advertised="kafka.example.com:9093")[5] == "tcp://kafka.example.com:9093"
    assert broker_command(9092)[5] == "tcp://127.0.0.1:9092"
    refused = CliRunner().invoke(main, ["broker", "--advertised-url", "kafka.example.com"])
    assert refused.exit_code == 2 and "is not HOST:PORT" in refused.output, refused.output
