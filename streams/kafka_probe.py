"""Say why Kafka refuses a connection, naming the setting to check.

kafka-python and aiokafka retry a refused connection quietly and end with
"unable to bootstrap" (or hang), whatever the cause. This probe connects the
way they do (TCP, TLS with the same context, ApiVersions, the SASL exchange
with kafka-python's own mechanisms) and turns the first thing that fails into
one sentence: a CA that did not sign the broker's certificate, a host name the
certificate does not name, a TLS client on a plaintext port or the other way
round, a mechanism the broker does not offer, a user name or password it
refuses. Once the bootstrap server answered, the probe also asks it for the
brokers it advertises (Metadata) and connects to each the same way: clients
follow those addresses for everything after the bootstrap, so an advertised
plaintext listener behind a TLS bootstrap, or a host this machine cannot
reach, would otherwise time out with no word about why. Messages never carry
the password.
"""

from __future__ import annotations

import re
import socket
import ssl
from typing import Any

from kafka.errors import for_code
from kafka.net.sasl import get_sasl_mechanism
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

from core.settings import Settings

PROTOCOL = "LOOPWATCH_KAFKA_SECURITY_PROTOCOL"
MECHANISM = "LOOPWATCH_KAFKA_SASL_MECHANISM"
#: Kafka's UNSUPPORTED_SASL_MECHANISM error code.
UNSUPPORTED_SASL_MECHANISM = 33
_METADATA_KEY = 3


class Refused(Exception):
    """A connection step failed; the message says why and what to check."""


def connection_problem(settings: Settings, options: dict[str, Any], timeout: float = 5.0) -> str | None:
    """None when a bootstrap server accepts these options, else why the last one tried did not."""
    problem = f"no bootstrap server in LOOPWATCH_KAFKA_BOOTSTRAP={settings.kafka_bootstrap!r}"
    for server in options["bootstrap_servers"]:
        try:
            advertised = _probe(server, settings, options, timeout, metadata=True)
        except Refused as exc:
            problem = str(exc)
            continue
        return advertised_problem(server, advertised, settings, options, timeout)
    return problem


def advertised_problem(
    server: str, advertised: dict[int, str], settings: Settings, options: dict[str, Any], timeout: float
) -> str | None:
    """None when every broker ``server`` advertises accepts these options too, else why one does not."""
    for node, address in sorted(advertised.items()):
        if address == server:
            continue  # just probed
        try:
            _probe(address, settings, options, timeout)
        except Refused as exc:
            return (
                f"{server} answered, but it advertises broker {node} at {address}, which clients then"
                f" connect to, and {address} does not answer with these settings: check the broker's"
                f" advertised listeners (advertised.listeners; loopwatch broker --advertised-url)"
                f" [at {address}: {_reason_only(str(exc))}]"
            )
    return None


def _reason_only(line: str) -> str:
    """A probe line without its advice (after ": set" / ": check"), which is about the bootstrap server.

    >>> _reason_only("h:1 does not speak TLS (x): set LOOPWATCH_KAFKA_SECURITY_PROTOCOL=PLAINTEXT")
    'h:1 does not speak TLS (x)'
    """
    return re.split(r": (?:set|check|if|connect|point) ", line, maxsplit=1)[0]


def unreachable_servers(options: dict[str, Any], timeout: float = 3.0) -> str | None:
    """None when a bootstrap server accepts a TCP connection, else why none did (no TLS, no SASL)."""
    problem = "no bootstrap server in LOOPWATCH_KAFKA_BOOTSTRAP"
    for server in options["bootstrap_servers"]:
        try:
            _connect(server, timeout).close()
            return None
        except Refused as exc:
            problem = str(exc)
    return problem


def _connect(server: str, timeout: float) -> socket.socket:
    host, _, port = server.rpartition(":")
    try:
        return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except (OSError, ValueError) as exc:
        raise Refused(f"cannot connect to {server} ({exc}): check LOOPWATCH_KAFKA_BOOTSTRAP") from exc


