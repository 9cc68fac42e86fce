"""Curated datasets from the stream, on the real broker: exact rows, and none lost or doubled by kill -9."""

from __future__ import annotations

import json
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from curation import DATASET_KINDS
from curation.rules import curate
from curation.store import DatasetStore
from detectors.scorers import ProfanityScorer
from schemas.events import Feedback, InferenceLog, JoinedFeedback, SourceRef
from services import sample_data
from streams.curate_stage import toxicity_verdicts
from tests.helpers import WorkerStack

pytestmark = pytest.mark.broker


def _traffic(data_dir: Path, pairs: int) -> tuple[list[bytes], list[bytes], list[JoinedFeedback]]:
    """HH-RLHF exchanges on distinct prompts: chosen replies get a thumbs-up, rejected ones a correction.

    Returns the inference and feedback messages and the joined records a correct
    stream must curate (the expectation is computed by the pure rules, in one batch).
    """
    rng = random.Random(3)
    start = sample_data.now() - timedelta(hours=1)
    seen_prompts: set[str] = set()
    inferences: list[bytes] = []
    feedback: list[bytes] = []
    joined: list[JoinedFeedback] = []
    source = SourceRef(topic="t", partition=0, offset=0)
    for n, (chosen, rejected) in enumerate(sample_data.hh_rlhf(data_dir)):
        if len(inferences) >= pairs:
            break
        key = json.dumps(chosen.prompt)
        if key in seen_prompts:
            continue
        seen_prompts.add(key)
        exchange = chosen if n % 2 else rejected
        at = start + timedelta(seconds=n)
        event = sample_data.inference_event(exchange, at, rng)
        verdict: dict[str, Any] = (
            {"kind": "thumbs", "value": True}
            if exchange is chosen
            else {"kind": "correction", "correction": chosen.response}
        )
        fb = {
            "schema_version": "1",
            "event_id": f"fb-{exchange.request_id}",
            "request_id": exchange.request_id,
            "timestamp": (at + timedelta(seconds=2)).isoformat(),
            "source": "user",
            **verdict,
        }
        inferences.append(json.dumps(event).encode())
        feedback.append(json.dumps(fb).encode())
        joined.append(
            JoinedFeedback(
                request_id=exchange.request_id,
                inference=InferenceLog.model_validate(event),
                feedback=Feedback.model_validate(fb),
                inference_source=source,
                feedback_source=source,
                joined_at=at,
            )
        )
    return inferences, feedback, joined


def _stored(root: Path) -> dict[str, list[str]]:
    """Row ids per dataset table (all of them, duplicates kept)."""
    store = DatasetStore(root)
    return {
        kind: sorted(store.read(kind).column("row_id").to_pylist())
        for kind in DATASET_KINDS
        if store.exists(kind)
    }


def _expected(joined: list[JoinedFeedback]) -> dict[str, list[str]]:
    verdicts = toxicity_verdicts(joined, ProfanityScorer(), Settings().toxicity_flag_threshold)
    rows = curate(joined, verdicts=verdicts).rows
    return {kind: sorted(r.row_id for r in rows if r.kind == kind) for kind in {r.kind for r in rows}}


def _wait_for(root: Path, expected: dict[str, list[str]], timeout: float = 120) -> dict[str, list[str]]:
    """Poll the stored row ids until they are ``expected``; what is stored at the deadline otherwise.

    The caller compares, so that a failure shows the difference.
    """
    deadline = time.monotonic() + timeout
    stored: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        stored = _stored(root) if root.exists() else {}
        if stored == expected:
            break
        time.sleep(1)
    return stored


def test_joined_feedback_becomes_exact_dataset_rows(broker: str, tmp_path: Path, data_dir: Path) -> None:
    stack = WorkerStack(broker, tmp_path, detection="false").start()
    try:
        inferences, feedback, joined = _traffic(data_dir, 60)
        stack.send(stack.topics.inference, inferences)
        stack.send(stack.topics.feedback, feedback)
        expected = _expected(joined)
        stored = _wait_for(tmp_path / "data" / "datasets", expected)
    finally:
        stack.stop()
    assert set(expected) == {"golden", "sft", "preference", "safety_review"}
    assert stored == expected


def test_kill_9_during_writes_loses_and_doubles_nothing(broker: str, tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "data" / "datasets"
    inferences, feedback, joined = _traffic(data_dir, 1500)
    expected = _expected(joined)
    stack = WorkerStack(broker, tmp_path, detection="false").start()
    stack.send(stack.topics.inference, inferences)
    first, second, rest = feedback[:500], feedback[500:1000], feedback[1000:]
    stack.send(stack.topics.feedback, first)
    stack.wait(lambda: stack.metric("loopwatch_curated_rows_total") > 0, "no row curated", 120, 0.05)
    # Kill as soon as the second chunk is joined: its rows are being curated and written.
    stack.send(stack.topics.feedback, second)
    second_joined = "loopwatch_feedback_joined_total"
    stack.wait(lambda: stack.metric(second_joined) > len(first), "second chunk not joined", 120, 0.05)
    stack.kill9()
    stack.send(stack.topics.feedback, rest)  # while the worker is down
    stack.start()
    try:
        stored = _wait_for(root, expected)
    finally:
        stack.stop()
    for kind, ids in stored.items():
        assert len(ids) == len(set(ids)), f"duplicate rows in {kind}"
    assert stored == expected
