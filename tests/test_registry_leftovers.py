"""What issue 13 left: the gate's doubled line, an unknown candidate, a champion with nothing before it,
verification only after ``rollback.applied``, and the ``verify.within`` deadline for backdated traffic."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrain_trigger.act import ROLLBACK_APPLIED, apply_request
from retrain_trigger.actions import (
    ROLLBACK_FAILED,
    ROLLBACK_REQUESTED,
    ROLLBACK_SKIPPED,
    ROLLBACK_VERIFIED,
    from_kafka,
    to_kafka,
)
from retrain_trigger.pipeline import Decider
from retrain_trigger.policy import Promote
from retrain_trigger.promote import Trial, assess, note_alert
from retrain_trigger.stable import StableVersionMarked
from schemas.events import CloudEvent, Detection
from services.cli import main
from services.commands.gate import evidence_lines
from streams.decide_stage import CanaryVersions, DecideStage
from streams.runtime import Effects
from tests.helpers import decoded_batch
from tests.memory_registry import MemoryRegistry
from tests.mlflow_fixture import register_model
from tests.test_decide_pipeline import T0, detection, policy
from tests.test_decide_stage import Message, handle, make_stage, receive, records


def rollback_events(stage: DecideStage, *effects: Effects) -> list[CloudEvent]:
    """The CloudEvents the units put on the rollback topic, in order."""
    return [
        from_kafka(value)
        for e in effects
        for _, value, _ in records(e).get(stage.topics.rollback_requests, [])
    ]


def test_the_gate_says_which_alerts_fired_once() -> None:
    trial = Trial(model="chat", candidate_version="v2", stable_version="v1", started=T0)
    note_alert(trial, "bad-replies")
    lines = evidence_lines(assess(trial, Promote()))
    assert sum("alerts fired for v2: bad-replies" in line for line in lines) == 1, lines


def test_the_gate_on_a_version_the_registry_does_not_have_is_one_line_and_exit_3(
    mlflow_server: str, tmp_path: Path
) -> None:
    model = register_model(mlflow_server, 1, aliases={"champion": "1"})
    env = {
        "LOOPWATCH_REGISTRY": "mlflow",
        "LOOPWATCH_MLFLOW_TRACKING_URI": mlflow_server,
        "LOOPWATCH_DATA_DIR": str(tmp_path),
    }
    args = ["gate", "--model", model, "--candidate", "7", "--stable", "1", "--bootstrap", "127.0.0.1:9"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 3, result.output
    [line] = result.stderr.strip().splitlines()
    assert f"model {model} has no version 7" in line and mlflow_server in line, line


def test_a_champion_without_a_previous_version_records_why_nothing_was_rolled_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No mark either: the registry's champion v2 is all there is.
    stage = make_stage(tmp_path, stable_versions={})
    receive(stage, CanaryVersions({}, {"chat": "v2"}, {"chat": None}))
    with caplog.at_level(logging.WARNING, logger="loopwatch.decide"):
        first = handle(stage, [detection(0)])
        later = handle(stage, [detection(1)])
    [skipped] = rollback_events(stage, first, later)
    assert skipped.type == ROLLBACK_SKIPPED and skipped.data["from_version"] == "v2"
    assert "no loopwatch.previous_champion tag" in skipped.data["skipped_because"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("no rollback of chat/v2: the failing version v2") for m in warned), warned


def rated(minute: float, version: str, verdict: str, rate: float, n: int = 100) -> Detection:
    """A negative-feedback window with the rate the rollback watch compares."""
    return detection(minute, version=version, verdict=verdict, rate=rate, n=n)


def test_with_an_act_stage_verification_counts_only_windows_after_rollback_applied(tmp_path: Path) -> None:
    stage = make_stage(tmp_path, actuator="mlflow", mlflow_tracking_uri="http://127.0.0.1:9")
    [request] = rollback_events(stage, handle(stage, [rated(0, "v2", "drift", 0.8)]))
    assert request.type == ROLLBACK_REQUESTED
    # The target's window is good, but the act stage has not said the rollback was applied.
    assert rollback_events(stage, handle(stage, [rated(2, "v1", "ok", 0.1)])) == []
    registry = MemoryRegistry({"chat": {"champion": "v1", "challenger": "v2"}})
    result = apply_request(registry, request, T0 + timedelta(minutes=2, seconds=30))
    assert result.type == ROLLBACK_APPLIED
    topic = stage.topics.rollback_requests
    messages = [Message(to_kafka(e)[1], 0, i, topic) for i, e in enumerate((request, result))]
    armed = asyncio.run(stage.handle(decoded_batch(stage, topic, messages), T0.timestamp()))
    assert rollback_events(stage, armed) == []
    # Window 2 started before the move: window 3 is the first that counts, and it verifies.
    [verified] = rollback_events(stage, handle(stage, [rated(3, "v1", "ok", 0.1)]))
    assert verified.type == ROLLBACK_VERIFIED
    assert verified.data["comparisons"][0]["target_samples"] == 100  # window 3 alone


def backdated(d: Detection, now: datetime) -> Detection:
    """A detection of replayed traffic: its window is old, it is decided now."""
    return d.model_copy(update={"detected_at": now})


def test_verification_of_backdated_traffic_runs_its_deadline_on_the_windows_times() -> None:
    d = Decider(policy())
    d.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    # A replay of traffic 100 minutes old (verify.within is 1h).
    now = T0 + timedelta(minutes=100)
    opened = d.decide(backdated(rated(0, "v2", "drift", 0.8), now), now)
    assert [e.type for e in opened.actions] == [ROLLBACK_REQUESTED]
    short = d.decide(backdated(rated(2, "v1", "ok", 0.1, n=10), now), now + timedelta(seconds=1))
    early = d.tick(now + timedelta(seconds=5))
    assert short.actions == [] and early.actions == []  # not failed at once
    # An hour of the replay's windows later, still too few samples: failed, by the windows' times.
    late = d.decide(backdated(rated(62, "v1", "ok", 0.1, n=10), now), now + timedelta(seconds=30))
    [failed] = late.actions + d.tick(now + timedelta(seconds=35)).actions
    assert failed.type == ROLLBACK_FAILED and "not enough data within 1:00:00" in failed.data["reason"]
