"""The registry protocol without a server: rollback targets registry-first, apply_move, result events.

Rollbacks mean two things: a bad canary leaves rotation (its ``challenger``
alias removed, ``champion`` untouched), a bad champion goes back to the
version it replaced.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from core.settings import Settings
from retrain_trigger.act import apply_request
from retrain_trigger.actions import PROMOTION_REQUESTED, ROLLBACK_REQUESTED, from_kafka, to_kafka
from retrain_trigger.registry import (
    AliasMove,
    RegistryError,
    apply_move,
    marker_key,
    registry_from_settings,
)
from retrain_trigger.stable import StableVersionMarked, StableVersions
from schemas.events import CloudEvent, DeadLetterReason
from streams.act_stage import ActStage
from streams.app import create_app
from streams.decide_stage import CanaryVersions
from streams.ingest import Rejected
from streams.runtime import Effects, Write
from tests.helpers import decoded_batch
from tests.memory_registry import MemoryRegistry
from tests.test_decide_pipeline import T0, detection
from tests.test_decide_stage import Message, handle, make_stage, receive, records

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def test_the_registry_alias_is_the_rollback_target_and_marks_are_the_fallback() -> None:
    stable = StableVersions()
    stable.apply(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    assert stable.target("chat") == "v1"
    stable.use_registry({"chat": "v0", "other": None})
    assert (stable.target("chat"), stable.target("other")) == ("v0", None)
    stable.use_registry({"chat": None})  # the alias was removed: back to the marks
    assert stable.target("chat") == "v1"
    assert "registry" not in stable.to_json().decode()  # never stored: read again after a restart


def test_the_decide_stage_rolls_back_to_the_champion_it_read_from_the_registry(tmp_path: Path) -> None:
    stage = make_stage(tmp_path, registry="mlflow", mlflow_tracking_uri="http://127.0.0.1:9")
    stage.registry = MemoryRegistry({"chat": {"champion": "v0", "challenger": "v2"}})
    read = stage._read_canaries(["chat"])  # what the tick's background work returns
    assert read == CanaryVersions({"chat": "v2"}, {"chat": "v0"}, {"chat": None})
    receive(stage, read)
    [rollback] = records(handle(stage, [detection(0)]))[stage.topics.rollback_requests]
    assert from_kafka(rollback[1]).data["target_version"] == "v0"  # not stable_versions' v1


def test_without_a_registry_setting_there_is_none() -> None:
    assert registry_from_settings(Settings()) is None
    registry = registry_from_settings(
        Settings(registry="mlflow", mlflow_tracking_uri="http://mlflow:5000", registry_stable_alias="prod")
    )
    assert registry is not None and registry.stable_alias == "prod"


class FailingRegistry(MemoryRegistry):
    """A registry that is down."""

    def version_tags(self, model: str, version: str, *, cached: bool = False) -> dict[str, str]:
        raise RegistryError("MLflow registry at http://mlflow: connection refused", recoverable=True)


def event(event_id: str, event_type: str, from_version: str, target_version: str) -> CloudEvent:
    data = {"model": "chat", "from_version": from_version, "target_version": target_version, "reason": "bad"}
    return CloudEvent(id=event_id, source="/t", type=event_type, subject="chat", time=NOW, data=data)


def test_requests_become_applied_or_rejected_events_with_the_reason() -> None:
    registry = MemoryRegistry({"chat": {"champion": "v2"}})
    applied = apply_request(registry, event("r-1", ROLLBACK_REQUESTED, "v2", "v1"), NOW)
    assert (applied.id, applied.type, applied.subject) == (
        "r-1:applied",
        "io.loopwatch.rollback.applied",
        "chat",
    )
    assert applied.data["applied"] and applied.data["current_version"] == "v1"
    rejected = apply_request(registry, event("p-1", PROMOTION_REQUESTED, "v2", "v3"), NOW)
    assert rejected.type == "io.loopwatch.promotion.rejected"
    assert rejected.data["reason"] == "champion points to v1, not v2: moved meanwhile, left alone"
    down = apply_request(FailingRegistry(), event("r-2", ROLLBACK_REQUESTED, "v2", "v1"), NOW)
    assert down.type == "io.loopwatch.rollback.rejected"
    assert "registry error: MLflow registry at http://mlflow: connection refused" in down.data["reason"]


def test_a_pending_marker_with_the_alias_elsewhere_is_rejected_not_forced() -> None:
    registry = MemoryRegistry({"chat": {"champion": "v3"}})
    registry.tag_version("chat", "v1", {marker_key("r-9"): "pending"})  # crashed before its move
    outcome = apply_move(
        registry, "chat", kind="rollback", from_version="v2", to_version="v1", request_id="r-9", tags={}
    )
    assert outcome == AliasMove(
        False, "v3", "champion points to v3, not v2: moved meanwhile, left alone", "champion"
    )
    assert registry.stable_version("chat") == "v3"


def test_marker_keys_are_safe_and_distinct() -> None:
    assert marker_key("abc-1.2") == "loopwatch.move.abc-1.2"
    odd, other = marker_key("a#b"), marker_key("a$b")
    assert odd != other and odd.startswith("loopwatch.move.a_b~")


def act_batch(stage: ActStage, topic: str, events: list[CloudEvent]) -> Effects:
    """Decode ``events`` as the runtime does and hand them to the act stage as one batch."""
    messages = [Message(to_kafka(e)[1], 2, n, topic) for n, e in enumerate(events)]
    return asyncio.run(stage.handle(decoded_batch(stage, topic, messages), time.time()))


def test_the_act_stage_applies_each_request_once_and_skips_other_events(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        detection=False,
        curation=False,
        decide=False,
        actuator="mlflow",
        mlflow_tracking_uri="http://127.0.0.1:9",
    )
    stage = create_app(settings).runtime.stages["act"]
    assert isinstance(stage, ActStage)
    topics = settings.topics
    assert set(stage.inputs) == {
        topics.rollback_requests,
        topics.promotion_requests,
    }  # no trigger: no retrain
    stage.registry = MemoryRegistry({"chat": {"champion": "v2"}})
    request = event("r-1", ROLLBACK_REQUESTED, "v2", "v1")
    verified = event("r-0", "io.loopwatch.rollback.verified", "v3", "v2")
    effects = act_batch(stage, topics.rollback_requests, [request, verified, request])
    [(key, value, _)] = records(effects)[topics.rollback_requests]
    assert (key, from_kafka(value).type) == (b"chat", "io.loopwatch.rollback.applied")
    assert effects.writes == [Write(stage.table, b"r-1", b"io.loopwatch.rollback.applied", 2)]
    for write in effects.writes:
        stage.table.apply(write.key, write.value, write.partition)
    # Delivered again after its result was written (a replay, a second copy): nothing is called or sent.
    stage.registry = FailingRegistry()
    result = from_kafka(value)
    assert records(act_batch(stage, topics.rollback_requests, [request, result])) == {}
    rejected = stage.inputs[topics.rollback_requests](
        Message(to_kafka(event("r-2", ROLLBACK_REQUESTED, "", "v1"))[1]), 0
    )
    assert isinstance(rejected, Rejected) and rejected.reason == DeadLetterReason.INVALID_VALUE
