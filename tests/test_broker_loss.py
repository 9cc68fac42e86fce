"""A broker restarts empty: the worker is unhealthy meanwhile, its topics return, it resumes, SIGTERM works.

Each test starts a broker of its own (the embedded one is in memory, so a restart
loses every topic, the consumer group and its offsets), never the session's.
"""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from core.processes import stop_process
from core.settings import Settings
from schemas.errors import BrokerError
from services import sample_data
from services.broker import free_port, start_broker
from services.worker import EXIT_STOP_TIMEOUT
from streams.broker_watch import EXIT_TOPICS_MISSING
from streams.kafka import existing_topics

from .helpers import WorkerStack, wait_until

pytestmark = pytest.mark.broker

GRACE = 6


def _events(exchanges, tag: str, n: int) -> list[bytes]:
    rng = random.Random(7)
    values = []
    for i in range(n):
        event = sample_data.inference_event(exchanges[i % len(exchanges)], sample_data.now(), rng)
        event["request_id"] = event["event_id"] = f"{tag}-{i}"
        values.append(json.dumps(event).encode())
    return values


def _health(stack: WorkerStack) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.web_port}/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def _poll(condition, what: str, stack: WorkerStack, timeout: float = 45) -> None:
    wait_until(condition, timeout, what, detail=lambda: stack.log()[-5000:])


def _topics(bootstrap: str) -> set[str]:
    try:
        return existing_topics(Settings(kafka_bootstrap=bootstrap))
    except BrokerError:
        return set()


def _kinds(log: str) -> Counter[tuple[str, str]]:
    """Log lines by logger and message with numbers blanked: one kind of line per condition."""
    kinds: Counter[tuple[str, str]] = Counter()
    for line in log.splitlines():
        found = re.search(r"logger=(\S+) pid=\d+ (.*)", line)
        if found:
            kinds[(found[1], re.sub(r"\d+", "#", found[2])[:60])] += 1
    return kinds


def test_broker_restart_unhealthy_then_topics_return_processing_resumes_sigterm_honoured(
    tmp_path: Path, exchanges
):
    port = free_port()
    broker = start_broker(port)
    stack = WorkerStack(
        f"127.0.0.1:{port}", tmp_path, topic_check_seconds=1, stop_grace_seconds=GRACE, detection=False
    )
    try:
        stack.start()
        stack.send(stack.topics.inference, _events(exchanges, "before", 100))
        assert len(stack.read(stack.topics.enriched, 100, timeout=30)) == 100

        stop_process(broker)
        _poll(lambda: _health(stack)[0] == 503, "/health did not turn 503 with the broker gone", stack)
        assert "broker" in _health(stack)[1]["reason"]

        broker = start_broker(port)  # same port, no topics
        changelog = f"{stack.env['LOOPWATCH_APP_ID']}-joins-changelog"
        wanted = {stack.topics.inference, stack.topics.enriched, stack.topics.summaries, changelog}
        _poll(lambda: wanted <= _topics(stack.bootstrap), "the topics did not come back", stack)
        _poll(lambda: _health(stack)[0] == 200, "/health did not turn 200 again", stack)

        stack.send(stack.topics.inference, _events(exchanges, "after", 50))
        enriched = stack.read(stack.topics.enriched, 50, timeout=45, distinct=lambda r: r.key)
        assert {r.key for r in enriched} == {f"after-{i}".encode() for i in range(50)}, stack.log()[-5000:]

        log = stack.log()
        assert (
            len(re.findall(r"level=WARNING logger=loopwatch.broker pid=\d+ \d+ topics are missing", log)) == 1
        )
        assert (
            len(re.findall(r"logger=loopwatch.broker pid=\d+ resolved after", log)) == 2
        )  # unreachable, missing
        assert len(re.findall(r"logger=loopwatch.broker .*recreated \d+ topics", log)) == 1
        # One line per condition (a second one may be its count), not a flood.
        flooding = {kind: n for kind, n in _kinds(log).items() if n > 3}
        assert not flooding, flooding

        # SIGTERM with the broker gone again: faust's shutdown would wait on it.
        stop_process(broker)
        _poll(lambda: _health(stack)[0] == 503, "/health did not turn 503 again", stack)
        assert stack.process is not None
        stack.process.terminate()
        code = stack.process.wait(timeout=GRACE + 10)
        assert code in (0, EXIT_STOP_TIMEOUT), stack.log()[-3000:]
        if code == EXIT_STOP_TIMEOUT:
            assert f"did not stop within {GRACE}s of SIGTERM" in stack.log()
    finally:
        stack.stop()
        stop_process(broker)


def test_on_missing_topics_exit_stops_the_worker_with_its_reason(tmp_path: Path):
    port = free_port()
    broker = start_broker(port)
    stack = WorkerStack(
        f"127.0.0.1:{port}",
        tmp_path,
        topic_check_seconds=1,
        on_missing_topics="exit",
        stop_grace_seconds=GRACE,
        detection=False,
        curation=False,
        decide=False,
    )
    try:
        stack.start()
        stop_process(broker)
        broker = start_broker(port)
        assert stack.process is not None
        code = stack.process.wait(timeout=60)
        assert code == EXIT_TOPICS_MISSING, stack.log()[-3000:]
        assert re.search(
            r"level=ERROR logger=loopwatch.broker .*topics are missing.*ON_MISSING_TOPICS=exit", stack.log()
        )
    finally:
        stack.stop()
        stop_process(broker)
