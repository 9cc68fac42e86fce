"""Trial 12o (issue 12): the console's words, on small histories written as the history stage writes them.

New user 12o ran three versions live. v3's embedding detector reached 10 of its 16 windows, the slow
queue skipped the other 6, yet the Overview said ``the rest still queued``; the Segments index said a
plain ``not judged`` where the Overview said ``drift (window 13:44:00; ...)``; the quiet line read ``No
alerts, actions recorded so far``; ``1 windows``; and ``loopwatch up --help`` never named the console.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from click.testing import CliRunner
from fastapi.testclient import TestClient

from curation.history import SCHEMAS
from services.cli import main
from services.console import Console, create_app
from services.console.datasets import DatasetStore
from services.console.overview_judged import NotJudged, SegmentJudged
from services.console.reader import HistoryReader

from .test_console_incidents import TEXT, _segment, detection, window, write

EMBEDDING = "drift.embedding_mmd.v1"
KEY = _segment("v2")["segment"]


def _client(tmp_path: Path, **tables: list[dict[str, Any]]) -> TestClient:
    """A console over ``tables``, with the embedding detector as its slow one."""
    history = HistoryReader(write(tmp_path, None, **tables))
    console = Console(history, DatasetStore(tmp_path / "datasets"), slow_detectors=frozenset({EMBEDDING}))
    return TestClient(create_app(console))


def _slow_history(embedded: range) -> dict[str, list[dict[str, Any]]]:
    """v2: window 0 the reference, 1-5 judged, 6-7 skipped by the slow queue; the fast detector judged
    1-7, the embedding one the windows ``embedded`` (its first too small to judge)."""
    windows = [{**window("v2", 0), "outcome": "reference"}, *(window("v2", n) for n in range(1, 6))]
    windows += [{**window("v2", n), "outcome": "skipped"} for n in (6, 7)]
    detections = [detection("v2", n, TEXT) for n in range(1, 8)]
    detections += [{**detection("v2", n, EMBEDDING), "judged": n != embedded[0]} for n in embedded]
    return {"windows": windows, "detections": detections}


def _overview_row(client: TestClient) -> dict[str, Any]:
    [model] = client.get("/api/overview").json()["models"]
    [row] = model["versions"]
    return row


def test_windows_the_slow_queue_skipped_are_said_skipped_not_still_queued(tmp_path: Path) -> None:
    with _client(tmp_path, **_slow_history(range(1, 6))) as client:
        row = _overview_row(client)
        segment = client.get("/api/segments/" + quote(KEY, safe="")).json()
    assert segment["pending"] == [] and len(segment["skipped"]) == 2  # what the Segment page says
    assert (
        row["not_judged_said"]
        == f"1 of 5 inference windows by {EMBEDDING} (slow: the 5 windows it reached; 2 skipped (queue full))"
    )


def test_only_windows_the_segment_page_counts_as_pending_are_said_still_queued(tmp_path: Path) -> None:
    with _client(tmp_path, **_slow_history(range(1, 3))) as client:
        row = _overview_row(client)
        [pending] = client.get("/api/segments/" + quote(KEY, safe="")).json()["pending"]
    assert pending["windows"] == 3
    assert row["not_judged_said"] == (
        f"1 of 2 inference windows by {EMBEDDING} (slow: the 2 windows it reached so far;"
        " 2 skipped (queue full); 3 still queued)"
    )


def _text(html: str, css_class: str) -> list[str]:
    """The texts of the elements of ``css_class`` (tags inside them dropped)."""
    found = re.findall(rf'class="{css_class}"[^>]*>(.*?)</(?:span|dd|td)>', html, re.S)
    return [re.sub(r"<[^>]+>", "", f).strip() for f in found]


def test_the_segments_index_says_the_last_verdict_as_the_overview_does(tmp_path: Path) -> None:
    windows = [window("v2", n) for n in range(1, 4)]
    too_small = {**detection("v2", 3, TEXT, size=13), "judged": False, "samples": 13, "min_samples": 30}
    detections = [detection("v2", 1, TEXT), detection("v2", 2, TEXT, "drift"), too_small]
    with _client(tmp_path, windows=windows, detections=detections) as client:
        overview, index = client.get("/overview").text, client.get("/segments").text
    [judged] = _text(overview, "judged-verdict")
    assert judged.startswith("drift (window ")
    assert _text(index, "judged-verdict") == [judged]
    assert _text(index, "verdict") == _text(overview, "verdict")  # the newest window's note, both pages


def test_the_quiet_line_lists_the_tables_not_written_yet_in_plain_words(tmp_path: Path) -> None:
    tables: dict[str, list[dict[str, Any]]] = {"windows": [window("v2", 1)], "detections": []}
    with _client(tmp_path / "a", **tables) as client:
        assert "No alerts, actions or dead letters recorded yet (" in client.get("/overview").text
    with _client(tmp_path / "b", **tables, deadletters=[]) as client:
        assert "No alerts or actions recorded yet (" in client.get("/overview").text
    assert set(SCHEMAS) == {"windows", "detections", "alerts", "actions", "deadletters"}


def test_one_window_is_said_singular() -> None:
    judged = SegmentJudged(
        {TEXT: "inference", EMBEDDING: "inference"},
        [NotJudged(kind="inference", not_judged=1, windows=1, detectors=[TEXT], of=2)],
    )
    assert judged.said() == f"1 of 1 inference window by {TEXT}"


def test_up_help_names_the_console_and_its_port_setting() -> None:
    said = CliRunner().invoke(main, ["up", "--help"])
    assert said.exit_code == 0, said.output
    assert "console" in said.output.split("Options:")[0]
    assert "LOOPWATCH_CONSOLE_PORT" in said.output
