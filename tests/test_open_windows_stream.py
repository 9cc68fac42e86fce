"""On the real broker, one kill -9 of the worker: a page being retried, an open window, slow work in flight.

One worker and one kill for all three (each restart waits out the dead member's
10 s session): the page is delivered after the restart, once; the half-merged
window is judged once on all its events; the window whose slow detectors were
at work is given to them again.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.events import Detection
from services import sample_data
from tests.helpers import WorkerStack
from tests.http_recorder import Recorder, recording_server
from tests.test_decide_stream import _detection

pytestmark = pytest.mark.broker

FAST = {"detector_id": "drift.text_length.v1", "kind": "inference", "config": {"column": "response_chars"}}
SLOW = {"detector_id": "drift.ks.v1", "kind": "inference", "config": {"column": "prompt_chars"}, "slow": True}
EVENTS = 120  # per window


def _events(data_dir: Path, start: datetime) -> list[list[bytes]]:
    """Real HH-RLHF inferences of one segment: minutes 0 and 1 (EVENTS each) and one in minute 2."""
    rng = random.Random(11)
    chosen = [pair[0] for _, pair in zip(range(2 * EVENTS + 1), sample_data.hh_rlhf(data_dir), strict=False)]
    minutes: list[list[bytes]] = [[], [], []]
    for n, exchange in enumerate(chosen):
        minute = n // EVENTS
        at = start + timedelta(minutes=minute, seconds=(n % EVENTS) * 50 / EVENTS)
        event = sample_data.inference_event(exchange, at, rng)
        event["tenant"] = "acme"  # one segment
        minutes[minute].append(json.dumps(event).encode())
    return minutes


class _Oncall:
    """A receiver that answers ``status``; every request is recorded with that answer and its key."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @property
    def status(self) -> int:
        """What the next request is answered with."""
        return self.recorder.statuses[-1]

    @status.setter
    def status(self, status: int) -> None:
        self.recorder.statuses = [status]

    @property
    def calls(self) -> list[tuple[int, str | None, dict[str, Any]]]:
        """(status answered, Idempotency-Key, body) of each request so far."""
        return [(r.status, r.headers.get("Idempotency-Key"), r.json()) for r in self.recorder.requests]


@pytest.fixture
def oncall() -> Iterator[tuple[str, _Oncall]]:
    with recording_server([503]) as recorder:
        yield f"{recorder.url}/hook", _Oncall(recorder)


def _children(pid: int) -> list[int]:
    """The worker's child processes (the slow-detector child and its helpers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _detections(records: list[Any]) -> dict[tuple[str, int], list[Detection]]:
    """Detections of the replayed traffic's model by (detector, minute of the window)."""
    found: dict[tuple[str, int], list[Detection]] = {}
    for record in records:
        detection = Detection.model_validate_json(record.value)
        if detection.segment.model != sample_data.MODEL:
            continue  # the detection that raised the page
        minute = detection.window_start.minute
        found.setdefault((detection.detector_id, minute), []).append(detection)
    return found


