"""Trial 12k (issue 12): a canary whose feedback was never judged must not read `ok` on the Overview.

Canary v2 got 95 thumbs (89 down) over 9 windows, 6 to 28 a window, under the feedback detectors' 30:
every ``quality.negative_feedback.v1`` detection was too_few_samples. Its drift detectors judged one
window of 8 (ok). The Overview read `last verdict ok` / `worst verdict ok` and counted the windows no
detector judged, where the Segment page counted per detector. The history is written by the history
stage from detections of the real detectors (as tests/console_verdicts_fixture.py does).

Each too-small window keeps its hits (issue 12), so the Overview gives the pooled rate: 89 of 95 thumbs
down, against the reference's 4 of 40.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from core.settings import Settings
from services.console import build_console, create_app
from services.console.overview_judged import judged_per_segment, unjudged_input
from streams.detect import DetectorSpec

from .console_verdicts_fixture import (
    KEY,
    MINUTE,
    SEGMENT,
    SMALL_SPECS,
    START,
    _judged,
    _requests,
    _thumbs,
    closed,
    write_events,
)

FEEDBACK = "quality.negative_feedback.v1"
RATING = "quality.rating.v1"  # no rating sent: "no input sent", never "not judged"
FEEDBACK_SPECS = [DetectorSpec(FEEDBACK, "feedback"), DetectorSpec(RATING, "feedback")]
#: Thumbs per feedback window (1 to 9) and how many of them were down: 95 thumbs, 89 down.
THUMBS = [28, 12, 10, 9, 8, 8, 8, 6, 6]
DOWN = [26, 11, 10, 9, 8, 8, 8, 5, 4]
#: Requests per inference window (1 to 8): only the first reaches the drift detectors' 30.
REQUESTS = [50, 20, 20, 20, 20, 20, 20, 20]
#: The canary's first window, pinned as the reference of the others: 4 thumbs down of 40.
REFERENCE = "v2's first feedback window"  # the feedback reference: its own kind's windows
FEEDBACK_NOTE = (
    f"feedback not judged in any of 9 windows ({FEEDBACK}: too few samples in each window, at most 28 < 30):"
    f" 89 of 95 thumbs down (94%) in all, vs 10% on the reference ({REFERENCE})"
)
#: What a history written before too-small windows kept their hits says (sample counts only).
OLD_NOTE_TAIL = ": 95 samples in all; no rate (a window too small to judge keeps its sample counts only)"
#: A feedback detector outside the built-in set, named in the console's detectors file.
CUSTOM = "acme.thumbs_down.v1"
SCOPE = "inference detectors only"
#: What leads the worst verdict (trial 12m): the kind not judged, with its pooled rate.
LEAD = f"feedback not judged: 89 of 95 thumbs down (94%) vs 10% on the reference ({REFERENCE})"


@pytest.fixture(scope="module")
def events() -> dict[str, list[Any]]:
    """The canary's windows: 0 pinned as the reference, 1-8 inference, 1-9 feedback; its detections."""
    reference, thumbs = _requests(40, 0), _thumbs(4, 40, "ref")
    detections = [
        d
        for n, (total, down) in enumerate(zip(THUMBS, DOWN, strict=True), start=1)
        for d in _judged(FEEDBACK_SPECS, thumbs, _thumbs(down, total, f"w{n}"), n)
    ]
    skip = 40
    for n, requests in enumerate(REQUESTS, start=1):
        detections += _judged(SMALL_SPECS, reference, _requests(requests, skip), n)
        skip += requests
    windows = [closed("inference", 0, 40, "reference"), closed("feedback", 0, 40, "reference")]
    windows += [closed("inference", n, r, "judged") for n, r in enumerate(REQUESTS, start=1)]
    windows += [closed("feedback", n, t, "judged") for n, t in enumerate(THUMBS, start=1)]
    topics = Settings().topics
    return {topics.windows: windows, topics.detections: detections}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, events: dict[str, list[Any]]) -> Iterator[TestClient]:
    """A console over that history, v1 the model's stable version (so v2 is the canary)."""
    root: Path = tmp_path_factory.mktemp("overview-judged")
    write_events(root / "history", events)
    settings = Settings(stable_versions={SEGMENT.model: "v1"})
    console = build_console(settings, history=str(root / "history"), datasets=str(root / "datasets"))
    with TestClient(create_app(console)) as test_client:
        yield test_client


def _row(client: TestClient) -> dict[str, Any]:
    [model] = client.get("/api/overview").json()["models"]
    [row] = model["versions"]
    return row


def test_the_history_is_the_trial_s_a_canary_judged_by_its_drift_detectors_only(client: TestClient) -> None:
    row = _row(client)
    assert (row["role"], row["worst_verdict"], row["last_verdict"]) == ("canary", "ok", "not judged")
    assert row["last_judged_verdict"] == "ok"  # window 1, by the drift detectors


