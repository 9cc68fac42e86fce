"""The console in a real browser: headless Chromium (Debian's) driven by Playwright, one browser per module.

Each test loads a page from the menu as a person would and checks what they
would look at: the rollback's CloudEvent id, a drawn chart, the reasons.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from .console_fixture import (
    CANARY,
    ONE_WINDOW,
    ROLLBACK_ID,
    STABLE,
    TWO_CONFIGS,
    segment_key,
    serving,
    write_two_config_history,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROMIUM_ARGS += ["--disable-component-update"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; the module fails loudly when Debian's chromium is not installed."""
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def context(browser: Any, console_url: str) -> Iterator[Any]:
    """One browser context for the module, so its cache keeps plotly.min.js across pages."""
    opened = browser.new_context(base_url=console_url, viewport={"width": 1280, "height": 900})
    yield opened
    opened.close()


@pytest.fixture
def page(context: Any, console_url: str) -> Iterator[Any]:
    """A fresh page that fails the test on any script error or request to another host."""
    opened = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("request", lambda r: None if r.url.startswith(console_url) else foreign.append(r.url))
    yield opened
    opened.close()
    assert errors == [], errors
    assert foreign == [], f"the console loaded something from elsewhere: {foreign}"


def test_the_menu_reaches_every_page(page):
    page.goto("/")
    labels = page.locator("#menu a").all_inner_texts()
    assert labels[:5] == ["Overview", "Segment", "Incidents", "Dead letters", "Datasets"]
    for label, heading in [
        ("Incidents", "Incidents"),
        ("Dead letters", "Dead letters"),
        ("Datasets", "Datasets"),
    ]:
        page.get_by_role("link", name=label, exact=True).click()
        assert page.locator("h1").inner_text().startswith(heading)


def test_the_overview_shows_the_canary_beside_the_stable_version_and_links_its_segment(page):
    page.goto("/overview")
    # One row per traffic (app · route · tenant), one column per version, stable first.
    headers = page.locator(".model table.versions tr").first.locator("th").all_inner_texts()
    assert headers == ["traffic", f"{STABLE} stable", f"{CANARY} canary"]
    row = page.locator(".model table.versions tr").nth(1)
    assert row.locator("th.labels").inner_text() == "support · chat"
    stable, canary = row.locator("td.version").all()
    assert stable.get_attribute("data-segment") == segment_key(STABLE)
    assert (stable.locator("dd.verdict").inner_text(), canary.locator("dd.verdict").inner_text()) == (
        "ok",
        "drift",
    )
    canary.get_by_role("link", name=CANARY).click()
    assert page.locator("#segment-key").inner_text() == segment_key(CANARY)


def test_the_segment_page_draws_a_chart_per_detector_with_threshold_and_drift_windows(page):
    page.goto("/segments/" + quote(segment_key(CANARY), safe=""))
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    # Plotly draws SVG: one plot for traffic, one per detector, one of quality rates.
    assert page.locator(".js-plotly-plot svg.main-svg").count() >= 4
    chart = page.locator('.detector[data-detector="quality.negative_feedback.v1"] .statistic')
    legend = chart.locator(".legendtext").all_text_contents()
    assert legend == ["statistic", "threshold", "warning", "drift"]
    assert chart.locator(".scatterlayer .trace").count() == 4
    assert chart.locator(".scatterlayer .point").count() >= 4  # one warning and three drift markers


def test_the_incidents_page_shows_the_rollback_id_and_what_caused_it(page):
    page.goto("/incidents")
    rollback = page.locator('tr.action[data-type="io.loopwatch.rollback.requested"]')
    assert rollback.locator(".event-id").inner_text() == ROLLBACK_ID
    assert "quality.negative_feedback.v1 drift" in rollback.inner_text()
    assert page.locator("#alerts tr.alert").count() == 2
    assert "s-maint" in page.locator("#silences").inner_text()


def test_the_dead_letters_page_lists_the_reasons_and_shows_payloads_as_text(page):
    page.goto("/deadletters")
    reasons = page.locator("#reasons tr.reason td:first-child").all_inner_texts()
    assert reasons == ["malformed_json", "invalid_utf8"]
    assert "loopwatch deadletter replay --reason invalid_utf8" in page.locator("#reasons").inner_text()
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    assert page.locator("#chart-deadletters .barlayer .trace").count() == 2
    widths = [
        p.bounding_box()["width"] for p in page.locator("#chart-deadletters .barlayer .point path").all()
    ]
    assert widths and min(widths) > 5, widths  # letters of one minute still draw a visible bar
    # Trial 12b: no time label hangs over the y axis (the first one did), and the day is the axis title.
    left = page.locator("#chart-deadletters .nsewdrag").bounding_box()["x"]
    ticks = [t.bounding_box() for t in page.locator("#chart-deadletters .xtick text").all()]
    shown = [box for box in ticks if box and box["width"] > 0]
    assert shown and min(box["x"] for box in shown) >= left, (left, shown)
    assert (page.locator("#chart-deadletters .g-xtitle").text_content() or "").startswith("minute (UTC) of ")
    # The producer's markup is shown, not run.
    assert any("<script>alert(1)</script>" in t for t in page.locator(".payload").all_inner_texts())
    assert page.locator("main script").count() == 0


