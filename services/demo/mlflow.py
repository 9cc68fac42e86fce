"""The demo's model registry: a local MLflow server under the demo's data dir, the demo model's versions.

``loopwatch demo --mlflow`` registers the demo model with three versions:
"1" the champion, "2" the canary that goes bad, "3" a second canary that
serves as well as "1". The worker runs with the registry and the actuator on,
so the timeline shows the rollback and promotion requests and what the act
stage made of them (the bad canary's ``challenger`` alias removed, ``champion``
staying on "1"; then ``champion`` moving to "3"); the summary lists every
alias move the act stage applied.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.processes import spawn, wait_until_healthy
from services.broker import free_port

#: Versions of the demo model in the registry: stable, the bad canary, the good canary.
STABLE, BAD_CANARY, GOOD_CANARY = "1", "2", "3"
_APPLIED = {"io.loopwatch.rollback.applied": "rollback", "io.loopwatch.promotion.applied": "promotion"}


@dataclass(frozen=True)
class Server:
    """A running tracking server: its process, its URI, and its store (still readable once it stopped)."""

    process: subprocess.Popen[bytes]
    uri: str
    store_uri: str


def backend_store_uri(folder: Path) -> str:
    """The SQLite store URI of a server in ``folder``, absolute whatever the current directory."""
    # The summary names the store: a script run from another directory must open the same file.
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def start_server(folder: Path, timeout: float = 120) -> Server:
    """``mlflow server`` with a SQLite store in ``folder`` on a free local port."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    store_uri = backend_store_uri(folder)
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", store_uri),
        *("--default-artifact-root", str(folder / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    with (folder / "server.log").open("ab") as log:
        process = spawn(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{uri}/health", process, timeout)
    except BaseException:
        stop_server(process)
        raise
    return Server(process, uri, store_uri)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the server and its workers (one process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    # Its INFO lines ("Waiting up to 300 seconds ...") would interleave with the demo's output.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def register(uri: str, model: str) -> None:
    """The demo model with its three versions; ``champion`` on "1", ``challenger`` on "2"."""
    client = _client(uri)
    client.create_registered_model(model)
    for _ in (STABLE, BAD_CANARY, GOOD_CANARY):
        client.create_model_version(model, source=f"s3://loopwatch-demo/{model}")
    client.set_registered_model_alias(model, "champion", STABLE)
    client.set_registered_model_alias(model, "challenger", BAD_CANARY)


def set_challenger(uri: str, model: str, version: str) -> None:
    """A new canary goes live: the ``challenger`` alias moves to it, as a deployment would."""
    _client(uri).set_registered_model_alias(model, "challenger", version)


def alias_change(data: dict[str, Any]) -> str:
    """What an applied rollback or promotion did to the aliases, for the timeline ("" for other events)."""
    if not data.get("applied") or "alias" not in data:
        return ""
    before, after = data["from_version"], data["current_version"]
    if after is None:  # a bad canary out of rotation: the champion never moved
        return f"; {data['alias']} alias removed from {before}, champion stays on {data['target_version']}"
    return f"; {data['alias']} {before} -> {after}"


def summary(server: Server, model: str, actions: list[Any]) -> dict[str, Any]:
    """The ``mlflow`` block of the demo summary: where, which model, and every alias move applied."""
    moves = [
        {
            "alias": event.data["alias"],
            "from_version": event.data["from_version"],
            "to_version": event.data["current_version"],  # None: the alias was removed
            "kind": _APPLIED[event.type],
            "cloudevent_id": event.data.get("request_id"),
        }
        for _, event in sorted(actions, key=lambda item: item[0])
        if event.type in _APPLIED
    ]
    aliases = dict(_client(server.uri).get_registered_model(model).aliases)
    return {
        "tracking_uri": server.uri,
        "backend_store_uri": server.store_uri,  # the server stops with the demo; its store stays
        "model": model,
        "aliases": aliases,
        "alias_moves": moves,
    }