def test_the_overview_says_feedback_was_never_judged_with_the_history_s_numbers(client: TestClient) -> None:
    row = _row(client)
    assert row["verdict_scope"] == SCOPE
    assert row["worst_shown"] == f"{LEAD}; ok ({SCOPE})"
    assert (row["worst_lead"], row["worst_judged"]) == (LEAD, f"ok ({SCOPE})")
    [unjudged] = row["unjudged_inputs"]
    assert unjudged["detector_id"] == FEEDBACK and unjudged["kind"] == "feedback"
    assert (unjudged["windows"], unjudged["most_samples"], unjudged["min_samples"]) == (9, 28, 30)
    assert (unjudged["samples"], unjudged["short_side"]) == (sum(THUMBS), "this version")
    assert (unjudged["hits"], unjudged["reference_hits"], unjudged["reference_samples"]) == (sum(DOWN), 4, 40)
    assert unjudged["note"] == FEEDBACK_NOTE
    html = client.get("/overview").text
    lead = f'<dd class="worst-verdict"><span class="worst-lead">{escape(LEAD)}</span> '
    lead += '<span class="worst-judged">'
    assert f"{lead}ok ({SCOPE}) (windows: 0 drift, 0 warning" in html
    assert f'<dd class="unjudged-input" data-detector="{FEEDBACK}">{escape(FEEDBACK_NOTE)}</dd>' in html
    assert f"ok (window 12:01:00; {SCOPE})" in html  # the last verdict is scoped too
    assert "worst verdict</dt><dd>ok (" not in html and RATING not in html  # never fed: not named


def test_the_overview_counts_windows_not_judged_as_the_segment_page_does(client: TestClient) -> None:
    row = _row(client)
    counts = {c["kind"]: c for c in row["not_judged"]}
    assert set(counts) == {"inference", "feedback"}
    assert (counts["inference"]["not_judged"], counts["inference"]["windows"]) == (7, 8)
    assert (counts["feedback"]["not_judged"], counts["feedback"]["windows"]) == (9, 9)
    assert counts["feedback"]["detectors"] == [FEEDBACK] and counts["feedback"]["of"] == 1  # not rating
    said = (
        "7 of 8 inference windows by the 2 inference detectors;"
        " 9 of 9 feedback windows by quality.negative_feedback.v1"
    )
    assert row["not_judged_said"] == said
    assert escape(said) in client.get("/overview").text
    segment = client.get("/api/segments/" + quote(KEY, safe="")).json()
    assert segment["unfed"] == [RATING]
    by_detector = {s["detector_id"]: (s["not_judged_windows"], s["windows"]) for s in segment["detectors"]}
    for count in row["not_judged"]:
        for detector in count["detectors"]:
            assert by_detector[detector] == (count["not_judged"], count["windows"]), detector
    counted = {d for c in row["not_judged"] for d in c["detectors"]}
    assert counted == {d for d, (n, _) in by_detector.items() if n and d != RATING}


def test_the_openapi_document_describes_the_new_fields(client: TestClient) -> None:
    schemas = client.get("/api/openapi.json").json()["components"]["schemas"]
    fields = schemas["SegmentRow"]["properties"]
    for name in ("worst_shown", "verdict_scope", "not_judged", "not_judged_said", "unjudged_inputs"):
        assert name in fields, name
    said = {"note", "samples", "hits", "reference_hits", "reference_samples", "most_samples", "min_samples"}
    assert said <= set(schemas["UnjudgedInput"]["properties"])
    assert {"kind", "not_judged", "windows", "detectors", "of"} <= set(schemas["NotJudged"]["properties"])


def _detections(rows: list[tuple[str, int, bool, int, int]]) -> pa.Table:
    """Detections of one segment: (detector, window, judged, samples, current_size)."""
    return pa.table(
        {
            "segment": [KEY] * len(rows),
            "detector_id": [r[0] for r in rows],
            "window_start": [START + n * MINUTE for _, n, *_ in rows],
            "verdict": ["ok"] * len(rows),
            "judged": [r[2] for r in rows],
            "samples": [None if r[2] else r[3] for r in rows],
            "current_size": [r[4] for r in rows],
            "statistic": [1.0 if r[2] else None for r in rows],
        }
    )


def test_a_detector_that_judged_nothing_beside_others_of_its_kind_is_named_alone() -> None:
    kinds = {"a.v1": "inference", "b.v1": "inference", FEEDBACK: "feedback", RATING: "feedback"}
    rows = [("a.v1", n, True, 0, 40) for n in range(3)] + [("b.v1", n, False, 12, 12) for n in range(3)]
    rows += [(FEEDBACK, n, n == 0, 5, 40) for n in range(3)] + [(RATING, n, False, 0, 40) for n in range(3)]
    [judged] = judged_per_segment(_detections(rows), kinds).values()
    assert judged.fed == {"a.v1": "inference", "b.v1": "inference", FEEDBACK: "feedback"}  # not RATING
    assert judged.said() == (
        "3 of 3 inference windows by b.v1; 2 of 3 feedback windows by quality.negative_feedback.v1"
    )
    assert judged.scope() == "b.v1 judged no window"
    # A lead that names b.v1 already (its pooled rate, in bold): the scope does not say it again.
    assert judged.scope(led="b.v1") is None
    assert judged.scope(led=FEEDBACK) == "b.v1 judged no window"


