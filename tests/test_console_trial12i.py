"""Trial 12i's console findings (issue 12), each on a small history written as the history stage writes it.

- a window whose feedback all came late read "closed ... by a revision" (judged "again") at revision 0;
- a window closed before its end (events stamped ahead of the clock) read "16 s before its end by a revision";
- a rolled-back canary read "canary"; a detector the segment never fed (no ratings) read "not judged";
- a p-value chart drew alpha, not the policy's rollback gate that acted;
- the demo's console (its worker stopped) said a restart re-queues the slow verdicts it will never get;
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from fastapi.testclient import TestClient
from markupsafe import escape

from core.settings import Settings
from retrain_trigger.policy import parse_policy
from services.console import Console, build_console, create_app
from services.console.datasets import DatasetStore
from services.console.reader import HistoryReader
from services.console.segment import segment_view
from services.console.slow_pending import DEMO_PENDING_WHY, PENDING_WHY
from services.console.views import resolve_range
from services.console.window_close import close_note
from tests.test_console_incidents import (
    MODEL,
    POLICY,
    REQUEST,
    _segment,
    action,
    at,
    detection,
    rollback_request,
    window,
    write,
)

KEY = _segment("v2")["segment"]
FEEDBACK = "quality.negative_feedback.v1"


def _closed(n: int, kind: str, late: float, by: str, revision: int = 0) -> dict:
    return {
        **window("v2", n, kind),
        "revision": revision,
        "closed_at": at(n + 1) + timedelta(seconds=late),
        "closed_by": by,
    }


def test_a_first_verdict_on_late_events_is_not_called_a_revision_and_is_listed(tmp_path: Path) -> None:
    rows = [
        _closed(0, "inference", 1, "watermark"),
        _closed(0, "feedback", 2, "watermark"),
        _closed(1, "inference", 2, "watermark"),
        _closed(1, "feedback", 31, "revision"),  # all its feedback came 30 s late: its first verdict
        _closed(2, "inference", 1, "watermark"),
        _closed(2, "feedback", 95, "revision", revision=1),  # judged again
    ]
    dets = [detection("v2", n, FEEDBACK, "drift", p=1e-9) for n in range(3)]
    history = HistoryReader(write(tmp_path, windows=rows, detections=dets))
    view = segment_view(history, KEY, resolve_range(history, None, 1), kinds={FEEDBACK: "feedback"})
    first = view.closed["feedback"][1]
    assert first is not None
    assert first.startswith("first judged 31 s after its end, once its late events went quiet")
    assert "revision" not in first.split("(")[0]  # not "by a revision", not "judged again"
    assert view.closed["feedback"][2] == "closed 95 s after its end by a revision"  # revision 1 keeps it
    noted = {n.window_start: n for n in view.noted}
    assert noted[at(1)].note == "first verdict on late events"
    assert noted[at(1)].closed == [
        f"inference: {view.closed['inference'][1]}",
        f"feedback: {first}",
    ]
    assert at(2) in noted and at(0) not in noted


def test_a_close_before_its_end_names_the_clock_and_why_and_no_revision_for_an_unrevised_kind(
    tmp_path: Path,
) -> None:
    rows = [
        _closed(0, "inference", -16, "revision"),  # trial 12i's 05:48:40: stamped up to 12 s ahead
        _closed(0, "feedback", 34, "revision", revision=1),
    ]
    history = HistoryReader(write(tmp_path, windows=rows))
    view = segment_view(history, KEY, resolve_range(history, None, 1))
    clock = f"{at(1) - timedelta(seconds=16):%H:%M:%S}"
    assert view.closed["inference"] == [
        f"first judged at {clock}, 16 s before its end in window time: its events' times run ahead of the"
        " wall clock"
    ]
    assert close_note(-16, "watermark", None, 0, at(1) - timedelta(seconds=16)) == (
        f"closed by the watermark at {clock}, 16 s before its end in window time: its events' times run"
        " ahead of the wall clock"
    )


def test_the_demo_console_says_its_pending_slow_verdicts_stay_unjudged(tmp_path: Path) -> None:
    """The demo's console runs after its worker stopped: "a restart re-queues them" promised verdicts."""
    root = write(
        tmp_path / "history",
        windows=[window("v2", n) for n in range(3)],
        detections=[detection("v2", n, "drift.text_length.v1") for n in range(3)],
    )
    for demo in (False, True):
        console = build_console(Settings(), history=root, datasets=str(tmp_path), demo=demo)
        with TestClient(create_app(console)) as client:
            [pending] = client.get("/api/segments/" + quote(KEY, safe=""), params={"days": 400}).json()[
                "pending"
            ]
            page = client.get("/segments/" + quote(KEY, safe=""), params={"days": 400}).text
        said = DEMO_PENDING_WHY if demo else PENDING_WHY
        assert pending["note"] == f"3 windows not judged yet by {pending['detector_id']} ({said})"
        assert f"{escape(pending['note'])}." in page
        assert ("stopped with the demo" in page) is demo


