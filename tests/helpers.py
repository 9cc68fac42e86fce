"""A worker process with its own topics, app id and port, against the session's broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from core.processes import spawn_worker, stop_process, wait_until_healthy
from core.settings import Topics
from schemas.errors import LoopwatchError
from services.broker import free_port
from services.replay import Replayer
from streams.metrics import metric_total

ROOT = Path(__file__).resolve().parent.parent


class WorkerStack:
    """One test's worker: unique topic prefix and consumer group, real broker."""

    def __init__(self, bootstrap: str, workdir: Path, **settings: Any) -> None:
        self.bootstrap = bootstrap
        prefix = f"t{uuid.uuid4().hex[:8]}."
        self.topics = Topics().with_prefix(prefix)
        self.web_port = free_port()
        self.log_path = workdir / "worker.log"
        self.env = {
            **os.environ,
            "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
            "LOOPWATCH_APP_ID": f"test-{prefix[:-1]}",
            "LOOPWATCH_WEB_PORT": str(self.web_port),
            "LOOPWATCH_DATA_DIR": str(workdir / "data"),
            "LOOPWATCH_COMMIT_INTERVAL_SECONDS": "0.5",
            "LOOPWATCH_LOG_LEVEL": "info",
            **{f"LOOPWATCH_TOPIC_{k.upper()}": v for k, v in self.topics.model_dump().items()},
            **{f"LOOPWATCH_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def peer(self, workdir: Path) -> WorkerStack:
        """Another worker of the same app (same topics and consumer group), with its own port and state."""
        workdir.mkdir(parents=True, exist_ok=True)
        other = WorkerStack(self.bootstrap, workdir)
        other.topics = self.topics
        other.env = {
            **self.env,
            "LOOPWATCH_WEB_PORT": str(other.web_port),
            "LOOPWATCH_DATA_DIR": str(workdir / "data"),
        }
        return other

    def health(self) -> dict[str, Any]:
        """The /health body, whether it answers 200 or 503 ({} while it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health", timeout=5) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as exc:
            return dict(json.load(exc))
        except OSError:
            return {}

    def start(self, *, wait: bool = True) -> WorkerStack:
        """Start the worker process (and wait until /health answers 200)."""
        log = self.log_path.open("ab")
        self.process = spawn_worker(self.env, cwd=ROOT, stdout=log, stderr=log)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 90) -> None:
        """Block until /health answers 200; fail with the worker's log if it does not."""
        assert self.process is not None
        try:
            wait_until_healthy(f"http://127.0.0.1:{self.web_port}/health", self.process, timeout)
        except LoopwatchError as exc:
            raise AssertionError(f"{exc}:\n{self.log()}") from exc

    def kill9(self) -> None:
        """SIGKILL the worker, as a crash would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Stop the worker gracefully."""
        if self.process is not None:
            stop_process(self.process, timeout=30)

    def log(self) -> str:
        """The worker's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a sample's values on /metrics with these labels (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as r:
            return metric_total(r.read().decode(), name, **labels)

    def send(self, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
        """Produce values (keyed by request_id unless keys are given) and wait for delivery."""
        replayer = Replayer(self.bootstrap)
        for n, value in enumerate(values):
            replayer.send(topic, value, keys[n] if keys else None)
        replayer.close()

    def read(self, topic: str, count: int, timeout: float = 60, *, distinct: Any = None) -> list[Any]:
        """Read ``topic`` from the start until ``count`` records arrived (or timeout).

        With ``distinct`` (a function of a record), count distinct values instead, so
        at-least-once redeliveries do not end the read early.
        """
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap.split(","),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            seen: set[Any] = set()
            while (len(seen) if distinct else len(records)) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=300).values():
                    records.extend(batch)
                    if distinct:
                        seen.update(distinct(r) for r in batch)
        finally:
            consumer.close()
        return records

    def read_settled(self, topic: str, expected: int, settle: float = 2.0, timeout: float = 60) -> list[Any]:
        """Read ``expected`` records, then keep reading ``settle`` seconds to catch extras."""
        self.read(topic, expected, timeout)
        time.sleep(settle)
        return self.read(topic, 10**9, timeout=settle + 3)


def values_json(records: list[Any]) -> list[dict[str, Any]]:
    """Decode the JSON values of Kafka records."""
    return [json.loads(r.value) for r in records]
