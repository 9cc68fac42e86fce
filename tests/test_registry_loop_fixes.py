"""What a new user found in the MLflow registry loop, each pinned by a test that failed before its fix.

Loopwatch's own retrain request dispatched (its dataset carries a ``uri``); the
detect stage's canary reference from the registry's champion; the gate of a
version loopwatch promoted; the gate's reason for an inconclusive measure;
``policy check``'s promote section; the demo's absolute MLflow store.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from curation.rules import curate
from curation.store import DatasetStore
from retrain_trigger.actions import RETRAIN_REQUESTED, CandidateEvidence, RetrainRequest, from_kafka
from retrain_trigger.dispatch import AIRFLOW_BODY, HTTP_BODY, job_parameters, render_body
from retrain_trigger.registry import apply_move
from services import sample_data
from services.cli import main
from services.commands import gate as gate_command
from services.demo.mlflow import backend_store_uri
from streams.act_stage import ActStage
from streams.ingest import Accepted
from streams.runtime import Effects
from streams.windows import Partial
from tests.test_dataset_store import real_records
from tests.test_decide_pipeline import detection
from tests.test_decide_stage import Message, handle, make_stage, records
from tests.test_detect_stage import FAST, _apply, _batch, _detections, _partial, _stage
from tests.test_promotion import PROMOTE, trial

from .mlflow_fixture import register_model


def test_loopwatchs_own_retrain_request_is_dispatched_with_its_dataset_uri(
    tmp_path: Path, exchanges: list[sample_data.Exchange]
) -> None:
    # One worker's decide and act stages: the request as the decide stage publishes it, with a real
    # curated table behind it, then the act stage's decoder (it dead-lettered this as invalid_value).
    decide = make_stage(tmp_path, retrain_trigger="http", retrain_trigger_url="http://127.0.0.1:9/job")
    store = DatasetStore(tmp_path / "datasets")
    store.write(curate(real_records(exchanges[:40])).rows)
    decide.datasets = store
    drift = [detection(m, "ks", version="v1", n=500) for m in range(3)]
    [(_, value, _)] = records(handle(decide, drift))[decide.topics.retrain_requests]
    act = decide.app.runtime.stages["act"]
    assert isinstance(act, ActStage)
    decoded = act.inputs[decide.topics.retrain_requests](Message(value), 0.0)
    assert isinstance(decoded, Accepted), decoded
    event = from_kafka(value)
    request = RetrainRequest.model_validate(decoded.event.data)
    assert event.type == RETRAIN_REQUESTED and request.dataset is not None
    assert request.dataset.uri == store.uri(request.dataset.table)
    params = job_parameters(event.id, request)
    assert params["dataset_uri"] == request.dataset.uri
    assert render_body(HTTP_BODY, params)["dataset_uri"] == request.dataset.uri
    assert render_body(AIRFLOW_BODY, params)["conf"]["dataset_uri"] == request.dataset.uri


def _of(model: str, partial: Partial) -> Partial:
    return dataclasses.replace(partial, segment={**partial.segment, "model": model})


def test_the_detect_stage_compares_a_canary_with_the_registrys_champion(
    tmp_path: Path, mlflow_server: str
) -> None:
    # Only aliases: no stable mark, no LOOPWATCH_STABLE_VERSIONS.
    model = register_model(mlflow_server, 2, aliases={"champion": "1", "challenger": "2"})
    stage = _stage(tmp_path, [FAST], registry="mlflow", mlflow_tracking_uri=mlflow_server)
    topic = stage.settings.topics.detections
    t0 = 1.8e9

    async def scenario() -> tuple[Effects, Effects]:
        canary = await stage.handle(_batch(_of(model, _partial("2", 900, 1))), t0)
        asked = await stage.tick(t0 + 0.1)
        [read] = asked.background  # the registry is read in a thread, never on the event loop
        await stage.receive(await read, t0 + 0.2)
        _apply(await stage.handle(_batch(_of(model, _partial("1", 500, 2))), t0 + 0.3))
        return canary, await stage.tick(t0 + 0.4)

    canary, ready = asyncio.run(scenario())
    assert not _detections(canary, topic)  # it waited for the registry rather than pin itself
    assert stage.references.stable_versions == {model: "1"}
    [found] = _detections(ready, topic)
    assert found.segment.model_version == "2" and found.reference.startswith(f"stable:inference|{model}|1|")
    assert found.verdict == "drift"


def test_the_gate_judges_a_promoted_version_against_the_champion_it_replaced(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = register_model(mlflow_server, 3, aliases={"champion": "1"})
    env = {
        "LOOPWATCH_REGISTRY": "mlflow",
        "LOOPWATCH_MLFLOW_TRACKING_URI": mlflow_server,
        "LOOPWATCH_DATA_DIR": str(tmp_path),
    }
    judged: list[tuple[str, str]] = []

    def evaluate(settings: Any, promote: Any, *, model: str, candidate: str, stable: str) -> Any:
        judged.append((candidate, stable))
        return CandidateEvidence.model_validate(
            {
                "model": model,
                "stable_version": stable,
                "candidate_version": candidate,
                "status": "non_inferior",
                "reason": "fine",
                "confidence": 0.95,
                "windows": 3,
                "windows_required": 3,
                "stable_windows": 3,
            }
        )

    monkeypatch.setattr(gate_command, "evaluate", evaluate)
    args = ["gate", "--model", model, "--candidate", "3"]
    unpromoted = CliRunner().invoke(main, [*args, "--stable", "3"], env=env)
    assert unpromoted.exit_code == 3 and "nothing to gate" in unpromoted.output
    # Loopwatch promotes 3 (the act stage's move: it tags 3 with the champion it replaced).
    from retrain_trigger.mlflow_registry import MlflowRegistry

    moved = apply_move(
        MlflowRegistry(mlflow_server),
        model,
        kind="promotion",
        from_version="1",
        to_version="3",
        request_id="pr-3",
        tags={},
    )
    assert moved.moved
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert judged == [("3", "1")]
    assert "gated against 1, the one it replaced" in result.output


def test_an_inconclusive_measure_is_named_with_its_interval_and_margin() -> None:
    # 0.15 vs 0.12 on 400 samples each: both past min_samples, the interval reaches past the margin.
    evidence = assess_reason(trial((60, 400), (48, 400)))
    assert "not enough data" not in evidence and "100 samples per measure" not in evidence
    assert "quality.negative_feedback.v1 current_rate: inconclusive" in evidence
    assert "not below the margin 0.05" in evidence and "3 of 3 windows" not in evidence
    short = assess_reason(trial((9, 90), (10, 100), windows=2))
    assert "2 of 3 windows" in short and "not enough data (v2 has 90 of 100 samples needed)" in short


def assess_reason(the_trial: Any) -> str:
    from retrain_trigger.promote import assess

    evidence = assess(the_trial, PROMOTE)
    assert evidence.status == "not_enough_data"
    return evidence.reason


def test_policy_check_prints_the_promote_section() -> None:
    policy = Path(__file__).resolve().parent.parent / "retrain_trigger" / "default_policy.yaml"
    result = CliRunner().invoke(main, ["policy", "check", str(policy)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    [start] = [n for n, line in enumerate(lines) if line.startswith("promote: ")]
    assert "3 window(s) with >= 100 samples" in lines[start] and "95% confidence" in lines[start]
    assert "  quality.negative_feedback.v1 current_rate: margin 0.05" in lines[start + 1 : start + 4]


def test_the_demo_names_its_mlflow_store_by_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = backend_store_uri(Path("run") / "mlflow")
    assert uri == f"sqlite:///{tmp_path.resolve()}/run/mlflow/mlflow.db"
    assert uri.startswith("sqlite:////")
