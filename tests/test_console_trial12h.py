"""Trial 12h's console findings (issue 12), each on a small history written as the history stage writes it.

- the p-value charts drew the raw p while the verdict used the Benjamini-Hochberg adjusted one;
- no page said when a window closed, how long after its end, what closed it or what it waited for;
- "What the policy did" did not say that no rule asks for a retrain on the bad replies it rolled back;
- a dead letter's sample showed its first error only ("... (and 3 more)");
- Segment pages of ~40 charts had no table of contents and nothing folded.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.history import DETECTIONS, WINDOWS, Letter, deadletter_rows, detection_row, window_closed_row
from curation.history_store import HistoryBatch, HistoryStore
from retrain_trigger.policy import load_policy, parse_policy
from schemas.events import Feedback, Segment, SourceRef, WindowClosed
from services.console import Console, create_app
from services.console.datasets import DatasetStore
from services.console.reader import HistoryReader
from services.console.segment import segment_view
from services.console.series import ADJUSTED_NOTE
from services.console.views import incidents_view, resolve_range
from services.console.window_close import close_note
from streams.ingest import Rejected, dead_letter, decode
from tests.console_fixture import serving
from tests.console_verdicts_fixture import INFERENCE_SPECS, _judged, _requests, write_events
from tests.test_console_browser import browser  # noqa: F401 - the module's headless Chromium
from tests.test_console_incidents import MODEL, POLICY, START, at, detection, rollback_request, window, write
from tests.test_console_incidents import alert as incident_alert

from .test_console_incidents import _segment

MMD = "drift.embedding_mmd.v1"
FEEDBACK = "quality.negative_feedback.v1"
TEXT = "drift.text_length.v1"
KEY = _segment("v2")["segment"]


def _p_row(n: int, raw: float, adjusted: float | None, verdict: str, **kw: Any) -> dict[str, Any]:
    """An embedding MMD detection of window ``n``: its raw p, the adjusted p its verdict used (alpha 0.05)."""
    row = detection("v2", n, MMD, verdict, p=raw)
    measured = {} if adjusted is None else {"p_value_adjusted": adjusted}
    return {
        **row,
        "statistic": 0.004,
        "threshold": 0.05,
        "threshold_of": "p_value",
        "p_value_adjusted": adjusted,
        "measurements": json.dumps(measured, sort_keys=True),
        **kw,
    }


#: The trial's MMD points: p 0.03 ok and p 0.01 a warning once corrected, and one window not corrected.
P_ROWS = [_p_row(1, 0.03, 0.06, "ok"), _p_row(2, 0.01, 0.04, "warning"), _p_row(3, 0.5, None, "ok")]


def _mmd(root: str) -> dict[str, Any]:
    history = HistoryReader(root)
    view = segment_view(history, KEY, resolve_range(history, None, 1, ("detections",)))
    [series] = [s for s in view.detectors if s.detector_id == MMD]
    return series.model_dump()


@pytest.mark.parametrize("written", ["with the column", "before the column"])
def test_a_p_value_chart_draws_the_adjusted_p_its_verdict_used(tmp_path: Path, written: str) -> None:
    # A history written before the column keeps the adjusted p in its measurements only.
    old = pa.schema([f for f in DETECTIONS if f.name != "p_value_adjusted"])
    schemas = {"detections": old} if written == "before the column" else None
    series = _mmd(write(tmp_path, schemas, detections=P_ROWS))
    # Trial 12n changed the design: the adjusted p against the correction's alpha, the raw p against the
    # detector's; a window not corrected has its raw p only.
    assert series["value"] == [0.06, 0.04, None]
    assert series["p_value"] == [0.03, 0.01, 0.5]
    assert series["correction_alpha"] == [0.05, 0.05, None]
    assert series["value_note"] == ADJUSTED_NOTE
    # The point the on-call reads: below both its lines exactly when its verdict is not ok.
    lines = ("p_value", "threshold", "value", "correction_alpha", "verdict")
    drawn = zip(*(series[k] for k in lines), strict=True)
    below = [(raw < t and (adj is None or adj < a)) == (v != "ok") for raw, t, adj, a, v in drawn]
    assert below == [True, True, True]


def test_the_detections_row_carries_the_adjusted_p_and_the_page_says_it_is_adjusted(tmp_path: Path) -> None:
    judged = _judged(INFERENCE_SPECS[:1], _requests(30, 0), _requests(30, 30), 1)  # profanity: a p-value
    [row] = [detection_row(d, "p_value") for d in judged]
    assert row["p_value_adjusted"] == judged[0].measurements["p_value_adjusted"]
    # With its windows: a history of detections only would be shown for today's date, not the rows' day.
    root = write(tmp_path, windows=[window("v2", n) for n in range(1, 4)], detections=P_ROWS)
    console = Console(HistoryReader(root), DatasetStore(tmp_path / "datasets"))
    with TestClient(create_app(console)) as client:
        page = client.get("/segments/" + quote(KEY, safe="")).text
    assert "the Benjamini-Hochberg adjusted p (filled dots: the window's p-values are corrected" in page


def _closed(kind: str, n: int, late: float, by: str | None, waited: str | None, revision: int = 0):
    return WindowClosed(
        segment=Segment(model=MODEL, model_version="v2", app="trial12e", route="chat"),
        kind=kind,
        window_start=at(n),
        window_end=at(n + 1),
        events=60,
        sample_size=60,
        revision=revision,
        outcome="judged",
        reference="stable",
        closed_at=at(n + 1) + timedelta(seconds=late),
        closed_by=by,
        waited_for=waited,
    )


WAITED = "llm.feedback.v1 partition 3 (event time reached 00:42:05 at 00:42:21)"


def test_each_window_says_when_it_closed_what_closed_it_and_what_it_waited_for(tmp_path: Path) -> None:
    topics = Settings().topics
    events = [
        _closed("inference", 0, 1, "watermark", None),
        _closed("feedback", 0, 21, "watermark", WAITED),  # the trial's W3: held back by W4's feedback
        _closed("inference", 1, 33, "idle_timeout", None),
        _closed("feedback", 1, 2, "watermark", None),
        _closed("feedback", 1, 95, "revision", None, revision=1),  # late feedback revised it
    ]
    write_events(tmp_path, {topics.windows: events})
    rows = HistoryStore(str(tmp_path)).read("windows").to_pylist()
    revised = [r for r in rows if r["window_start"] == at(1) and r["kind"] == "feedback"]
    assert [(r["closed_by"], r["revision"]) for r in revised] == [("revision", 1)]  # the newer revision's
    history = HistoryReader(str(tmp_path))
    view = segment_view(
        history,
        KEY,
        resolve_range(history, None, 1),
        kinds={FEEDBACK: "feedback", TEXT: "inference"},
    )
    assert view.closed["feedback"] == [
        f"closed 21 s after its end by the watermark, waited for {WAITED}",
        "closed 95 s after its end by a revision",
    ]
    assert view.closed["inference"][1] == (
        "closed 33 s after its end by the idle timeout (an input went quiet)"
    )
    [noted] = view.noted  # the revised window, in the table of windows without a plain verdict
    assert noted.closed == [
        f"inference: {view.closed['inference'][1]}",
        f"feedback: {view.closed['feedback'][1]}",
    ]
    console = Console(history, DatasetStore(tmp_path / "datasets"))
    with TestClient(create_app(console)) as client:
        page = client.get("/segments/" + quote(KEY, safe="")).text
    assert 'id="window-closes"' in page and "closed 21 s after its end by the watermark" in page
    assert "Closed by the watermark: every input&#39;s event time passed its end" in page
    assert f"waited for {WAITED}" in page
    assert '<td class="closed">inference: closed 33 s after its end' in page


def test_a_history_written_before_closed_by_still_says_when_each_window_closed(tmp_path: Path) -> None:
    old = pa.schema([f for f in WINDOWS if f.name not in ("closed_by", "waited_for")])
    rows = [{**window("v2", n), "closed_at": at(n + 1) + timedelta(seconds=3)} for n in range(2)]
    rows.append(window("v2", 2))  # known from detections only: no close
    history = HistoryReader(write(tmp_path, {"windows": old}, windows=rows))
    view = segment_view(history, KEY, resolve_range(history, None, 1))
    assert view.closed == {"inference": ["closed 3 s after its end", "closed 3 s after its end", None]}
    assert close_note(-5, None, None) == "closed 5 s before its end"  # traffic stamped ahead of the clock
    # The store gives an older table the columns on its next write, and fills them from then on.
    store = HistoryStore(str(tmp_path))
    closed = _closed("inference", 3, 2, "watermark", WAITED)
    store.write(HistoryBatch(rows={"windows": [window_closed_row(closed)]}), now=START)
    [row] = [r for r in store.read("windows").to_pylist() if r["window_start"] == at(3)]
    assert (row["closed_by"], row["waited_for"]) == ("watermark", WAITED)


def _policy_view(tmp_path: Path, detections: list[dict[str, Any]], policy: Any) -> Any:
    history = HistoryReader(write(tmp_path, detections=detections))
    return incidents_view(history, resolve_range(history, None, 7, ("detections",)), policy, "p.yaml")


def test_the_policy_says_when_no_rule_asks_for_a_retrain_on_the_bad_replies_it_rolled_back(
    tmp_path: Path,
) -> None:
    bad = [detection("v2", n, FEEDBACK, "drift", p=1e-9) for n in range(3, 6)]
    view = _policy_view(tmp_path / "trial", bad, parse_policy(POLICY))
    assert view.policy.no_retrain == (
        "no rule of policy trial asks for a retrain on quality.negative_feedback.v1, though it drifted"
        " on 3 windows of hh-concierge/v2 in this range: only bad-replies (rollback) acts on it. To"
        " retrain on it too, add a rule with action: retrain that matches it, as the demo's policy"
        " does (retrain-on-rejected-replies; see the README's Decide and act)"
    )
    # The built-in policy: the canary check and the feedback rate, named from its own rules.
    canary = [detection("v2", n, "quality.canary.v1", "drift", p=1e-9) for n in range(3, 5)]
    default = _policy_view(tmp_path / "default", bad + canary, load_policy(None))
    assert default.policy.no_retrain.startswith(
        "no rule of policy default asks for a retrain on quality.canary.v1, quality.negative_feedback.v1,"
        " though they drifted on 3 windows of hh-concierge/v2"
    )
    # A policy with a retrain rule for them says nothing; nor does one whose detections stayed ok.
    covered = POLICY.replace('detectors: ["drift.*"]', 'detectors: ["drift.*", "quality.*"]')
    assert _policy_view(tmp_path / "covered", bad, parse_policy(covered)).policy.no_retrain is None
    calm = [detection("v2", n, FEEDBACK) for n in range(3)]
    assert _policy_view(tmp_path / "calm", calm, parse_policy(POLICY)).policy.no_retrain is None
    root = write(tmp_path / "page", detections=bad)
    console = Console(HistoryReader(root), DatasetStore(tmp_path / "datasets"), policy=parse_policy(POLICY))
    with TestClient(create_app(console)) as client:
        page = client.get("/incidents").text
    assert 'id="no-retrain"' in page and "no rule of policy trial asks for a retrain" in page


def test_a_dead_letter_sample_shows_every_error_escaped(tmp_path: Path) -> None:
    # The trial's feedback: a timestamp with a space for its T and a raw e-mail as user_id, and markup.
    raw = json.dumps(
        {
            "schema_version": "1",
            "event_id": "f-1",
            "request_id": "r-1",
            "timestamp": "2026-12-02 03:30:05+00:00",
            "kind": "thumbs",
            "value": False,
            "user_id": "alice@example.com",
            "<b>": 1,
        }
    ).encode()
    rejected = decode(raw, Feedback, max_bytes=100_000)
    assert isinstance(rejected, Rejected) and "more)" in rejected.error
    source = SourceRef(topic="llm.feedback.v1", partition=3, offset=14)
    letter = dead_letter(rejected, source, None, raw, START, prefix_bytes=2048)
    rows = deadletter_rows([Letter(partition=3, offset=14, letter=letter)])
    root = write(tmp_path, deadletters=rows)
    console = Console(HistoryReader(root), DatasetStore(tmp_path / "datasets"))
    with TestClient(create_app(console)) as client:
        [sample] = client.get("/api/deadletters", params={"days": 400}).json()["samples"]
        page = client.get("/deadletters", params={"days": 400}).text
    assert len(sample["errors"]) == len(rejected.detail) == 3
    assert any(e.startswith("user_id: ") and "e-mail" in e for e in sample["errors"])
    assert any(e.startswith("timestamp: needs a T") for e in sample["errors"])
    listed = re.findall(r"<li>(.*?)</li>", page.split('<ul class="errors error">')[1].split("</ul>")[0])
    assert len(listed) == 3 and any("never a raw e-mail address" in e for e in listed)
    assert "&lt;b&gt;" in page and "<b>:" not in page  # the field name is markup, shown escaped
    assert base64.b64decode(json.loads(rows[0]["samples"])[0]["value_b64"]) == raw


def _toc_history(root: Path) -> None:
    """v2: the embedding MMD warned on a window, the text length stayed ok on all of them."""
    calm = [
        {**detection("v2", n, TEXT, p=0.4), "statistic": 0.4, "threshold": 0.05, "threshold_of": "p_value"}
        for n in range(1, 4)
    ]
    write(root, windows=[window("v2", n) for n in range(1, 4)], detections=[*P_ROWS, *calm])


def test_the_segment_page_has_a_table_of_contents_and_folds_detectors_all_ok(tmp_path: Path) -> None:
    _toc_history(tmp_path)
    console = Console(HistoryReader(str(tmp_path)), DatasetStore(tmp_path / "datasets"))
    with TestClient(create_app(console)) as client:
        page = client.get("/segments/" + quote(KEY, safe="")).text
    toc = page.split('<nav id="toc">')[1].split("</nav>")[0]
    assert re.findall(r'href="#(detector-\d+)">([^<]+)</a>', toc) == [
        ("detector-0", MMD),
        ("detector-1", TEXT),
    ]
    sections = dict(
        re.findall(
            r'<section class="detector" id="(detector-\d+)".*?<details class="detector-body"( open)?>',
            page,
            re.S,
        )
    )
    assert sections == {"detector-0": " open", "detector-1": ""}  # the warning open, the all-ok folded


@pytest.fixture(scope="module")
def toc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console over the table-of-contents history."""
    root = tmp_path_factory.mktemp("console-trial12h")
    _toc_history(root / "history")
    with serving(Console(HistoryReader(str(root / "history")), DatasetStore(root / "datasets"))) as url:
        yield url