def _probe(
    server: str, settings: Settings, options: dict[str, Any], timeout: float, *, metadata: bool = False
) -> dict[int, str]:
    """Connect as the clients do; with ``metadata``, return the brokers advertised (node id -> host:port)."""
    host = server.rpartition(":")[0].strip("[]")
    raw = _connect(server, timeout)
    protocol = settings.kafka_security_protocol
    with raw:
        sock: socket.socket = raw
        context: ssl.SSLContext | None = options.get("ssl_context")
        if context is not None:
            sock = _tls(raw, context, host, server)
        wire = KafkaProtocol(client_id="loopwatch-probe")
        try:
            if protocol.startswith("SASL"):
                # The handshake comes first: a broker that requires SASL refuses other requests.
                _authenticate(sock, wire, settings, options, host, server)
                if not metadata:
                    return {}
            versions = _request(sock, wire, ApiVersionsRequest(version=0), server)
            return _advertised(sock, wire, versions, server) if metadata else {}
        except ssl.SSLError as exc:
            # TLS 1.3 servers refuse a client certificate after the handshake, at the first read.
            raise Refused(
                f"{server} ended the TLS session ({exc.reason or exc}): if it requires a client"
                " certificate, check LOOPWATCH_KAFKA_SSL_CERTFILE and LOOPWATCH_KAFKA_SSL_KEYFILE"
            ) from exc
        except (OSError, EOFError) as exc:
            if context is None:
                raise Refused(
                    f"{server} closed the connection without a Kafka answer ({_name(exc)}): if it is a TLS"
                    f" listener, set {PROTOCOL}=SSL (or SASL_SSL); {PROTOCOL} is {protocol}"
                ) from exc
            raise Refused(
                f"{server} closed the connection without a Kafka answer ({_name(exc)}): if the"
                f" listener requires SASL, set {PROTOCOL}=SASL_SSL and LOOPWATCH_KAFKA_SASL_*;"
                f" {PROTOCOL} is {protocol}"
            ) from exc


def _advertised(sock: socket.socket, wire: KafkaProtocol, versions: Any, server: str) -> dict[int, str]:
    """The brokers a Metadata answer names (no topics asked for), at a version both sides speak."""
    ranges = [(k.min_version, k.max_version) for k in versions.api_keys if k.api_key == _METADATA_KEY]
    low, high = ranges[0] if ranges else (0, MetadataRequest.max_version)
    # Version 1 has everything needed; a broker that dropped it gets its oldest.
    version = min(max(low, 1), high, MetadataRequest.max_version)
    answer = _request(sock, wire, MetadataRequest(version=version, topics=[]), server)
    return {broker.node_id: f"{broker.host}:{broker.port}" for broker in answer.brokers}


def _tls(raw: socket.socket, context: ssl.SSLContext, host: str, server: str) -> ssl.SSLSocket:
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            raise Refused(
                f"the certificate of {server} does not name {host!r} ({exc.verify_message}): connect by a"
                " name it carries (LOOPWATCH_KAFKA_BOOTSTRAP) or set LOOPWATCH_KAFKA_SSL_CHECK_HOSTNAME=false"
            ) from exc
        raise Refused(
            f"the certificate of {server} is not trusted ({exc.verify_message}): check"
            " LOOPWATCH_KAFKA_SSL_CAFILE, the CA that signed the brokers' certificates"
        ) from exc
    except ssl.SSLError as exc:
        if "WRONG_VERSION_NUMBER" in str(exc) or "RECORD_LAYER" in str(exc) or "PACKET_LENGTH" in str(exc):
            raise Refused(
                f"{server} does not speak TLS ({exc.reason}): set {PROTOCOL}=PLAINTEXT (or SASL_PLAINTEXT)"
                " or point LOOPWATCH_KAFKA_BOOTSTRAP at the TLS port"
            ) from exc
        raise Refused(
            f"the TLS handshake with {server} failed ({exc.reason or exc}): check LOOPWATCH_KAFKA_SSL_CAFILE,"
            " LOOPWATCH_KAFKA_SSL_CERTFILE and LOOPWATCH_KAFKA_SSL_KEYFILE"
        ) from exc
    except TimeoutError as exc:
        # A plaintext Kafka listener reads the TLS hello as the start of a huge request and waits.
        raise Refused(
            f"{server} did not answer the TLS handshake (it may be a plaintext listener): set"
            f" {PROTOCOL}=PLAINTEXT (or SASL_PLAINTEXT) or point LOOPWATCH_KAFKA_BOOTSTRAP at the TLS port"
        ) from exc
    except (OSError, EOFError) as exc:
        raise Refused(
            f"{server} ended the TLS handshake ({_name(exc)}): is it a TLS listener? {PROTOCOL} expects TLS"
        ) from exc


