"""Session 18 (issue 12): the Overview a paged engineer reads at a glance, on histories written as the
history stage writes them.

A new user's docs-answerer v2 served ~20% empty or refusal replies, ~5% errors and 3x latency. Its
worst verdict named three drift tests and hid the empty/refusal drift behind ``1 more``; no summary
said the serving errors; ``quality.rating.v1`` said ``no rate`` of its 290 ratings; and the ``not
judged`` lists came in count order, a different order on each version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from services.console import Console, create_app
from services.console.datasets import DatasetStore
from services.console.reader import HistoryReader

from .test_console_incidents import _segment, at, detection, window, write

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STABLE_KEY = _segment("v1")["segment"]
ERRORS, EMPTY, LATENCY = "quality.error_rate.v1", "quality.empty_refusal.v1", "quality.latency.v1"
RATING = "quality.rating.v1"
NEGATIVE = "quality.negative_feedback.v1"


def _overview(tmp_path: Path, **tables: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], str]:
    """``/api/overview``'s rows by version, and the Overview page's HTML."""
    console = Console(HistoryReader(write(tmp_path, None, **tables)), DatasetStore(tmp_path / "datasets"))
    with TestClient(create_app(console)) as client:
        [model] = client.get("/api/overview").json()["models"]
        html = client.get("/overview").text
    return {row["model_version"]: row for row in model["versions"]}, html


def _measured(row: dict[str, Any], reference: str | None, measurements: dict[str, float]) -> dict[str, Any]:
    """``row`` with its measurements (and reference) as the detector wrote them."""
    return {**row, "measurements": json.dumps(measurements), "reference": reference or row["reference"]}


def _stable_ref(n: int) -> str:
    """A canary window's reference: the stable segment's window ``n`` (``stable:<kind>|<key>@<n>:...``)."""
    return f"stable:inference|{STABLE_KEY}@{n}:{at(n).isoformat()}"


def test_every_drifting_detector_is_named_and_the_quality_rates_come_first(tmp_path: Path) -> None:
    drifted = {"drift.embedding_mmd.v1": 9, "drift.text_length.v1": 6, LATENCY: 6, EMPTY: 2}
    detections = [
        detection("v2", n, detector, "drift" if n < count else "ok")
        for detector, count in drifted.items()
        for n in range(10)
    ]
    rows, html = _overview(tmp_path, windows=[window("v2", n) for n in range(10)], detections=detections)
    assert rows["v2"]["worst_judged"] == (
        f"drift: {EMPTY} on 2 windows, {LATENCY} on 6, drift.embedding_mmd.v1 on 9, drift.text_length.v1 on 6"
    )
    assert "more" not in rows["v2"]["worst_judged"] and f"drift: {EMPTY} on 2 windows" in html


def _rate_rows(version: str, rates: list[tuple[int, int]], detector: str) -> list[dict[str, Any]]:
    """A rate detector's detections: ``(hits, samples)`` per window, each compared with v1's window."""
    return [
        _measured(
            {**detection(version, n, detector), "current_size": samples},
            _stable_ref(n) if version != "v1" else f"pinned:inference|{STABLE_KEY}@1:",
            {"current_rate": hits / samples, "reference_rate": 0.0},
        )
        for n, (hits, samples) in enumerate(rates)
    ]


def _latency_rows(version: str, p95s: list[float]) -> list[dict[str, Any]]:
    """The latency detector's judged windows, each with its p95 as the detector writes it."""
    return [
        _measured(detection(version, n, LATENCY), None, {"p95.observed_ms": p95, "p95.slo_ms": 2000.0})
        for n, p95 in enumerate(p95s)
    ]


def test_the_overview_says_the_pooled_serving_rates_next_to_the_stable_version_s(tmp_path: Path) -> None:
    detections = [
        *_rate_rows("v1", [(0, 60), (1, 60)], ERRORS),
        *_rate_rows("v2", [(2, 40), (4, 40)], ERRORS),
        *_rate_rows("v1", [(2, 60), (1, 60)], EMPTY),
        *_rate_rows("v2", [(9, 40), (7, 40)], EMPTY),
        *_latency_rows("v1", [1400.0, 1300.0, 1500.0]),
        *_latency_rows("v2", [4362.7, 4264.4, 4426.4]),
    ]
    windows = [window(v, n) for v in ("v1", "v2") for n in range(3)]
    rows, html = _overview(tmp_path, windows=windows, detections=detections)
    assert rows["v2"]["quality_said"] == (
        "errors 8% (6 of 80 in 2 windows) vs 1% (1 of 120 in 2 windows) on v1 (stable); empty or refusal"
        " replies 20% (16 of 80 in 2 windows) vs 2% (3 of 120 in 2 windows) on v1 (stable); latency p95"
        " 4.4 s (median of 3 windows' p95) vs 1.4 s on v1 (stable)"
    )
    assert rows["v1"]["quality_said"].startswith(
        "errors 1% (1 of 120 in 2 windows); empty or refusal replies 2%"
    )
    assert [q["stable"] for q in rows["v2"]["quality"]][2] == 1400.0
    assert "errors 8% (6 of 80 in 2 windows) vs 1% (1 of 120 in 2 windows) on v1 (stable)" in html


