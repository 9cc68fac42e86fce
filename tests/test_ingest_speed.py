"""Issue 16's faster ingest path does what the slower one did.

The hand-built enriched JSON is byte for byte what pydantic writes; join states
in the stored form of format 2 decode to the same states, and format 1 (older
changelogs) still decodes; a large batch leaves the event loop to other tasks.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import lz4.block
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import from_json, to_json

from core.settings import Settings
from detectors.frame import describe
from schemas.events import InferenceLog, SourceRef
from streams import join
from streams.app import create_app
from streams.ingest import Accepted, enrich, enriched_json
from streams.ingest_stage import IngestStage
from streams.metrics import Metrics
from streams.runtime import Batch

_LOG = InferenceLog.model_validate(
    {
        "schema_version": "1",
        "event_id": "e-1",
        "request_id": "r-1",
        "timestamp": "2026-12-01T12:00:00Z",
        "model": {"name": "helpdesk-bot", "version": "v2"},
        "prompt": "How do I reset my password? \u00e9\u2028",
        "response": "I'm sorry, I can't help with that.",
        "tokens": {"prompt": 7, "completion": 6},
    }
)


@given(
    topic=st.text(min_size=1, max_size=40),
    partition=st.integers(min_value=0, max_value=2**31 - 1),
    offset=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_enriched_json_is_the_models_own_json(topic: str, partition: int, offset: int) -> None:
    source = SourceRef(topic=topic, partition=partition, offset=offset)
    raw = _LOG.model_dump_json().encode()
    assert enriched_json(raw, describe(_LOG), source) == enrich(_LOG, source).model_dump_json().encode()


# -- the join state's stored form (format 2: the inference as its own bytes) -------


def _states() -> list[join.JoinState]:
    inference = _LOG.model_dump_json()
    feedback = '{"schema_version":"1","event_id":"f-1","request_id":"r-1","kind":"flag"}'
    waiting = join._new_state(2, 1_800_000_000.5)
    waiting["pending"] = [{"feedback": feedback, "source": ("llm.feedback.v1", 2, 9)}]
    waiting["seen"] = ["f-1"]
    joined = join._new_state(0, 12.25)
    joined["inference"], joined["seen"] = inference, ["f-1", "f-2"]
    joined["inference_source"] = ("llm.inference.v1", 0, 2**40)
    return [waiting, joined, join._new_state(7, 0.0)]


def _plain(state: join.JoinState) -> dict[str, Any]:
    """The state as JSON holds it (tuples become lists)."""
    return cast(dict[str, Any], from_json(to_json(state)))


def test_every_kind_of_state_decodes_to_itself() -> None:
    for state in _states():
        stored = join.encode(state)
        assert stored[0] == 2  # the format byte
        assert _plain(join.decode(stored)) == _plain(state)
        assert join.stored_first_seen(stored) == state["first_seen"]
        assert join.stored_partition(stored) == state["partition"]


def test_format_1_states_in_an_older_changelog_still_decode() -> None:
    """What the previous version wrote: the whole state but the header as one LZ4-compressed JSON."""
    for state in _states():
        rest = {k: v for k, v in state.items() if k not in ("first_seen", "partition")}
        header = struct.pack("<BdI", 1, state["first_seen"], state["partition"])
        old = header + lz4.block.compress(to_json(rest))
        assert _plain(join.decode(old)) == _plain(state)


@given(text=st.text(max_size=300))
def test_any_inference_text_survives_the_stored_form(text: str) -> None:
    state = join._new_state(1, 5.0)
    state["inference"], state["inference_source"] = text, ("t", 1, 2)
    assert join.decode(join.encode(state))["inference"] == text


# -- the handler leaves the event loop to the producer during a large batch -------


def test_a_large_batch_lets_other_tasks_run_while_it_is_handled(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, join_store="memory", detection=False, curation=False, decide=False)
    stage = create_app(settings, Metrics()).runtime.stages["ingest"]
    assert isinstance(stage, IngestStage)
    topic, now = settings.topics.inference, time.time()
    messages = []
    for i in range(3 * stage.yield_every):
        value = _LOG.model_copy(update={"request_id": f"r-{i}", "event_id": f"e-{i}"}).model_dump_json()
        messages.append(
            SimpleNamespace(
                topic=topic,
                partition=i % 2,
                offset=i,
                key=f"r-{i}".encode(),
                value=value.encode(),
                timestamp=_LOG.timestamp.timestamp(),
                headers=[],
                tp=TP(topic, i % 2),
            )
        )
    decode = stage.inputs[topic]
    accepted = [(m, outcome) for m in messages if isinstance(outcome := decode(m, now), Accepted)]
    assert len(accepted) == len(messages)

    async def handle_while_another_task_counts() -> tuple[int, Any]:
        turns = 0

        async def other() -> None:  # stands for the producer reading the broker's answers
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other())
        try:
            effects = await stage.handle(Batch(topic, messages, accepted, time.perf_counter()), now)
        finally:
            task.cancel()
        return turns, effects

    turns, effects = asyncio.run(handle_while_another_task_counts())
    assert turns >= 2  # the other task ran during the batch, not only once it was done
    assert len(effects.writes) == len(messages)  # and the batch was still handled whole
    assert len(effects.records) == len(messages)  # one enriched record each
