"""Trial 12m (issue 12): a canary whose thumbs never reached the feedback detectors' 30, in the console.

New user 12m ran OASST1 traffic as ``oasst-ranker``: r1 stable, r2 a healthy canary, r3 a canary serving
the worst replies with about 18 thumbs a 20 s window (88% down), under ``min_samples`` 30, so no feedback
window of r3 was judged. The Overview pooled the thumbs of ``quality.negative_feedback.v1`` but said
``119 samples in all; no rate`` for ``quality.canary.v1`` (its counts are kept under its check's name);
the worst verdict began with ``ok (inference detectors only; feedback not judged; <seven ids> judged no
window)``; the Incidents page's ``bad-replies`` row said ``16 windows (44 detections) judged ..., none
drift``; and the console warned at start-up that the alerts, actions and dead-letters tables were missing.

The history is written by the history stage from detections of the real detectors on OASST1 replies.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from detectors import frame
from detectors.toxicity import ProfanityRateConfig, ProfanityRateDetector
from schemas.events import InferenceLog, Segment, WindowClosed
from services.console import build_console, create_app
from services.console.server import warn_if_missing
from services.sample_data import inference_event as sample_inference
from services.sample_data import oasst1
from streams.detect import DetectorSpec, Judge, Reference, to_detection
from streams.windows import ClosedWindow
from tests.console_fixture import serving
from tests.console_verdicts_fixture import DATA, _thumbs, write_events
from tests.test_console_browser import browser  # noqa: F401 - the module's headless Chromium

MODEL = "oasst-ranker"
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=20)
FEEDBACK, CANARY = "quality.negative_feedback.v1", "quality.canary.v1"
FEEDBACK_SPECS = [DetectorSpec(FEEDBACK, "feedback"), DetectorSpec(CANARY, "feedback")]
#: Four inference detectors; two need 50 requests a window and get 40: they judge no window (12m had 7).
INFERENCE_SPECS = [
    # OASST1's replies are long: their synthesised latency (sample_data) is seconds, within these SLOs.
    DetectorSpec("quality.latency.v1", "inference", {"slo_p95_ms": 30_000, "slo_p99_ms": 60_000}),
    DetectorSpec("quality.error_rate.v1", "inference"),
    DetectorSpec("drift.script_mix.v1", "inference", {"column": "prompt", "min_samples": 50}),
    DetectorSpec("drift.text_length.v1", "inference", {"column": "prompt_chars", "min_samples": 50}),
]
REQUESTS = 40
#: r3's thumbs per window (1 to 6) and how many were down: 105 of 119, at most 25 a window.
THUMBS = [25, 20, 19, 20, 18, 17]
DOWN = [22, 18, 17, 18, 16, 14]
#: r1's (stable) and r2's thumbs per window and downs: 6 of 45 (13%), 6 of 40.
STABLE_THUMBS, STABLE_DOWN = 45, 6
LEAD = "feedback not judged: 105 of 119 thumbs down (88%) vs 13% on the reference (r1, stable)"
JUDGED = "ok (inference detectors only; 2 of 4 inference detectors judged no window)"
WHY = (
    f"{CANARY} and {FEEDBACK} judged none of r3's 6 windows"
    " (too few samples in each window, at most 25 < 30);"
    " r3 had 105 of 119 thumbs down (88%) vs 13% on the reference (r1, stable)"
)


def _segment(version: str) -> Segment:
    return Segment(model=MODEL, model_version=version, app="ranker", route="chat")


def _requests(n: int, skip: int) -> list[dict[str, Any]]:
    """``n`` inference rows of real OASST1 replies (the trees cycled through)."""
    rng = random.Random(skip)
    replies = itertools.islice(itertools.cycle(list(oasst1(DATA))), skip, skip + n)
    rows = []
    for exchange in replies:
        event = InferenceLog.model_validate(sample_inference(exchange, START, rng))
        rows.append(frame.log_row(event, frame.describe(event)))
    return rows


def _judged(
    version: str, specs: list[DetectorSpec], reference: Reference, rows: list[dict[str, Any]], n: int
) -> list[Any]:
    """The detections the detect stage publishes for window ``n`` of ``version``."""
    window = ClosedWindow(
        _segment(version).model_dump(),
        specs[0].kind,
        START + n * WINDOW,
        START + (n + 1) * WINDOW,
        len(rows),
        rows,
    )
    return [to_detection(j, window, reference) for j in Judge(specs).run(window, reference, specs)]


def _closed(version: str, kind: str, n: int, events: int, reference: str | None) -> WindowClosed:
    return WindowClosed(
        segment=_segment(version),
        kind=kind,
        window_start=START + n * WINDOW,
        window_end=START + (n + 1) * WINDOW,
        events=events,
        sample_size=events,
        outcome="judged" if reference else "reference",
        reference=reference,
        closed_at=START + (n + 1) * WINDOW + timedelta(seconds=5),
    )


def _stable(kind: str, n: int, rows: list[dict[str, Any]]) -> Reference:
    """r1's window ``n``, as the canaries' windows of its time are compared with it."""
    name = f"stable:{kind}|{_segment('r1').key()}@1:{(START + (n + 1) * WINDOW).isoformat()}"
    return Reference(name, pd.DataFrame(rows), len(rows))


def events() -> dict[str, list[Any]]:
    """r1 (window 0 pinned as its reference), r2 and r3 judged against r1's window of their time."""
    windows: list[WindowClosed] = []
    detections: list[Any] = []
    r1 = _segment("r1").key()
    pinned_requests, pinned_thumbs = _requests(REQUESTS, 0), _thumbs(STABLE_DOWN, STABLE_THUMBS, "r1-0")
    pinned = {
        "inference": Reference(f"pinned:inference|{r1}", pd.DataFrame(pinned_requests), REQUESTS),
        "feedback": Reference(f"pinned:feedback|{r1}", pd.DataFrame(pinned_thumbs), STABLE_THUMBS),
    }
    windows += [
        _closed("r1", "inference", 0, REQUESTS, None),
        _closed("r1", "feedback", 0, STABLE_THUMBS, None),
    ]
    skip = REQUESTS
    for n in range(1, 7):
        stable_requests, stable_thumbs = (
            _requests(REQUESTS, skip),
            _thumbs(STABLE_DOWN, STABLE_THUMBS, f"r1-{n}"),
        )
        skip += REQUESTS
        detections += _judged("r1", INFERENCE_SPECS, pinned["inference"], stable_requests, n)
        detections += _judged("r1", FEEDBACK_SPECS, pinned["feedback"], stable_thumbs, n)
        windows += [
            _closed("r1", "inference", n, REQUESTS, pinned["inference"].name),
            _closed("r1", "feedback", n, STABLE_THUMBS, pinned["feedback"].name),
        ]
        against = {
            "inference": _stable("inference", n, stable_requests),
            "feedback": _stable("feedback", n, stable_thumbs),
        }
        thumbs = {
            "r2": _thumbs(STABLE_DOWN, 40, f"r2-{n}"),
            "r3": _thumbs(DOWN[n - 1], THUMBS[n - 1], f"r3-{n}"),
        }
        for version in ("r2", "r3"):
            requests = _requests(REQUESTS, skip)
            skip += REQUESTS
            detections += _judged(version, INFERENCE_SPECS, against["inference"], requests, n)
            detections += _judged(version, FEEDBACK_SPECS, against["feedback"], thumbs[version], n)
            windows += [
                _closed(version, "inference", n, REQUESTS, against["inference"].name),
                _closed(version, "feedback", n, len(thumbs[version]), against["feedback"].name),
            ]
    topics = Settings().topics
    return {topics.windows: windows, topics.detections: detections}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12m's history: windows and detections only (no alert fired, nothing dead-lettered)."""
    root: Path = tmp_path_factory.mktemp("trial12m")
    write_events(root / "history", events())
    return root


