"""The MLflow registry against a real tracking server: aliases read with a cache, compare-and-set, tags."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from retrain_trigger.act import MoveRequest, apply_request, incident_tags
from retrain_trigger.actions import PROMOTION_REQUESTED, ROLLBACK_REQUESTED
from retrain_trigger.mlflow_registry import MlflowRegistry
from retrain_trigger.registry import PREVIOUS_STABLE_TAG, apply_move, marker_key, previous_stable
from retrain_trigger.stable import StableVersions
from schemas.events import CloudEvent
from services.cli import main

from .mlflow_fixture import alias_target, mlflow_client, register_model, version_tags
from .test_registry_rollback import NOW, request


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stable_and_canary_are_the_aliases_read_with_a_short_cache(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 3, aliases={"champion": "1", "challenger": "2"})
    clock = Clock()
    registry = MlflowRegistry(mlflow_server, cache_seconds=10, clock=clock)
    assert (registry.stable_version(name), registry.canary_version(name)) == ("1", "2")
    mlflow_client(mlflow_server).set_registered_model_alias(name, "champion", "3")
    clock.now = 9.0
    assert registry.stable_version(name) == "1"  # still cached
    clock.now = 10.5
    assert registry.stable_version(name) == "3"
    assert registry.stable_version("not-registered-anywhere") is None


def test_alias_names_are_configurable(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 2, aliases={"prod": "2", "canary": "1"})
    registry = MlflowRegistry(mlflow_server, stable_alias="prod", canary_alias="canary")
    assert (registry.stable_version(name), registry.canary_version(name)) == ("2", "1")
    assert registry.move_stable(name, expected="2", to_version="1").moved
    assert alias_target(mlflow_server, name, "prod") == "1"
    assert alias_target(mlflow_server, name, "champion") is None


def test_move_is_a_compare_and_set_that_never_clobbers_a_person(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 3, aliases={"champion": "2"})
    registry = MlflowRegistry(mlflow_server)
    assert registry.stable_version(name) == "2"  # cached: the move must not trust it
    mlflow_client(mlflow_server).set_registered_model_alias(name, "champion", "3")
    refused = registry.move_stable(name, expected="2", to_version="1")
    assert (refused.moved, refused.current) == (False, "3")
    assert "points to 3, not 2" in refused.reason
    assert alias_target(mlflow_server, name, "champion") == "3"
    moved = registry.move_stable(name, expected="3", to_version="1")
    assert (moved.moved, moved.current) == (True, "1")
    assert alias_target(mlflow_server, name, "champion") == "1"
    assert registry.stable_version(name) == "1"  # its own move clears the cache


def test_a_request_moves_the_alias_once_and_tags_both_versions(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 2, aliases={"champion": "2"})
    registry = MlflowRegistry(mlflow_server)
    tags = {"loopwatch.incident.ev-1": '{"reason": "negative feedback 0.87"}'}
    first = apply_move(
        registry, name, kind="rollback", from_version="2", to_version="1", request_id="ev-1", tags=tags
    )
    assert (first.moved, first.reason) == (True, "moved")
    assert alias_target(mlflow_server, name, "champion") == "1"
    assert version_tags(mlflow_server, name, "2") == tags
    assert version_tags(mlflow_server, name, "1") == {**tags, marker_key("ev-1"): "applied"}
    # A person moves it back; the same request delivered again does not move it a second time.
    mlflow_client(mlflow_server).set_registered_model_alias(name, "champion", "2")
    again = apply_move(
        registry, name, kind="rollback", from_version="2", to_version="1", request_id="ev-1", tags=tags
    )
    assert (again.moved, again.reason) == (True, "already applied")
    assert alias_target(mlflow_server, name, "champion") == "2"


def test_a_crash_between_the_move_and_its_marker_counts_as_applied(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 2, aliases={"champion": "1"})
    registry = MlflowRegistry(mlflow_server)
    # What a worker killed right after set_registered_model_alias leaves behind.
    registry.tag_version(name, "2", {marker_key("ev-2"): "pending"})
    registry.set_stable(name, "2")
    outcome = apply_move(
        registry, name, kind="rollback", from_version="1", to_version="2", request_id="ev-2", tags={}
    )
    assert (outcome.moved, outcome.current) == (True, "2")
    assert version_tags(mlflow_server, name, "2")[marker_key("ev-2")] == "applied"


def test_a_rejected_request_stays_rejected(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 3, aliases={"champion": "3"})
    registry = MlflowRegistry(mlflow_server)
    first = apply_move(
        registry, name, kind="rollback", from_version="2", to_version="1", request_id="ev-3", tags={}
    )
    assert not first.moved and "points to 3, not 2" in first.reason
    mlflow_client(mlflow_server).set_registered_model_alias(name, "champion", "2")
    # Delivered again once the alias happens to match: still the first answer, nothing moved.
    again = apply_move(
        registry, name, kind="rollback", from_version="2", to_version="1", request_id="ev-3", tags={}
    )
    assert (again.moved, again.reason) == (False, first.reason)
    assert alias_target(mlflow_server, name, "champion") == "2"


def test_mark_stable_moves_the_alias_when_a_registry_is_configured(
    mlflow_server: str, tmp_path: Path
) -> None:
    name = register_model(mlflow_server, 2, aliases={"champion": "1"})
    env = {"LOOPWATCH_REGISTRY": "mlflow", "LOOPWATCH_MLFLOW_TRACKING_URI": mlflow_server}
    result = CliRunner(env=env).invoke(
        main, ["model", "mark-stable", name, "2", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert f"{name}: alias champion -> 2 in the registry (was 1)" in result.output
    assert alias_target(mlflow_server, name, "champion") == "2"
    # The new champion remembers the one it replaced: the target if it goes bad.
    assert version_tags(mlflow_server, name, "2")[PREVIOUS_STABLE_TAG] == "1"
    # Without a registry, nothing but the local mark (and the control topic) changes, as before.
    plain = CliRunner().invoke(main, ["model", "mark-stable", name, "1", "--state-dir", str(tmp_path)])
    assert plain.exit_code == 0 and "registry" not in plain.output
    assert alias_target(mlflow_server, name, "champion") == "2"


def test_a_bad_canary_loses_its_challenger_alias_and_the_champion_stays(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 2, aliases={"champion": "1", "challenger": "2"})
    registry = MlflowRegistry(mlflow_server)
    rollback = _for(name, request("ev-4", ROLLBACK_REQUESTED, "2", "1"))
    applied = apply_request(registry, rollback, NOW)
    assert applied.type == "io.loopwatch.rollback.applied"
    assert (applied.data["alias"], applied.data["current_version"]) == ("challenger", None)
    assert (
        alias_target(mlflow_server, name, "challenger"),
        alias_target(mlflow_server, name, "champion"),
    ) == (
        None,
        "1",
    )
    tags = incident_tags("ev-4", "rollback", MoveRequest.model_validate(rollback.data))
    assert version_tags(mlflow_server, name, "2") == tags
    assert version_tags(mlflow_server, name, "1") == {**tags, marker_key("ev-4"): "applied removal"}


def test_a_bad_champion_goes_back_to_the_champion_it_replaced(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 3, aliases={"champion": "1", "challenger": "3"})
    registry = MlflowRegistry(mlflow_server)
    promoted = apply_request(registry, _for(name, request("ev-5", PROMOTION_REQUESTED, "1", "3")), NOW)
    assert promoted.type == "io.loopwatch.promotion.applied"
    assert mlflow_client(mlflow_server).get_registered_model(name).aliases == {"champion": "3"}
    # What the decide stage reads: champion 3, which replaced 1; a rollback of 3 goes there.
    stable = StableVersions()
    stable.use_registry({name: registry.stable_version(name)}, {name: previous_stable(registry, name, "3")})
    target = stable.rollback_target(name, "3")
    assert target == "1"
    applied = apply_request(registry, _for(name, request("ev-6", ROLLBACK_REQUESTED, "3", target)), NOW)
    assert (applied.type, applied.data["alias"], applied.data["current_version"]) == (
        "io.loopwatch.rollback.applied",
        "champion",
        "1",
    )
    assert alias_target(mlflow_server, name, "champion") == "1"
    assert version_tags(mlflow_server, name, "1")[marker_key("ev-6")] == "applied"


def test_a_rollback_is_rejected_when_a_person_moved_an_alias_meanwhile(mlflow_server: str) -> None:
    name = register_model(mlflow_server, 3, aliases={"champion": "1", "challenger": "2"})
    registry = MlflowRegistry(mlflow_server)
    assert registry.canary_version(name) == "2"  # cached: the rollback must not trust it
    mlflow_client(mlflow_server).set_registered_model_alias(name, "challenger", "3")  # the next canary
    rejected = apply_request(registry, _for(name, request("ev-7", ROLLBACK_REQUESTED, "2", "1")), NOW)
    assert rejected.type == "io.loopwatch.rollback.rejected"
    assert rejected.data["reason"] == (
        "champion points to 1, not 2, and challenger points to 3: moved meanwhile, left alone"
    )
    assert mlflow_client(mlflow_server).get_registered_model(name).aliases == {
        "champion": "1",
        "challenger": "3",
    }


def _for(model: str, event: CloudEvent) -> CloudEvent:
    """``event`` about ``model`` (each test registers its own)."""
    return event.model_copy(update={"subject": model, "data": {**event.data, "model": model}})
