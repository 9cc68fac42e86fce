"""The console's JSON API, pages, token and bind rules, over the session's small history (no broker)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import write_deltalake
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.settings import Settings
from curation.history import PARTITION_BY, SCHEMAS
from curation.store import DatasetStore
from services.cli import main
from services.console import Console, build_console, check_bind, create_app
from services.console.reader import ConsoleError, HistoryReader
from services.deadletters import printable

from .console_fixture import (
    CANARY,
    DAY,
    HOSTILE_PAYLOAD,
    MODEL,
    ROLLBACK_ID,
    STABLE,
    ConsoleData,
    segment_key,
)


def _console(data: ConsoleData) -> Console:
    return Console(HistoryReader(str(data.history)), DatasetStore(data.datasets))


@pytest.fixture(scope="module")
def client(console_data: ConsoleData) -> Iterator[TestClient]:
    """A client of a console without a token over the session's tables."""
    with TestClient(create_app(_console(console_data))) as test_client:
        yield test_client


def segment_url(version: str, prefix: str = "/api/segments/") -> str:
    """The URL of a segment's page (or its API twin)."""
    return prefix + quote(segment_key(version), safe="")


def test_overview_shows_each_version_side_by_side_with_its_last_window_and_worst_verdict(client):
    view = client.get("/api/overview").json()
    assert view["range"] == {"start": "2026-12-01", "end": "2026-12-01", "first_day": "2026-12-01"} | {
        "last_day": "2026-12-01"
    }
    [model] = view["models"]
    assert model["model"] == MODEL
    stable, canary = model["versions"]  # stable first: the latest rollback went back to it
    assert (stable["model_version"], stable["role"]) == (STABLE, "stable")
    assert (canary["model_version"], canary["role"]) == (CANARY, "canary")
    assert canary["events"] == sum(40 + n for n in range(6)) and canary["windows"] == 6
    assert (canary["last_verdict"], canary["worst_verdict"], canary["drift_windows"]) == ("drift", "drift", 3)
    assert (stable["last_verdict"], stable["worst_verdict"], stable["warning_windows"]) == (
        "ok",
        "warning",
        1,
    )
    assert canary["last_window_end"] == "2026-12-01T12:02:00Z"
    # The canary's alert resolved, and a silence's announcement is not an open alert.
    assert view["open_alerts"] == [] and canary["open_alerts"] == 0


def test_segment_gives_each_detectors_statistic_threshold_and_verdicts_over_windows(client):
    view = client.get(segment_url(CANARY)).json()
    assert view["events"] == [40, 41, 42, 43, 44, 45]
    detectors = {d["detector_id"]: d for d in view["detectors"]}
    assert sorted(detectors) == ["drift.text_length.v1", "quality.negative_feedback.v1"]
    feedback = detectors["quality.negative_feedback.v1"]
    assert feedback["verdict"] == ["ok", "ok", "warning", "drift", "drift", "drift"]
    assert feedback["statistic"] == [0.18, 0.18, 0.18, 0.62, 0.62, 0.62]
    assert feedback["threshold"] == [0.3] * 6
    # Quality rates are charted; counts are not.
    assert feedback["measurements"] == {"negative_feedback_rate": feedback["statistic"]}
    assert detectors["drift.text_length.v1"]["measurements"] == {}


def test_incidents_show_the_rollback_with_its_cloudevent_id_cause_and_verification(client):
    view = client.get("/api/incidents").json()
    actions = {a["id"]: a for a in view["actions"]}
    rollback = actions[ROLLBACK_ID]
    assert rollback["type"] == "io.loopwatch.rollback.requested"
    assert (rollback["from_version"], rollback["target_version"]) == (CANARY, STABLE)
    [cause] = rollback["detections"]
    assert (cause["detector_id"], cause["verdict"], cause["segment"]) == (
        "quality.negative_feedback.v1",
        "drift",
        segment_key(CANARY),
    )
    assert actions[f"{ROLLBACK_ID}-verified"]["verified"] is True
    assert [(a["fingerprint"], a["status"]) for a in view["alerts"]] == [
        ("fp-negative-feedback", "firing"),
        ("fp-negative-feedback", "resolved"),
    ]
    [silence] = view["silences"]
    assert (silence["silence_id"], silence["matchers"]) == ("s-maint", "model=other-bot")
    html = client.get("/incidents").text
    assert ROLLBACK_ID in html and "s-maint" in html


