"""Trial 12j/12k's console cosmetics (issue 12), each on a small history as the history stage writes it.

- a policy gate's label on a p-value chart sat on the alpha line (its lines a decade apart on a log axis);
- the Incidents tables broke words anywhere (``io.loopw atch.roll back.re quested``);
- a detector the segment never fed said ``no input sent``, then ``Not judged in any of its 7 windows`` and
  ``1 revised``;
- a firing row of the alert timeline did not say that its alert resolved later in the range.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from services.console import Console, create_app
from services.console.datasets import DatasetStore
from services.console.reader import HistoryReader
from tests.console_fixture import serving
from tests.test_console_browser import browser  # noqa: F401 - the module's headless Chromium
from tests.test_console_incidents import _segment, action, at, detection, rollback_request, window, write
from tests.test_console_incidents import alert as incident_alert
from tests.test_console_trial12h import _wide_incidents

KEY = _segment("v2")["segment"]
FEEDBACK = "quality.negative_feedback.v1"
RATING = "quality.rating.v1"
PVALUE = {"threshold": 0.01, "threshold_of": "p_value"}


def _console(root: Path) -> Console:
    return Console(HistoryReader(str(root / "history")), DatasetStore(root / "datasets"))


def _falling_p(root: Path) -> None:
    """p from 0.5 to 2e-5 over seven windows against alpha 0.01: the default gates 1e-3 and 1e-6 apart."""
    ps = [0.5, 0.2, 0.05, 0.02, 0.004, 0.0008, 2e-5]
    rows = [
        {**detection("v2", n, FEEDBACK, "drift" if n > 3 else "ok", p=p), **PVALUE} for n, p in enumerate(ps)
    ]
    write(root, windows=[window("v2", n) for n in range(7)], detections=rows, actions=[rollback_request()])


#: Per log chart of the page: each gate label's box and each horizontal line (alpha, gates), in page px.
LABEL_BOXES = """(() => [...document.querySelectorAll('.statistic.js-plotly-plot')]
  .filter((p) => p.layout.yaxis.type === 'log').map((p) => {
    const size = p._fullLayout._size, top = p.querySelector('.main-svg').getBoundingClientRect().top + size.t;
    const lines = p.data.filter((t) => t.mode === 'lines' && t.y.length === 2 && t.y[0] === t.y[1])
      .map((t) => top + p._fullLayout.yaxis.l2p(Math.log10(t.y[0])));
    const boxes = [...p.querySelectorAll('.annotation')].filter((a) => a.textContent.includes(' gate ('))
      .map((a) => { const r = a.querySelector('.bg').getBoundingClientRect();
                    return [a.textContent, r.top, r.bottom]; });
    return { lines, boxes, area: [top, top + size.h] };
  }))()"""


@pytest.mark.parametrize("history", [_wide_incidents, _falling_p], ids=["p 1e-72", "p 0.5 to 2e-5"])
def test_the_gate_labels_cross_no_line_and_no_other_label(
    browser: Any,  # noqa: F811
    tmp_path: Path,
    history: Any,
) -> None:
    """Trial 12k: on a 72-decade axis alpha (0.01) and the gate (0.001) are 3 px apart: the label drawn above
    the gate's line sat on alpha's; the immediate gate's label, below its line, ran into the x axis."""
    history(tmp_path / "history")
    with serving(_console(tmp_path)) as url:
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"/segments/{quote(KEY, safe='')}?days=7")
        page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
        page.screenshot(path=str(tmp_path / "segment.png"))  # kept in tmp_path to look at
        [chart] = page.evaluate(LABEL_BOXES)
        _assert_apart(chart)
        # Placed again for lines close together (px from the plot's top): apart, each off every line.
        placed = sorted(page.evaluate("labelTops([5.7, 8.5, 17], [8.5, 17], 200)"))
        page.close()
    assert errors == []
    assert placed[1] >= placed[0] + 16 and all(
        not (t - 2 < y < t + 18) for t in placed for y in (5.7, 8.5, 17)
    )


def _assert_apart(chart: dict[str, Any]) -> None:
    """The chart's two gate labels inside its plot area, off every line and off each other."""
    assert [label for label, *_ in chart["boxes"]] == [
        "rollback gate (bad-replies): p < 0.001",
        "rollback immediate gate (bad-replies): p < 1e-06",
    ]
    assert len(chart["lines"]) == 3  # alpha and the two gates
    boxes = [(top, bottom) for _, top, bottom in chart["boxes"]]
    low, high = chart["area"]
    for top, bottom in boxes:
        assert not [y for y in chart["lines"] if top < y < bottom], (boxes, chart["lines"])
        assert low - 0.5 <= top and bottom <= high + 0.5, (boxes, chart["area"])
    (top_a, bottom_a), (top_b, bottom_b) = boxes
    assert bottom_a <= top_b or bottom_b <= top_a, boxes


#: Per cell of the Incidents tables that wraps inside a word: its text and the two letters split.
MID_WORD_BREAKS = """(() => {
  const broken = [];
  document.querySelectorAll('table.actions td, table.alerts td').forEach((cell) => {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    let before = null, line = null, block = null;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const inside = node.parentElement.closest('div, td');
      if (inside !== block) { before = null; block = inside; }  // a div of its own starts a line
      for (let i = 0; i < node.length; i++) {
        const range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        const box = range.getClientRects()[0];
        if (!box) continue;  // collapsed white space
        const letter = node.data[i];
        if (before !== null && box.top > line + 2 && !/[\\s.\\-_\\/]/.test(before) && !/\\s/.test(letter)) {
          broken.push(`${cell.textContent.trim().slice(0, 50)}: ${before}|${letter}`);
        }
        before = letter;
        line = box.top;
      }
    }
  });
  return broken;
})()"""


