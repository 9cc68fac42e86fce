"""What a new user found in the console (issue 12's trial 12a), each fixed and checked here.

A history written by the history stage from real detector findings (tests/console_verdicts_fixture.py):

- window 1: 13 requests, too few for the detectors that count samples (13 < 30, and a feedback
  detector with 0 < 30), and an embedding verdict stored ``ok`` with no number (as before the fix);
- window 2: 50 requests judged inline while the slow detectors' queue was full (``skipped``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.history import not_judged
from services.console import Console, build_console, create_app
from services.console.segment import SKIPPED_NOTE
from services.console.series import is_bound, measurement_unit
from tests.console_fixture import ConsoleData
from tests.console_verdicts_fixture import (
    FEEDBACK_SPECS,
    INFERENCE_SPECS,
    KEY,
    MINUTE,
    SMALL_SPECS,
    START,
    _judged,
    _requests,
    _thumbs,
    closed,
    write_events,
)

EMBEDDING = "drift.embedding_mmd.v1"


def trial_events() -> dict[str, list[Any]]:
    """The trial's history as events per topic: a barely judged window and a skipped one."""
    reference, thumbs = _requests(40, 0), _thumbs(4, 40, "ref")
    small = _judged(SMALL_SPECS, reference, _requests(13, 40), 1)
    # Stored before the embedding detector said "too few": ok, judged, and no number at all.
    blank = small[0].model_copy(
        update={
            "detection_id": "emb-w1",
            "detector_id": EMBEDDING,
            "statistic": None,
            "p_value": None,
            "effect_size": None,
            "threshold": None,
            "measurements": {"sampled_rows": 13.0},
        }
    )
    no_ratings = _judged(FEEDBACK_SPECS, thumbs, _thumbs(0, 0, "w1"), 1)
    judged = _judged(INFERENCE_SPECS, reference, _requests(50, 60), 2)
    topics = Settings().topics
    windows = [
        closed("inference", 0, 40, "reference"),
        closed("inference", 1, 13, "judged"),
        closed("feedback", 1, 0, "judged"),
        closed("inference", 2, 50, "skipped"),
    ]
    return {topics.windows: windows, topics.detections: [*small, blank, *no_ratings, *judged]}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("console-trial12")
    write_events(root / "history", trial_events())
    console = build_console(Settings(), history=str(root / "history"), datasets=str(root))
    with TestClient(create_app(console)) as opened:
        yield opened


def _segment(client: TestClient) -> dict[str, Any]:
    return client.get(f"/api/segments/{KEY}", params={"day": str(START.date())}).json()


def test_a_short_window_says_too_few_samples_in_the_embedding_detector() -> None:
    from detectors.registry import create

    detector = create(EMBEDDING, {"column": "prompt", "min_rows": 20})
    # A fitted reference, without building the permutation test a short window never reaches.
    detector._reference = np.zeros((30, 8), dtype=np.float32)  # type: ignore[attr-defined]
    finding = detector.detect(pd.DataFrame({"prompt": [f"question {i}" for i in range(5)]}))
    assert finding.verdict == "ok" and finding.p_value is None
    # The history reads it as not judged, with what it had and what it needed.
    assert not_judged(finding.measurements, finding.reference_size, finding.current_size) == (5, 20)


def test_a_window_whose_only_verdict_measured_nothing_is_not_judged_and_notes_agree(client) -> None:
    view = _segment(client)
    at = view["window_start"].index(str((START + MINUTE).isoformat()).replace("+00:00", "Z"))
    assert view["shown"][at] == "not judged"
    [noted] = [w for w in view["noted"] if w["window_start"] == view["window_start"][at]]
    # One source: the table says every shortfall its detectors' series say for that window.
    said = {
        d["note"][k]
        for d in view["detectors"]
        for k, start in enumerate(d["window_start"])
        if start == view["window_start"][at] and d["note"][k]
    }
    assert said == {
        "not judged (13 < 30 samples)",
        "not judged (0 < 30 samples)",
        "not judged (too few samples)",
    }
    assert noted["note"].startswith("not judged (13 < 30 samples); ")
    assert "0 < 30 samples for quality.negative_feedback.v1" in noted["note"]
    embedding = next(d for d in view["detectors"] if d["detector_id"] == EMBEDDING)
    assert embedding["verdict"] == ["not judged"] and embedding["not_judged_windows"] == 1
    overview = client.get("/api/overview", params={"day": str(START.date())}).json()
    [row] = [v for m in overview["models"] for v in m["versions"]]
    assert row["last_verdict"] == "ok" and row["not_judged_windows"] == 1


