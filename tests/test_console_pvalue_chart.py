"""Trial 12n (issue 12): a p-value chart whose points contradict its legend.

The Segment page drew each window's Benjamini-Hochberg adjusted p against the detector's alpha (0.01) and
coloured points above that line red: windows with adjusted p 0.0157 were drift. The verdict's rule is two
lines: the raw p below the detector's alpha, then the adjusted p below the correction's alpha (0.05, the
stream's default). And ``quality.cost.v1`` said "1 drift" beside two identical flat cost lines: its tokens
had drifted. The history here is written by the history stage from the real detectors' verdicts on
HH-RLHF replies and Jigsaw's obscene comments.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from detectors import frame
from schemas.events import Detection, InferenceLog, Segment, WindowClosed
from services.console import Console, create_app
from services.console.datasets import DatasetStore
from services.console.reader import HistoryReader
from services.console.segment import segment_view
from services.console.views import resolve_range
from services.sample_data import hh_rlhf, inference_event
from streams.detect import DetectorSpec, Judge, Reference, to_detection
from streams.windows import ClosedWindow
from tests.console_fixture import serving
from tests.console_verdicts_fixture import DATA, write_events
from tests.test_console_browser import browser  # noqa: F401 - the module's headless Chromium

PROFANITY, COST = "toxicity.profanity.v1", "quality.cost.v1"
SEGMENT = Segment(model="forum-helper", model_version="v2", app="forum", route="draft-reply")
KEY = SEGMENT.key()
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=20)
#: Eight detectors, so eight p-values are corrected together in each window (as on the trial's page).
SPECS = [
    DetectorSpec(PROFANITY, "inference", {"column": "response"}),
    DetectorSpec(COST, "inference"),
    DetectorSpec("drift.text_length.v1", "inference", {"column": "prompt_chars"}),
    DetectorSpec("drift.text_length.v1", "inference", {"column": "response_chars"}),
    DetectorSpec("drift.script_mix.v1", "inference", {"column": "prompt"}),
    DetectorSpec("quality.error_rate.v1", "inference"),
    DetectorSpec("quality.latency.v1", "inference"),
    DetectorSpec("quality.empty_refusal.v1", "inference"),
]
#: Per window of v2: how many of its 60 replies are obscene Jigsaw comments, or "long" (two replies in one).
#: 14 gives raw p 0.0097 < 0.01 whose adjusted p is 0.078 (ok); 16 raw 0.003, adjusted 0.024 (drift).
WINDOWS: list[int | str] = [0, 14, 16, "long"]
OK_AFTER_CORRECTION, DRIFT, LONG = 1, 2, 3
#: The price the trial sent for every request: the cost lines are flat and equal.
PRICE = 0.0004


def _rows(skip: int, toxic: int | str) -> list[dict[str, Any]]:
    """60 inference rows of HH-RLHF's chosen replies at a fixed price, the first ``toxic`` made obscene."""
    comments = _obscene()
    rng = random.Random(skip)
    rows = []
    for i, (chosen, rejected) in enumerate(itertools.islice(hh_rlhf(DATA), skip, skip + 60)):
        if toxic == "long":
            chosen = dataclasses.replace(chosen, response=f"{chosen.response} {rejected.response}")
        elif i < int(toxic):
            chosen = dataclasses.replace(chosen, response=comments[(skip + i) % len(comments)])
        event = {**inference_event(chosen, START, rng), "cost_usd": PRICE}
        logged = InferenceLog.model_validate(event)
        rows.append(frame.log_row(logged, frame.describe(logged)))
    return rows


def _obscene() -> list[str]:
    with (DATA / "jigsaw" / "train.5k.csv").open(newline="") as f:
        return [r["comment_text"] for r in csv.DictReader(f) if r["obscene"] == "1"]


def _judged(n: int, reference: Reference) -> list[Detection]:
    rows = _rows(60, WINDOWS[n])
    window = ClosedWindow(
        SEGMENT.model_dump(), "inference", START + n * WINDOW, START + (n + 1) * WINDOW, len(rows), rows
    )
    return [to_detection(j, window, reference) for j in Judge(SPECS).run(window, reference, SPECS)]


