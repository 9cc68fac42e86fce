"""Trial 12e, the Dead letters page: each sample says when it was refused, and counts tick on whole numbers.

The history's ``deadletters`` rows come from the history stage's own
``deadletter_rows``, which keeps each sample as its DeadLetter (``received_at``
included); a row written without it still shows its minute, labelled a minute.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from fastapi.testclient import TestClient

from curation.history import PARTITION_BY, SCHEMAS, Letter, deadletter_rows
from curation.store import DatasetStore
from schemas.events import DeadLetter, DeadLetterReason, SourceRef
from services.console import Console, create_app
from services.console.deadletter_page import deadletters_view
from services.console.reader import HistoryReader
from services.console.views import DayRange

MINUTE = datetime(2026, 12, 2, 0, 43, tzinfo=UTC)
REFUSED = MINUTE + timedelta(seconds=20, microseconds=189_493)  # the trial's broken JSON


def _letter(reason: DeadLetterReason, offset: int, at: datetime) -> Letter:
    value = b'{"request_id": "r-1", 7: "x"}'
    letter = DeadLetter(
        reason=reason,
        error=f"{reason.value}: refused",
        source=SourceRef(topic="llm.inference.v1", partition=0, offset=offset),
        value_b64=base64.b64encode(value).decode(),
        value_bytes=len(value),
        value_sha256="0" * 64,
        received_at=at,
    )
    return Letter(partition=0, offset=offset, letter=letter)


def write_deadletters(root: Path) -> None:
    """Two letters the way the history stage writes them, and one older row whose sample has no time."""
    rows = deadletter_rows(
        [
            _letter(DeadLetterReason.MALFORMED_JSON, 111, REFUSED),
            _letter(DeadLetterReason.INVALID_VALUE, 112, REFUSED + timedelta(seconds=5)),
        ]
    )
    older = {
        "day": MINUTE.date(),
        "minute": MINUTE - timedelta(minutes=2),
        "reason": "malformed_json",
        "source_topic": "llm.inference.v1",
        "count": 7,
        "samples": json.dumps([{"reason": "malformed_json", "error": "bad", "value_b64": "e30="}]),
        "batch_id": "older",
    }
    table = pa.Table.from_pylist([*rows, older], schema=SCHEMAS["deadletters"])
    write_deltalake(str(root / "deadletters"), table, partition_by=PARTITION_BY["deadletters"])


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A history holding only dead letters."""
    root = tmp_path_factory.mktemp("console-deadletter-page")
    write_deadletters(root / "history")
    return root


def test_each_sample_shows_when_it_was_refused_not_its_minute(history: Path) -> None:
    day = MINUTE.date()
    view = deadletters_view(HistoryReader(str(history / "history")), DayRange(start=day, end=day))
    said = [(s.reason, s.minute, s.refused_at) for s in view.samples]
    assert said == [
        ("invalid_value", MINUTE, REFUSED + timedelta(seconds=5)),  # newest first, within the minute too
        ("malformed_json", MINUTE, REFUSED),
        ("malformed_json", MINUTE - timedelta(minutes=2), None),  # the row kept no time: only its minute
    ]
    # 7 letters in one minute: ticks 0, 2, 4, 6 (never 0.5 or 1.5 letters).
    assert view.count_step == 2


def test_the_page_says_the_refusal_time_or_that_only_the_minute_was_kept(history: Path) -> None:
    console = Console(HistoryReader(str(history / "history")), DatasetStore(history))
    with TestClient(create_app(console)) as client:
        html = client.get("/deadletters", params={"day": str(MINUTE.date())}).text
        one = client.get("/api/deadletters", params={"day": str(MINUTE.date())}).json()
    assert "refused at 2026-12-02 00:43:20 UTC" in html and "refused at 2026-12-02 00:43:25 UTC" in html
    assert "refused in the minute 2026-12-02 00:41 UTC" in html and "only its minute was kept" in html
    assert one["samples"][1]["refused_at"] == "2026-12-02T00:43:20.189493Z"
