"""Broker test: inference and feedback without a key, or keyed wrong, are re-keyed and still join."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import KafkaProducer

from services import sample_data

from .helpers import WorkerStack, values_json, wait_until
from .test_streams import numbered_inference

pytestmark = pytest.mark.broker

N = 20


def thumbs(prefix: str, n: int) -> list[bytes]:
    """A thumbs-up for each of prefix-0 .. prefix-(n-1), timestamped now (old events are refused)."""
    at = sample_data.now().isoformat()
    return [
        json.dumps(
            {
                "schema_version": "1",
                "event_id": f"fb-{prefix}-{i}",
                "request_id": f"{prefix}-{i}",
                "timestamp": at,
                "kind": "thumbs",
                "value": True,
            }
        ).encode()
        for i in range(n)
    ]


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, list]]) -> None:
    """Send (key, value, headers) exactly as given: no key means none, unlike the Replayer."""
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all")
    try:
        for key, value, headers in records:
            producer.send(topic, value=value, key=key, headers=headers)
        producer.flush()
    finally:
        producer.close()


def split_partitions(workers: list[WorkerStack], timeout: float = 60) -> None:
    """Wait until every worker is healthy and owns partitions: the join must cross workers."""
    bodies: list[dict] = []

    def split() -> bool:
        bodies[:] = [w.health() for w in workers]
        return all(b.get("status") == "ok" and b.get("assigned_partitions", 0) > 0 for b in bodies)

    def detail() -> str:
        return f"{bodies}\n" + "\n".join(w.log()[-2000:] for w in workers)

    wait_until(split, timeout, "partitions not split between the workers", detail=detail)


def test_messages_keyed_wrong_are_rekeyed_and_joined_with_their_original_sources(
    stack: WorkerStack, tmp_path: Path, exchanges, rng
):
    # Two workers: with one, every partition's join state sits in one process.
    peer = stack.peer(tmp_path / "peer")
    workers = [stack.start(wait=False), peer.start(wait=False)]
    try:
        check(stack, workers, exchanges, rng)
    finally:
        peer.stop()


def metric(workers: list[WorkerStack], name: str, **labels: str) -> float:
    return sum(w.metric(name, **labels) for w in workers)


def check(stack: WorkerStack, workers: list[WorkerStack], exchanges, rng) -> None:
    split_partitions(workers)
    groups = ("nokey", "wrongfb", "both")
    inference = {g: numbered_inference(g, N, exchanges, rng) for g in groups}
    feedback = {g: thumbs(g, N) for g in groups}

    def keyed(values: list[bytes], how: str) -> list[tuple[bytes | None, bytes, list]]:
        keys = {"none": lambda _: None, "wrong": lambda _: b"session-42", "right": lambda rid: rid}[how]
        return [(keys(json.loads(v)["request_id"].encode()), v, []) for v in values]

    produce(
        stack.bootstrap,
        stack.topics.inference,
        keyed(inference["nokey"], "none")
        + keyed(inference["wrongfb"], "right")
        + keyed(inference["both"], "none"),
    )
    produce(
        stack.bootstrap,
        stack.topics.feedback,
        keyed(feedback["nokey"], "right")
        + keyed(feedback["wrongfb"], "wrong")
        + keyed(feedback["both"], "none"),
    )

    expected = {f"{g}-{i}" for g in groups for i in range(N)}
    joined = values_json(stack.read(stack.topics.joined, len(expected), distinct=lambda r: r.key))
    assert {j["request_id"] for j in joined} == expected
    # Their sources are the messages the producer wrote, not the repartition copies.
    sent = {
        (r.topic, r.partition, r.offset): json.loads(r.value)["request_id"]
        for topic in (stack.topics.inference, stack.topics.feedback)
        for r in stack.read(topic, 3 * N)
    }
    for record in joined:
        for side in ("inference_source", "feedback_source"):
            source = record[side]
            assert sent[source["topic"], source["partition"], source["offset"]] == record["request_id"]
    rekeyed = 2 * N  # per input topic: no key or a wrong one
    for topic in (stack.topics.inference, stack.topics.feedback):
        assert metric(workers, "loopwatch_rekeyed_total", topic=topic) == rekeyed
        assert metric(workers, "loopwatch_join_key_mismatch_total", topic=topic) == rekeyed
    warnings = [w.log().count("are not keyed by their request_id") for w in workers]
    assert sum(warnings) >= 2 and max(warnings) <= 2, warnings  # once per topic and worker

    # A copy on the repartition topic that is still keyed wrong is joined where it is,
    # never sent round again; one that ingest did not write there is dead-lettered.
    [loop] = numbered_inference("loop", 1, exchanges, rng)
    source = json.dumps({"topic": stack.topics.inference, "partition": 0, "offset": 999}).encode()
    produce(
        stack.bootstrap,
        stack.topics.rekey,
        [(b"still-wrong", loop, [("loopwatch-source", source)]), (b"stray", loop, [])],
    )
    enriched = values_json(stack.read(stack.topics.enriched, 3 * N + 1, distinct=lambda r: r.key))
    [looped] = [e for e in enriched if e["inference"]["request_id"] == "loop-0"]
    assert looped["source"] == {"topic": stack.topics.inference, "partition": 0, "offset": 999}
    [stray] = values_json(stack.read(stack.topics.deadletter, 1))
    assert stray["reason"] == "missing_field" and stray["source"]["topic"] == stack.topics.rekey
    assert metric(workers, "loopwatch_join_key_mismatch_total", topic=stack.topics.rekey) == 1
    inputs = (stack.topics.inference, stack.topics.feedback, stack.topics.rekey)
    assert len(stack.read_settled(stack.topics.rekey, 2 * rekeyed + 2, inputs)) == 2 * rekeyed + 2
