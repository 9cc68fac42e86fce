"""A TLS Kafka endpoint for the secured-Kafka tests: Tansu behind stunnel, and an authenticating Tansu.

The embedded Tansu 0.6.0 does not serve TLS (``--cert`` refuses to go with
``--key``, and with a certificate alone the listener still speaks plaintext),
so stunnel4 terminates TLS in front of it: one port with server TLS (the
broker advertises it, so every connection of a client goes through TLS) and
one that also requires a client certificate signed by the test CA (mutual
TLS), and one in front of the session broker, which advertises its own
plaintext port (what a client told the wrong address sees). Tansu's
``--authentication`` does check SASL/SCRAM, but users cannot be created on it
(``tansu user create`` is refused as unauthenticated, and the in-memory store
forgets users made before a restart), so it serves the refusals only: a wrong
mechanism, an unknown user.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.processes import stop_process
from services.broker import broker_command, free_port
from streams.kafka_probe import unreachable_servers
from tests.helpers import wait_until

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass(frozen=True)
class TlsKafka:
    """Where the secured endpoints listen and the files a client needs."""

    tls: str  # host:port of TLS in front of the broker (advertised by it)
    mtls: str  # the same broker, requiring a client certificate
    plaintext: str  # the broker itself
    misadvertised: str  # TLS in front of the session broker, which advertises its plaintext port
    sasl: str  # a broker that requires SASL/SCRAM (plaintext)
    ca: Path
    wrong_ca: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, another CA that signed nothing here, a server certificate for 127.0.0.1, a client certificate."""
    ca_key, wrong_key = _key(), _key()
    ca = _certificate("loopwatch test CA", ca_key, None, ca=True)
    wrong = _certificate("some other CA", wrong_key, None, ca=True)
    server_key, client_key = _key(), _key()
    return {
        "ca": _write_cert(ca, folder / "ca.pem"),
        "wrong_ca": _write_cert(wrong, folder / "wrong-ca.pem"),
        "server_cert": _write_cert(
            _certificate("localhost", server_key, (ca.subject, ca_key), server=True), folder / "server.pem"
        ),
        "server_key": _write_key(server_key, folder / "server.key"),
        "client_cert": _write_cert(
            _certificate("loopwatch-client", client_key, (ca.subject, ca_key)), folder / "client.pem"
        ),
        "client_key": _write_key(client_key, folder / "client.key"),
    }


def _stunnel_config(
    files: dict[str, Path], tls: int, mtls: int, broker: int, misadvertised: tuple[int, str]
) -> str:
    common = f"connect = 127.0.0.1:{broker}\ncert = {files['server_cert']}\nkey = {files['server_key']}\n"
    return (
        "foreground = yes\npid =\ndebug = 4\n"
        f"[kafka-tls]\naccept = 127.0.0.1:{tls}\n{common}"
        f"[kafka-mtls]\naccept = 127.0.0.1:{mtls}\n{common}"
        f"CAfile = {files['ca']}\nverifyChain = yes\nrequireCert = yes\n"
        f"[kafka-misadvertised]\naccept = 127.0.0.1:{misadvertised[0]}\nconnect = {misadvertised[1]}\n"
        f"cert = {files['server_cert']}\nkey = {files['server_key']}\n"
    )


def _tansu(port: int, advertised: int, *extra: str) -> subprocess.Popen[bytes]:
    """A Tansu broker on ``port`` that tells clients to connect to ``advertised``."""
    command = [*broker_command(port, advertised=f"127.0.0.1:{advertised}"), *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(
        lambda: unreachable_servers({"bootstrap_servers": [f"127.0.0.1:{port}"]}, 0.5) is None,
        15,
        f"tansu did not listen on {port}",
    )
    return process


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory, broker: str) -> Iterator[TlsKafka]:
    """Tansu advertised at a stunnel TLS port, the mutual-TLS port beside it, and a SASL-only Tansu."""
    if STUNNEL is None:
        pytest.fail("stunnel4 is missing: apt-get install stunnel4 (.ci/run installs it)", pytrace=False)
    folder = tmp_path_factory.mktemp("tls")
    files = make_certificates(folder)
    broker_port, tls_port, mtls_port, sasl_port, misadvertised_port = (free_port() for _ in range(5))
    behind_tls = _tansu(broker_port, tls_port)
    sasl = _tansu(sasl_port, sasl_port, "--authentication")
    config = folder / "stunnel.conf"
    config.write_text(_stunnel_config(files, tls_port, mtls_port, broker_port, (misadvertised_port, broker)))
    log = (folder / "stunnel.log").open("wb")
    stunnel = subprocess.Popen([STUNNEL, str(config)], stdout=log, stderr=log)
    try:
        wait_until(
            lambda: (
                stunnel.poll() is not None
                or unreachable_servers({"bootstrap_servers": [f"127.0.0.1:{tls_port}"]}, 0.5) is None
            ),
            15,
            "stunnel did not listen",
        )
        assert stunnel.poll() is None, (folder / "stunnel.log").read_text()
        yield TlsKafka(
            tls=f"127.0.0.1:{tls_port}",
            mtls=f"127.0.0.1:{mtls_port}",
            plaintext=f"127.0.0.1:{broker_port}",
            misadvertised=f"127.0.0.1:{misadvertised_port}",
            sasl=f"127.0.0.1:{sasl_port}",
            ca=files["ca"],
            wrong_ca=files["wrong_ca"],
            client_cert=files["client_cert"],
            client_key=files["client_key"],
        )
    finally:
        for process in (stunnel, behind_tls, sasl):
            stop_process(process)
        log.close()