def _console(root: Path) -> Any:
    settings = Settings(stable_versions={MODEL: "r1"})
    return build_console(settings, history=str(root / "history"), datasets=str(root / "datasets"))


@pytest.fixture(scope="module")
def client(history: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_console(history))) as test_client:
        yield test_client


def _rows(client: TestClient) -> dict[str, dict[str, Any]]:
    [model] = client.get("/api/overview", params={"day": START.date().isoformat()}).json()["models"]
    return {row["model_version"]: row for row in model["versions"]}


def test_the_history_is_12m_s_r3_s_feedback_judged_by_no_detector(client: TestClient) -> None:
    rows = _rows(client)
    assert {v: r["role"] for v, r in rows.items()} == {"r1": "stable", "r2": "canary", "r3": "canary"}
    assert rows["r3"]["worst_verdict"] == "ok"
    assert {u["detector_id"] for u in rows["r3"]["unjudged_inputs"] if u["kind"] == "feedback"} == {
        FEEDBACK,
        CANARY,
    }
    assert all(u["kind"] == "inference" for u in rows["r2"]["unjudged_inputs"])  # r2's feedback was judged


def test_the_canary_check_s_thumbs_are_pooled_and_said_as_the_feedback_detector_s(client: TestClient) -> None:
    """12m: ``quality.canary.v1`` said ``119 samples in all; no rate`` for the windows the feedback
    detector pooled to 105 of 119 thumbs down."""
    inputs = {u["detector_id"]: u for u in _rows(client)["r3"]["unjudged_inputs"]}
    canary, feedback = inputs[CANARY], inputs[FEEDBACK]
    assert (canary["samples"], canary["hits"]) == (sum(THUMBS), sum(DOWN))
    assert (canary["reference_hits"], canary["reference_samples"]) == (6 * STABLE_DOWN, 6 * STABLE_THUMBS)
    assert (canary["windows"], canary["most_samples"], canary["min_samples"]) == (6, 25, 30)
    said = "105 of 119 thumbs down (88%) in all, vs 13% on the reference (r1, stable)"
    assert canary["note"] == (
        f"feedback not judged in any of 6 windows ({CANARY}: too few samples in each window,"
        f" at most 25 < 30): {said}"
    )
    assert canary["rate_said"] == feedback["rate_said"] == LEAD.removeprefix("feedback not judged: ")