def test_a_page_an_open_window_and_slow_detections_in_flight_survive_a_kill_9(
    broker: str, tmp_path: Path, data_dir: Path, oncall: tuple[str, _Oncall]
) -> None:
    url, hook = oncall
    receivers = tmp_path / "receivers.yaml"
    # Retried for minutes: the page is still in the worker's hands when it is killed.
    retrying = {"retries": 1000, "backoff_seconds": 0.2, "max_backoff_seconds": 0.5, "timeout_seconds": 2}
    receivers.write_text(yaml.safe_dump([{"kind": "webhook", "name": "oncall", "url": url, **retrying}]))
    start = datetime.fromtimestamp((datetime.now(UTC).timestamp() // 3600 - 2) * 3600, UTC)
    first, second, third = _events(data_dir, start)
    reference = tmp_path / "reference.jsonl"
    with reference.open("w") as out:
        for event in map(json.loads, first[:60]):
            out.write(
                json.dumps({"response_chars": len(event["response"]), "prompt_chars": len(event["prompt"])})
            )
            out.write("\n")
    detectors = tmp_path / "detectors.yaml"
    detectors.write_text(yaml.safe_dump([FAST, SLOW]))
    stack = WorkerStack(
        broker,
        tmp_path,
        curation="false",
        receivers_file=receivers,
        stable_versions=json.dumps({"m": "2026-10-01"}),  # the model of the page's detection
        window_seconds=60,
        window_grace_seconds=0.5,
        window_idle_seconds=60,
        # Its windows close as the timer rule has it (a newer window, then the grace): with watermarks, the
        # partitions minute 2's one event does not reach would hold minute 1 for the idle time (60 s).
        window_close="timer",
        detectors_file=detectors,
        reference_file=reference,
        slow_detector_queue=4,
    ).start()
    assert stack.process is not None
    worker = stack.process.pid
    changelog = f"{stack.env['LOOPWATCH_APP_ID']}-windows-changelog"
    # A bad canary window of model m: a critical page, which the receiver refuses for now.
    stack.send(stack.topics.detections, [_detection(0, "drift")], keys=[b"m"])
    # Minute 0 whole, and half of minute 1: minute 0 closes (minute 1 is newer), minute 1 stays open.
    stack.send(stack.topics.inference, first + second[: EVENTS // 2])
    stopped: set[int] = set()

    def slow_work_held() -> bool:
        # The slow detectors of minute 0 are "slow" for sure: their process is stopped as it starts.
        for child in _children(worker):
            if child not in stopped:
                os.kill(child, signal.SIGSTOP)
                stopped.add(child)
        return any(r.key.startswith(b"slow|") for r in stack.read_all(changelog))

    stack.wait(slow_work_held, "minute 0 never waited for its slow detectors", 60)
    stack.wait_committed(stack.topics.inference, stack.topics.summaries)  # half of minute 1 merged
    stack.wait(lambda: hook.calls, "the page was never tried", 60)
    stack.kill9()
    for child in stopped:  # stopped before they could arrange to die with the worker
        os.kill(child, signal.SIGKILL)
    before = _detections(stack.read_all(stack.topics.detections))
    assert sorted(before) == [("drift.text_length.v1", 0)], before  # no slow detection yet
    assert all(status == 503 for status, _, _ in hook.calls)
    hook.status = 200  # the receiver is back while no worker runs
    stack.start()
    try:
        stack.send(stack.topics.inference, second[EVENTS // 2 :] + third)
        wanted = {("drift.text_length.v1", 1), ("drift.ks.v1", 0), ("drift.ks.v1", 1)}
        stack.wait(
            lambda: wanted <= set(_detections(stack.read_all(stack.topics.detections))),
            "minute 1 was not judged, or the slow detections of minute 0 were not re-run",
            60,
        )
        stack.wait(
            lambda: any(status == 200 for status, _, _ in hook.calls),
            "the page queued at the kill -9 was never delivered",
            45,
        )
        stack.wait_committed(stack.topics.summaries, stack.topics.pages)
    finally:
        stack.stop()
    after = _detections(stack.read_all(stack.topics.detections))
    # Each window judged once by each detector, on every one of its events.
    assert {key: len(found) for key, found in after.items()} == {
        ("drift.text_length.v1", 0): 1,
        ("drift.text_length.v1", 1): 1,
        ("drift.ks.v1", 0): 1,
        ("drift.ks.v1", 1): 1,
    }, stack.log()[-3000:]
    assert {key: found[0].measurements["window_events"] for key, found in after.items()} == dict.fromkeys(
        after, float(EVENTS)
    )
    # The page: delivered once after the restart, every attempt with its one idempotency key.
    delivered = [(key, body) for status, key, body in hook.calls if status == 200]
    assert [(body["group_key"], body["status"]) for _, body in delivered] == [('{model="m"}', "firing")]
    assert {key for _, key, _ in hook.calls} == {delivered[0][0]} and delivered[0][0]
    assert stack.read_all(stack.topics.delivery_failures) == []
