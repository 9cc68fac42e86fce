"""What a new user found in the console: one series per detector config, windows counted, thresholds
labelled, errors answered alike, a missing history warned about, alert times labelled (no broker)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.store import DatasetStore
from services.console import Console, build_console, create_app
from services.console.reader import HistoryReader
from services.console.server import warn_if_missing

from .console_fixture import (
    FEEDBACK_ONLY,
    TEXT_LENGTH,
    TWO_CONFIGS,
    ConsoleData,
    text_length_config_ids,
    write_two_config_history,
)

HTML = {"Accept": "text/html,application/xhtml+xml"}  # what a browser sends when it opens a page


@pytest.fixture(scope="module")
def two_configs(tmp_path_factory: pytest.TempPathFactory) -> Console:
    """A console, labelled as `loopwatch console` labels the default detectors, over TWO_CONFIGS."""
    root = tmp_path_factory.mktemp("console-fixes")
    write_two_config_history(root / "history")
    built = build_console(Settings(), history=str(root / "history"), datasets=str(root / "datasets"))
    return built


@pytest.fixture(scope="module")
def client(two_configs: Console) -> Iterator[TestClient]:
    """A client of that console."""
    with TestClient(create_app(two_configs)) as test_client:
        yield test_client


def test_each_config_of_a_detector_is_its_own_series_labelled_by_its_column(client):
    view = client.get("/api/segments/" + quote(TWO_CONFIGS, safe="")).json()
    ids = text_length_config_ids()
    series = {d["config_label"]: d for d in view["detectors"] if d["detector_id"] == TEXT_LENGTH}
    assert sorted(series) == ["column=prompt_chars", "column=response_chars"]
    prompt = series["column=prompt_chars"]
    assert prompt["config_id"] == [ids["prompt_chars"]] * 2  # each point says its config
    assert prompt["statistic"] == [0.3, 0.5] and prompt["verdict"] == ["ok", "drift"]
    assert series["column=response_chars"]["statistic"] == [0.05, 0.04]


def test_the_segment_page_counts_windows_not_detections_and_labels_the_minimum_effect(client):
    view = client.get("/api/segments/" + quote(TWO_CONFIGS, safe="")).json()
    prompt = next(d for d in view["detectors"] if d["config_label"] == "column=prompt_chars")
    assert (prompt["windows"], prompt["drift_windows"], prompt["warning_windows"]) == (2, 1, 0)
    assert prompt["threshold_kind"] == "min_effect_size"
    assert prompt["threshold_label"].startswith("min effect size")
    html = client.get("/segments/" + quote(TWO_CONFIGS, safe="")).text
    assert "1 drift and 0 warning windows of 2." in html and "0 drift and 0 warning windows of 2." in html
    assert "of 4" not in html
    assert "The dashed line is the minimum effect size, not a breach line" in html


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/nope", 404, "no such page: /nope"),
        ("/overview?day=bad", 422, "day: a day like 2026-12-04, not &#39;bad&#39;"),
        ("/segments/nope", 400, "is not model|version|app|route|tenant"),
    ],
)
def test_a_page_a_browser_opens_answers_an_error_as_an_html_page(client, url, status, message):
    response = client.get(url, headers=HTML)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert '<p class="error" id="error-message">' in response.text and message in response.text


def test_unknown_api_routes_and_a_missing_token_answer_like_every_other_error(two_configs):
    with TestClient(create_app(two_configs)) as client:
        missing = client.get("/api/nope", headers=HTML)
        assert (missing.status_code, missing.json()) == (404, {"error": "no such page: /api/nope"})
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
        assert icon.content.startswith(b"\x00\x00\x01\x00")  # an ICO file
    with TestClient(create_app(two_configs, token="t0ken")) as client:
        api = client.get("/api/overview", headers=HTML)
        assert api.status_code == 401 and "requires its token" in api.json()["error"]
        page = client.get("/overview", headers=HTML)
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert "requires its token" in page.text


def test_a_history_root_that_does_not_exist_is_warned_about_and_shown_on_the_overview(tmp_path, caplog):
    missing = tmp_path / "no-such-history"
    console = Console(HistoryReader(str(missing)), DatasetStore(tmp_path / "datasets"))
    with caplog.at_level(logging.WARNING, logger="loopwatch.console"):
        warn_if_missing(console.history)
    [line] = [r.getMessage() for r in caplog.records]
    assert f"no history at all under {missing}" in line
    with TestClient(create_app(console)) as client:
        view = client.get("/api/overview").json()
        assert view["missing_tables"] == ["windows", "detections", "alerts", "actions", "deadletters"]
        assert 'id="history-missing"' in client.get("/overview").text


def test_alert_times_are_labelled_as_what_they_are(console_data: ConsoleData):
    # Issue 12, item 3: a resolved alert's ends_at can be the decision time (after the resolve
    # timeout), so it is no longer labelled "window end"; the window bounds and the time decided
    # have columns of their own (tests/test_console_scales.py fills them).
    console = Console(HistoryReader(str(console_data.history)), DatasetStore(console_data.datasets))
    with TestClient(create_app(console)) as client:
        alerts = client.get("/api/incidents").json()["alerts"]
        assert [(a["status"], a["changed_at_is"]) for a in alerts] == [
            ("firing", "window start"),
            ("resolved", "resolved at"),
        ]
        html = client.get("/incidents").text
    assert "<th>window time</th>" not in html and "<th>at</th>" not in html
    assert "<th>firing since / resolved at</th>" in html and "<th>decided at</th>" in html
    assert "firing since 2026-12-01 12:01:20" in html and "resolved at 2026-12-01 12:02:40" in html


def test_a_window_without_an_inference_count_is_shown_not_a_500(client):
    # events is null for a window that held only feedback (curation/history.py WINDOWS)
    view = client.get("/api/segments/" + quote(FEEDBACK_ONLY, safe=""))
    assert view.status_code == 200, view.text
    assert view.json()["events"] == [None]
    page = client.get("/segments/" + quote(FEEDBACK_ONLY, safe=""), headers=HTML)
    assert page.status_code == 200 and "0 events" in page.text
    overview = client.get("/api/overview").json()
    assert overview  # the overview sums the windows' counts, nulls included
