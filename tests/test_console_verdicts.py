"""Issue 12's misleading pages, on a history the history stage wrote from real events (no broker).

Reference windows and feedback-only windows are counted, a window with too few
samples reads "not judged" (never ok), a revised window shows its latest
verdict marked revised, each detector is drawn on its threshold's scale, the
charts of a page share one time axis, and alert times say what they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from services.console import Console, build_console, create_app

from .console_verdicts_fixture import DECIDED_AT, FIRED_AT, KEY, MINUTE, START, write_verdicts_history


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> Console:
    """A console over the fixture's history, labelled as `loopwatch console` labels the detectors."""
    root = tmp_path_factory.mktemp("console-verdicts")
    write_verdicts_history(root / "history")
    return build_console(Settings(), history=str(root / "history"), datasets=str(root / "datasets"))


@pytest.fixture(scope="module")
def client(verdicts: Console) -> Iterator[TestClient]:
    """A client of that console."""
    with TestClient(create_app(verdicts)) as test_client:
        yield test_client


def _segment(client: TestClient) -> dict:
    response = client.get("/api/segments/" + quote(KEY, safe=""))
    assert response.status_code == 200, response.text
    return response.json()


def test_reference_and_feedback_only_windows_are_counted_and_listed(client):
    view = _segment(client)
    assert len(view["window_start"]) == 4
    assert view["events"] == [40, 50, None, 24]  # the reference window's 40 requests included
    assert view["feedback_events"] == [40, 60, 7, None]  # revision 1's 60, not revision 0's 50
    assert view["shown"] == ["reference", "ok", "not judged", "not judged"]
    noted = {row["window_start"][11:16]: row["note"] for row in view["noted"]}
    assert noted == {
        "12:03": "not judged (24 < 30 samples)",
        "12:02": "not judged (7 < 30 samples)",  # where the late feedback went
        "12:01": "revised 1x",
        "12:00": "reference",
    }
    overview = client.get("/api/overview").json()
    [row] = overview["models"][0]["versions"]
    assert (row["events"], row["windows"]) == (40 + 50 + 24, 4)


def test_a_window_with_too_few_samples_reads_not_judged_never_ok(client):
    overview = client.get("/api/overview").json()
    [row] = overview["models"][0]["versions"]
    assert (row["last_verdict"], row["last_note"]) == ("not judged", "not judged (24 < 30 samples)")
    assert row["worst_verdict"] == "ok" and row["not_judged_windows"] == 2
    html = client.get("/overview").text
    assert '<dd class="verdict">not judged (24 &lt; 30 samples)</dd>' in html
    latency = next(d for d in _segment(client)["detectors"] if d["detector_id"] == "quality.latency.v1")
    assert latency["verdict"] == ["ok", "not judged"]
    assert latency["note"] == [None, "not judged (24 < 30 samples)"]
    assert latency["value"][1] is None and latency["statistic"][1] is None  # nothing drawn for it
    assert (latency["windows"], latency["not_judged_windows"]) == (2, 1)


def test_each_detector_is_drawn_against_the_bound_on_its_own_scale(client):
    series = {d["detector_id"]: d for d in _segment(client)["detectors"]}
    feedback = series["quality.negative_feedback.v1"]
    # Its statistic is an odds ratio; its threshold (0.01) is alpha: the p-value is drawn against it.
    assert (feedback["value_label"], feedback["threshold_kind"]) == ("p-value", "alpha")
    assert feedback["value"][0] == feedback["p_value"][0] and feedback["threshold"][0] == 0.01
    script = series["drift.script_mix.v1"]  # a chi-square statistic: its minimum is on Cramér's V
    assert (script["value_label"], script["threshold_kind"]) == ("effect size", "min_effect_size")
    assert script["value"][0] == script["effect_size"][0]
    latency = series["quality.latency.v1"]  # the observed percentile against its SLO, in ms
    # Its one deciding check (p95) names the lines: not "statistic" against "threshold" (trial 12u).
    assert (latency["value_label"], latency["threshold"][0]) == ("v2 p95 latency", 2000.0)
    assert (latency["threshold_label"], latency["axis_title"]) == (
        "p95 latency SLO",
        "p95 latency (milliseconds)",
    )
    assert latency["value"][0] == latency["statistic"][0]
    for d in series.values():
        assert not [name for name in d["measurements"] if "samples" in name], d["measurements"]


def test_a_revised_window_shows_its_latest_verdict_marked_revised(client):
    feedback = next(
        d for d in _segment(client)["detectors"] if d["detector_id"] == "quality.negative_feedback.v1"
    )
    assert feedback["verdict"] == ["ok", "not judged"]  # revision 0 said drift; revision 1 says ok
    assert (feedback["revision"], feedback["note"][0]) == ([1, 0], "revised 1x")
    assert (feedback["drift_windows"], feedback["revised_windows"]) == (0, 1)
    overview = client.get("/api/overview").json()
    assert overview["models"][0]["versions"][0]["drift_windows"] == 0


def test_the_charts_of_a_page_share_the_time_axis_of_its_windows(client):
    view = _segment(client)
    start, end = view["x_range"]
    assert start < view["window_start"][0] and end > view["window_start"][-1]
    assert start >= "2026-12-01T00:00:00Z" and end <= "2026-12-02T00:00:00Z"  # within the day range


def test_alert_times_name_the_windows_the_time_decided_and_the_resolve_time(client):
    alerts = client.get("/api/incidents").json()["alerts"]
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    assert [(a["status"], a["window_start"], a["window_end"], a["decided_at"]) for a in alerts] == [
        (
            "firing",
            (START + MINUTE).strftime(fmt),
            (START + 2 * MINUTE).strftime(fmt),
            FIRED_AT.strftime(fmt),
        ),
        (
            "resolved",
            (START + MINUTE).strftime(fmt),
            (START + 2 * MINUTE).strftime(fmt),
            DECIDED_AT.strftime(fmt),
        ),
    ]
    html = client.get("/incidents").text
    assert "windows 2026-12-01 12:01:00+00:00 → 2026-12-01 12:02:00+00:00" in html
    assert "resolved at 2026-12-01 12:09:00+00:00" in html and "decided at 2026-12-01 12:09:00+00:00" in html
    assert "window end" not in html