def test_dead_letters_count_by_reason_with_replay_commands_and_escaped_samples(client):
    view = client.get("/api/deadletters").json()
    assert view["total"] == 6
    assert [(r["reason"], r["count"]) for r in view["reasons"]] == [
        ("malformed_json", 4),
        ("invalid_utf8", 2),
    ]
    assert (
        view["reasons"][0]["replay"]
        == "loopwatch deadletter replay --reason malformed_json --since 2026-12-01"
    )
    series = {s["reason"]: s["count"] for s in view["series"]}
    assert series == {"malformed_json": [3, 1], "invalid_utf8": [2]}
    [hostile] = [s for s in view["samples"] if s["reason"] == "invalid_utf8"]
    assert hostile["payload"] == printable(HOSTILE_PAYLOAD)
    assert "\\xff" in hostile["payload"] and "\\x1b[31m" in hostile["payload"]
    assert hostile["truncated"] and hostile["source"] == "llm.inference.v1/0/17"
    html = client.get("/deadletters").text
    # Escaped twice over: no terminal escape, no markup of the producer's on the page.
    assert "\x1b" not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_datasets_list_versions_with_row_counts_tags_preview_and_export_command(client, console_data):
    view = client.get("/api/datasets").json()
    [golden] = view["tables"]
    assert "golden" not in view["missing"] and "sft" in view["missing"]
    assert [(v["version"], v["rows"], v["inserted"]) for v in golden["versions"]] == [
        (2, 5, 0),  # the tag: a metadata-only commit
        (1, 5, 2),
        (0, 3, 3),
    ]
    assert golden["tags"] == {"v-first": 0}
    assert golden["export"] == (
        f"loopwatch dataset export --root {console_data.datasets} --table golden --version 2"
        " --output golden-v2.jsonl"
    )
    rows = client.get("/api/datasets/golden/rows", params={"version": 0}).json()["rows"]
    assert [r["request_id"] for r in rows] == ["r-0", "r-1", "r-2"]
    html = client.get("/datasets").text
    assert "r-4" in html
    # Times to the second, as the Incidents page shows them (trial 12q: 12:44:47.594000+00:00).
    for version in golden["versions"]:
        # The API's to the millisecond, as Delta commits them (trial 12t: 16:55:49.166000Z).
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", version["written_at"])
        written = datetime.fromisoformat(version["written_at"].replace("Z", "+00:00"))
        assert str(written.replace(microsecond=0)) in html
    assert not re.search(r":\d\d\.\d{6}\+00:00", html)


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/api/overview?days=0", 422, "days: Input should be greater than or equal to 1"),
        ("/api/overview?days=many", 422, "days: Input should be a valid integer"),
        ("/api/incidents?day=yesterday", 422, "day: a day like 2026-12-04, not 'yesterday'"),
        # Trial 24: pydantic's lax parsing took these as 2026-12-06 and 50 days.
        (
            "/api/overview?day=2026-12-06T00:00:00",
            422,
            "day: a day like 2026-12-04, not '2026-12-06T00:00:00'",
        ),
        ("/api/overview?days=5_0", 422, "days: Input should be a valid integer, in plain digits (e.g. 7)"),
        ("/api/datasets/preference/rows?limit=%2B3", 422, "limit: Input should be a valid integer, in plain"),
        # A time of day is refused in the same words (trial 12u: pydantic's "should have zero time").
        (
            "/api/overview?day=2026-12-04T10:00:00",
            422,
            "day: a day like 2026-12-04, not '2026-12-04T10:00:00'",
        ),
        ("/api/segments/no-such-key", 400, "is not model|version|app|route|tenant"),
        (segment_url("v9"), 404, "has no windows from 2026-12-01 to 2026-12-01"),
        ("/segments/" + quote("a|b", safe=""), 400, "is not model|version|app|route|tenant"),
        ("/api/datasets/nope/rows", 404, "unknown dataset table 'nope'"),
        ("/api/datasets/golden/rows?version=9", 404, "has no version 9 (latest is 2)"),
        ("/api/datasets/golden/rows?limit=0", 422, "limit: Input should be greater than or equal to 1"),
        ("/reports?segment=a%7Cb%7C%7C%7C&day=2026-12-01&detection=x", 404, "has no report"),
        ("/reports?day=2026-12-01", 422, "segment: Field required"),
    ],
)
def test_bad_parameters_get_a_4xx_with_a_message_never_a_500(client, url, status, message):
    response = client.get(url)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_the_openapi_document_describes_every_api_route_and_no_page_loads_a_cdn(client):
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/overview", "/api/incidents", "/api/deadletters", "/api/datasets"} <= set(paths)
    assert "/api/segments/{segment}" in paths and "/api/datasets/{table}/rows" in paths
    for page in ("/overview", "/segments", segment_url(CANARY, "/segments/"), "/incidents", "/deadletters"):
        html = client.get(page).text
        assets = re.findall(r'<script[^>]* src="([^"]+)"|<link[^>]* href="([^"]+)"', html)
        expected = {"/static/console.css", "/static/console.js"}
        if page.startswith(("/segments/", "/deadletters")):  # the pages with charts
            expected.add("/vendor/plotly.min.js")
        assert {a or b for a, b in assets} == expected
    assert client.get("/vendor/plotly.min.js").text.startswith("/**")


