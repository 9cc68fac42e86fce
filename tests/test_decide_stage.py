"""The decide stage's handlers alone: the Effects they return (records, pages among them, state writes)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from core.settings import Settings
from retrain_trigger.actions import RETRAIN_REQUESTED, ROLLBACK_REQUESTED, from_kafka
from retrain_trigger.alerts import Notification
from retrain_trigger.silence import Silence, parse_matcher
from retrain_trigger.stable import StableVersionMarked
from schemas.events import DeadLetterReason, Detection
from streams.app import create_app
from streams.decide_stage import DecideStage
from streams.ingest import Accepted, Rejected
from streams.metrics import metric_total
from streams.outbox import Headers
from streams.runtime import Effects, Write
from tests.helpers import decoded_batch
from tests.test_decide_pipeline import POLICY, T0, detection


@dataclass
class Message:
    """The parts of a faust message the decide stage reads."""

    value: bytes
    partition: int = 0
    offset: int = 0
    topic: str = ""
    key: bytes | None = b"chat"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def make_stage(tmp_path: Path, **settings: Any) -> DecideStage:
    """The decide stage of a worker built from settings (the test policy, chat v1 marked stable)."""
    tmp_path.mkdir(exist_ok=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    values: dict[str, Any] = {"stable_versions": {"chat": "v1"}} | settings
    app = create_app(
        Settings(data_dir=tmp_path / "state", detection=False, curation=False, policy_file=policy, **values)
    )
    stage = app.runtime.stages["decide"]
    assert isinstance(stage, DecideStage)
    return stage


@pytest.fixture
def stage(tmp_path: Path) -> DecideStage:
    return make_stage(tmp_path)


def handle(stage: DecideStage, detections: list[Detection], partition: int = 0) -> Effects:
    """Decode ``detections`` as the runtime does and hand them to the stage as one batch."""
    topic = stage.topics.detections
    messages = [
        Message(d.model_dump_json().encode(), partition, offset, topic) for offset, d in enumerate(detections)
    ]
    return asyncio.run(stage.handle(decoded_batch(stage, topic, messages), time.time()))


def tick(stage: DecideStage, minutes: float) -> Effects:
    return asyncio.run(stage.tick((T0 + timedelta(minutes=minutes)).timestamp()))


def receive(stage: DecideStage, message: Any) -> Effects:
    return asyncio.run(stage.receive(message, time.time()))


Sent = tuple[bytes | None, bytes, Headers]


def records(effects: Effects) -> dict[str, list[Sent]]:
    """The effects' output records by topic (none is a tombstone)."""
    by_topic: dict[str, list[Sent]] = {}
    for (topic, _), queued in effects.records.take().items():
        for key, value, headers in queued:
            assert value is not None
            by_topic.setdefault(topic, []).append((key, value, headers))
    return by_topic


def apply(stage: DecideStage, effects: Effects) -> None:
    """What the runtime does first with a unit's effects: its writes reach the local table."""
    for write in effects.writes:
        stage.table.apply(write.key, write.value, write.partition)


def pages(stage: DecideStage, out: dict[str, list[Sent]]) -> list[Notification]:
    """The pages among a unit's records (for the notify stage), each keyed by its alert group."""
    found = [
        (key, Notification.model_validate_json(value)) for key, value, _ in out.get(stage.topics.pages, [])
    ]
    assert all(key == page.group_key.encode() for key, page in found)
    return [page for _, page in found]


def test_a_bad_window_is_a_rollback_record_and_a_page_record_then_a_state_write(stage: DecideStage) -> None:
    effects = handle(stage, [detection(0)], partition=3)
    out = records(effects)
    [rollback] = out[stage.topics.rollback_requests]
    key, value, headers = rollback
    event = from_kafka(value)
    assert key == b"chat" and event.type == ROLLBACK_REQUESTED and event.data["target_version"] == "v1"
    assert "dataset" not in event.data  # only retrain requests name a dataset
    names = dict(headers)
    assert names["ce_id"] == event.id.encode() and names["ce_specversion"] == b"1.0"
    [alert] = [json.loads(v) for _, v, _ in out[stage.topics.alerts]]
    assert alert["status"] == "firing" and alert["labels"]["alertname"] == "bad-replies"
    # The model's state is a write on the model's partition, not done by the handler itself.
    state = stage.decider.model_state("chat").to_json()
    assert effects.writes == [Write(stage.table, b"chat", state, 3)]
    assert stage.table.get(b"chat") is None
    # The page is a record like the action: acknowledged before the detections are acked, and
    # delivered by the notify stage (nothing is left to run after the unit).
    assert effects.after == [] and effects.records.take() == {}
    assert [(page.status, page.group_labels["model"]) for page in pages(stage, out)] == [("firing", "chat")]
    metrics = stage.metrics.render().decode()
    assert metric_total(metrics, "loopwatch_detections_decided_total") == 1
    assert metric_total(metrics, "loopwatch_actions_total", type=ROLLBACK_REQUESTED) == 1


