"""Trial 12a in a real browser: one chart per unit, an SLO as a bound, skipped windows marked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.console_verdicts_fixture import KEY, START, write_events
from tests.test_console_browser import _serve_history, browser  # noqa: F401 - the module's headless Chromium
from tests.test_console_trial12 import trial_events


@pytest.fixture(scope="module")
def trial_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console over the trial's history (tests/test_console_trial12.py)."""
    yield from _serve_history(
        tmp_path_factory, "console-trial12-browser", lambda history: write_events(history, trial_events())
    )


def test_units_get_their_own_charts_and_skipped_windows_are_marked(browser: Any, trial_url: str) -> None:  # noqa: F811
    page = browser.new_page(base_url=trial_url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/segments/{quote(KEY, safe='')}?day={START.date()}")
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    latency = page.locator('.detector[data-detector="quality.latency.v1"]')
    units = latency.locator(".measurements").evaluate_all("charts => charts.map(c => c.dataset.unit)")
    assert units == ["milliseconds", "share"]
    legend = latency.locator('.measurements[data-unit="milliseconds"] .legendtext').all_text_contents()
    assert "p95 latency SLO (bound)" in legend and "v2 p95 latency" in legend
    shares = latency.locator('.measurements[data-unit="share"] .legendtext').all_text_contents()
    assert shares and all("share" in name for name in shares)
    # Trial 12b: the skipped window is marked only for the slow detector it skipped, not on every chart
    # (the traffic and fast detectors' charts judged it). Here that detector judged no window at all,
    # so it has a sentence in place of an empty chart, naming the skipped window too.
    marked = page.evaluate(
        "[...document.querySelectorAll('.js-plotly-plot')].map(p => (p.layout.shapes || []).length"
        " + p.data.filter(t => t.name && t.name.startsWith('skipped')).length)"
    )
    assert marked and all(n == 0 for n in marked), marked
    embedding = page.locator('.detector[data-detector="drift.embedding_mmd.v1"]')
    assert embedding.locator(".js-plotly-plot").count() == 0
    said = embedding.locator(".not-judged-chart").inner_text()
    assert (
        said.startswith("Not judged in any of its 1 window (too few samples)")
        and "1 more windows: skipped" in said
    )
    page.close()
    assert errors == []
