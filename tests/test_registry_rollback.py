"""What a rollback through the registry means, without a server.

A bad canary (``challenger`` on it, ``champion`` on the target) leaves
rotation: the ``challenger`` alias is removed and ``champion`` stays. A bad
champion goes back to the version it replaced, which loopwatch tagged on it
when it made it champion. Anything else is refused, saying who points where.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from retrain_trigger.act import apply_request
from retrain_trigger.actions import PROMOTION_REQUESTED, ROLLBACK_REQUESTED, from_kafka
from retrain_trigger.registry import PREVIOUS_STABLE_TAG, apply_move, marker_key
from retrain_trigger.stable import StableVersionMarked, StableVersions
from schemas.events import CloudEvent
from streams.decide_stage import CanaryVersions
from tests.memory_registry import MemoryRegistry
from tests.test_decide_pipeline import T0, detection
from tests.test_decide_stage import handle, make_stage, receive, records

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def request(event_id: str, event_type: str, from_version: str, target_version: str) -> CloudEvent:
    """A rollback or promotion request of model ``chat`` (the fields the actuator reads)."""
    data = {"model": "chat", "from_version": from_version, "target_version": target_version, "reason": "bad"}
    return CloudEvent(id=event_id, source="/t", type=event_type, subject="chat", time=NOW, data=data)


def test_a_bad_canary_leaves_rotation_and_the_champion_stays() -> None:
    registry = MemoryRegistry({"chat": {"champion": "1", "challenger": "2"}})
    applied = apply_request(registry, request("r-1", ROLLBACK_REQUESTED, "2", "1"), NOW)
    assert applied.type == "io.loopwatch.rollback.applied"
    data = applied.data
    assert (data["alias"], data["from_version"], data["current_version"], data["reason"]) == (
        "challenger",
        "2",
        None,
        "removed",
    )
    assert registry.aliases("chat") == {"champion": "1"}
    [incident] = [k for k in registry.version_tags("chat", "2") if k.startswith("loopwatch.incident.")]
    assert registry.version_tags("chat", "1")[marker_key("r-1")] == "applied removal"
    assert incident in registry.version_tags("chat", "1")
    assert PREVIOUS_STABLE_TAG not in registry.version_tags("chat", "1")  # a rollback makes no champion
    # The canary goes live again (a person); the same request delivered again changes nothing.
    registry.set_alias("chat", "challenger", "2")
    again = apply_request(registry, request("r-1", ROLLBACK_REQUESTED, "2", "1"), NOW)
    assert (again.type, again.data["alias"], again.data["reason"]) == (
        "io.loopwatch.rollback.applied",
        "challenger",
        "already applied",
    )
    assert registry.aliases("chat") == {"champion": "1", "challenger": "2"}


def test_a_promotion_tags_the_previous_champion_which_a_rollback_of_it_goes_back_to() -> None:
    registry = MemoryRegistry({"chat": {"champion": "1", "challenger": "3"}})
    promoted = apply_request(registry, request("p-1", PROMOTION_REQUESTED, "1", "3"), NOW)
    assert (promoted.type, promoted.data["alias"], promoted.data["current_version"]) == (
        "io.loopwatch.promotion.applied",
        "champion",
        "3",
    )
    # The promoted challenger is champion now, no longer a canary.
    assert registry.aliases("chat") == {"champion": "3"}
    assert registry.version_tags("chat", "3")[PREVIOUS_STABLE_TAG] == "1"
    # Version 3 goes bad as champion: the decide stage targets the version it replaced.
    stable = StableVersions()
    stable.use_registry({"chat": "3"}, {"chat": registry.version_tags("chat", "3")[PREVIOUS_STABLE_TAG]})
    target = stable.rollback_target("chat", "3")
    assert target == "1"
    rolled = apply_request(registry, request("r-2", ROLLBACK_REQUESTED, "3", target), NOW)
    assert (rolled.type, rolled.data["alias"], rolled.data["current_version"]) == (
        "io.loopwatch.rollback.applied",
        "champion",
        "1",
    )
    assert registry.aliases("chat") == {"champion": "1"}


def test_a_promotion_leaves_a_challenger_on_another_version_alone() -> None:
    registry = MemoryRegistry({"chat": {"champion": "1", "challenger": "5"}})
    apply_request(registry, request("p-2", PROMOTION_REQUESTED, "1", "3"), NOW)
    assert registry.aliases("chat") == {"champion": "3", "challenger": "5"}


def test_a_rollback_whose_aliases_moved_is_rejected_saying_who_points_where() -> None:
    registry = MemoryRegistry({"chat": {"champion": "4", "challenger": "2"}})  # a person moved champion
    rejected = apply_request(registry, request("r-3", ROLLBACK_REQUESTED, "2", "1"), NOW)
    assert rejected.type == "io.loopwatch.rollback.rejected"
    assert rejected.data["reason"] == (
        "challenger points to 2 but champion points to 4, not 1: moved meanwhile, left alone"
    )
    registry.set_alias("chat", "challenger", None)
    neither = apply_request(registry, request("r-4", ROLLBACK_REQUESTED, "2", "1"), NOW)
    assert neither.data["reason"] == (
        "champion points to 4, not 2, and challenger is not set: moved meanwhile, left alone"
    )
    assert registry.aliases("chat") == {"champion": "4"}


def test_a_crash_after_the_challenger_was_removed_counts_as_applied_once() -> None:
    # What a worker killed right after delete_registered_model_alias leaves behind.
    registry = MemoryRegistry({"chat": {"champion": "1"}})
    registry.tag_version("chat", "1", {marker_key("r-5"): "pending removal"})
    outcome = apply_move(
        registry, "chat", kind="rollback", from_version="2", to_version="1", request_id="r-5", tags={}
    )
    assert (outcome.moved, outcome.alias, outcome.current) == (True, "challenger", None)
    assert registry.version_tags("chat", "1")[marker_key("r-5")] == "applied removal"
    # Killed before the removal, and a person pointed the challenger elsewhere meanwhile: left alone.
    registry = MemoryRegistry({"chat": {"champion": "1", "challenger": "6"}})
    registry.tag_version("chat", "1", {marker_key("r-6"): "pending removal"})
    kept = apply_move(
        registry, "chat", kind="rollback", from_version="2", to_version="1", request_id="r-6", tags={}
    )
    assert (kept.moved, kept.reason) == (False, "challenger points to 6, not 2: moved meanwhile, left alone")
    assert registry.aliases("chat") == {"champion": "1", "challenger": "6"}


def test_the_rollback_target_is_never_the_version_rolled_back() -> None:
    stable = StableVersions()
    stable.apply(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    stable.use_registry({"chat": "v3"})
    assert stable.rollback_target("chat", "v2") == "v3"  # a canary: back to the champion
    assert stable.rollback_target("chat", "v3") == "v1"  # the champion, untagged: the mark
    stable.use_registry({"chat": "v3"}, {"chat": "v0"})
    assert stable.rollback_target("chat", "v3") == "v0"  # the champion: the one it replaced
    stable.use_registry({"chat": "v1"}, {"chat": None})
    assert stable.rollback_target("chat", "v1") is None  # its mark is itself too: nowhere to go


def test_the_decide_stage_rolls_a_bad_champion_back_to_the_one_it_replaced(tmp_path: Path) -> None:
    stage = make_stage(tmp_path, registry="mlflow", mlflow_tracking_uri="http://127.0.0.1:9")
    registry = MemoryRegistry({"chat": {"champion": "v2"}})
    registry.tag_version("chat", "v2", {PREVIOUS_STABLE_TAG: "v0"})
    stage.registry = registry
    read = stage._read_canaries(["chat"])
    assert read == CanaryVersions({"chat": ""}, {"chat": "v2"}, {"chat": "v0"})
    receive(stage, read)
    [rollback] = records(handle(stage, [detection(0)]))[stage.topics.rollback_requests]
    data = from_kafka(rollback[1]).data
    assert (data["from_version"], data["target_version"]) == ("v2", "v0")  # not v2 itself, not the mark v1


def test_a_refused_promotion_tags_nothing_but_its_marker() -> None:
    registry = MemoryRegistry({"chat": {"champion": "4", "challenger": "3"}})  # 1 is no longer champion
    rejected = apply_request(registry, request("p-3", PROMOTION_REQUESTED, "1", "3"), NOW)
    assert rejected.data["reason"] == "champion points to 4, not 1: moved meanwhile, left alone"
    reason = rejected.data["reason"]
    assert registry.version_tags("chat", "3") == {marker_key("p-3"): f"rejected: {reason}"}
    assert registry.version_tags("chat", "1") == {}
    assert registry.aliases("chat") == {"champion": "4", "challenger": "3"}
