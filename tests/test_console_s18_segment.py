"""Session 18 (issue 12): the Segment page's quality charts in words, and each Evidently report once.

A new user read ``p95.share_above_slo`` in a latency chart's legend, and the same six report links
under every detector, the ok ones too. The history here is written as the stream writes it: every
quality detector (all of its checks switched on) judged by the detect stage's ``Judge`` on real
HH-RLHF requests and OpenAssistant feedback, its Detections turned into rows by the history stage
(``tests/console_verdicts_fixture.py``), so the keys the legends get are the ones detectors record.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest

from core.settings import Settings
from detectors import frame
from detectors.registry import all_detectors
from services.console.reader import HistoryReader
from services.console.segment import SegmentView, segment_view
from services.console.views import DayRange
from services.sample_data import oasst1
from streams.detect import DetectorSpec, Judge, Reference, to_detection
from streams.windows import ClosedWindow
from tests.console_verdicts_fixture import DATA, KEY, MINUTE, SEGMENT, START, _requests, closed, write_events
from tests.test_console_browser import _serve_history, browser  # noqa: F401 - the module's headless Chromium

INFERENCE = [
    DetectorSpec("quality.latency.v1", "inference", {"slo_p50_ms": 300.0}),  # p50, p95 and p99 checks
    # Both SLOs low enough to be checked on every window: tokens, cost and their SLO checks.
    DetectorSpec(
        "quality.cost.v1", "inference", {"max_tokens_per_request": 50.0, "max_cost_per_request_usd": 1e-5}
    ),
    DetectorSpec("quality.error_rate.v1", "inference"),
    DetectorSpec("quality.empty_refusal.v1", "inference"),
]
FEEDBACK = [
    DetectorSpec("quality.negative_feedback.v1", "feedback"),
    DetectorSpec("quality.correction_rate.v1", "feedback"),
    DetectorSpec("quality.rating.v1", "feedback"),
    DetectorSpec("quality.canary.v1", "feedback"),  # negative feedback, errors and ratings vs stable
]
#: A raw key: a word joined to the next by a dot or an underscore (p95.share_above_slo, current_rate).
RAW_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]*[._][A-Za-z]")


def _feedback(skip: int, n: int) -> list[dict[str, Any]]:
    """Window rows of real OpenAssistant feedback: each reply's thumbs and rating, and a correction for
    every fifth reply rated low, as joined feedback rows carry them (``frame.feedback_row``)."""
    rows: list[dict[str, Any]] = []
    rated = (e for e in oasst1(DATA) if e.thumbs_up is not None and e.rating is not None)
    for exchange in itertools.islice(rated, skip, skip + n):
        base = {frame.REQUEST_ID: exchange.request_id, frame.ERROR: False}
        rows.append({**base, frame.FEEDBACK_KIND: "thumbs", frame.NEGATIVE: not exchange.thumbs_up})
        low = (exchange.rating or 5) <= 2
        rows.append(
            {**base, frame.FEEDBACK_KIND: "rating", frame.NEGATIVE: low, frame.RATING: exchange.rating}
        )
        kind = "correction" if low and len(rows) % 5 == 0 else "thumbs"
        rows.append(
            {**base, frame.FEEDBACK_KIND: kind, frame.NEGATIVE: low, frame.CORRECTION: kind != "thumbs"}
        )
    return rows


def _judged(specs: list[DetectorSpec], reference: list[dict[str, Any]], rows: list[dict[str, Any]], n: int):
    """The Detections the detect stage publishes for window ``n`` (reference pinned, as the fixture's)."""
    kind = specs[0].kind
    window = ClosedWindow(
        SEGMENT.model_dump(), kind, START + n * MINUTE, START + (n + 1) * MINUTE, len(rows), rows
    )
    pinned = Reference(f"pinned|{kind}|{KEY}", pd.DataFrame(reference), len(reference))
    return [to_detection(j, window, pinned) for j in Judge(specs).run(window, pinned, specs)]


def write_quality_history(root: Path) -> None:
    """Window 0 the reference, windows 1 and 2 judged by every quality detector on real traffic."""
    reference, thumbs = _requests(60, 0), _feedback(0, 40)
    detections = []
    for n in (1, 2):
        detections += _judged(INFERENCE, reference, _requests(60, 60 * n), n)
        detections += _judged(FEEDBACK, thumbs, _feedback(40 * n, 40), n)
    windows = [closed(kind, 0, 60, "reference") for kind in ("inference", "feedback")]
    windows += [closed(kind, n, 60, "judged") for n in (1, 2) for kind in ("inference", "feedback")]
    topics = Settings().topics
    write_events(root, {topics.windows: windows, topics.detections: detections})


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> SegmentView:
    """The segment's page over the quality history."""
    root = tmp_path_factory.mktemp("s18-quality") / "history"
    write_quality_history(root)
    day = START.date()
    return segment_view(HistoryReader(str(root)), KEY, DayRange(start=day, end=day))


def _legend(series: Any, name: str) -> str:
    """A measure's legend entry as console.js names its line: its label, else the key itself."""
    fallback = f"{name} (bound)" if name in series.bounds else name
    return str(series.labels.get(name) or fallback)


def test_every_quality_detector_is_in_the_history(view: SegmentView) -> None:
    # So the test below reads every key a quality detector can chart.
    quality = {d for d in all_detectors() if d.startswith("quality.")}
    judged = {s.detector_id for s in view.detectors if s.windows > s.not_judged_windows}
    assert judged == quality


def test_no_raw_measurement_key_reaches_a_legend_or_an_axis(view: SegmentView) -> None:
    drawn = {(s.detector_id, n): _legend(s, n) for s in view.detectors for n in s.measurements}
    assert len(drawn) >= 25, drawn
    raw = {key: label for key, label in drawn.items() if RAW_KEY.search(label)}
    assert raw == {}
    axes = {s.axis_title for s in view.detectors} | {u for s in view.detectors for u in s.units.values()}
    assert not [a for a in axes if RAW_KEY.search(a)], axes


def _series(view: SegmentView, detector: str) -> Any:
    return next(s for s in view.detectors if s.detector_id == detector)


def test_each_measure_reads_as_what_it_is_and_whose(view: SegmentView) -> None:
    latency = _series(view, "quality.latency.v1")
    assert {n: latency.labels[n] for n in ("p95.share_above_slo", "p99.observed_ms", "p50.slo_ms")} == {
        "p95.share_above_slo": "v2 share of requests above the p95 latency SLO",
        "p99.observed_ms": "v2 p99 latency",
        "p50.slo_ms": "p50 latency SLO (bound)",
    }
    cost = _series(view, "quality.cost.v1")
    assert cost.labels["tokens.reference_mean"] == "reference (v2's first window) mean tokens per request"
    assert cost.labels["cost_slo.slo"] == "cost per request SLO (bound)"
    assert cost.labels["tokens_slo.current_mean"] == "v2 mean tokens per request (SLO check)"
    canary = _series(view, "quality.canary.v1")
    assert canary.labels["negative_feedback.canary_rate"] == "v2 negative feedback rate"
    assert canary.labels["error_rate.stable_rate"] == "reference (v2's first window) error rate"


def test_only_measures_are_charted_and_a_mean_rating_has_its_own_axis(view: SegmentView) -> None:
    canary = _series(view, "quality.canary.v1")
    # error_rate.ci_low (a check named error_rate) is an interval's end, not a rate to draw as one.
    assert sorted(canary.measurements) == [
        "error_rate.canary_rate",
        "error_rate.stable_rate",
        "negative_feedback.canary_rate",
        "negative_feedback.stable_rate",
        "rating.canary_mean",
        "rating.stable_mean",
    ]
    assert canary.units["rating.canary_mean"] == "rating"
    rating = _series(view, "quality.rating.v1")
    assert rating.units == {"current_mean": "rating", "reference_mean": "rating"}


# --------------------------------------------------------------------------
# Evidently reports: once per window, where a detector drifted
# --------------------------------------------------------------------------

TEXT = "drift.text_length.v1"
EMBEDDING = "drift.embedding_mmd.v1"
PROFANITY = "toxicity.profanity.v1"


def write_report_history(root: Path) -> None:
    """Windows 1-2 judged on real requests; window 1's response drifted (a report for it), window 2 ok.

    Every detection of a window with a report names it, as the detect stage writes them.
    """
    specs = [
        DetectorSpec(TEXT, "inference", {"column": "response_chars"}),
        DetectorSpec(PROFANITY, "inference", {"column": "response"}),
    ]
    reference = _requests(60, 0)
    longer = [{**row, "response_chars": row["response_chars"] * 4 + 400} for row in _requests(60, 60)]
    detections = []
    for n, rows in ((1, longer), (2, _requests(60, 120))):
        window = ClosedWindow(
            SEGMENT.model_dump(), "inference", START + n * MINUTE, START + (n + 1) * MINUTE, 60, rows
        )
        pinned = Reference(f"pinned|inference|{KEY}", pd.DataFrame(reference), 60)
        report = f"/tmp/reports/{n}.html"
        detections += [
            to_detection(j, window, pinned, report) for j in Judge(specs).run(window, pinned, specs)
        ]
    windows = [closed("inference", 0, 60, "reference"), closed("inference", 1, 60, "judged")]
    windows.append(closed("inference", 2, 60, "judged"))
    topics = Settings().topics
    write_events(root, {topics.windows: windows, topics.detections: detections})


@pytest.fixture(scope="module")
def report_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console (as ``loopwatch console`` builds it) over the report history."""
    yield from _serve_history(tmp_path_factory, "s18-reports", write_report_history)


def test_each_report_is_linked_once_beside_what_drifted(tmp_path: Path) -> None:
    root = tmp_path / "history"
    write_report_history(root)
    day = START.date()
    page = segment_view(HistoryReader(str(root)), KEY, DayRange(start=day, end=day))
    verdicts = {s.detector_id: s.verdict for s in page.detectors}
    assert verdicts[TEXT] == ["drift", "ok"] and verdicts[PROFANITY] == ["ok", "ok"]
    [report] = page.reports  # window 2 had a report path but nothing drifted in it
    assert (report.window_start, report.verdict, report.detectors) == (START + MINUTE, "drift", [TEXT])
    # Under the ok detector no links; under the drifted one its drift window's only.
    assert {s.detector_id: [r.window_start for r in s.reports] for s in page.detectors} == {
        TEXT: [START + MINUTE],
        PROFANITY: [],
    }


def test_the_page_links_each_report_once(browser: Any, report_url: str) -> None:  # noqa: F811
    page = browser.new_page(base_url=report_url, viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/segments/{quote(KEY, safe='')}?day={START.date()}")
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    links = page.locator('a[href^="/reports?"]').evaluate_all("links => links.map(a => a.href)")
    assert len(links) == 1 and "detection=" in links[0], links
    assert page.locator("#reports tr.report").inner_text().split("\t")[1:3] == [
        "drift",
        TEXT + " · column=response_chars",
    ]
    assert page.locator(".report-pointer").count() == 1
    page.close()
    assert errors == []


@pytest.fixture(scope="module")
def quality_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console over the quality history."""
    yield from _serve_history(tmp_path_factory, "s18-quality-browser", write_quality_history)


def test_quality_charts_read_in_words_and_their_legends_do_not_overlap(
    browser: Any,  # noqa: F811 - the module's headless Chromium
    quality_url: str,
) -> None:
    page = browser.new_page(base_url=quality_url, viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/segments/{quote(KEY, safe='')}?day={START.date()}")
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    page.evaluate(
        "Promise.all([...document.querySelectorAll('.js-plotly-plot')].map(p => Plotly.Plots.resize(p)))"
    )
    texts = page.locator(".measurements .legendtext, .measurements .ytitle").all_text_contents()
    assert len(texts) >= 30 and not [t for t in texts if RAW_KEY.search(t)], texts
    overlaps = page.evaluate(OVERLAPS)
    assert overlaps == [], overlaps
    page.close()
    assert errors == []


#: Per chart: pairs of legend entries whose boxes intersect, and entries past the chart's right edge.
OVERLAPS = """
[...document.querySelectorAll('.js-plotly-plot')].flatMap(p => {
  const box = p.getBoundingClientRect();
  const items = [...p.querySelectorAll('.legend .traces')]
    .map(t => [t.textContent, t.getBoundingClientRect()]);
  const out = items.filter(([, r]) => r.right > box.right + 1).map(([n]) => `${p.id}: ${n} past the edge`);
  items.forEach(([a, r], i) => items.slice(i + 1).forEach(([b, s]) => {
    if (r.left < s.right - 1 && s.left < r.right - 1 && r.top < s.bottom - 1 && s.top < r.bottom - 1)
      out.push(`${p.id}: ${a} over ${b}`);
  }));
  return out;
})
"""
