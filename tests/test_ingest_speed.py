"""The ingest path's hand-built JSON (issue 16) is byte for byte what pydantic writes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from detectors.frame import describe
from schemas.events import InferenceLog, SourceRef
from streams.ingest import enrich, enriched_json

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