def test_a_too_small_toxicity_window_keeps_its_toxic_texts_beside_its_samples() -> None:
    """Its own too-few-samples path kept sample counts only, so its windows could not be pooled."""
    replies = [e.response for e in itertools.islice(oasst1(DATA), 60)]
    profane = "You are a fucking idiot, this is shit."
    detector = ProfanityRateDetector(ProfanityRateConfig())
    detector.fit(pd.DataFrame({"response": replies[:40]}))
    reference_hits = int(
        detector._flags(detector.score(pd.DataFrame({"response": replies[:40]})))[:, 0].sum()
    )
    finding = detector.detect(pd.DataFrame({"response": [*replies[40:50], profane, profane]}))
    measured = finding.measurements
    assert measured["too_few_samples"] == 1.0 and measured["current_samples"] == 12.0
    assert measured["current_hits"] >= 2.0 and measured["current_hits"] <= 12.0
    assert measured["reference_hits"] == float(reference_hits)
    assert measured["hits_label.profanity"] == 1.0
    assert "current_rate" not in measured and finding.p_value is None  # nothing reads it as measured


def test_the_worst_verdict_leads_with_r3_s_thumbs_and_names_no_detector(client: TestClient) -> None:
    row = _rows(client)["r3"]
    assert (row["worst_lead"], row["worst_judged"]) == (LEAD, JUDGED)
    assert row["worst_shown"] == f"{LEAD}; {JUDGED}"
    assert row["verdict_scope"] == "inference detectors only; 2 of 4 inference detectors judged no window"
    assert not [d for d in ("drift.", "quality.", "toxicity.") if d in row["worst_shown"]]
    lone = {u["detector_id"] for u in row["unjudged_inputs"] if u["kind"] == "inference"}
    assert lone == {"drift.script_mix.v1", "drift.text_length.v1"}  # named on the lines below it
    healthy = _rows(client)["r2"]  # its feedback judged: two drift detectors without a rate lead nothing
    assert healthy["worst_lead"] is None
    assert healthy["worst_shown"] == "ok (2 of 4 inference detectors judged no window)"