def test_an_unchanged_model_state_is_not_written_again(stage: DecideStage) -> None:
    apply(stage, handle(stage, [detection(0)]))
    quiet = tick(stage, 1)
    assert quiet.writes == [] and records(quiet) == {}


def test_a_restarted_stage_carries_on_from_the_decisions_table(tmp_path: Path) -> None:
    crashed = make_stage(tmp_path / "a")
    effects = handle(crashed, [detection(0)])
    assert len(records(effects)[crashed.topics.rollback_requests]) == 1
    restarted = make_stage(tmp_path / "b")
    for write in effects.writes:  # the table as a restarted worker recovers it from the changelog
        restarted.table.apply(write.key, write.value, write.partition)
    again = records(handle(restarted, [detection(0), detection(1)]))
    assert stage_actions(restarted, again) == []
    fresh = make_stage(tmp_path / "c")
    assert len(stage_actions(fresh, records(handle(fresh, [detection(0)])))) == 1  # no table: published


def stage_actions(stage: DecideStage, out: dict[str, list[Sent]]) -> list[Sent]:
    return out.get(stage.topics.rollback_requests, []) + out.get(stage.topics.retrain_requests, [])


def test_a_retrain_request_names_the_curated_dataset_version(stage: DecideStage) -> None:
    ref = {"table": "sft", "uri": "file:///datasets/sft", "version": 7}

    class Datasets:
        def training_ref(self) -> dict[str, Any]:
            return ref

    stage.datasets = Datasets()  # type: ignore[assignment]
    drift = [detection(m, "ks", version="v1", n=500) for m in range(3)]
    [retrain] = records(handle(stage, drift))[stage.topics.retrain_requests]
    event = from_kafka(retrain[1])
    assert event.type == RETRAIN_REQUESTED and event.data["dataset"] == ref


def test_a_message_that_is_not_a_detection_is_rejected_by_the_stages_decoder(stage: DecideStage) -> None:
    decode = stage.inputs[stage.topics.detections]
    rejected = decode(Message(b'{"detector_id": '), time.time())
    assert isinstance(rejected, Rejected) and rejected.reason == DeadLetterReason.MALFORMED_JSON
    assert isinstance(decode(Message(detection(0).model_dump_json().encode()), time.time()), Accepted)


def test_a_stable_mark_from_the_control_topic_is_the_target_of_the_next_rollback(
    stage: DecideStage,
) -> None:
    mark = StableVersionMarked(model="chat", version="v0", marked_at=T0)
    assert records(receive(stage, mark)) == {}
    [rollback] = records(handle(stage, [detection(0)]))[stage.topics.rollback_requests]
    assert from_kafka(rollback[1]).data["target_version"] == "v0"


def test_a_silence_mutes_and_is_announced_once_by_the_partition_0_owner_after_recovery(
    stage: DecideStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    silence = Silence(
        id="s1",
        matchers=[parse_matcher("model=chat")],
        starts_at=T0,
        ends_at=T0 + timedelta(minutes=30),
        comment="upgrade",
    )
    assert records(receive(stage, silence)) == {}
    assert stage_actions(stage, records(handle(stage, [detection(1)]))) == []  # muted
    app: Any = stage.app
    assigned: set[TP] = set()
    monkeypatch.setattr(app.assignor, "assigned_actives", lambda: assigned)
    announced = stage.table.get(b"*silences-announced*")
    assert records(tick(stage, 2)).get(stage.topics.alerts) is None  # the table is not recovered yet
    app.tables.recovery.completed.set()
    assert records(tick(stage, 2)).get(stage.topics.alerts) is None  # partition 0 is another worker's
    assigned.add(TP(stage.topics.detections, 0))
    effects = tick(stage, 2)
    out = records(effects)
    [notice] = [json.loads(v) for _, v, _ in out[stage.topics.alerts]]
    assert notice["status"] == "firing" and notice["labels"]["silence_id"] == "s1"
    # The record of the announcement is a state write, which the runtime sends after the alert.
    [write] = [w for w in effects.writes if w.key == b"*silences-announced*"]
    assert write.partition == 0 and json.loads(write.value or b"") == {"s1": "2026-03-01T12:30:00Z"}
    assert stage.table.get(b"*silences-announced*") == announced and effects.after == []
    assert [(page.group_labels["silence_id"], page.status) for page in pages(stage, out)] == [
        ("s1", "firing")
    ]
    apply(stage, effects)
    assert records(tick(stage, 3)).get(stage.topics.alerts) is None  # announced once
    ended = tick(stage, 31)
    alerts = [json.loads(v) for _, v, _ in records(ended)[stage.topics.alerts]]
    [notice] = [alert for alert in alerts if alert["labels"]["alertname"] == "silence"]
    assert notice["status"] == "resolved" and notice["labels"]["silence_id"] == "s1"
    [write] = [w for w in ended.writes if w.key == b"*silences-announced*"]
    assert json.loads(write.value or b"") == {}


def test_the_stage_takes_no_message_it_does_not_know(stage: DecideStage) -> None:
    # Failed pages are recorded by the notify stage now (tests/test_pages.py), not posted here.
    with pytest.raises(NotImplementedError):
        receive(stage, object())