def test_the_incidents_tables_wrap_between_words_and_at_dots_within_1280_px(
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Trial 12k: wrapped anywhere, cells read ``io.loopw atch.roll back.re quested``, ``resolve d``."""
    _wide_incidents(tmp_path / "history")
    with serving(_console(tmp_path)) as url:
        for width in (1280, 1400):
            page = browser.new_page(base_url=url, viewport={"width": width, "height": 900})
            page.goto("/incidents?days=7")
            broken = page.evaluate(MID_WORD_BREAKS)
            fits = page.evaluate(
                "[...document.querySelectorAll('table.alerts, table.actions')].map("
                "t => t.getBoundingClientRect().right <= document.querySelector('main').clientWidth)"
            )
            kind = page.locator("tr.action td:nth-child(2)").inner_text()
            page.close()
            assert broken == [], (width, broken)
            assert fits == [True, True], width
            assert kind == "io.loopwatch.rollback.requested"  # <wbr> adds no text: it copies whole


def test_ids_break_after_their_dots_and_sentences_keep_their_numbers_and_stay_escaped(tmp_path: Path) -> None:
    summary = "<b>bad</b> replies: 0.62 (stable 0.18) on quality.negative_feedback.v1"
    fired = {**incident_alert("bad-replies", "rollback", FEEDBACK, "v2", "firing", at(3)), "summary": summary}
    write(tmp_path / "history", actions=[rollback_request()], alerts=[fired])
    with TestClient(create_app(_console(tmp_path))) as client:
        page = client.get("/incidents").text
    assert '<td class="type">io.<wbr>loopwatch.<wbr>rollback.<wbr>requested</td>' in page
    assert "lw-<wbr>rollback-<wbr>5bbad6ad</code>" in page
    said = "&lt;b&gt;bad&lt;/b&gt; replies: 0.62 (stable 0.18) on quality.<wbr>negative_<wbr>feedback.<wbr>v1"
    assert said in page


def test_a_detector_never_fed_says_only_no_input_sent(browser: Any, tmp_path: Path) -> None:  # noqa: F811
    """Trial 12k: the section of quality.rating.v1 (no rating sent) said "no input sent", then "Not judged in
    any of its 7 windows" under its empty chart and "1 revised" (late feedback revised a window)."""
    revised = {2: 1}
    rating = [
        {
            **detection("v2", n, RATING),
            "judged": False,
            "samples": 0,
            "min_samples": 30,
            "revision": revised.get(n, 0),
        }
        for n in range(7)
    ]
    fed = [{**detection("v2", n, FEEDBACK), "revision": revised.get(n, 0)} for n in range(7)]
    windows = [{**window("v2", n), "revision": revised.get(n, 0)} for n in range(7)]
    write(tmp_path / "history", windows=windows, detections=rating + fed)
    with TestClient(create_app(_console(tmp_path))) as client:
        html = client.get("/segments/" + quote(KEY, safe=""), params={"days": 400}).text
    with serving(_console(tmp_path)) as url:
        page = browser.new_page(base_url=url, viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"/segments/{quote(KEY, safe='')}?days=400")
        page.wait_for_selector('#charts[data-drawn="true"]', timeout=15_000)
        shown = page.locator(f'section[data-detector="{RATING}"]').inner_text()
        fed_shown = page.locator(f'section[data-detector="{FEEDBACK}"]').inner_text()
        page.close()
    assert errors == []
    said = "No input sent: 0 samples in every window with events, so nothing to judge or draw."
    section = html.split(f'data-detector="{RATING}"')[1].split(">", 1)[1].split("</section>")[0]
    assert re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", section)).strip() == f"{RATING} config c0ffee {said}"
    assert shown.splitlines()[1:] == [said]
    assert "1 revised" in fed_shown  # a fed detector still counts its revised windows


def test_a_firing_row_says_it_resolved_later_and_links_to_the_resolving_row(tmp_path: Path) -> None:
    """Trial 12k: a firing row read as still firing although its alert resolved two rows below."""
    canary = "quality.canary.v1"
    alerts = [
        incident_alert("bad-replies", "rollback", FEEDBACK, "v2", "firing", at(3)),
        incident_alert("bad-replies", "rollback", canary, "v2", "firing", at(4)),  # never resolved
        incident_alert("bad-replies", "rollback", FEEDBACK, "v2", "resolved", at(6)),
        incident_alert("bad-replies", "rollback", FEEDBACK, "v2", "firing", at(8)),  # fired again, open
    ]
    verified = action(f"{rollback_request()['id']}.verified", "rollback.verified", at(7), verified=True)
    write(tmp_path / "history", alerts=alerts, actions=[rollback_request(), verified])
    with TestClient(create_app(_console(tmp_path))) as client:
        page = client.get("/incidents").text
    rows = re.findall(
        r'<tr class="alert status-(\w+) [^"]*" id="(alert-\d+)"><td>(.*?)</td>.*?</tr>', page, re.S
    )
    assert [(status, row_id) for status, row_id, _ in rows] == [
        ("firing", "alert-1"),
        ("firing", "alert-2"),
        ("resolved", "alert-3"),
        ("firing", "alert-4"),
    ]
    marks = [cell.removeprefix(status) for status, _, cell in rows]
    assert marks == [' <a class="resolved-later" href="#alert-3">(resolved later)</a>', "", "", ""]
    first = page.split('id="alert-1">')[1].split("</tr>")[0]
    later = f'<div class="resolved-later">resolved later, at {at(6)} <span class="clock">(window time)</span>'
    assert later in first