def test_a_reference_too_small_is_named_as_the_side_that_fell_short() -> None:
    rows = pa.table(
        {
            "window_start": [START, START + MINUTE],
            "measurements": [
                json.dumps({"current_samples": 40.0, "reference_samples": 20.0, "too_few_samples": 1.0}),
                json.dumps({"current_samples": 45.0, "reference_samples": 22.0, "too_few_samples": 1.0}),
            ],
            "current_size": [40, 45],
            "reference_size": [20, 22],
            "min_samples": [30, 30],
        }
    )
    said = unjudged_input(rows, FEEDBACK, "feedback", whole_kind=False)
    assert (said.short_side, said.most_samples, said.samples) == ("its reference", 22, 85)
    assert said.note.startswith(
        f"{FEEDBACK} judged none of its 2 feedback windows (its reference too small, at most 22 < 30): 85"
    )


def _unjudged_rows(measured: list[dict[str, float]], references: Sequence[str | None] = ()) -> pa.Table:
    """A detector's detections of windows too small to judge, one per measurements dict."""
    n = len(measured)
    return pa.table(
        {
            "window_start": [START + i * MINUTE for i in range(n)],
            "measurements": [json.dumps({"too_few_samples": 1.0, **m}) for m in measured],
            "current_size": [int(m["current_samples"]) for m in measured],
            "reference_size": [int(m["reference_samples"]) for m in measured],
            "reference": list(references) or [None] * n,
            "min_samples": [30] * n,
        }
    )


def test_a_history_written_without_the_hits_keeps_the_sample_counts_wording() -> None:
    rows = _unjudged_rows([{"current_samples": float(t), "reference_samples": 40.0} for t in THUMBS])
    said = unjudged_input(rows, FEEDBACK, "feedback", whole_kind=True)
    assert (said.samples, said.hits, said.reference_hits) == (95, None, None)
    assert said.note == FEEDBACK_NOTE.split(": 89 of")[0] + OLD_NOTE_TAIL


def test_a_history_with_some_windows_without_hits_gives_no_rate() -> None:
    measured = [{"current_samples": float(t), "reference_samples": 40.0} for t in THUMBS]
    # The first window written after the upgrade, the others before.
    measured[0] |= {"current_hits": 26.0, "reference_hits": 4.0}
    said = unjudged_input(_unjudged_rows(measured), FEEDBACK, "feedback", whole_kind=True)
    assert said.hits is None and said.note.endswith(OLD_NOTE_TAIL)


def test_each_reference_is_counted_once_and_named_as_the_segment_page_names_it() -> None:
    """Windows 1-5 compared with v1's stable window A (6 of 50 down), 6-9 with B (6 of 50): 12%."""
    stable = "stable:feedback|verdict-bot|v1|support|chat|@1:2026-12-01T11:5{}:00+00:00"
    references = [stable.format(8)] * 5 + [stable.format(9)] * 4
    measured = [
        {
            "current_samples": float(t),
            "current_hits": float(d),
            "reference_samples": 50.0,
            "reference_hits": 6.0,
        }
        for t, d in zip(THUMBS, DOWN, strict=True)
    ]
    said = unjudged_input(_unjudged_rows(measured, references), FEEDBACK, "feedback", whole_kind=True)
    assert (said.hits, said.samples, said.reference_hits, said.reference_samples) == (89, 95, 12, 100)
    assert said.note.endswith(": 89 of 95 thumbs down (94%) in all, vs 12% on the reference (v1, stable)")


def test_a_detector_of_the_console_s_detectors_file_is_grouped_by_its_kind(
    tmp_path: Path, events: dict[str, list[Any]]
) -> None:
    """Its kind comes from the console's detectors file: not ``other`` for a detector not built in."""
    topics = Settings().topics
    renamed = {
        **events,
        topics.detections: [
            d.model_copy(update={"detector_id": CUSTOM}) if d.detector_id == FEEDBACK else d
            for d in events[topics.detections]
        ],
    }
    write_events(tmp_path / "history", renamed)
    settings = Settings(stable_versions={SEGMENT.model: "v1"})
    console = build_console(settings, history=str(tmp_path / "history"), datasets=str(tmp_path / "datasets"))
    kinds = {**console.detector_kinds, CUSTOM: "feedback"}
    with TestClient(create_app(dataclasses.replace(console, detector_kinds=kinds))) as custom:
        row = _row(custom)
    assert row["verdict_scope"] == SCOPE
    [unjudged] = row["unjudged_inputs"]
    assert (unjudged["detector_id"], unjudged["kind"]) == (CUSTOM, "feedback")
    assert unjudged["note"] == FEEDBACK_NOTE.replace(FEEDBACK, CUSTOM).replace("thumbs down", "hits")
