"""A date-time with a space for its T is invalid_value (right type, wrong value), naming the fix."""

from __future__ import annotations

import json

import pytest

from schemas.events import DeadLetterReason, Feedback
from streams.ingest import Rejected, decode

FEEDBACK = {
    "schema_version": "1",
    "event_id": "f-1",
    "request_id": "r-1",
    "timestamp": "2026-12-02T03:00:00Z",
    "kind": "thumbs",
    "value": -1,
}


@pytest.mark.parametrize(
    ("stamp", "message"),
    [
        (
            "2026-12-02 03:00:00",
            "needs a T between the date and the time and a UTC offset, e.g. 2026-11-01T10:00:00Z",
        ),
        ("2026-12-02 03:00:00.5+01:00", "needs a T between the date and the time, e.g. 2026-11-01T10:00:00Z"),
        ("2026-12-02 03:00:00Z", "needs a T between the date and the time, e.g. 2026-11-01T10:00:00Z"),
    ],
)
def test_a_spaced_timestamp_is_an_invalid_value_that_names_the_fix(stamp: str, message: str) -> None:
    outcome = decode(json.dumps({**FEEDBACK, "timestamp": stamp}).encode(), Feedback, max_bytes=10_000)
    assert isinstance(outcome, Rejected)
    assert outcome.reason == DeadLetterReason.INVALID_VALUE
    assert outcome.error == f"invalid Feedback: timestamp: {message}"


def test_a_timestamp_that_is_no_date_time_stays_a_wrong_type() -> None:
    outcome = decode(json.dumps({**FEEDBACK, "timestamp": "yesterday"}).encode(), Feedback, max_bytes=10_000)
    assert isinstance(outcome, Rejected) and outcome.reason == DeadLetterReason.WRONG_TYPE