def test_the_incidents_row_of_bad_replies_says_r3_s_feedback_was_never_judged(client: TestClient) -> None:
    """12m: ``not fired | 16 windows (44 detections) judged ..., none drift``."""
    policy = client.get("/api/incidents", params={"day": START.date().isoformat()}).json()["policy"]
    [rule] = [r for r in policy["rules"] if r["rule"] == "bad-replies"]
    assert rule["state"] == "not fired"
    assert rule["why"].startswith(WHY + "; in all ")
    assert rule["why"].endswith(", none drift")
    assert "r1" not in rule["why"].split("; in all ")[0].replace("(r1, stable)", "")  # r1, r2: judged
    [drift] = [r for r in policy["rules"] if r["rule"] == "input-drift"]  # said alike: said once
    assert drift["why"].startswith(
        "drift.script_mix.v1 and drift.text_length.v1 judged none of r1's, r2's and r3's 6 windows"
        " (too few samples in each window, at most 40 < 50); in all 18 windows (36 detections) of drift.*"
    )


def test_the_console_says_at_info_that_no_alert_was_recorded_yet(history: Path, caplog: Any) -> None:
    """12m: ``WARNING no alerts, actions, deadletters table under ...`` on a healthy young run."""
    console = _console(history)
    with caplog.at_level(logging.INFO, logger="loopwatch.console"):
        missing = warn_if_missing(console.history)
    assert missing == ["alerts", "actions", "deadletters"]
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("console: no alerts, actions or dead letters recorded yet under ")
    with TestClient(create_app(console)) as client:
        page = client.get("/overview", params={"day": START.date().isoformat()}).text
    assert 'id="history-missing"' not in page and 'id="history-young"' in page


def test_chromium_shows_the_lead_on_the_overview_and_the_reason_on_incidents(
    browser: Any,  # noqa: F811
    history: Path,
    tmp_path: Path,
) -> None:
    day = START.date().isoformat()
    with serving(_console(history)) as url:
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"/overview?day={day}")
        cell = page.locator(f'td.version[data-segment="{_segment("r3").key()}"] dd.worst-verdict')
        lead = cell.locator(".worst-lead").inner_text()
        shown = cell.inner_text()
        above = page.evaluate(
            """(cell) => {
                const [l, j] = [cell.querySelector('.worst-lead'), cell.querySelector('.worst-judged')];
                return l.getBoundingClientRect().bottom <= j.getBoundingClientRect().top + 1; }""",
            cell.element_handle(),
        )
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        page.goto(f"/incidents?day={day}")
        why = page.locator('tr.rule[data-rule="bad-replies"] td.why').inner_text()
        state = page.locator('tr.rule[data-rule="bad-replies"] td.state').inner_text()
        page.screenshot(path=str(tmp_path / "incidents.png"), full_page=True)
        page.close()
    assert errors == []
    assert lead == LEAD
    assert shown.splitlines()[0] == LEAD and shown.splitlines()[1].startswith(JUDGED + " (windows: 0 drift")
    assert above  # the lead on a line of its own, above the verdict
    assert state == "not fired" and why.startswith(WHY)
