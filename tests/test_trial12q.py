"""What a new user's trial of the console found (trial 12q), each held to its fix.

- `loopwatch demo --console` took no port: its console always took 8050;
- a per-field dead letter named pydantic's union members, `value.constrained-float: ...`;
- (in tests/test_demo.py) the demo says how to open its run again with the policy that decided its
  actions, and the console says when it explains another policy than the one that decided;
- (in tests/test_console.py) times on the Datasets page to the second, not `.594000`.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from schemas.events import Feedback, InferenceLog
from services.cli import main
from streams.ingest import Rejected, decode

EVENT = {
    "schema_version": "1",
    "event_id": "e-1",
    "request_id": "r-1",
    "timestamp": "2026-11-01T10:00:00Z",
    "model": {"name": "m", "version": "v1"},
    "response": "Paris.",
}


def test_the_demo_takes_the_consoles_port_and_address_with_console_only() -> None:
    runner = CliRunner()
    help_text = runner.invoke(main, ["demo", "--help"]).output
    assert "--port INTEGER" in help_text and "--host TEXT" in help_text
    refused = runner.invoke(main, ["demo", "--port", "38050"])
    assert refused.exit_code == 2 and "--port and --host are the console's: give them with --console" in (
        refused.output
    )


def rejected(raw: bytes, model: type[InferenceLog] | type[Feedback]) -> Rejected:
    outcome = decode(raw, model, max_bytes=1 << 20)
    assert isinstance(outcome, Rejected)
    return outcome


def test_a_rating_of_nan_names_its_field_not_the_union_members_it_was_tried_as() -> None:
    raw = b'{"schema_version":"1","event_id":"e","request_id":"r","timestamp":"2026-11-01T10:00:00Z",'
    outcome = rejected(raw + b'"kind":"rating","value":NaN}', Feedback)
    assert outcome.reason.value == "non_finite_number"
    # Not "(and 2 more)": that it is no boolean and no string either (trial 12t) is no error of its own.
    assert outcome.error == "invalid Feedback: value: Input should be a finite number"
    assert [(d["field"], d["type"]) for d in outcome.detail] == [("value", "finite_number")]


def test_the_errors_of_other_fields_are_still_counted_beside_a_union_members() -> None:
    raw = b'{"schema_version":"1","event_id":"e","request_id":"r","timestamp":"2026-11-01T10:00:00Z",'
    outcome = rejected(raw + b'"kind":"rating","value":NaN,"comment":7}', Feedback)
    assert outcome.error == "invalid Feedback: value: Input should be a finite number (and 1 more)"
    assert [d["field"] for d in outcome.detail] == ["value", "comment"]


@pytest.mark.parametrize(
    ("fields", "paths"),
    [
        ({"prompt": [{"role": "user", "content": 5}]}, ["prompt", "prompt.0.content"]),
        ({"prediction": [1]}, ["prediction", "prediction"]),
        # A feature named like a union member is the producer's key: kept.
        ({"features": {"int": [1], "a-b": None}}, ["features.int"] * 2 + ["features.a-b"] * 2),
    ],
)
def test_union_fields_are_named_by_the_events_path(fields: dict[str, object], paths: list[str]) -> None:
    outcome = rejected(json.dumps({**EVENT, **fields}).encode(), InferenceLog)
    assert [d["field"] for d in outcome.detail] == paths
    assert not any(tag in outcome.error for tag in ("constrained-", "list[", ".str", ".bool"))


def test_a_validator_s_own_words_come_without_pydantic_s_value_error_prefix() -> None:
    # Trial 12u: "user_id: Value error, user_id must be a hashed id ...".
    raw = b'{"schema_version":"1","event_id":"e","request_id":"r","timestamp":"2026-11-01T10:00:00Z",'
    outcome = rejected(raw + b'"kind":"thumbs","value":true,"user_id":"alice@example.com"}', Feedback)
    assert outcome.reason.value == "invalid_value"
    assert outcome.error.startswith("invalid Feedback: user_id: user_id must be a hashed id")
    assert "Value error" not in outcome.error
    assert [d["message"] for d in outcome.detail if "Value error" in d["message"]] == []


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (b'"kind":"thumbs","value":"yes"}', "value", "thumbs feedback needs value true/false or 1/-1"),
        (b'"kind":"thumbs"}', "value", "thumbs feedback needs value true/false or 1/-1"),
        (b'"kind":"rating","value":true}', "value", "rating feedback needs a numeric value"),
        (b'"kind":"correction"}', "correction", "correction feedback needs the corrected text"),
    ],
)
def test_a_value_that_does_not_fit_its_kind_names_its_field(fields: bytes, field: str, words: str) -> None:
    # Trial 12u: a thumbs "value": "yes" was reported under "(message)", not under value.
    raw = b'{"schema_version":"1","event_id":"e","request_id":"r","timestamp":"2026-11-01T10:00:00Z",'
    outcome = rejected(raw + fields, Feedback)
    assert outcome.error.startswith(f"invalid Feedback: {field}: {words}")
    assert [d["field"] for d in outcome.detail] == [field]
