"""The feedback join as pure transitions: table-driven sequences in, exact records out."""

from __future__ import annotations

import pytest

from schemas.events import Feedback, InferenceLog, SourceRef
from streams import join

INF = InferenceLog.model_validate_json(
    '{"schema_version":"1","event_id":"i1","request_id":"r1","timestamp":"2026-11-01T10:00:00Z",'
    '"model":{"name":"m","version":"1"},"prompt":"hi","response":"hello"}'
)


def feedback(event_id: str) -> Feedback:
    return Feedback.model_validate(
        {
            "schema_version": "1",
            "event_id": event_id,
            "request_id": "r1",
            "timestamp": "2026-11-01T10:00:05Z",
            "kind": "thumbs",
            "value": False,
        }
    )


def run(steps: list[tuple[str, str]], now: float = 100.0) -> tuple[join.JoinState | None, list[str], int]:
    """Apply (kind, id) steps; return the final state, joined feedback ids, duplicates."""
    state: join.JoinState | None = None
    joined: list[str] = []
    duplicates = 0
    for offset, (kind, event_id) in enumerate(steps):
        if kind == "inference":
            result = join.on_inference(
                state,
                INF.model_dump_json(),
                INF,
                SourceRef(topic="inf", partition=0, offset=offset),
                now,
            )
        else:
            fb = feedback(event_id)
            result = join.on_feedback(
                state,
                fb.model_dump_json(),
                fb,
                SourceRef(topic="fb", partition=0, offset=offset),
                now,
            )
        state = result.state
        joined += [j.feedback.event_id for j in result.joined]
        duplicates += result.duplicate
    return state, joined, duplicates


@pytest.mark.parametrize(
    ("steps", "joined", "duplicates", "pending"),
    [
        ([("inference", ""), ("feedback", "f1")], ["f1"], 0, 0),
        ([("feedback", "f1"), ("inference", "")], ["f1"], 0, 0),
        ([("feedback", "f1"), ("feedback", "f2"), ("inference", "")], ["f1", "f2"], 0, 0),
        ([("inference", ""), ("feedback", "f1"), ("feedback", "f1")], ["f1"], 1, 0),
        ([("feedback", "f1"), ("feedback", "f1"), ("inference", "")], ["f1"], 1, 0),
        ([("inference", ""), ("inference", ""), ("feedback", "f1")], ["f1"], 1, 0),
        ([("feedback", "f1")], [], 0, 1),
        ([("inference", "")], [], 0, 0),
    ],
    ids=[
        "in-order",
        "feedback-first",
        "two-waiting",
        "duplicate-after",
        "duplicate-before",
        "inference-redelivered",
        "unmatched",
        "no-feedback",
    ],
)
def test_join_sequences(steps, joined, duplicates, pending):
    state, got, dups = run(steps)
    assert got == joined
    assert dups == duplicates
    assert state is not None and len(state["pending"]) == pending


def test_joined_record_carries_both_sources():
    _, _, _ = run([("inference", "")])
    state = None
    result = join.on_inference(
        state, INF.model_dump_json(), INF, SourceRef(topic="inf", partition=2, offset=7), 1.0
    )
    fb = feedback("f9")
    result = join.on_feedback(
        result.state, fb.model_dump_json(), fb, SourceRef(topic="fb", partition=2, offset=11), 2.0
    )
    [record] = result.joined
    assert (record.inference_source.offset, record.feedback_source.offset) == (7, 11)
    assert record.inference.response == "hello" and record.feedback.event_id == "f9"


def test_expiry_hands_back_waiting_feedback_only_after_ttl():
    state, _, _ = run([("feedback", "f1"), ("feedback", "f2")], now=100.0)
    assert state is not None
    assert not join.is_expired(state["first_seen"], now=105.0, ttl=10.0)
    assert join.is_expired(state["first_seen"], now=110.5, ttl=10.0)
    unmatched = join.unmatched(state, "r1", now=110.5)
    assert [u.feedback.event_id for u in unmatched] == ["f1", "f2"]
    assert all(u.request_id == "r1" for u in unmatched)


def test_state_survives_a_json_round_trip():
    import json

    state, _, _ = run([("feedback", "f1")])
    restored = json.loads(json.dumps(state))  # what the changelog gives back
    result = join.on_inference(
        restored, INF.model_dump_json(), INF, SourceRef(topic="inf", partition=0, offset=5), 101.0
    )
    assert [j.feedback.event_id for j in result.joined] == ["f1"]
