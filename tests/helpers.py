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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from core.processes import spawn_worker, stop_process, wait_until_healthy
from core.settings import Settings, Topics
from retrain_trigger.control import ControlEvent
from retrain_trigger.silence import Silence, parse_matcher
from schemas.errors import LoopwatchError
from services.broker import free_port
from services.replay import Replayer
from streams.ingest import Accepted
from streams.metrics import metric_total
from streams.runtime import Batch, Stage

ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    detail: Callable[[], str] | None = None,
    interval: float = 0.1,
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not (outcome := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} (waited {timeout:.0f}s)" + (f":\n{detail()}" if detail else ""))
        time.sleep(interval)
    return outcome


def forged_silence() -> ControlEvent:
    """The control event an attacker would write: a forced ten-year silence of every alert, unsigned."""
    now = datetime.now(UTC)
    silence = Silence(
        id="forged",
        matchers=[parse_matcher("model=~.*")],
        starts_at=now,
        ends_at=now + timedelta(days=3650),
        force=True,
    )
    return ControlEvent(silence=silence)


def process_alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
            # No wait for the group to settle after a start (the suite's time budget); the
            # start-up rebalance test sets it back (tests/test_startup_rebalance_stream.py).
            "LOOPWATCH_HEALTH_SETTLE_SECONDS": "0",
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
        replayer = Replayer(Settings(kafka_bootstrap=self.bootstrap))
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

    def wait(
        self, condition: Callable[[], Any], what: str, timeout: float = 60, interval: float = 0.1
    ) -> Any:
        """``wait_until`` with the tail of this worker's log in the failure message."""
        return wait_until(condition, timeout, what, detail=lambda: self.log()[-3000:], interval=interval)

    def wait_metric(self, name: str, at_least: float, timeout: float = 60, **labels: str) -> None:
        """Wait until a metric on /metrics reaches ``at_least``."""
        self.wait(
            lambda: self.metric(name, **labels) >= at_least,
            f"{name}{labels} never reached {at_least}",
            timeout,
        )

    def _consumer(self, **config: Any) -> KafkaConsumer:
        # Polls return whole fetched batches: the end-offset probe needs a batch's last record.
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            enable_auto_commit=False,
            max_poll_records=1_000_000,
            **config,
        )

    def _partitions(self, consumer: KafkaConsumer, topics: tuple[str, ...]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]

    def _ends(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """True end offsets (the consumer is left assigned to the probed partitions).

        The embedded broker (Tansu) reports the last record batch's base offset + 1 as a
        partition's end; fetching from there returns that batch, whose last record is the end.
        """
        ends = dict(consumer.end_offsets(partitions))
        probed = [tp for tp in partitions if ends[tp] > 0]
        if not probed:
            return ends
        consumer.assign(probed)
        for tp in probed:
            consumer.seek(tp, ends[tp] - 1)
        fetched: set[TopicPartition] = set()

        def last_batches() -> bool:
            for tp, batch in consumer.poll(timeout_ms=300).items():
                ends[tp] = max(ends[tp], batch[-1].offset + 1)
                fetched.add(tp)
            return fetched >= set(probed)

        wait_until(last_batches, 30, f"could not fetch the last batch of {probed}")
        return ends

    def uncommitted(self, *topics: str) -> dict[str, int]:
        """Records on ``topics`` that the worker's consumer group has not committed yet, per topic."""
        consumer = self._consumer(group_id=self.env["LOOPWATCH_APP_ID"])
        try:
            partitions = self._partitions(consumer, topics)
            # Every committed offset first, every end after: a record that an input caused on
            # another of these topics existed before that input was committed, so it is counted.
            committed = {tp: consumer.committed(tp) or 0 for tp in partitions}
            ends = self._ends(consumer, partitions)
        finally:
            consumer.close()
        behind = dict.fromkeys(topics, 0)
        for tp in partitions:
            behind[tp.topic] += max(ends[tp] - committed[tp], 0)
        return behind

    def wait_committed(self, *topics: str, timeout: float = 60) -> None:
        """Wait until the worker's consumer group has committed every record now on ``topics``.

        The worker commits an input only once the records it causes are acknowledged,
        so afterwards every output of those inputs is on its topic.
        """
        self.wait(lambda: not any(self.uncommitted(*topics).values()), f"{topics} not all committed", timeout)

    def read_all(self, topic: str, timeout: float = 30) -> list[Any]:
        """Every record on ``topic`` now: read from the start up to its (true) end offsets."""
        consumer = self._consumer(group_id=None)
        try:
            partitions = self._partitions(consumer, (topic,))
            if not partitions:
                return []  # the topic does not exist (yet)
            ends = self._ends(consumer, partitions)
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            records: list[Any] = []

            def done() -> bool:
                for batch in consumer.poll(timeout_ms=300).values():
                    records.extend(batch)
                return all(consumer.position(tp) >= ends[tp] for tp in partitions)

            wait_until(done, timeout, f"could not read {topic} to its end {ends}")
        finally:
            consumer.close()
        return records

    def read_settled(
        self, topic: str, expected: int, inputs: tuple[str, ...], timeout: float = 60
    ) -> list[Any]:
        """Read ``expected`` records, then everything on ``topic`` once the worker committed its ``inputs``.

        Extras (duplicates, a second action) caused by those inputs are then on the topic.
        """
        self.read(topic, expected, timeout)
        self.wait_committed(*inputs, timeout=timeout)
        return self.read_all(topic)


def values_json(records: list[Any]) -> list[dict[str, Any]]:
    """Decode the JSON values of Kafka records."""
    return [json.loads(r.value) for r in records]


def decoded_batch(stage: Stage, topic: str, messages: Sequence[Any]) -> Batch:
    """``messages`` decoded by the stage's decoder of ``topic`` as the runtime does; all must be accepted."""
    accepted = []
    for message in messages:
        outcome = stage.inputs[topic](message, time.time())
        assert isinstance(outcome, Accepted), outcome
        accepted.append((message, outcome))
    return Batch(topic, list(messages), accepted, time.perf_counter())
