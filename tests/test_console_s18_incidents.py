"""Trial 12o (issue 12): the Incidents page said nothing of why a drifting canary raised no alert.

New user 12o ran ``docs-answerer`` live: v2, a canary serving OASST1's worst-ranked replies with 3x the
latency, ~20% empty replies or refusals and ~5% errors, drifted on latency, empty/refusal replies and
text length in windows of 13-39 requests, and no alert fired. The page listed only the retrain and
rollback rules: the alert-only rule serving-errors, held back by its min_samples 50, was not on it; drift
on a detector no rule watches was said nowhere; and the bad-replies row named ``toxicity.detoxify.v1``,
which did not run there.

The history is written by the history stage from detections of the real detectors on OASST1's replies.
"""

from __future__ import annotations

import itertools
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
from retrain_trigger.policy import DEFAULT_POLICY
from schemas.events import InferenceLog, Segment, WindowClosed
from services.console import build_console, create_app
from services.sample_data import inference_event, oasst1
from streams.detect import DetectorSpec, Judge, Reference, to_detection
from streams.windows import ClosedWindow
from tests.console_verdicts_fixture import DATA, write_events

MODEL = "docs-answerer"
START = datetime(2026, 12, 3, 13, 40, 20, tzinfo=UTC)
DAY = START.date().isoformat()
WINDOW = timedelta(seconds=20)
#: Trial 12o's v2 requests per window (its Segment page), under serving-errors' min_samples 50.
EVENTS = [36, 30, 35, 32, 39, 31]
REFUSAL = "I'm sorry, but I can't help with that."
LATENCY, EMPTY = "quality.latency.v1", "quality.empty_refusal.v1"
SPECS = [
    DetectorSpec("drift.text_length.v1", "inference", {"column": "response_chars"}),
    DetectorSpec("quality.error_rate.v1", "inference"),
    DetectorSpec(LATENCY, "inference"),
    DetectorSpec(EMPTY, "inference"),
    DetectorSpec("toxicity.profanity.v1", "inference", {"column": "response"}),
]


def _segment(version: str) -> Segment:
    return Segment(model=MODEL, model_version=version, app="docs", route="answer")


def _requests(n: int, skip: int, bad: bool) -> list[dict[str, Any]]:
    """``n`` inference rows of OASST1's replies; ``bad``: as 12o's v2 (3x latency, empty, refusal, errors)."""
    rng = random.Random(skip)
    rows = []
    for i, exchange in enumerate(itertools.islice(oasst1(DATA), skip, skip + n)):
        event = inference_event(exchange, START, rng, version="v2" if bad else "v1")
        event |= {"model": {"name": MODEL, "version": "v2" if bad else "v1"}, "app": "docs"}
        event |= {"route": "answer", "tenant": None}
        if bad:
            event["latency_ms"] *= 3
            if i % 20 == 0:
                event |= {"status": "error", "response": None, "error": "upstream model timeout"}
            elif i % 5 == 1:
                event["response"] = REFUSAL if i % 10 == 1 else ""
        parsed = InferenceLog.model_validate(event)
        rows.append(frame.log_row(parsed, frame.describe(parsed)))
    return rows


def _window(version: str, n: int, rows: list[dict[str, Any]]) -> ClosedWindow:
    start = START + n * WINDOW
    return ClosedWindow(_segment(version).model_dump(), "inference", start, start + WINDOW, len(rows), rows)


def _closed(version: str, n: int, events: int, reference: str | None) -> WindowClosed:
    return WindowClosed(
        segment=_segment(version),
        kind="inference",
        window_start=START + n * WINDOW,
        window_end=START + (n + 1) * WINDOW,
        events=events,
        sample_size=events,
        outcome="judged" if reference else "reference",
        reference=reference,
        closed_at=START + (n + 1) * WINDOW + timedelta(seconds=1),
    )


def events() -> dict[str, list[Any]]:
    """v1 pinned on its window 0; v2's windows 1-6 judged against it."""
    pinned_rows = _requests(60, 0, bad=False)
    pinned = Reference(f"pinned:inference|{_segment('v1').key()}", pd.DataFrame(pinned_rows), 60)
    windows, detections = [_closed("v1", 0, 60, None)], []
    skip = 60
    for n, size in enumerate(EVENTS, start=1):
        window = _window("v2", n, _requests(size, skip, bad=True))
        skip += size
        detections += [to_detection(j, window, pinned) for j in Judge(SPECS).run(window, pinned, SPECS)]
        windows.append(_closed("v2", n, size, pinned.name))
    topics = Settings().topics
    return {topics.windows: windows, topics.detections: detections}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12o's v2: windows and detections only (no alert fired, no action)."""
    root: Path = tmp_path_factory.mktemp("trial12o")
    write_events(root / "history", events())
    return root


def _client(root: Path, policy: Path | None = None) -> TestClient:
    console = build_console(
        Settings(stable_versions={MODEL: "v1"}),
        history=str(root / "history"),
        datasets=str(root / "datasets"),
        policy=str(policy) if policy else None,
    )
    return TestClient(create_app(console))