def test_a_rolled_back_canary_says_so_and_a_detector_never_fed_is_not_called_not_judged(
    tmp_path: Path,
) -> None:
    verified = action(f"{REQUEST}.verified", "rollback.verified", at(8), verified=True, reason="v1 better")
    rating = [
        {**detection("v2", n, "quality.rating.v1"), "judged": False, "samples": 0, "min_samples": 30}
        for n in range(3, 6)
    ]
    fed = [detection("v2", n, FEEDBACK) for n in range(3, 6)]
    root = write(
        tmp_path / "history",
        windows=[window("v1", n) for n in range(8)] + [window("v2", n) for n in range(3, 6)],
        actions=[rollback_request(), verified],
        detections=rating + fed,
    )
    console = build_console(Settings(stable_versions={MODEL: "v1"}), history=root, datasets=str(tmp_path))
    with TestClient(create_app(console)) as client:
        overview = client.get("/", params={"days": 400}).text
        api = client.get("/api/segments/" + quote(KEY, safe=""), params={"days": 400}).json()
        page = client.get("/segments/" + quote(KEY, safe=""), params={"days": 400}).text
    assert '<span class="role role-canary">canary (rolled back)</span>' in overview
    assert api["unfed"] == ["quality.rating.v1"]
    toc = page.split('<nav id="toc">')[1].split("</nav>")[0]
    assert 'quality.rating.v1</a> <span class="quiet">no input sent</span>' in toc
    assert "3 not judged" not in page


def test_a_p_value_chart_carries_the_policys_rollback_gates_on_its_detector(tmp_path: Path) -> None:
    """The chart drew alpha 0.01; the rollback gate that acted (max_p_value, immediate_p_value) was not."""
    root = write(
        tmp_path / "history",
        windows=[window("v2", n) for n in range(3)],
        detections=[
            {**detection("v2", n, FEEDBACK, "drift", p=1e-9), "threshold": 0.01, "threshold_of": "p_value"}
            for n in range(3)
        ],
    )
    gated = "gates: {min_samples: 30, for_windows: 1, max_p_value: 0.001, immediate_p_value: 1.0e-6}"
    policy = parse_policy(POLICY.replace("gates: {min_samples: 30, for_windows: 1}", gated))
    console = Console(HistoryReader(root), DatasetStore(tmp_path / "datasets"), policy=policy)
    with TestClient(create_app(console)) as client:
        gates = client.get("/api/segments/" + quote(KEY, safe=""), params={"days": 400}).json()["gates"]
    expected = [
        (FEEDBACK, 0.001, "rollback gate (bad-replies): p < 0.001"),
        (FEEDBACK, 1e-6, "rollback immediate gate (bad-replies): p < 1e-06"),
    ]
    assert [(g["detector_id"], g["p_value"], g["label"]) for g in gates] == expected
