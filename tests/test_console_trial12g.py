"""Trial 12g's console findings, on small histories written as the history stage writes its tables.

Slow verdicts still pending are counted per slow detector, a revision by late feedback says
"feedback events", the policy explanation counts windows (not detections), the Overview's headline
is the last judged verdict and its not-judged note leaves out detectors the segment never fed, a
canary's page carries its rollback request, and the 401 page says how to pass the token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

from services.console import Console, create_app
from services.console.datasets import DatasetStore
from services.console.reader import HistoryReader
from services.console.segment import segment_view
from services.console.views import overview_view, resolve_range

from .test_console_incidents import (
    REQUEST,
    REQUEST_END,
    START,
    TEXT,
    _report,
    _segment,
    at,
    detection,
    rollback_request,
    window,
    write,
)

EMBEDDING = "drift.embedding_mmd.v1"
KEY = _segment("v2")["segment"]


def _history(tmp_path: Path, **tables: list[dict[str, Any]]) -> HistoryReader:
    return HistoryReader(write(tmp_path, None, **tables))


def _segment_view(history: HistoryReader, **kw: Any):
    return segment_view(history, KEY, resolve_range(history, None, 1, ("windows", "detections")), **kw)


def test_windows_a_slow_detector_has_not_judged_yet_are_counted_and_said(tmp_path: Path) -> None:
    reference = {**window("v2", 0), "outcome": "reference"}
    skipped = {**window("v2", 6), "outcome": "skipped"}
    windows = [reference, *(window("v2", n) for n in range(1, 6)), skipped, window("v2", 7, "feedback")]
    # The fast detector judged windows 1-6; the embedding one only 1 and 2 so far.
    detections = [detection("v2", n, TEXT) for n in range(1, 7)] + [
        detection("v2", n, EMBEDDING) for n in (1, 2)
    ]
    history = _history(tmp_path, windows=windows, detections=detections)
    view = _segment_view(history, slow=frozenset({EMBEDDING}), slow_kinds={EMBEDDING: "inference"})
    # Windows 3, 4, 5: not the reference, the skipped one, the feedback-only one or those it judged.
    [pending] = view.pending
    assert (pending.detector_id, pending.windows) == (EMBEDDING, 3)
    assert pending.note == (
        "3 windows not judged yet by drift.embedding_mmd.v1 (slow detectors run in the background of a"
        " running worker, one window at a time, and a restarted worker re-queues them; with no worker"
        " running they stay unjudged)"
    )
    assert _segment_view(history).pending == []  # a fast detector's windows are never "pending"
    console = Console(history, DatasetStore(tmp_path / "datasets"), slow_detectors=frozenset({EMBEDDING}))
    with TestClient(create_app(console)) as client:
        api = client.get("/api/segments/" + quote(KEY, safe="")).json()
        page = client.get("/segments/" + quote(KEY, safe="")).text
    assert [(p["detector_id"], p["windows"]) for p in api["pending"]] == [(EMBEDDING, 3)]
    assert 'id="slow-pending"' in page and "3 windows not judged yet by drift.embedding_mmd.v1" in page
    assert "3 more not judged yet" in page  # next to the embedding chart's counts too


def _revised(n: int, detector: str, counts: list[int]) -> list[dict[str, Any]]:
    return [
        {
            **detection("v1", n, detector),
            "detection_id": f"{detector}-{n}-{r}",
            "revision": r,
            "measurements": json.dumps({"window_events": c}),
        }
        for r, c in enumerate(counts)
    ]


def test_a_revision_by_late_feedback_names_feedback_even_when_its_count_equals_the_requests(
    tmp_path: Path,
) -> None:
    # Trial 12g: 80 requests on time, 8 thumbs then 72 late ones (80 in all): said "+72 events".
    inference = {**window("v1", 1), "events": 80}
    feedback = {**window("v1", 1, "feedback"), "feedback_events": 80, "revision": 1}
    rows = [*_revised(1, "quality.negative_feedback.v1", [8, 80]), *_revised(1, TEXT, [80])]
    history = _history(tmp_path, windows=[inference, feedback], detections=rows)
    key = _segment("v1")["segment"]
    view = segment_view(history, key, resolve_range(history, None, 1, ("windows",)))
    [noted] = [w for w in view.noted if w.revision]
    assert noted.late == "revised once as late events came in, +72 feedback events (8 → 80)"


def test_the_policy_explanation_counts_windows_once_however_many_configs_judged_them(tmp_path: Path) -> None:
    # Trial 12g: 11 drift detections over 3 configs of c2's 7 windows read "11 drift windows".
    rows = [{**detection("v2", n, TEXT, "drift", size=40)} for n in range(7)]
    rows += [
        {**detection("v2", n, TEXT, "drift", size=40), "config_id": cfg, "detection_id": f"{cfg}-{n}"}
        for cfg, ns in (("prompt", range(1)), ("embedding", range(3)))
        for n in ns
    ]
    assert len(rows) == 11
    assert _report(tmp_path, rows)["input-drift"] == (
        "not fired: 7 drift windows (11 detections) of drift.*, none met the gates:"
        " min_samples 50: the largest had 40"
    )


def test_the_overview_headline_is_the_last_judged_verdict_and_its_note_skips_unfed_detectors(
    tmp_path: Path,
) -> None:
    windows = [window("v2", n) for n in range(3)] + [window("v2", 3, "feedback")]
    rows = [detection("v2", n, d, "drift") for n in range(3) for d in (TEXT, "quality.negative_feedback.v1")]
    # The last window holds trailing feedback only: too few thumbs; of 48 feedback events a window, no rating.
    short = {"judged": False, "min_samples": 30, "reference_size": 60}
    rows += [
        {**detection("v2", 3, "quality.negative_feedback.v1"), **short, "samples": 6, "current_size": 6},
        *[
            {**detection("v2", n, "quality.rating.v1"), **short, "samples": 0, "current_size": 48}
            for n in range(4)
        ],
    ]
    history = _history(tmp_path, windows=windows, detections=rows)
    overview = overview_view(history, resolve_range(history, None, 1, ("windows",)))
    [row] = overview.models[0].versions
    assert (row.last_verdict, row.last_note) == ("not judged", "not judged (6 < 30 samples)")
    assert (row.last_judged_verdict, row.last_judged_start) == ("drift", at(2))
    view = _segment_view(history)
    assert {w.note for w in view.noted if w.window_start == at(3)} == {"not judged (6 < 30 samples)"}
    with TestClient(create_app(Console(history, DatasetStore(tmp_path / "datasets")))) as client:
        html = client.get("/overview").text
    assert '<dd class="judged-verdict">drift (window 00:42:20)</dd>' in html
    assert '<dd class="verdict">not judged (6 &lt; 30 samples)</dd>' in html


def test_the_rolled_back_versions_page_carries_its_rollback_request(tmp_path: Path) -> None:
    windows = [window(v, n) for v in ("v1", "v2") for n in range(6)]
    detections = [detection(v, n, TEXT) for v in ("v1", "v2") for n in range(6)]
    history = _history(tmp_path, windows=windows, detections=detections, actions=[rollback_request()])
    [mark] = _segment_view(history).rollbacks
    assert (mark.rollback_id, mark.at, mark.target_version) == (REQUEST, REQUEST_END, "v1")
    target = segment_view(history, _segment("v1")["segment"], resolve_range(history, None, 1, ("windows",)))
    assert target.rollbacks == []  # the version rolled back to has no such mark
    assert mark.at > START


def test_the_401_page_says_how_to_pass_the_token_instead_of_a_link_that_fails(tmp_path: Path) -> None:
    history = _history(tmp_path, windows=[window("v2", 0)])
    app = create_app(Console(history, DatasetStore(tmp_path / "datasets")), token="t0ken")
    with TestClient(app) as client:
        page = client.get("/overview", headers={"accept": "text/html"})
        assert page.status_code == 401
        assert "Back to the Overview" not in page.text and '<a href="/' not in page.text  # each would 401
        assert "/overview?token=" in page.text and "X-Loopwatch-Token" in page.text
        missing = client.get("/segments/nope", headers={"accept": "text/html", "x-loopwatch-token": "t0ken"})
        assert missing.status_code == 400 and "Back to the Overview" in missing.text  # other errors keep it