def test_the_datasets_page_shows_versions_and_the_export_command(page):
    page.goto("/datasets")
    golden = page.locator('.dataset[data-table="golden"]')
    assert "version 2, 5 rows" in golden.locator("h2").inner_text()
    assert golden.locator(".export").inner_text().startswith("loopwatch dataset export --root ")


def _serve_history(
    tmp_path_factory: pytest.TempPathFactory, name: str, write: Callable[[Path], Any]
) -> Iterator[str]:
    """A console, labelled as `loopwatch console` labels the default detectors, over what ``write`` makes."""
    from core.settings import Settings
    from services.console import build_console

    root = tmp_path_factory.mktemp(name)
    write(root / "history")
    with serving(build_console(Settings(), history=str(root / "history"), datasets=str(root))) as url:
        yield url


@pytest.fixture(scope="module")
def two_configs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console over TWO_CONFIGS."""
    yield from _serve_history(tmp_path_factory, "console-two-configs", write_two_config_history)


def test_two_configs_draw_two_labelled_charts_and_one_window_gets_clock_ticks(browser, two_configs_url):
    page = browser.new_page(base_url=two_configs_url)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto("/segments/" + quote(TWO_CONFIGS, safe=""))
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    legends = [
        chart.locator(".legendtext").all_text_contents()
        for chart in page.locator(".detector .statistic").all()
    ]
    minimum = "min effect size (drift needs a significant p too)"
    # Plotly leaves a verdict with no window out of the legend.
    assert legends == [
        ["statistic (column=prompt_chars)", minimum, "drift"],
        ["statistic (column=response_chars)", minimum],
    ]
    page.goto("/segments/" + quote(ONE_WINDOW, safe=""))
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    ticks = page.locator(".detector .statistic .xtick text").all_text_contents()
    assert ticks and all("." not in t for t in ticks), ticks  # no sub-second ticks around one window
    # A lone window's traffic bar is drawn wide enough to see (Plotly's default is about 1 ms).
    [bar] = page.locator("#chart-events .barlayer .point path").all()
    assert bar.bounding_box()["width"] > 5
    page.close()
    assert failed == []  # the favicon included


@pytest.fixture(scope="module")
def verdicts_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console over the history written from real events (tests/console_verdicts_fixture.py)."""
    from .console_verdicts_fixture import write_verdicts_history

    yield from _serve_history(tmp_path_factory, "console-verdicts-browser", write_verdicts_history)


def test_not_judged_scales_and_revisions_read_right_in_the_browser(browser, verdicts_url):
    from .console_verdicts_fixture import KEY

    page = browser.new_page(base_url=verdicts_url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Item 2: the canary's last window had 24 requests for detectors that need 30.
    page.goto("/overview")
    cell = page.locator(f'td.version[data-segment="{KEY}"]')
    assert cell.locator("dd.verdict").inner_text() == "not judged (24 < 30 samples)"
    assert "2 not judged" in cell.inner_text()
    page.goto("/segments/" + quote(KEY, safe=""))
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    # Item 5: every chart of the page spans the same time range, so its windows line up.
    ranges = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')].map(p => p.layout.xaxis.range)")
    assert len(ranges) >= 5 and all(r == ranges[0] for r in ranges), ranges
    latency = page.locator('.detector[data-detector="quality.latency.v1"]')
    assert "1 not judged" in latency.locator(".counts").inner_text()
    # Its not-judged window has no point: one marker on the value line, for the judged window.
    assert latency.locator(".statistic .scatterlayer .trace").first.locator(".point").count() == 1
    noted = page.locator("#noted-windows tr.noted").all_inner_texts()
    assert any("not judged (7 < 30 samples)" in row for row in noted), noted  # the late feedback
    # Item 4: the negative-feedback rate's threshold is alpha: its p-value is drawn against it, on a log axis.
    feedback = page.locator('.detector[data-detector="quality.negative_feedback.v1"]')
    legend = feedback.locator(".statistic .legendtext").all_text_contents()
    assert legend == [
        "BH-adjusted p",
        "correction alpha 0.05 (adjusted p below it)",
        "raw p",
        "detector alpha (raw p below it)",
    ]
    assert feedback.locator(".statistic .ytitle").text_content() == "p-value (log)"
    # Item 6: revision 1 (ok) is shown, not revision 0 (drift), and marked revised.
    assert "0 drift and 0 warning windows of 2" in feedback.locator(".counts").inner_text()
    assert "1 revised" in feedback.locator(".counts").inner_text()
    assert any("ok, revised 1x" in row for row in noted), noted
    rings = page.evaluate(
        "document.querySelector('.detector[data-detector=\"quality.negative_feedback.v1\"] .statistic')"
        ".data.filter(t => t.name === 'revised by late events').map(t => t.x.length)"
    )
    assert rings == [1], rings  # the revised window is ringed on the chart
    page.close()
    assert errors == []