def test_a_latency_no_window_could_judge_is_unknown_not_unmeasured(tmp_path: Path) -> None:
    # Trial 12t: every request had a latency, yet the Overview said "latency p95 none measured".
    too_few = {"too_few_samples": 1.0, "min_samples": 30.0, "current_samples": 27.0}
    unjudged = {**detection("v2", 1, LATENCY), "judged": False, "samples": 27, "min_samples": 30}
    detections = [*_latency_rows("v1", [1400.0]), _measured(unjudged, None, too_few)]
    windows = [window(v, n) for v in ("v1", "v2") for n in range(2)]
    rows, html = _overview(tmp_path, windows=windows, detections=detections)
    assert rows["v2"]["quality_said"] == "latency p95 unknown (no window judged)"
    assert "none measured" not in html


def test_the_thumbs_down_rate_leads_the_pooled_rates(tmp_path: Path) -> None:
    # Trial 12u: rh-2 was rolled back for ~68% thumbs down vs 2%, and the Overview gave only its
    # errors and latency beside rh-1's.
    detections = [
        *_rate_rows("v1", [(1, 50), (1, 50)], NEGATIVE),
        *_rate_rows("v2", [(34, 50), (35, 50)], NEGATIVE),
        *_rate_rows("v1", [(0, 60), (1, 60)], ERRORS),
        *_rate_rows("v2", [(2, 40), (4, 40)], ERRORS),
    ]
    windows = [window(v, n) for v in ("v1", "v2") for n in range(2)]
    rows, html = _overview(tmp_path, windows=windows, detections=detections)
    assert rows["v2"]["quality_said"] == (
        "thumbs down 69% (69 of 100 in 2 windows) vs 2% (2 of 100 in 2 windows) on v1 (stable); errors 8%"
        " (6 of 80 in 2 windows) vs 1% (1 of 120 in 2 windows) on v1 (stable)"
    )
    assert "thumbs down 69% (69 of 100 in 2 windows) vs 2% (2 of 100 in 2 windows) on v1 (stable)" in html


def _oasst_ratings() -> list[int]:
    """Real ratings: each OpenAssistant reply's rank as 1-5 stars (rank 0, the best, is 5)."""
    ratings: list[int] = []

    def walk(message: dict[str, Any]) -> None:
        if message.get("role") == "assistant" and message.get("rank") is not None:
            ratings.append(max(1, 5 - int(message["rank"])))
        for reply in message.get("replies", []):
            walk(reply)

    with open(DATA / "oasst1" / "en_100_tree.jsonl", encoding="utf-8") as lines:
        for line in lines:
            walk(json.loads(line)["prompt"])
    return ratings


def _rating_rows(with_sums: bool) -> list[dict[str, Any]]:
    """v1's ratings in windows of 20 (too few for the detector's 30), pinned reference windows 0-1."""
    ratings = _oasst_ratings()[:200]
    rows = []
    for n in range(len(ratings) // 20):
        mine = ratings[n * 20 : (n + 1) * 20]
        kept: dict[str, float] = {"too_few_samples": 1.0, "min_samples": 30.0, "current_samples": 20.0}
        kept |= {"reference_samples": 40.0}
        if with_sums:
            kept |= {"current_sum": float(sum(mine)), "reference_sum": float(sum(ratings[:40]))}
        row = {**detection("v1", n, RATING), "judged": False, "samples": 20, "min_samples": 30}
        rows.append(_measured({**row, "current_size": 20}, f"pinned:feedback|{STABLE_KEY}@2:", kept))
    return rows


def test_a_rating_history_without_sums_says_precisely_what_is_missing(tmp_path: Path) -> None:
    windows = [window("v1", n, "feedback") for n in range(10)]
    rows, _ = _overview(tmp_path, windows=windows, detections=_rating_rows(with_sums=False))
    [rating] = rows["v1"]["unjudged_inputs"]
    assert rating["note"].endswith(
        ": 200 ratings in all; no mean rating: a window too small to judge records how many ratings it"
        " had, not their sum (current_sum and reference_sum are not in its measurements)"
    )


def test_a_rating_history_with_sums_gives_the_pooled_mean_against_the_reference_s(tmp_path: Path) -> None:
    ratings = _oasst_ratings()[:200]
    windows = [window("v1", n, "feedback") for n in range(10)]
    rows, _ = _overview(tmp_path, windows=windows, detections=_rating_rows(with_sums=True))
    [rating] = rows["v1"]["unjudged_inputs"]
    mean, reference = sum(ratings) / 200, sum(ratings[:40]) / 40
    assert rating["note"].endswith(
        f": mean {mean:.2f} over 200 ratings in all, vs {reference:.2f} on the reference"
        " (v1's first 2 feedback windows)"
    )


def test_the_not_judged_lists_read_in_one_order_on_every_version(tmp_path: Path) -> None:
    """Inference detectors before feedback ones, each in the reading order (errors first), not by count."""
    small = {"judged": False, "samples": 10, "min_samples": 30, "measurements": "{}"}
    detections = [
        {**detection("v2", n, "drift.text_length.v1"), **(small if n < 5 else {})} for n in range(8)
    ]
    detections += [{**detection("v2", n, ERRORS), **(small if n < 1 else {})} for n in range(8)]
    feedback = ["quality.canary.v1", "quality.correction_rate.v1", "quality.negative_feedback.v1", RATING]
    detections += [{**detection("v2", n, d), **small} for d in feedback for n in range(8)]
    rows, _ = _overview(tmp_path, windows=[window("v2", n) for n in range(8)], detections=detections)
    said = rows["v2"]["not_judged_said"]
    assert said.index(ERRORS) < said.index("drift.text_length.v1")
    assert [u["detector_id"] for u in rows["v2"]["unjudged_inputs"]] == [
        "quality.negative_feedback.v1",
        "quality.canary.v1",
        RATING,
        "quality.correction_rate.v1",
    ]
