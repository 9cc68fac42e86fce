"""Trial 12b finding 5 in a real browser: skipped windows on the slow detector's chart only, axes say units.

One segment: window 0 the reference, window 1 judged by the fast detectors and the (slow) embedding
detector, window 2 judged by the fast ones while the slow queue was full (``skipped``), and a
feedback window with no feedback (its detector judged no window).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from core.settings import Settings
from tests.console_verdicts_fixture import (
    FEEDBACK_SPECS,
    INFERENCE_SPECS,
    KEY,
    MINUTE,
    START,
    _judged,
    _requests,
    _thumbs,
    closed,
    write_events,
)
from tests.test_console_browser import _serve_history, browser  # noqa: F401 - the module's headless Chromium

EMBEDDING = "drift.embedding_mmd.v1"  # a slow detector in the default set


def slow_events() -> dict[str, list[Any]]:
    """The segment's history as events per topic."""
    reference = _requests(40, 0)
    first = _judged(INFERENCE_SPECS, reference, _requests(50, 40), 1)
    # The embedding detector's verdict on window 1, in the shape of a p-value finding (no model to load).
    profanity = next(d for d in first if d.detector_id == "toxicity.profanity.v1")
    embedding = profanity.model_copy(update={"detection_id": "emb-w1", "detector_id": EMBEDDING})
    no_feedback = _judged(FEEDBACK_SPECS, _thumbs(4, 40, "ref"), _thumbs(0, 0, "w1"), 1)
    windows = [
        closed("inference", 0, 40, "reference"),
        closed("inference", 1, 50, "judged"),
        closed("feedback", 1, 0, "judged"),
        closed("inference", 2, 50, "skipped"),
    ]
    detections = [*first, embedding, *_judged(INFERENCE_SPECS, reference, _requests(50, 90), 2), *no_feedback]
    topics = Settings().topics
    return {topics.windows: windows, topics.detections: detections}


@pytest.fixture(scope="module")
def slow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console, with the default detectors' labels and slow set, over the segment's history."""
    yield from _serve_history(
        tmp_path_factory, "console-slow-browser", lambda history: write_events(history, slow_events())
    )


_PLOTS = """[...document.querySelectorAll('.js-plotly-plot')].map(p => ({
  id: p.id,
  detector: p.closest('.detector') ? p.closest('.detector').dataset.detector : null,
  statistic: p.classList.contains('statistic'),
  unit: p.dataset.unit || null,
  title: p.layout.yaxis && p.layout.yaxis.title ? p.layout.yaxis.title.text : null,
  low: p._fullLayout.yaxis.range[0],
  shapes: (p.layout.shapes || []).length,
  skipped: p.data.filter(t => t.name && t.name.startsWith('skipped'))
    .map(t => t.x.filter(x => x !== null).map(x => new Date(x).toISOString())),
}))"""


def test_skipped_windows_mark_the_slow_chart_only_and_axes_say_units(browser: Any, slow_url: str) -> None:  # noqa: F811
    page = browser.new_page(base_url=slow_url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/segments/{quote(KEY, safe='')}?day={START.date()}")
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    plots = page.evaluate(_PLOTS)
    skipped_at = (START + 2 * MINUTE).isoformat().replace("+00:00", ".000Z")
    # One trace of dotted lines (one legend entry, a hover per line) on the slow detector's chart only.
    assert [(p["detector"], p["skipped"]) for p in plots if p["skipped"]] == [(EMBEDDING, [[skipped_at] * 2])]
    assert all(p["shapes"] == 0 for p in plots)
    legend = page.locator(f'.detector[data-detector="{EMBEDDING}"] .legendtext').all_text_contents()
    assert legend.count("skipped (slow queue full)") == 1
    # Every chart's y axis says what it counts; the latency check by its measure, in its SLO's unit.
    assert all(p["title"] for p in plots), [p["id"] for p in plots if not p["title"]]
    titles = {p["detector"]: p["title"] for p in plots if p["statistic"]}
    assert titles["quality.latency.v1"] == "p95 latency (milliseconds)"
    assert titles["toxicity.profanity.v1"] == "p-value (log)"
    # Shares start at 0 (never -1), whatever their values.
    shares = [p for p in plots if p["unit"] == "share"]
    assert shares and all(p["low"] == 0 for p in shares), shares
    # A detector that judged no window says why instead of drawing an empty axis.
    feedback = page.locator('.detector[data-detector="quality.negative_feedback.v1"]')
    assert feedback.locator(".js-plotly-plot").count() == 0
    assert (
        feedback.locator(".not-judged-chart")
        .inner_text()
        .startswith("Not judged in any of its 1 window (0 < 30 samples)")
    )
    page.close()
    assert errors == []
