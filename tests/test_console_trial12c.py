"""What a new user found in the console (issue 12's trial 12c), each fixed and checked here.

A history written by the history stage from real detector findings (tests/console_verdicts_fixture.py):

- window 0: the reference; window 1: cost per request in USD, profanity p = 0 (as the embedding
  MMD permutation test gives), and a feedback window of 32 thumbs compared with a reference of 27
  (the reference is short);
- window 2: 5 thumbs against a reference of 40 (this window is short).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.store import PARTITION_BY as DATASET_PARTITION_BY
from curation.store import SCHEMA as DATASET_SCHEMA
from curation.store import DatasetStore
from services.console import build_console, create_app
from services.console.series import not_judged_note
from services.console.server import DEMO_REPLAY_NOTE
from streams.detect import DetectorSpec
from tests.console_fixture import _dataset_rows, write_history
from tests.console_verdicts_fixture import (
    FEEDBACK_SPECS,
    INFERENCE_SPECS,
    KEY,
    START,
    _judged,
    _requests,
    _thumbs,
    closed,
    write_events,
)
from tests.test_console_browser import _serve_history, browser  # noqa: F401 - the module's headless Chromium

PROFANITY = "toxicity.profanity.v1"


def trial_events() -> dict[str, list[Any]]:
    """Window 1: a p of exactly 0 and a short reference; window 2: a short window."""
    specs = [*INFERENCE_SPECS, DetectorSpec("quality.cost.v1", "inference")]  # cost per request in USD
    judged = _judged(specs, _requests(40, 0), _requests(50, 40), 1)
    # As the correction leaves it: the adjusted p of a p of 0 is 0 too (the chart draws the adjusted one).
    zero = [
        d.model_copy(
            update={
                "p_value": 0.0,
                "verdict": "drift",
                "measurements": {**d.measurements, "p_value_adjusted": 0.0},
            }
        )
        if d.detector_id == PROFANITY
        else d
        for d in judged
    ]
    short_reference = _judged(FEEDBACK_SPECS, _thumbs(4, 27, "ref"), _thumbs(20, 32, "w1"), 1)
    short_window = _judged(FEEDBACK_SPECS, _thumbs(4, 40, "ref2"), _thumbs(2, 5, "w2"), 2)
    topics = Settings().topics
    windows = [
        closed("inference", 0, 40, "reference"),
        closed("inference", 1, 50, "judged"),
        closed("feedback", 1, 32, "judged"),
        closed("feedback", 2, 5, "judged"),
    ]
    return {topics.windows: windows, topics.detections: [*zero, *short_reference, *short_window]}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("console-trial12c")
    write_events(root / "history", trial_events())
    store = DatasetStore(str(root / "datasets"))
    for n in range(12):  # 12 versions: the page lists the newest 10 and folds 2
        table = pa.Table.from_pylist(_dataset_rows(1, n), schema=DATASET_SCHEMA)
        write_deltalake(store.uri("golden"), table, partition_by=DATASET_PARTITION_BY, mode="append")
    console = build_console(Settings(), history=str(root / "history"), datasets=str(root / "datasets"))
    with TestClient(create_app(console)) as opened:
        yield opened


def _detector(client: TestClient, detector_id: str) -> dict[str, Any]:
    view = client.get(f"/api/segments/{KEY}", params={"day": str(START.date())}).json()
    return next(d for d in view["detectors"] if d["detector_id"] == detector_id)


def test_a_not_judged_note_names_the_reference_when_the_reference_is_short(client) -> None:
    feedback = _detector(client, "quality.negative_feedback.v1")
    # Window 1 held 32 thumbs, its reference 27: the reference is short, and the note says so.
    assert feedback["note"] == ["not judged (reference 27 < 30 samples)", "not judged (5 < 30 samples)"]
    assert not_judged_note(5, 30, reference_size=40, current_size=5) == "not judged (5 < 30 samples)"


def test_a_p_value_of_zero_is_drawn_at_the_floor_and_the_page_says_so(client) -> None:
    profanity = _detector(client, PROFANITY)
    assert profanity["value"] == [0.0]  # the API keeps what was measured
    assert profanity["floored_windows"] == 1
    assert profanity["floor"] is not None and 0 < profanity["floor"] < profanity["threshold"][0]
    html = client.get(f"/segments/{KEY}", params={"day": str(START.date())}).text
    assert "1 of its windows have p = 0 (a log axis cannot draw 0)" in html
    assert f"labelled p &lt; {profanity['floor']:g}" in html
    others = [
        d for d in client.get(f"/api/segments/{KEY}").json()["detectors"] if d["detector_id"] != PROFANITY
    ]
    assert all(d["floor"] is None for d in others)


def test_one_window_reads_singular_and_the_datasets_page_folds_old_versions(client, tmp_path) -> None:
    html = client.get(f"/segments/{KEY}", params={"day": str(START.date())}).text
    assert "3 windows, 90 events, 37 feedback events." in html
    write_events(tmp_path / "history", {Settings().topics.windows: [closed("inference", 1, 1, "judged")]})
    one = build_console(Settings(), history=str(tmp_path / "history"), datasets=str(tmp_path))
    with TestClient(create_app(one)) as opened:
        assert (
            "<p>1 window, 1 event." in opened.get(f"/segments/{KEY}", params={"day": str(START.date())}).text
        )
    datasets = client.get("/datasets").text
    assert "Versions (the newest 10 of 12)" in datasets and "2 older versions: show all" in datasets
    assert "not written yet (nothing curated for them so far): sft, preference, safety_review" in datasets


def test_the_demo_console_never_names_a_broker_from_the_environment(tmp_path) -> None:
    write_history(tmp_path / "history")
    settings = Settings(kafka_bootstrap="127.0.0.1:19212")  # as LOOPWATCH_KAFKA_BOOTSTRAP would set it
    for demo, named in ((False, "--bootstrap 127.0.0.1:19212"), (True, "--bootstrap HOST:PORT")):
        console = build_console(
            settings, history=str(tmp_path / "history"), datasets=str(tmp_path), demo=demo
        )
        with TestClient(create_app(console)) as opened:
            view = opened.get("/api/deadletters", params={"days": 400}).json()
            assert view["reasons"] and all(r["command"].endswith(named) for r in view["reasons"])
            assert view["replay_note"] == (DEMO_REPLAY_NOTE if demo else None)
            assert ('id="replay-note"' in opened.get("/deadletters?days=400").text) is demo


@pytest.fixture(scope="module")
def trial_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console over the trial's history."""
    yield from _serve_history(
        tmp_path_factory, "console-trial12c-browser", lambda history: write_events(history, trial_events())
    )


