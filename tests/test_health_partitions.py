"""Which worker judges a model: each worker's /health and log name its partitions and models (issue 17).

New user 17g, on 2 workers, could only guess which worker judged a model
(from whose /metrics had Detection series). Summaries are keyed by model, so
the worker that owns a model's summaries partition judges it: on the real
broker, with two workers, /health must list each worker's partitions per topic
and exactly the models whose summaries land on its partitions, and the log
must say the same after the rebalance.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from services import sample_data
from streams.app import assignment_line
from tests.helpers import WorkerStack, values_json, wait_until
from tests.test_rekey_stream import split_partitions

pytestmark = pytest.mark.broker

PARTITIONS = 4  # the default of LOOPWATCH_PARTITIONS, which the worker creates its topics with
EVENTS_PER_MODEL = 5


def _models_on_every_partition() -> list[str]:
    """Two model names per summaries partition (by the producer's murmur2), so both workers judge some."""
    found: dict[int, list[str]] = {}
    for n in range(1_000):
        name = f"health-model-{n}"
        picked = found.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % PARTITIONS, [])
        if len(picked) < 2:
            picked.append(name)
        if sum(map(len, found.values())) == 2 * PARTITIONS:
            break
    return sorted(name for names in found.values() for name in names)


def _inferences(exchanges: list[sample_data.Exchange], models: list[str]) -> list[bytes]:
    """A few real exchanges per model, timed now: their windows stay open while the test reads /health."""
    rng, now = random.Random(17), datetime.now(UTC)
    events = []
    for n, model in enumerate(models):
        for exchange in exchanges[n * EVENTS_PER_MODEL : (n + 1) * EVENTS_PER_MODEL]:
            event = sample_data.inference_event(exchange, now, rng)
            event["model"] = {"name": model, "version": "v1"}
            events.append(event)
    return [json.dumps(event).encode() for event in events]


def _summaries_partition(stack: WorkerStack, models: list[str]) -> dict[str, int]:
    """The summaries partition each model's partials went to, read from the topic itself."""
    where: dict[str, set[int]] = {}
    for record, summary in zip(
        records := stack.read_all(stack.topics.summaries), values_json(records), strict=True
    ):
        model = (summary.get("segment") or {}).get("model")
        if model in models:
            where.setdefault(model, set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in where.values()), f"a model on two partitions: {where}"
    return {model: min(partitions) for model, partitions in where.items()}


def test_health_and_log_name_each_workers_partitions_and_the_models_it_judges(
    stack: WorkerStack, tmp_path: Path, exchanges: list[sample_data.Exchange]
) -> None:
    peer = stack.peer(tmp_path / "peer")
    workers = [stack.start(wait=False), peer.start(wait=False)]
    try:
        split_partitions(workers)
        models = _models_on_every_partition()
        stack.send(stack.topics.inference, _inferences(exchanges, models))
        bodies: list[dict[str, Any]] = []

        def every_model_listed_once() -> bool:
            bodies[:] = [w.health() for w in workers]
            listed = [m for body in bodies for m in body.get("models", [])]
            return sorted(listed) == models

        wait_until(
            every_model_listed_once,
            60,
            "not every model is listed by exactly one worker's /health",
            detail=lambda: f"{bodies}\n" + "\n".join(w.log()[-2000:] for w in workers),
        )
        summaries = stack.topics.summaries
        owned = [set(body["partitions"].get(summaries, [])) for body in bodies]
        assert not owned[0] & owned[1] and owned[0] | owned[1] == set(range(PARTITIONS)), bodies
        assert all(
            body["assigned_partitions"] == sum(map(len, body["partitions"].values())) for body in bodies
        )
        where = _summaries_partition(stack, models)
        assert set(where) == set(models)
        for body, partitions in zip(bodies, owned, strict=True):
            # Exactly the models whose summaries this worker's partitions hold, and both workers judge some.
            assert body["models"] == sorted(m for m in models if where[m] in partitions), (body, where)
            assert body["models"]
        for worker, body in zip(workers, bodies, strict=True):
            lines = re.findall(r"worker assigned: (.*)", worker.log())
            assert lines, worker.log()[-3000:]
            assert lines[-1].strip() == assignment_line(body["partitions"]), (lines[-1], body["partitions"])
            # The summaries topic leads, with this worker's partitions of it.
            assert lines[-1].startswith(summaries), lines[-1]
    finally:
        peer.stop()
