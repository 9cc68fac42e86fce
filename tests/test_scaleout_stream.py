"""On the real broker with 8 partitions: windows complete across a kill -9, and late events as revisions.

The traffic is ``tests/scaleout_traffic.py``'s: one model, four versions, a
canary clearly worse than stable, real HH-RLHF text, 10 s event-time windows.
A window's final verdict is the Detections of its highest revision; it must
count every event sent for the window (the truth the generator kept).

Both tests use one group of workers (each test its own model): two at first;
the first test kills one with ``kill -9`` and starts a third.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.events import Alert
from tests.helpers import WorkerStack, wait_until
from tests.scaleout_traffic import (
    CANARY,
    MODEL,
    ROLLBACK,
    Actions,
    Sender,
    Traffic,
    Verdicts,
    WindowKey,
    build,
    missing,
    score,
    worker_settings,
)
from tests.test_rekey_stream import split_partitions

pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("scaleout")]

LATE_MODEL = "scaleout-late"


@dataclass
class Cluster:
    """Workers of one app: two started, a third to start."""

    first: WorkerStack
    second: WorkerStack
    third: WorkerStack

    @property
    def all(self) -> tuple[WorkerStack, WorkerStack, WorkerStack]:
        """Every worker, started or not."""
        return self.first, self.second, self.third

    def running(self) -> list[WorkerStack]:
        """The workers whose process is up."""
        return [w for w in self.all if w.process is not None and w.process.poll() is None]

    def wait_committed(self, *topics: str, timeout: float = 60) -> None:
        """Wait until the group committed every record now on ``topics``; fail with what is left."""
        stack = self.first
        wait_until(
            lambda: not any(stack.uncommitted(*topics).values()),
            timeout,
            "not all committed",
            detail=lambda: f"uncommitted: {stack.uncommitted(*topics)}\n{self.logs()}",
        )

    def logs(self) -> str:
        """The tail of every worker's log."""
        return "\n".join(f"-- worker {n}:\n{w.log()[-2000:]}" for n, w in enumerate(self.all))