@pytest.fixture(scope="module")
def client(history: Path) -> Iterator[TestClient]:
    with _client(history) as test_client:
        yield test_client


def _rules(client: TestClient) -> dict[str, dict[str, Any]]:
    policy = client.get("/api/incidents", params={"day": DAY}).json()["policy"]
    return {r["rule"]: r for r in policy["rules"]}


def _drift_windows(client: TestClient, detector: str) -> list[str]:
    """The windows of v2 the real detector said drift on (as the Segment page lists them)."""
    key = _segment("v2").key()
    view = client.get(f"/api/segments/{key}", params={"day": DAY}).json()
    [shown] = [d for d in view["detectors"] if d["detector_id"] == detector]
    return [at for at, v in zip(view["window_start"], shown["verdict"], strict=True) if v == "drift"]


def test_the_history_is_12o_s_slow_canary_drifting_in_small_windows(client: TestClient) -> None:
    assert len(_drift_windows(client, LATENCY)) == len(EVENTS)  # 3x latency: every window
    assert _drift_windows(client, EMPTY)


def test_the_alert_rule_that_watched_the_drift_says_its_min_samples_held_it_back(client: TestClient) -> None:
    """12o: serving-errors (an alert rule) watched latency and empty replies; it was not on the page."""
    rules = _rules(client)
    serving = rules["serving-errors"]
    assert (serving["action"], serving["state"]) == ("alert", "not fired")
    assert serving["why"].endswith(f"none met the gates: min_samples 50: the largest had {max(EVENTS)}")
    assert f"{LATENCY}, {EMPTY}" in serving["why"]
    assert set(rules) == {"bad-replies", "input-drift", "serving-errors"}  # quality-watch saw no drift
    html = client.get("/incidents", params={"day": DAY}).text
    assert 'data-rule="serving-errors"' in html


def test_a_pattern_of_a_detector_that_did_not_run_is_said_so_not_named_as_judging(client: TestClient) -> None:
    """12o: the bad-replies row listed toxicity.detoxify.v1, which no detection in the history came from."""
    bad = _rules(client)["bad-replies"]
    assert bad["ran"] == ["toxicity.profanity.v1"]
    assert bad["unmatched"] == ["quality.negative_feedback.v1", "toxicity.detoxify.v1", "quality.canary.v1"]
    assert bad["why"].endswith(
        "judged by toxicity.profanity.v1 (quality.negative_feedback.v1, toxicity.detoxify.v1,"
        " quality.canary.v1: no detection in the range), none drift"
    )
    html = client.get("/incidents", params={"day": DAY}).text
    assert (
        "no detection of <code>quality.negative_feedback.v1, toxicity.detoxify.v1, quality.canary.v1</code>"
        in html
    )


def test_drift_no_rule_watches_is_said_with_the_rules_that_looked(history: Path, tmp_path: Path) -> None:
    """A user's policy without serving-errors: v2's latency and empty replies drift, and no rule watches."""
    text = DEFAULT_POLICY.read_text()
    start, end = text.index("  - name: serving-errors"), text.index("  # The inputs moved away")
    policy = tmp_path / "policy.yaml"
    policy.write_text(text[:start] + text[end:])
    with _client(history, policy) as client:
        report = client.get("/api/incidents", params={"day": DAY}).json()["policy"]
        latency, empty = _drift_windows(client, LATENCY), _drift_windows(client, EMPTY)
        html = client.get("/incidents", params={"day": DAY}).text

    def said(detector: str, starts: list[str]) -> str:
        first = starts[0][11:19]
        return f"{detector} on " + (
            f"v2's window {first}" if len(starts) == 1 else f"{len(starts)} windows of v2, from {first}"
        )

    assert report["unwatched"] == (
        f"{said(EMPTY, empty)}; {said(LATENCY, latency)} drifted, and no rule of policy default watches"
        " them there: no alert or action can follow from it. The rules that did look at v2:"
        " bad-replies (not fired), input-drift (not fired); their rows say why."
        f" To be paged on {EMPTY}, {LATENCY}, add a rule whose match names them."
    )
    assert 'id="unwatched"' in html
    assert "serving-errors" not in {r["rule"] for r in report["rules"]}


def test_windows_min_samples_skipped_are_said_when_the_rest_breached_too_few_in_a_row(
    history: Path, tmp_path: Path
) -> None:
    """serving-errors at min_samples 36: two of v2's windows count, its four smaller ones are skipped."""
    was = "      min_samples: 50\n      for_windows: 2\n      resolve_windows: 2\n"  # serving-errors' only
    text = DEFAULT_POLICY.read_text()
    assert text.count(was) == 1
    policy = tmp_path / "policy.yaml"
    policy.write_text(text.replace(was, was.replace("50", "36").replace("for_windows: 2", "for_windows: 3")))
    with _client(history, policy) as client:
        why = _rules(client)["serving-errors"]["why"]
    small = [n for n in EVENTS if n < 36]
    assert ", at most 2 in a row: for_windows 3; " in why
    assert f"; min_samples 36 skipped {len(small)} drift windows (" in why
    assert why.endswith(f"(at most {max(small)} samples)")