def test_a_folded_detector_opens_from_the_table_of_contents_with_its_chart_drawn_to_width(
    browser: Any,  # noqa: F811
    toc_url: str,
) -> None:
    page = browser.new_page(base_url=toc_url, viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"/segments/{quote(KEY, safe='')}")
    page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
    folded = page.locator("#detector-1 details.detector-body")
    assert folded.evaluate("d => d.open") is False
    assert page.locator("#detector-1 .js-plotly-plot").count() == 1  # drawn while folded
    page.locator('#toc a[href="#detector-1"]').click()
    page.wait_for_function("document.querySelector('#detector-1 details').open")
    # Resized on opening: as wide as the open section's chart, not Plotly's hidden-div default.
    page.wait_for_function(
        "Math.abs(document.querySelector('#detector-1 .statistic .main-svg').getBoundingClientRect().width"
        " - document.querySelector('#detector-0 .statistic .main-svg').getBoundingClientRect().width) < 2"
    )
    # The hover of the warning point names the adjusted p and the raw one; the legend says which p it is.
    mmd = page.locator("#detector-0 .statistic")
    assert ADJUSTED_NOTE in (mmd.locator(".legendtitletext").text_content() or "")
    hovers = page.evaluate("document.querySelector('#detector-0 .statistic').data[0].customdata")
    assert "raw p 0.0100 vs detector alpha 0.05" in hovers[1] and hovers[1].startswith("warning"), hovers
    assert "BH-adjusted p 0.0400 vs correction alpha 0.05 (the default: not in the history)" in hovers[1]
    page.close()
    assert errors == []


