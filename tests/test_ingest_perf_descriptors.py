"""Ingest's descriptors as a plain dict (issue 16) say what describe()'s model says, byte for byte.

Ingest no longer builds a Descriptors model per event: it writes
``descriptor_values`` into the enriched JSON and builds the model only for the
rows its window samples keep. The enriched record and the rows must not change.
"""

from __future__ import annotations

from typing import Any

import pytest

from detectors.frame import describe, descriptor_values, log_row
from schemas.events import Descriptors, InferenceLog, SourceRef
from streams.ingest import enrich, enriched_json

_BASE: dict[str, Any] = {
    "schema_version": "1",
    "event_id": "e-1",
    "request_id": "r-1",
    "timestamp": "2026-12-01T12:00:00+01:00",
    "model": {"name": "helpdesk-bot", "version": "v2"},
}

# One of each branch of describe(): tokens given or estimated, an empty reply (ok and
# error), a refusal, a chat prompt, no prompt at all.
_LOGS = [
    {
        "prompt": "How do I reset my password? \u00e9\u2028",
        "response": "Open Settings.",
        "tokens": {"prompt": 7, "completion": 3},
    },
    {"prompt": "Hi!", "response": "I'm sorry, I can't help with that."},
    {"prompt": "Hi!", "response": "   "},
    {"prompt": "Hi!", "response": "", "status": "error", "error": "timeout"},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
        "response": "Because.",
    },
    {},
]


@pytest.mark.parametrize("fields", _LOGS)
def test_the_values_are_the_models_fields_in_its_order(fields: dict[str, Any]) -> None:
    log = InferenceLog.model_validate({**_BASE, **fields})
    values = descriptor_values(log)
    assert list(values.items()) == list(describe(log).model_dump().items())
    assert Descriptors(**values) == describe(log)


@pytest.mark.parametrize("fields", _LOGS)
def test_the_enriched_record_from_the_values_is_the_models_own_json(fields: dict[str, Any]) -> None:
    log = InferenceLog.model_validate({**_BASE, **fields})
    source = SourceRef(topic="llm.inference.v1", partition=3, offset=2**40)
    raw = log.model_dump_json().encode()
    expected = enrich(log, source).model_dump_json().encode()
    assert enriched_json(raw, descriptor_values(log), source) == expected
    assert enriched_json(raw, describe(log), source) == expected  # the model still works as before


@pytest.mark.parametrize("fields", _LOGS)
def test_a_window_row_is_the_same_from_the_values(fields: dict[str, Any]) -> None:
    log = InferenceLog.model_validate({**_BASE, **fields})
    assert log_row(log, Descriptors(**descriptor_values(log)), 1000) == log_row(log, describe(log), 1000)