def test_the_openapi_document_says_the_errors_the_api_answers(client):
    # Trial 22: it listed FastAPI's {"detail": [...]} 422 only, which the console never sends.
    document = client.get("/api/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        responses = operations["get"]["responses"]
        assert {"200", "400", "401", "404", "422"} <= set(responses), path
        assert responses["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ApiError"
        }
    response = client.get("/api/overview?days=0")
    assert response.status_code == 422 and set(response.json()) == {"error"}
    # The document itself refuses a parameter it does not take, as every other /api/ route does.
    response = client.get("/api/openapi.json?x=1")
    assert response.status_code == 400
    assert response.json() == {
        "error": "unknown query parameter x: /api/openapi.json takes no query parameter"
    }
    response = client.get("/reports?segment=s&day=2026-12-01&day=2026-12-02&detection=d")
    assert response.json() == {"error": "query parameter day given more than once: give it once"}


def test_with_a_token_every_request_needs_it_by_header_or_cookie(console_data):
    token = "s3cret-token"
    with TestClient(create_app(_console(console_data), token=token), follow_redirects=False) as client:
        refused = client.get("/api/overview")
        assert refused.status_code == 401 and token not in refused.text
        assert client.get("/api/overview", headers={"X-Loopwatch-Token": "wrong"}).status_code == 401
        assert client.get("/static/console.js").status_code == 401
        assert client.get("/api/overview", headers={"X-Loopwatch-Token": token}).status_code == 200
        assert client.get("/api/overview", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # A browser opens ?token= once: a cookie, and the token gone from the address.
        opened = client.get(f"/incidents?days=3&token={token}")
        assert opened.status_code == 303 and opened.headers["location"] == "/incidents?days=3"
        assert "httponly" in opened.headers["set-cookie"].lower()
        assert client.get("/incidents?days=3").status_code == 200  # the cookie now
        client.cookies.clear()
        assert client.get("/incidents?token=wrong").status_code == 401


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_bind_needs_no_token(host):
    check_bind(host, None)


def test_a_non_loopback_bind_needs_a_token(monkeypatch):
    with pytest.raises(ConsoleError, match="set LOOPWATCH_CONSOLE_TOKEN"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConsoleError, match="set LOOPWATCH_CONSOLE_TOKEN"):
        check_bind("0.0.0.0", SecretStr("  "))  # an empty token guards nothing
    check_bind("0.0.0.0", SecretStr("t"))
    monkeypatch.delenv("LOOPWATCH_CONSOLE_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["console", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2
    assert "refusing to serve the console on 0.0.0.0" in result.output


def test_the_console_command_takes_its_roots_and_stable_versions_from_the_settings(tmp_path):
    settings = Settings(data_dir=tmp_path, stable_versions={MODEL: STABLE}, datasets_root=str(tmp_path / "d"))
    console = build_console(settings)
    assert console.history.root == str(tmp_path / "history")
    assert console.datasets.root == str(tmp_path / "d")
    assert dict(console.stable_versions) == {MODEL: STABLE}
    assert build_console(settings, history="s3://b/h").history.root == "s3://b/h"


def _write(root: Path, name: str, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
    write_deltalake(str(root / name), table, partition_by=PARTITION_BY[name], mode="append")


def _window(day: date, model: str) -> dict:
    from datetime import UTC, datetime

    start = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return {
        "day": day,
        "model": model,
        "model_version": "v1",
        "segment": f"{model}|v1|||",
        "window_start": start,
        "window_end": start + timedelta(minutes=1),
        "events": 5,
        "sample_size": 5,
        "first_detected_at": start,
    }


def test_a_page_opens_only_the_partitions_it_shows(tmp_path):
    other_day = DAY - timedelta(days=1)
    _write(tmp_path, "windows", [_window(d, m) for d in (other_day, DAY) for m in ("a", "b")])
    # Break every file but one partition's: a read that opened them would fail.
    kept = tmp_path / "windows" / f"day={DAY}" / "model=a"
    broken = [f for f in (tmp_path / "windows").rglob("*.parquet") if kept not in f.parents]
    assert len(broken) == 3
    for path in broken:
        path.write_bytes(b"not parquet")
    reader = HistoryReader(str(tmp_path))
    assert reader.days("windows") == [other_day, DAY]
    rows = reader.read("windows", [DAY], model="a", columns=["model", "events"]).to_pylist()
    assert rows == [{"model": "a", "events": 5}]
    with pytest.raises(pa.ArrowInvalid):  # the broken file of model b on that day
        reader.read("windows", [DAY], model="b")


def test_the_reader_keeps_its_table_open_and_sees_new_commits(tmp_path):
    _write(tmp_path, "windows", [_window(DAY, "a")])
    reader = HistoryReader(str(tmp_path), refresh_seconds=0)
    assert reader.read("windows", [DAY]).num_rows == 1
    handle = reader._handles["windows"]
    _write(tmp_path, "windows", [_window(DAY + timedelta(days=1), "a")])
    assert reader.latest_day() == DAY + timedelta(days=1)
    assert reader._handles["windows"] is handle  # brought up to date, not reopened
    assert HistoryReader(str(tmp_path / "none")).read("windows", [DAY]).num_rows == 0
