"""A real MLflow tracking server for the session, and a helper to register a model with versions.

``mlflow_server`` starts ``mlflow server`` on a free port of 127.0.0.1 with a
SQLite backend store under a session temporary folder, waits until its
``/health`` answers, and fails the session loudly when it does not start (never
skips). Tests share it: each registers models under its own unique name.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.errors import LoopwatchError
from services.demo.mlflow import start_server, stop_server

#: How long the server may take to answer (about 9 s on a loaded 2-core machine, most of it imports).
START_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tracking URI of a real MLflow server (SQLite store); the session fails if it cannot start."""
    folder = tmp_path_factory.mktemp("mlflow")
    try:
        # The demo's server: the tests run the registry the product starts.
        server = start_server(folder, START_TIMEOUT)
    except LoopwatchError as exc:
        tail = (folder / "server.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"the MLflow server did not start ({exc}):\n{tail}", pytrace=False)
    yield server.uri
    stop_server(server.process)


def register_model(
    tracking_uri: str, versions: int, *, name: str | None = None, aliases: dict[str, str] | None = None
) -> str:
    """Register a model with ``versions`` versions ("1".."N") and set ``aliases``; returns its name.

    The name is unique per call unless given, so tests sharing the server never
    see each other's models.
    """
    client = mlflow_client(tracking_uri)
    name = name or f"model-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for _ in range(versions):
        # A remote URI: the server checks local sources against a run's artifacts.
        client.create_model_version(name, source=f"s3://loopwatch-tests/{name}")
    for alias, version in (aliases or {}).items():
        client.set_registered_model_alias(name, alias, version)
    return name


def mlflow_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` on the server (tracking and registry)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """The tags of one model version, read back from the server."""
    return dict(mlflow_client(tracking_uri).get_model_version(name, version).tags)


def alias_target(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` points to now, read back from the server (None when unset)."""
    aliases: dict[str, str] = mlflow_client(tracking_uri).get_registered_model(name).aliases
    return aliases.get(alias)


__all__ = ["alias_target", "mlflow_client", "mlflow_server", "register_model", "version_tags"]
