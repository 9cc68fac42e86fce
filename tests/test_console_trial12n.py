"""Trial 12n (issue 12): a stable version with no thumbs down led like a canary with all thumbs down.

New user 12n ran ``forum-helper`` live: v1 stable (HH-RLHF's chosen replies, 0 thumbs down), v2 a canary
(rejected replies, about 30% toxic Jigsaw comments, every thumb down), at most 17 thumbs a window, under
the feedback detectors' 30. The Overview led both with ``feedback not judged: ...`` in bold; v2's verdict
said ``drift`` without what drifted; the Incidents page's ``bad-replies`` row listed the rule's four
detectors as if all had breached; dates near year 1 gave a 500; repeated and unknown parameters were
silently used or ignored.

The history is written by the history stage from detections of the real detectors on HH-RLHF and Jigsaw.
"""

from __future__ import annotations

import csv
import dataclasses
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
from schemas.events import InferenceLog, Segment, WindowClosed
from services.console import build_console, create_app
from services.console.overview_judged import NotJudged, SegmentJudged
from services.console.server import warn_if_missing
from services.sample_data import hh_rlhf
from services.sample_data import inference_event as sample_inference
from streams.detect import DetectorSpec, Judge, Reference, to_detection
from streams.windows import ClosedWindow
from tests.console_fixture import serving
from tests.console_verdicts_fixture import DATA, _thumbs, write_events
from tests.test_console_browser import browser  # noqa: F401 - the module's headless Chromium

MODEL = "forum-helper"
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = START.date().isoformat()
WINDOW = timedelta(seconds=20)
FEEDBACK, CANARY, PROFANITY = "quality.negative_feedback.v1", "quality.canary.v1", "toxicity.profanity.v1"
FEEDBACK_SPECS = [DetectorSpec(FEEDBACK, "feedback"), DetectorSpec(CANARY, "feedback")]
INFERENCE_SPECS = [
    DetectorSpec(PROFANITY, "inference", {"column": "response"}),
    DetectorSpec("quality.error_rate.v1", "inference"),
]
REQUESTS, THUMBS, WINDOWS = 50, 17, 6
#: v2's windows with toxic replies (every other one, so no two breach in a row: bad-replies waits for 2).
TOXIC_WINDOWS = {1, 3, 5}
V1_LEAD_WAS = "feedback not judged: 0 of 102 thumbs down (0%)"
V2_LEAD = "feedback not judged: 102 of 102 thumbs down (100%) vs 0% on the reference (v1, stable)"


def _segment(version: str) -> Segment:
    return Segment(model=MODEL, model_version=version, app="forum", route="draft-reply")


def _toxic() -> list[str]:
    with (DATA / "jigsaw" / "train.5k.csv").open(newline="") as f:
        return [r["comment_text"] for r in csv.DictReader(f) if r["obscene"] == "1"]


def _requests(n: int, skip: int, toxic: list[str] | None = None) -> list[dict[str, Any]]:
    """``n`` inference rows: HH-RLHF's chosen replies, one in four Jigsaw's obscene comments if ``toxic``."""
    rng = random.Random(skip)
    rows = []
    for i, (chosen, _) in enumerate(itertools.islice(hh_rlhf(DATA), skip, skip + n)):
        if toxic and i % 4 == 0:
            chosen = dataclasses.replace(chosen, response=toxic[(skip + i) % len(toxic)])
        event = InferenceLog.model_validate(sample_inference(chosen, START, rng))
        rows.append(frame.log_row(event, frame.describe(event)))
    return rows


def _judged(
    version: str, specs: list[DetectorSpec], reference: Reference, rows: list[dict[str, Any]], n: int
) -> list[Any]:
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
        closed_at=START + (n + 1) * WINDOW + timedelta(seconds=1),
    )