def _authenticate(
    sock: socket.socket,
    wire: KafkaProtocol,
    settings: Settings,
    options: dict[str, Any],
    host: str,
    server: str,
) -> None:
    mechanism = options["sasl_mechanism"]
    try:
        handshake = _request(sock, wire, SaslHandshakeRequest(mechanism=mechanism, version=1), server)
    except (EOFError, ConnectionError) as exc:
        # Some brokers (Tansu) hang up on a mechanism they do not offer instead of listing theirs.
        tls = "" if options.get("ssl_context") else f", or {PROTOCOL}=SASL_SSL if it is a TLS listener"
        raise Refused(
            f"{server} closed the connection at the SASL handshake for {mechanism}: check"
            f" {MECHANISM} (the broker may not offer {mechanism}){tls}"
        ) from exc
    offered = list(handshake.mechanisms or [])
    if handshake.error_code == UNSUPPORTED_SASL_MECHANISM or mechanism not in offered:
        raise Refused(_unsupported(server, mechanism, offered, settings))
    exchange = get_sasl_mechanism(mechanism)(host=host, **options)
    who = f"as {settings.kafka_sasl_username!r}" if settings.kafka_sasl_username else "with the token"
    failed = (
        f"{server} refused SASL {mechanism} authentication {who}: check LOOPWATCH_KAFKA_SASL_USERNAME"
        " and LOOPWATCH_KAFKA_SASL_PASSWORD"
    )
    while not exchange.is_done():
        answer = _request(sock, wire, SaslAuthenticateRequest(exchange.auth_bytes(), version=1), server)
        if answer.error_code == UNSUPPORTED_SASL_MECHANISM:
            raise Refused(_unsupported(server, mechanism, offered, settings))
        if answer.error_code:
            said = answer.error_message or for_code(answer.error_code).__name__
            raise Refused(f"{failed} (the broker says: {said})")
        try:
            exchange.receive(answer.auth_bytes)
        except Exception as exc:  # SCRAM raises on a server-final "e=..." (an unknown user, a bad proof)
            said = bytes(answer.auth_bytes or b"").decode("utf-8", "replace")
            reason = said.removeprefix("e=") if said.startswith("e=") else _name(exc)
            raise Refused(f"{failed} (the broker says: {reason})") from exc
    if not exchange.is_authenticated():
        raise Refused(failed)


def _unsupported(server: str, mechanism: str, offered: list[str], settings: Settings) -> str:
    """The line for a mechanism the broker refuses (error 33), with the ones it enables when it said."""
    # A broker that listed the mechanism at the handshake and refuses it after says nothing more useful.
    others = [name for name in offered if name != mechanism]
    enabled = f"it enables {', '.join(others)}" if others else "it did not say which it enables"
    return (
        f"{server} does not offer SASL mechanism {mechanism} ({enabled}): check {MECHANISM}"
        f" (and {PROTOCOL}, {settings.kafka_security_protocol})"
    )


def _request(sock: socket.socket, wire: KafkaProtocol, request: Any, server: str) -> Any:
    """Send one request and return its decoded response (OSError/EOFError when the server hangs up)."""
    wire.send_request(request)
    sock.sendall(wire.send_bytes())
    while True:
        data = sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        for _, response in wire.receive_bytes(data):
            return response


def _name(exc: BaseException) -> str:
    return str(exc) or exc.__class__.__name__
