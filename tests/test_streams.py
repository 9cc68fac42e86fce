"""Stream tests against the real embedded broker: routing, dead letters, the join, crashes."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter

import pytest

from core.processes import stop_process
from services import sample_data
from services.broker import free_port, start_broker

from .helpers import WorkerStack, values_json

pytestmark = pytest.mark.broker


def inference(exchange, rng) -> bytes:
    return json.dumps(sample_data.inference_event(exchange, sample_data.now(), rng)).encode()


def feedback(exchange) -> list[bytes]:
    return [json.dumps(f).encode() for f in sample_data.feedback_events(exchange, sample_data.now())]


def numbered_inference(prefix: str, n: int, exchanges, rng) -> list[bytes]:
    """n real exchanges as inference logs with request_ids prefix-0 .. prefix-(n-1)."""
    values = []
    for i in range(n):
        event = sample_data.inference_event(exchanges[i % len(exchanges)], sample_data.now(), rng)
        event["request_id"] = event["event_id"] = f"{prefix}-{i}"
        values.append(json.dumps(event).encode())
    return values


def numbered_thumbs(prefix: str, n: int) -> list[bytes]:
    """One thumbs feedback event for each of prefix-0 .. prefix-(n-1)."""
    return [
        json.dumps(
            {
                "schema_version": "1",
                "event_id": f"fb-{prefix}-{i}",
                "request_id": f"{prefix}-{i}",
                # Recent: timestamps far from the message's time are dead-lettered.
                "timestamp": sample_data.now().isoformat(),
                "kind": "thumbs",
                "value": True,
            }
        ).encode()
        for i in range(n)
    ]


def test_every_message_ends_in_exactly_one_place(stack: WorkerStack, exchanges, rng):
    stack.start()
    good = [inference(e, rng) for e in exchanges[:60]]
    bad = [
        b"\xff\xfe not utf-8",
        b'{"schema_version": "1", "event_id": ',
        b"[1, 2, 3]",
        json.dumps({**json.loads(good[0]), "schema_version": "9"}).encode(),
        json.dumps({**json.loads(good[1]), "request_id": None}).encode(),
        json.dumps({**json.loads(good[2]), "latency_ms": "slow"}).encode(),
    ]
    bad_feedback = [b"{}", b"not json"]
    stack.send(stack.topics.inference, good + bad)
    fb = [f for e in exchanges[:60] for f in feedback(e)]
    stack.send(stack.topics.feedback, fb + bad_feedback)

    inputs = (stack.topics.inference, stack.topics.feedback, stack.topics.rekey)
    enriched = stack.read_settled(stack.topics.enriched, len(good), inputs)
    letters = values_json(stack.read_settled(stack.topics.deadletter, len(bad) + len(bad_feedback), inputs))
    assert len({e["inference"]["request_id"] for e in values_json(enriched)}) == len(good)
    assert len(letters) == len(bad) + len(bad_feedback)
    assert Counter(d["reason"] for d in letters) == Counter(
        {
            "invalid_utf8": 1,
            "malformed_json": 2,
            "not_an_object": 1,
            "unknown_schema_version": 1,
            "wrong_type": 2,
            "missing_field": 1,
        }
    )
    # The original bytes and their exact source come back with every dead letter.
    sent_bad = set(bad + bad_feedback)
    assert {base64.b64decode(d["value_b64"]) for d in letters} == sent_bad
    assert all(d["source"]["topic"] in (stack.topics.inference, stack.topics.feedback) for d in letters)
    # in = valid + dead-lettered, per the worker's own counters too.
    total_in = stack.metric("loopwatch_events_in_total")
    assert total_in == len(good) + len(bad) + len(fb) + len(bad_feedback)
    assert total_in == stack.metric("loopwatch_events_valid_total") + stack.metric(
        "loopwatch_events_rejected_total"
    )


def test_join_in_order_feedback_first_duplicate_and_expired(stack: WorkerStack, exchanges, rng):
    stack.start()
    in_order, early, duplicated, orphan = exchanges[0], exchanges[2], exchanges[4], exchanges[6]
    # Feedback first (its inference comes later) and feedback that never gets an inference.
    inputs = (stack.topics.inference, stack.topics.feedback, stack.topics.rekey)
    stack.send(stack.topics.feedback, feedback(early) + feedback(orphan))
    stack.wait_committed(*inputs)  # the feedback waits in the join before its inference arrives
    stack.send(stack.topics.inference, [inference(e, rng) for e in (in_order, early, duplicated)])
    stack.wait_committed(*inputs)
    stack.send(stack.topics.feedback, feedback(in_order) + feedback(duplicated) * 2)

    joined = values_json(stack.read_settled(stack.topics.joined, 3, inputs))
    assert sorted(j["request_id"] for j in joined) == sorted(
        [in_order.request_id, early.request_id, duplicated.request_id]
    )
    assert all(j["inference"]["response"] and j["feedback"]["kind"] == "thumbs" for j in joined)
    # The orphan is kept, then handed on after the TTL (3 s here): never lost.
    unmatched = values_json(stack.read(stack.topics.unmatched, 1, timeout=30))
    assert [u["request_id"] for u in unmatched] == [orphan.request_id]
    assert stack.metric("loopwatch_feedback_duplicate_total") == 1
    assert stack.metric("loopwatch_feedback_unmatched_total") == 1


def test_kill9_mid_stream_loses_nothing_and_restores_the_join_table(broker, tmp_path, exchanges):
    # A long TTL: the joins must survive the crash, not expire during the restart.
    stack = WorkerStack(broker, tmp_path, join_ttl_seconds=600)
    n = 60_000
    stack.send(stack.topics.inference, numbered_inference("crash", n, exchanges, random.Random(3)))
    stack.start()
    stack.wait_metric("loopwatch_events_in_total", n // 4)
    # At least one offset commit landed: the restarted worker resumes mid-topic.
    stack.wait(lambda: stack.uncommitted(stack.topics.inference)[stack.topics.inference] < n, "no commit")
    processed_before_crash = stack.metric("loopwatch_events_in_total")
    stack.kill9()
    assert processed_before_crash < n, "the crash must land mid-stream"

    stack.start()
    # Feedback for every request: those whose inference was committed before the
    # crash can only join if the restarted worker restored the whole join table.
    stack.send(stack.topics.feedback, numbered_thumbs("crash", n))
    enriched = values_json(stack.read(stack.topics.enriched, n, timeout=120, distinct=lambda r: r.key))
    assert {e["inference"]["request_id"] for e in enriched} == {f"crash-{i}" for i in range(n)}
    joined = values_json(stack.read(stack.topics.joined, n, timeout=120, distinct=lambda r: r.key))
    stack.stop()
    assert {j["request_id"] for j in joined} == {f"crash-{i}" for i in range(n)}


def test_join_table_is_fully_restored_after_a_crash_at_rest(broker, tmp_path, exchanges):
    # Everything processed and committed, then kill -9: nothing is re-processed, so
    # every join must come from the changelog, up to its very last record.
    stack = WorkerStack(broker, tmp_path, join_ttl_seconds=600)
    n = 3000
    stack.start()
    stack.send(stack.topics.inference, numbered_inference("rest", n, exchanges, random.Random(5)))
    stack.wait_committed(stack.topics.inference, stack.topics.rekey)
    stack.kill9()
    stack.start()
    stack.send(stack.topics.feedback, numbered_thumbs("rest", n))
    joined = stack.read(stack.topics.joined, n, timeout=60, distinct=lambda r: r.key)
    stack.stop()
    assert len({r.key for r in joined}) == n


def test_waiting_feedback_restored_after_a_crash_still_expires(broker, tmp_path, exchanges):
    # The restarted worker knows these entries only from the changelog: it must
    # still hand their feedback on once the TTL (counted from the first worker's
    # first sight of them) has passed.
    stack = WorkerStack(broker, tmp_path, join_ttl_seconds=15, join_sweep_seconds=0.5)
    orphans = exchanges[10:13]
    stack.start()
    stack.send(stack.topics.feedback, [value for e in orphans for value in feedback(e)])
    stack.wait_metric("loopwatch_join_entries", len(orphans))
    # Committed, so the restart does not re-read them: it knows them only from the changelog.
    stack.wait_committed(stack.topics.feedback, stack.topics.rekey)
    stack.kill9()
    assert not stack.read_all(stack.topics.unmatched), "the crash must come before the TTL"
    stack.start()
    unmatched = values_json(stack.read(stack.topics.unmatched, len(orphans), timeout=60))
    stack.stop()
    assert sorted(u["request_id"] for u in unmatched) == sorted(e.request_id for e in orphans)
    assert all(u["first_seen"] < u["expired_at"] for u in unmatched)


def test_worker_waits_for_a_broker_that_is_not_up_yet(tmp_path):
    port = free_port()
    worker = WorkerStack(f"127.0.0.1:{port}", tmp_path)
    worker.start(wait=False)
    try:
        # Retried three times (the fourth attempt comes 3.5 s after the first) and still running.
        worker.wait(lambda: "(attempt 4," in worker.log(), "the worker did not keep retrying")
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        assert "waiting for kafka" in worker.log()
        broker = start_broker(port)
        try:
            worker.wait_healthy(timeout=90)
        finally:
            worker.stop()
            stop_process(broker)
    finally:
        worker.stop()