def _wide_incidents(root: Path) -> None:
    """Trial 12i's Incidents: a verified rollback with long ids and 64-hex fingerprints on long summaries."""
    request = rollback_request("lw-rollback-" + "3a919da5f8b96d54c9027205ddfe42ba")
    long = "Replies of this model version got worse; rolling back to the last stable version"
    alerts = [
        {
            **incident_alert("bad-replies", "rollback", detector, "v2", status, at(n)),
            "fingerprint": f"{n:x}" * 64,
            "summary": f"{long} ({detector} on {MODEL}/v2)",
            "resolved_by": f"rollback {request['id']} verified: v1 serves and is better",
        }
        for n, (detector, status) in enumerate([(FEEDBACK, "firing"), ("quality.canary.v1", "resolved")])
    ]
    windows = [window("v1", n) for n in range(8)] + [window("v2", n) for n in range(3, 7)]
    # One judged window of the canary, p 1e-72 against alpha 0.01: a 10^9 tick and a short alpha line.
    tiny = {
        **detection("v2", 3, FEEDBACK, "drift", p=1e-72),
        "statistic": 0.8,
        "threshold": 0.01,
        "threshold_of": "p_value",
    }
    write(root, windows=windows, actions=[request], alerts=alerts, detections=[tiny])


def test_the_incidents_tables_fit_the_page_at_1280_and_1400_px(
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Trial 12i: the alert timeline ran 1420 px wide in a 1336 px box; at 1280 px the page scrolled.

    And on a p-value chart: the rollback label sat on the alpha line, the axis ran past 1 (a 10^9 tick),
    and a one-window chart's alpha was a short segment.
    """
    _wide_incidents(tmp_path / "history")
    with serving(
        Console(HistoryReader(str(tmp_path / "history")), DatasetStore(tmp_path / "datasets"))
    ) as url:
        for width in (1280, 1400):
            page = browser.new_page(base_url=url, viewport={"width": width, "height": 900})
            page.goto("/incidents?days=7")
            widths = page.evaluate(
                "[document.scrollingElement.scrollWidth, innerWidth,"
                " ...[...document.querySelectorAll('table.alerts, table.actions')].map("
                "t => t.getBoundingClientRect().right <= document.querySelector('main').clientWidth)]"
            )
            assert widths[0] <= widths[1] and all(widths[2:]) and len(widths) == 4, (width, widths)
            short = page.locator("table.alerts td.fingerprint code").first
            assert short.get_attribute("title") == "0" * 64 and len(short.text_content() or "") < 20
            page.close()
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 900})
        page.goto(f"/segments/{quote(KEY, safe='')}?days=7")
        page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
        chart = page.evaluate(
            "(() => { const p = [...document.querySelectorAll('.statistic.js-plotly-plot')]"
            ".find((c) => c.layout.yaxis.type === 'log');"
            " const alpha = p.data.find((t) => t.name === p.data[1].name && t.mode === 'lines');"
            " const label = [...p.querySelectorAll('.annotation')]"
            ".find((a) => a.textContent.startsWith('rollback requested')).getBoundingClientRect();"
            " const top = p.querySelector('.main-svg').getBoundingClientRect().top + p._fullLayout._size.t;"
            " return [p._fullLayout.yaxis.range[1], alpha.x, p.layout.xaxis.range,"
            " label.bottom <= top + 1, p.data.filter((t) => t.name.includes(' gate (')).map((t) => t.name)];"
            " })()"
        )
        page.close()
    top, alpha_x, x_range, label_above, gates = chart
    # The default policy's bad-replies gates, drawn beside alpha (trial 12i's finding 6).
    assert gates == [
        "rollback gate (bad-replies): p < 0.001",
        "rollback immediate gate (bad-replies): p < 1e-06",
    ]
    assert top <= 0.05 + 1e-9  # log10: the axis ends at about 1
    assert [str(x)[:19] for x in alpha_x] == [str(x)[:19] for x in x_range]  # alpha spans the axis
    assert label_above