def test_charts_mark_p_zero_label_powers_of_ten_and_title_the_time_axis(browser: Any, trial_url: str) -> None:  # noqa: F811
    page = browser.new_page(base_url=trial_url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/segments/{quote(KEY, safe='')}?day={START.date()}")
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    chart = page.locator(f'.detector[data-detector="{PROFANITY}"] .statistic')
    # The p = 0 window is a point at the floor, named in the legend (no text per point), not an empty chart.
    assert "p = 0 (drawn as p < 0.001)" in chart.locator(".legendtext").all_text_contents()
    assert chart.locator(".textpoint").count() == 0
    # Only powers of ten are labelled on a log axis (no crammed 2..9 between them).
    ticks = [t.replace("\u2212", "-") for t in chart.locator(".ytick text").all_text_contents()]
    assert ticks and all(t.startswith("10") or t == "1" for t in ticks), ticks
    assert chart.locator(".g-xtitle").text_content() == "window start (window time, UTC)"
    # A one-window threshold is a visible segment, not a 1-px dash.
    width = page.evaluate(
        f"document.querySelector('.detector[data-detector=\"{PROFANITY}\"] .statistic').data[1].marker.size"
    )
    assert width >= 30
    # Dollars as decimals ($0.00004), not SI suffixes (40µ).
    usd = page.locator('.measurements[data-unit="USD"] .ytick text').all_text_contents()
    assert usd and all(t.startswith("$") and "µ" not in t for t in usd), usd
    assert any(t.startswith("$0.0000") for t in usd), usd
    page.close()
    assert errors == []


def test_by_default_a_page_shows_the_newest_day_of_its_own_tables() -> None:
    from datetime import date

    from services.console.reader import HistoryReader
    from services.console.views import resolve_range

    class Held(HistoryReader):
        """A history whose backdated traffic is on Dec 1 and whose wall-clock rows went on past midnight."""

        def __init__(self) -> None:
            self.held = {
                "windows": [date(2026, 12, 1)],
                "deadletters": [date(2026, 12, 1), date(2026, 12, 2)],
            }

        def days(self, name: str) -> list[date]:
            return self.held.get(name, [])

    history = Held()
    assert resolve_range(history, None, 1).end == date(2026, 12, 1)  # Overview, Segment: the traffic's day
    assert resolve_range(history, None, 1, ("deadletters",)).end == date(2026, 12, 2)
    assert resolve_range(history, date(2026, 12, 2), 1).end == date(2026, 12, 2)  # a day asked for
    assert resolve_range(history, None, 1).last_day == date(2026, 12, 2)


def test_a_rollback_request_says_what_came_of_it_and_that_it_waits_while_nothing_did() -> None:
    from services.console.views import ActionRow, _follow_up

    def request(n: int) -> ActionRow:
        kind = "io.loopwatch.rollback.requested"
        return ActionRow(id=f"lw-rollback-{n}", type=kind, from_version="7.3", target_version="7.2")

    verified = ActionRow(id="lw-rollback-1.verified", type="io.loopwatch.rollback.verified", verified=True)
    failed = ActionRow(
        id="lw-rollback-2.failed", type="io.loopwatch.rollback.failed", verified=False, reason="withdrawn"
    )
    actions = [request(1), request(2), request(3), verified, failed]
    _follow_up(actions)
    assert [a.followup for a in actions[:3]] == [
        "verified",
        "not verified: withdrawn",
        "not verified yet: waiting for windows of 7.2 known to run without 7.3 (it may still be serving)",
    ]
    assert verified.followup is None