def events() -> dict[str, list[Any]]:
    """v1 (window 0 pinned), v2 judged against v1's window of its time."""
    toxic = _toxic()
    windows: list[WindowClosed] = []
    detections: list[Any] = []
    v1 = _segment("v1").key()
    pinned_requests, pinned_thumbs = _requests(REQUESTS, 0), _thumbs(0, THUMBS, "v1-0")
    pinned = {
        "inference": Reference(f"pinned:inference|{v1}", pd.DataFrame(pinned_requests), REQUESTS),
        "feedback": Reference(f"pinned:feedback|{v1}", pd.DataFrame(pinned_thumbs), THUMBS),
    }
    windows += [_closed("v1", "inference", 0, REQUESTS, None), _closed("v1", "feedback", 0, THUMBS, None)]
    skip = REQUESTS
    for n in range(1, WINDOWS + 1):
        stable_requests, stable_thumbs = _requests(REQUESTS, skip), _thumbs(0, THUMBS, f"v1-{n}")
        skip += REQUESTS
        detections += _judged("v1", INFERENCE_SPECS, pinned["inference"], stable_requests, n)
        detections += _judged("v1", FEEDBACK_SPECS, pinned["feedback"], stable_thumbs, n)
        windows += [
            _closed("v1", "inference", n, REQUESTS, pinned["inference"].name),
            _closed("v1", "feedback", n, THUMBS, pinned["feedback"].name),
        ]
        end = (START + (n + 1) * WINDOW).isoformat()
        against = {
            kind: Reference(f"stable:{kind}|{v1}@1:{end}", pd.DataFrame(rows), len(rows))
            for kind, rows in (("inference", stable_requests), ("feedback", stable_thumbs))
        }
        requests = _requests(REQUESTS, skip, toxic if n in TOXIC_WINDOWS else None)
        skip += REQUESTS
        detections += _judged("v2", INFERENCE_SPECS, against["inference"], requests, n)
        detections += _judged(
            "v2", FEEDBACK_SPECS, against["feedback"], _thumbs(THUMBS, THUMBS, f"v2-{n}"), n
        )
        windows += [
            _closed("v2", "inference", n, REQUESTS, against["inference"].name),
            _closed("v2", "feedback", n, THUMBS, against["feedback"].name),
        ]
    topics = Settings().topics
    return {topics.windows: windows, topics.detections: detections}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12n's history: windows and detections only (no alert fired, nothing dead-lettered)."""
    root: Path = tmp_path_factory.mktemp("trial12n")
    write_events(root / "history", events())
    return root


def _console(root: Path) -> Any:
    settings = Settings(stable_versions={MODEL: "v1"})
    return build_console(settings, history=str(root / "history"), datasets=str(root / "datasets"))


@pytest.fixture(scope="module")
def client(history: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_console(history))) as test_client:
        yield test_client


def _rows(client: TestClient) -> dict[str, dict[str, Any]]:
    [model] = client.get("/api/overview", params={"day": DAY}).json()["models"]
    return {row["model_version"]: row for row in model["versions"]}


def test_the_history_is_12n_s_profane_canary_and_unjudged_feedback(client: TestClient) -> None:
    rows = _rows(client)
    assert {v: r["role"] for v, r in rows.items()} == {"v1": "stable", "v2": "canary"}
    assert (rows["v1"]["worst_verdict"], rows["v2"]["worst_verdict"]) == ("ok", "drift")
    assert rows["v2"]["drift_windows"] == len(TOXIC_WINDOWS)
    for row in rows.values():
        assert {u["detector_id"] for u in row["unjudged_inputs"]} >= {FEEDBACK}


def test_only_the_canary_whose_rate_is_worse_leads_in_bold(client: TestClient) -> None:
    """12n: v1's ``0 of 174 thumbs down (0%)`` led like v2's ``172 of 172`` (100%)."""
    rows = _rows(client)
    stable, canary = rows["v1"], rows["v2"]
    assert stable["worst_lead"] is None
    assert stable["worst_shown"] == "ok (inference detectors only; feedback not judged)"
    notes = [u["note"] for u in stable["unjudged_inputs"]]
    assert any(V1_LEAD_WAS.removeprefix("feedback not judged: ") in n for n in notes)  # on the plain lines
    assert canary["worst_lead"] == V2_LEAD


def test_the_canary_s_verdict_names_what_drifted(client: TestClient) -> None:
    """12n: ``drift (inference detectors only) (windows: 8 drift, ...)`` named no detector."""
    canary = _rows(client)["v2"]
    assert canary["worst_judged"] == f"drift: {PROFANITY} on 3 windows (inference detectors only)"


def test_the_reference_is_said_as_the_feedback_windows_it_spans(client: TestClient) -> None:
    """12n: ``reference (v1's first 3 windows)`` while the Segment page listed 2 reference windows: the
    feedback reference spans feedback windows; an inference verdict of the same window is listed instead."""
    [note] = [u["note"] for u in _rows(client)["v1"]["unjudged_inputs"] if u["detector_id"] == FEEDBACK]
    assert note.endswith("vs 0% on the reference (v1's first feedback window)")


def test_the_not_judged_counts_name_a_lone_detector_and_say_a_slow_one_s_reach() -> None:
    """12n: ``1 of 9 windows by 1 of 8 inference detectors; 1 of 16 windows by 7 of 8 ...`` was a riddle."""
    mmd, fast = "drift.embedding_mmd.v1", ["drift.text_length.v1", "quality.error_rate.v1"]
    judged = SegmentJudged(
        {mmd: "inference", **dict.fromkeys(fast, "inference"), FEEDBACK: "feedback"},
        [
            NotJudged(kind="inference", not_judged=1, windows=9, detectors=[mmd], of=3),
            NotJudged(kind="inference", not_judged=1, windows=16, detectors=fast, of=3),
            NotJudged(kind="feedback", not_judged=16, windows=16, detectors=[FEEDBACK], of=1),
        ],
    )
    assert judged.said(frozenset({mmd})) == (
        f"1 of 9 inference windows by {mmd} (slow: the 9 windows it reached so far);"
        f" 1 of 16 inference windows by 2 of 3 inference detectors (all but {mmd});"
        f" 16 of 16 feedback windows by {FEEDBACK}"
    )