@pytest.fixture(scope="module")
def cluster(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("scaleout")
    settings = worker_settings(workdir, (MODEL, LATE_MODEL), window_close="watermark")
    first = WorkerStack(broker, workdir, **settings)
    found = Cluster(first, first.peer(workdir / "second"), first.peer(workdir / "third"))
    try:
        split_partitions([found.first.start(wait=False), found.second.start(wait=False)])
        yield found
    finally:
        for worker in found.running():
            assert worker.process is not None
            worker.process.terminate()  # all at once: each takes a few seconds to stop
        for worker in found.all:
            worker.stop()


def _verdicts(stack: WorkerStack, model: str) -> Verdicts:
    return Verdicts.of(stack.read_all(stack.topics.detections), model)


def _actions(stack: WorkerStack, model: str) -> Actions:
    requests = stack.read_all(stack.topics.rollback_requests) + stack.read_all(stack.topics.retrain_requests)
    return Actions.of(requests, model)


def _firing(stack: WorkerStack, model: str) -> list[Alert]:
    alerts = [Alert.model_validate_json(r.value) for r in stack.read_all(stack.topics.alerts)]
    return [a for a in alerts if a.status == "firing" and a.labels.get("model") == model]


def _detecting(workers: list[WorkerStack]) -> WorkerStack | None:
    """The worker whose detect stage merges the model's summaries (it has counted window events)."""
    for worker in workers:
        if worker.metric("loopwatch_window_events_total") > 0:
            return worker
    return None


def _published(stack: WorkerStack, model: str) -> Counter[WindowKey]:
    """Events per window in the partial summaries on the summaries topic (progress-only records skipped)."""
    found: Counter[WindowKey] = Counter()
    for summary in map(json.loads, (r.value for r in stack.read_all(stack.topics.summaries))):
        if "seen" in summary and summary["segment"].get("model") == model:
            found[summary["segment"]["model_version"], summary["kind"], summary["window_id"]] += summary[
                "seen"
            ]
    return found


def send(traffic: Traffic, stack: WorkerStack, *, speed: float) -> None:
    """Replay ``traffic`` to the stack's topics, paced by event time at ``speed``."""
    sender = Sender(traffic, stack.bootstrap, stack.topics, speed=speed)
    try:
        sender.send_until(1.0)
    finally:
        sender.close()


def test_a_worker_killed_mid_traffic_and_a_third_joining_leave_every_window_complete(
    cluster: Cluster, data_dir: Path
) -> None:
    traffic = build(data_dir, inference=2_400, feedback=960, windows=3)
    workers = cluster.running()
    stack = workers[0]
    sender = Sender(traffic, stack.bootstrap, stack.topics, speed=4.0)
    try:
        sender.send_until(0.4)
        # The harder case: the worker that judges the model's windows dies with them open.
        victim: WorkerStack = stack.wait(lambda: _detecting(workers), "no worker merged a window summary")
        victim.kill9()
        cluster.third.start(wait=False)
        sender.send_until(1.0)
    finally:
        sender.close()
    cluster.third.wait_healthy()
    cluster.wait_committed(stack.topics.inference, stack.topics.feedback, timeout=90)
    wait_until(
        lambda: not missing(traffic.truth, _verdicts(stack, MODEL)),
        60,
        "windows were never judged",
        detail=lambda: f"{missing(traffic.truth, _verdicts(stack, MODEL))}\n{cluster.logs()}",
        interval=1.0,
    )
    cluster.wait_committed(stack.topics.summaries, stack.topics.detections)
    verdicts = _verdicts(stack, MODEL)
    result = score(traffic.truth, verdicts)
    # Every window's final verdict counts its true events. For the others: (true, judged,
    # revision, events in the summaries ingest published): is a count lost or doubled in ingest or detect?
    published = _published(stack, MODEL)
    wrong = {
        key: (*counts, verdicts.revision.get(key), published[key]) for key, counts in result.wrong.items()
    }
    assert wrong == {}, f"{wrong}\n{cluster.logs()}"
    rollbacks = {key: len(ids) for key, ids in _actions(stack, MODEL).requests.items() if key[0] == ROLLBACK}
    assert rollbacks == {(ROLLBACK, MODEL, CANARY): 1}, cluster.logs()


def test_late_events_revise_their_window_without_a_second_action(cluster: Cluster, data_dir: Path) -> None:
    traffic = build(data_dir, inference=800, feedback=480, windows=2, model=LATE_MODEL)
    # Thumbs on the canary's replies in its second window, sent only once that window closed.
    late = traffic.hold_out(CANARY, "feedback", 1, 12)
    key: WindowKey = (CANARY, "feedback", traffic.truth.first_window + 1)
    true = traffic.truth.counts[key]
    stack = cluster.running()[0]
    # Event time runs 10x: the close rule follows event time, the replay takes about 3 s.
    send(traffic, stack, speed=10.0)
    stack.wait(
        lambda: _verdicts(stack, LATE_MODEL).final(key) == true - len(late.messages),
        "the canary's window was not judged on the events sent in time",
    )
    stack.wait(lambda: _actions(stack, LATE_MODEL).rollbacks(CANARY, LATE_MODEL), "no rollback of the canary")
    cluster.wait_committed(stack.topics.summaries, stack.topics.detections)
    before = _verdicts(stack, LATE_MODEL).revision[key]
    alerts = _firing(stack, LATE_MODEL)
    send(late, stack, speed=10.0)
    stack.wait(
        lambda: _verdicts(stack, LATE_MODEL).revision[key] > before,
        "the late events never revised their window",
    )
    cluster.wait_committed(stack.topics.summaries, stack.topics.detections)
    revised = _verdicts(stack, LATE_MODEL)
    assert revised.revision[key] >= 1 and revised.final(key) == true
    # The revision updates the evidence of the incident: no second rollback, no alert fired again.
    actions = _actions(stack, LATE_MODEL)
    assert actions.rollbacks(CANARY, LATE_MODEL) == 1 and actions.duplicates == 0, actions
    assert _firing(stack, LATE_MODEL) == alerts