def _closed(n: int) -> WindowClosed:
    return WindowClosed(
        segment=SEGMENT,
        kind="inference",
        window_start=START + n * WINDOW,
        window_end=START + (n + 1) * WINDOW,
        events=60,
        sample_size=60,
        outcome="judged",
        reference="pinned",
        closed_at=START + (n + 1) * WINDOW + timedelta(seconds=1),
    )


def _write(root: Path, recorded_alpha: float | None = None) -> None:
    """v2's four windows judged against 60 clean replies of v1; optionally each row says its correction."""
    v1 = SEGMENT.model_copy(update={"model_version": "v1"}).key()
    reference = Reference(f"pinned:inference|{v1}", pd.DataFrame(_rows(0, 0)), 60)
    detections = [d for n in range(len(WINDOWS)) for d in _judged(n, reference)]
    if recorded_alpha is not None:
        detections = [
            d.model_copy(update={"measurements": {**d.measurements, "correction_alpha": recorded_alpha}})
            for d in detections
        ]
    topics = Settings().topics
    write_events(
        root, {topics.windows: [_closed(n) for n in range(len(WINDOWS))], topics.detections: detections}
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pvalue-chart")
    _write(root / "history")
    return root


def _series(root: Path) -> dict[str, dict[str, Any]]:
    reader = HistoryReader(str(root))
    view = segment_view(reader, KEY, resolve_range(reader, None, 1))
    return {s.detector_id: s.model_dump() for s in view.detectors if s.detector_id in (PROFANITY, COST)}


def test_each_p_is_drawn_against_the_line_it_must_beat_and_red_exactly_when_drift(history: Path) -> None:
    profanity = _series(history / "history")[PROFANITY]
    raw, adjusted, verdict = profanity["p_value"], profanity["value"], profanity["verdict"]
    # The trial's case: raw p below the detector's 0.01, adjusted above it but below the correction's 0.05.
    assert raw[DRIFT] < 0.01 <= adjusted[DRIFT] < 0.05 and verdict[DRIFT] == "drift"
    # A raw p below alpha whose adjusted p is not below the correction's alpha: ok.
    assert raw[OK_AFTER_CORRECTION] < 0.01 and adjusted[OK_AFTER_CORRECTION] >= 0.05
    assert verdict[OK_AFTER_CORRECTION] == "ok"
    assert profanity["threshold"] == [0.01] * 4  # the detector's alpha, which the raw p must be below
    assert profanity["correction_alpha"] == [0.05] * 4  # recorded by the correction (correction_alpha)
    assert profanity["correction_note"] is None  # a history without it: ASSUMED_NOTE (test_console_trial12h)
    assert profanity["threshold_label"] == "detector alpha (raw p below it)"
    assert profanity["correction_label"] == "correction alpha 0.05 (adjusted p below it)"
    lines = zip(raw, profanity["threshold"], adjusted, profanity["correction_alpha"], strict=True)
    below_both = [r < t and a < c for r, t, a, c in lines]
    assert below_both == [v == "drift" for v in verdict] == [False, False, True, False]


def test_a_detector_of_several_checks_says_which_one_drifted(history: Path) -> None:
    cost = _series(history / "history")[COST]
    assert cost["verdict"][LONG] == "drift" and cost["decided_by"][LONG] == "tokens"
    assert cost["drift_by"] == {"tokens": 1}
    # The trial's flat cost lines: one price per request, the same on v2 and its reference.
    assert cost["measurements"]["cost.current_mean"][LONG] == pytest.approx(PRICE)
    assert cost["measurements"]["cost.reference_mean"][LONG] == pytest.approx(PRICE)
    console = Console(HistoryReader(str(history / "history")), DatasetStore(history / "datasets"))
    with TestClient(create_app(console)) as client:
        page = client.get("/segments/" + quote(KEY, safe="")).text
    assert f'{COST}</a> <span class="quiet">1 drift (tokens)</span>' in page
    section = page.split(f'data-detector="{COST}"')[1].split("</section>")[0]
    assert '<span class="drift-by">Drift decided by its tokens check:' in section
    # Its tokens and cost checks are judged by their p: a p-value chart (trial 12u: a latency
    # detector, drawn as a statistic against its SLO, was said to draw a p).
    assert cost["value_label"] == "p-value"
    assert "its p-value chart draws the deciding check's p" in section


def test_a_correction_alpha_the_history_records_is_drawn_and_not_called_the_default(tmp_path: Path) -> None:
    _write(tmp_path, recorded_alpha=0.1)
    profanity = _series(tmp_path)[PROFANITY]
    assert profanity["correction_alpha"] == [0.1] * 4
    assert profanity["correction_note"] is None
    assert profanity["correction_label"] == "correction alpha 0.1 (adjusted p below it)"


#: The profanity chart as drawn: per trace its name, y values, marker colours and hovers; and per scatter
#: trace's drawn points their px y and fill or stroke, with the two alpha lines' px y.
DRAWN = """(() => {
  const p = document.querySelector(
    'section[data-detector="toxicity.profanity.v1"] .statistic.js-plotly-plot');
  const y = p._fullLayout.yaxis, px = (v) => y.l2p(Math.log10(v));
  const traces = p.data.map((t, i) => {
    // A trace with no point (no warning window) draws no group: each group knows its trace's index.
    const g = [...p.querySelectorAll('.scatterlayer .trace')].find((d) => d.__data__[0].trace.index === i);
    const points = g ? [...g.querySelectorAll('path.point')].map((pt) => {
      const ty = Number(/translate\\([^,]+,([^)]+)\\)/.exec(pt.getAttribute('transform'))[1]);
      return [ty, pt.style.fill !== 'none' && pt.style.fill ? pt.style.fill : pt.style.stroke];
    }) : [];
    return { name: t.name, y: t.y, customdata: t.customdata || null, points };
  });
  return { traces, px: { alpha: px(0.01), correction: px(0.05) },
           legend: p.querySelector('.legendtitletext').textContent };
})()"""
RED = "rgb(192, 57, 43)"


def test_the_drawn_chart_has_both_lines_and_each_point_red_exactly_when_drift(
    browser: Any,  # noqa: F811
    history: Path,
) -> None:
    console = Console(HistoryReader(str(history / "history")), DatasetStore(history / "datasets"))
    with serving(console) as url:
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"/segments/{quote(KEY, safe='')}")
        page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
        drawn = page.evaluate(DRAWN)
        page.close()
    assert errors == []
    traces = {t["name"]: t for t in drawn["traces"]}
    assert drawn["legend"].startswith(
        "drift needs raw p < detector alpha and BH-adjusted p < correction alpha"
    )
    alpha = traces["detector alpha (raw p below it)"]
    correction = traces["correction alpha 0.05 (adjusted p below it)"]
    assert set(alpha["y"]) == {0.01} and set(correction["y"]) == {0.05}
    adjusted, raw = traces["BH-adjusted p"], traces["raw p"]
    for drawn_points in (adjusted["points"], raw["points"]):
        assert [colour == RED for _, colour in drawn_points] == [False, False, True, False]
    # Pixels grow downwards: below a line is a larger y. The drift window below both lines, the ok one's
    # raw p below the detector's alpha and its adjusted p above the correction's.
    line = drawn["px"]
    assert adjusted["points"][DRIFT][0] > line["correction"] and raw["points"][DRIFT][0] > line["alpha"]
    assert raw["points"][OK_AFTER_CORRECTION][0] > line["alpha"]
    assert adjusted["points"][OK_AFTER_CORRECTION][0] < line["correction"]
    hover = adjusted["customdata"][DRIFT]
    assert hover.startswith("drift<br>raw p 0.00299 vs detector alpha 0.01<br>BH-adjusted p 0.0239 vs"), hover
    assert "correction alpha 0.05" in hover and "the default" not in hover
    assert raw["customdata"] == adjusted["customdata"]