def test_the_incidents_row_names_the_detector_that_breached_and_the_unjudged_feedback(
    client: TestClient,
) -> None:
    """12n: ``1 breaching window of <the rule's four ids>`` read as if all four had breached."""
    policy = client.get("/api/incidents", params={"day": DAY}).json()["policy"]
    [rule] = [r for r in policy["rules"] if r["rule"] == "bad-replies"]
    assert rule["state"] == "not fired"
    head, _, rest = rule["why"].partition(", at most 1 in a row: for_windows 2")
    assert head == f"3 breaching windows ({PROFANITY} on 3 windows of v2, from 12:00:20)"
    assert "quality.detoxify" not in head and FEEDBACK not in head
    assert f"judged none of v2's {WINDOWS} windows" in rest
    assert "v2 had 102 of 102 thumbs down (100%) vs 0% on the reference (v1, stable)" in rest


def test_the_segments_index_says_what_the_overview_says(client: TestClient) -> None:
    """12n: a plain ``ok`` for v1 and ``drift`` for v2 with no word of the feedback not judged."""
    page = client.get("/segments", params={"day": DAY}).text
    assert "ok (inference detectors only; feedback not judged)" in page
    assert f'<span class="worst-lead">{V2_LEAD}</span>' in page
    assert f"drift: {PROFANITY} on 3 windows (inference detectors only)" in page


@pytest.mark.parametrize(
    "url",
    [
        "/api/overview?day=0001-01-01&days=2",
        "/api/incidents?day=0001-01-01&days=400",
        "/api/deadletters?day=0001-01-02&days=5",
        f"/api/segments/{_segment('v1').key()}?day=0001-01-01&days=3",
        "/overview?day=0001-01-01&days=2",
        "/segments?day=0001-01-01&days=2",
        "/incidents?day=0001-01-01&days=7",
        "/deadletters?day=0001-01-01&days=2",
    ],
)
def test_a_range_before_year_1_is_a_400_that_says_so(history: Path, url: str) -> None:
    """12n: an OverflowError's 500 and traceback."""
    with TestClient(create_app(_console(history)), raise_server_exceptions=False) as c:
        response = c.get(url)
    assert response.status_code == 400
    assert "starts before 0001-01-01" in response.json()["error"]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("/api/overview?day=2026-12-01&day=2026-11-30", "query parameter day given more than once"),
        ("/api/datasets?limit=x", "unknown query parameter limit: /api/datasets takes no query parameter"),
        ("/api/incidents?dayz=2026-12-01", "unknown query parameter dayz: /api/incidents takes day, days"),
    ],
)
def test_a_repeated_or_unknown_api_parameter_is_a_400(client: TestClient, url: str, said: str) -> None:
    """12n: the last of a repeated ``day`` was used; ``limit`` where none is taken was ignored (200)."""
    response = client.get(url)
    assert response.status_code == 400
    assert (
        response.json()["error"] == said if said.endswith("parameter") else said in response.json()["error"]
    )


def test_a_run_s_own_console_says_at_info_that_nothing_is_written_yet(tmp_path: Path, caplog: Any) -> None:
    """12n: ``loopwatch up`` warned ``no history at all under ... (wrong --history? ...)``."""
    console = _console(tmp_path)
    with caplog.at_level(logging.INFO, logger="loopwatch.console"):
        warn_if_missing(console.history, this_run=True)
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("console: nothing written yet under ")
    assert "wrong --history" not in record.getMessage()


def test_the_quiet_line_no_longer_calls_the_run_healthy(client: TestClient) -> None:
    page = client.get("/overview", params={"day": DAY}).text
    assert "healthy run" not in page
    assert "No alerts, actions or dead letters recorded yet" in page


def test_chromium_leads_only_the_canary_and_names_the_breach_on_incidents(
    browser: Any,  # noqa: F811
    history: Path,
) -> None:
    with serving(_console(history)) as url:
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"/overview?day={DAY}")

        def cell(version: str) -> Any:
            return page.locator(f'td.version[data-segment="{_segment(version).key()}"] dd.worst-verdict')

        leads = {v: cell(v).locator(".worst-lead").count() for v in ("v1", "v2")}
        lead = cell("v2").locator(".worst-lead").inner_text()
        weight = cell("v2").locator(".worst-lead").evaluate("e => getComputedStyle(e).fontWeight")
        stable = cell("v1").inner_text()
        page.goto(f"/incidents?day={DAY}")
        why = page.locator('tr.rule[data-rule="bad-replies"] td.why').inner_text()
        page.close()
    assert errors == []
    assert leads == {"v1": 0, "v2": 1}
    assert lead == V2_LEAD and int(weight) >= 600
    assert stable.startswith("ok (inference detectors only; feedback not judged)")
    assert why.startswith(f"3 breaching windows ({PROFANITY} on 3 windows of v2, from 12:00:20)")