def test_skipped_windows_are_listed_with_their_reason_and_marked_on_the_axis(client) -> None:
    view = _segment(client)
    start = view["window_start"][2]
    assert view["shown"][2] == "ok"  # its inline detectors judged it
    [noted] = [w for w in view["noted"] if w["window_start"] == start]
    assert noted["note"] == SKIPPED_NOTE
    assert view["skipped"] == [start]
    html = client.get(f"/segments/{KEY}", params={"day": str(START.date())}).text
    assert "skipped: the slow detectors&#39; queue was full" in html and 'id="skipped-windows"' in html


def test_a_slow_detector_that_judged_no_window_is_named_on_the_overview_and_the_segment(client) -> None:
    """Trial 12b: the embedding detector was skipped or too small in every window; both pages say so."""
    view = _segment(client)
    assert view["never_judged"] == [EMBEDDING]
    embedding = next(d for d in view["detectors"] if d["detector_id"] == EMBEDDING)
    assert embedding["slow"] and embedding["skipped"] == [view["window_start"][2]]
    assert not any(d["slow"] or d["skipped"] for d in view["detectors"] if d["detector_id"] != EMBEDDING)
    overview = client.get("/api/overview", params={"day": str(START.date())}).json()
    [row] = [v for m in overview["models"] for v in m["versions"]]
    assert row["never_judged"] == [EMBEDDING]
    html = client.get("/overview", params={"day": str(START.date())}).text
    assert f"{EMBEDDING}: every window skipped (slow detectors' queue full) or too small" in html
    # Trial 17a finding 6: a skipped window reads as judged, by the fast detectors.
    assert SKIPPED_NOTE == "judged by the fast detectors; slow detectors skipped (queue full)"


def test_quality_measures_get_one_chart_per_unit_and_an_slo_is_a_bound() -> None:
    units = {
        name: measurement_unit(name)
        for name in ("p95.observed_ms", "p95.share_above_slo", "cost.current_mean", "tokens.current_mean")
    }
    assert units == {
        "p95.observed_ms": "milliseconds",
        "p95.share_above_slo": "share",
        "cost.current_mean": "USD",
        "tokens.current_mean": "tokens",
    }
    assert measurement_unit("negative_feedback_rate") == "share"
    assert is_bound("p95.slo_ms") and not is_bound("p95.share_above_slo") and not is_bound("p95.observed_ms")


def test_the_latency_series_says_each_measures_unit_and_its_slo_bound(client) -> None:
    latency = next(d for d in _segment(client)["detectors"] if d["detector_id"] == "quality.latency.v1")
    assert latency["units"]["p95.observed_ms"] == "milliseconds"
    assert latency["units"]["p95.share_above_slo"] == "share"
    assert "p95.slo_ms" in latency["bounds"] and "p95.observed_ms" not in latency["bounds"]


def test_incidents_name_the_clock_of_each_time(console_data: ConsoleData) -> None:
    console = build_console(
        Settings(), history=str(console_data.history), datasets=str(console_data.datasets)
    )
    with TestClient(create_app(console)) as opened:
        html = opened.get("/incidents").text
    assert 'id="clocks"' in html and "Two clocks" in html
    assert '<td class="clock">decided (wall clock)</td>' in html
    assert html.count('<td class="clock">window time</td>') == 2  # actions' time, alerts' windows


def test_the_replay_command_names_the_consoles_kafka_or_a_placeholder(console_data: ConsoleData) -> None:
    def commands(settings: Settings) -> list[str]:
        console: Console = build_console(
            settings, history=str(console_data.history), datasets=str(console_data.datasets)
        )
        with TestClient(create_app(console)) as opened:
            return [r["command"] for r in opened.get("/api/deadletters").json()["reasons"]]

    given = commands(Settings(kafka_bootstrap="kafka-1:9093,kafka-2:9093"))
    assert given[0] == (
        "loopwatch deadletter replay --reason malformed_json --since 2026-12-01"
        " --bootstrap kafka-1:9093,kafka-2:9093"
    )
    # Not given: the default (127.0.0.1:9092) may be someone else's broker, so the user must set it.
    assert all(c.endswith(" --bootstrap HOST:PORT") for c in commands(Settings()))


def test_the_console_command_takes_a_bootstrap() -> None:
    from click.testing import CliRunner

    from services.commands.console import console

    assert "--bootstrap" in CliRunner().invoke(console, ["--help"]).output
