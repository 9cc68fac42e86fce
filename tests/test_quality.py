"""Quality detectors: exact verdicts on built windows, canary vs stable on real HH-RLHF data, the CLI."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from statsmodels.stats.proportion import confint_proportions_2indep

from detectors import frame
from detectors.canary import CanaryConfig, CanaryDetector
from detectors.correction import adjust
from detectors.feedback import NegativeFeedbackConfig, NegativeFeedbackDetector, RatingConfig, RatingDetector
from detectors.quality import compare_versions, joined_row
from detectors.quality_checks import compare_proportions, probability_rate_higher
from detectors.serving import (
    CostConfig,
    CostDetector,
    EmptyRefusalConfig,
    EmptyRefusalDetector,
    ErrorRateConfig,
    ErrorRateDetector,
    LatencyConfig,
    LatencyDetector,
)
from schemas.events import Feedback, InferenceLog, JoinedFeedback, SourceRef
from services.cli import main
from services.sample_data import feedback_events, hh_rlhf, inference_event

STABLE, CANARY = "A-chosen", "B-rejected"


# --------------------------------------------------------------------------
# Constructed windows with exact counts
# --------------------------------------------------------------------------


def _thumbs(negative: int, total: int, prefix: str = "r") -> pd.DataFrame:
    """Exactly ``negative`` thumbs-down among ``total`` thumbs."""
    return pd.DataFrame(
        {
            frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(total)],
            frame.FEEDBACK_KIND: "thumbs",
            frame.NEGATIVE: [i < negative for i in range(total)],
        }
    )


@pytest.mark.parametrize(
    ("reference", "current", "overrides", "expected"),
    [
        ((30, 300), (33, 300), {}, "ok"),  # 10% vs 11%: noise
        ((30, 300), (60, 300), {}, "drift"),  # 10% vs 20%: significant and 10 points
        ((1000, 10000), (1150, 10000), {}, "warning"),  # significant, but only 1.5 points
        ((60, 300), (30, 300), {}, "ok"),  # fewer thumbs-down is not an alarm...
        ((60, 300), (30, 300), {"alternative": "either"}, "drift"),  # ...unless asked for any change
        ((30, 300), (60, 300), {"min_effect_size": 0.2}, "warning"),
        ((3, 10), (9, 10), {}, "ok"),  # below min_samples: not tested at all
        ((3, 10), (9, 10), {"min_samples": 10}, "drift"),
    ],
)
def test_negative_feedback_verdicts(
    reference: tuple[int, int], current: tuple[int, int], overrides: dict[str, Any], expected: str
) -> None:
    detector = NegativeFeedbackDetector(NegativeFeedbackConfig(**overrides))
    detector.fit(_thumbs(*reference, prefix="ref"))
    finding = detector.detect(_thumbs(*current))
    assert finding.verdict == expected, finding
    if expected != "ok":
        assert finding.request_ids == [f"r-{i}" for i in range(min(current[0], 20))]
    else:
        assert finding.request_ids == []


def test_too_few_samples_is_ok_and_says_so() -> None:
    detector = NegativeFeedbackDetector(NegativeFeedbackConfig())
    detector.fit(_thumbs(3, 10))
    finding = detector.detect(_thumbs(10, 10))
    assert finding.verdict == "ok" and finding.p_value is None
    assert finding.measurements == {
        "too_few_samples": 1.0,
        "min_samples": 30.0,
        "reference_samples": 10.0,
        "current_samples": 10.0,
        "reference_hits": 3.0,  # the counts it has: the console pools them over too-small windows
        "current_hits": 10.0,
    }


def test_negative_rate_counts_only_the_configured_feedback_kinds() -> None:
    ratings = pd.DataFrame(
        {
            frame.REQUEST_ID: [f"x-{i}" for i in range(300)],
            frame.FEEDBACK_KIND: "rating",
            frame.NEGATIVE: False,
        }
    )
    detector = NegativeFeedbackDetector(NegativeFeedbackConfig())
    detector.fit(_thumbs(30, 300, "ref"))
    # 300 ratings (never negative) would dilute 60/300 thumbs-down to 10% if they were counted.
    finding = detector.detect(pd.concat([_thumbs(60, 300), ratings]))
    assert finding.verdict == "drift"
    assert finding.measurements["current_rate"] == pytest.approx(0.2)
    assert finding.current_size == 600


@pytest.mark.parametrize(
    ("counts", "expected"),
    [((10, 100, 30, 100), (0.2, 0.09000209, 0.30578929)), ((0, 50, 3, 40), (0.075, -0.01164627, 0.19864234))],
)
def test_proportion_interval_is_newcombes(
    counts: tuple[int, int, int, int], expected: tuple[float, float, float]
) -> None:
    result = compare_proportions(*counts)
    low, high = confint_proportions_2indep(counts[2], counts[3], counts[0], counts[1], method="newcomb")
    assert (result.difference, result.ci_low, result.ci_high) == pytest.approx(expected, abs=1e-8)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), abs=1e-12)


def test_posterior_probability_is_seeded_and_sensible() -> None:
    assert probability_rate_higher(30, 300, 30, 300, seed=1) == probability_rate_higher(
        30, 300, 30, 300, seed=1
    )
    assert 0.45 < probability_rate_higher(30, 300, 30, 300) < 0.55
    assert probability_rate_higher(30, 300, 60, 300) > 0.999
    assert probability_rate_higher(60, 300, 30, 300) < 0.001


def _requests(errors: int, total: int, feedback_per_request: int = 1) -> pd.DataFrame:
    """Request rows repeated once per feedback event, as in a file of joined feedback."""
    rows = [
        {frame.REQUEST_ID: f"q-{i}", frame.ERROR: i < errors, frame.NEGATIVE: False}
        for i in range(total)
        for _ in range(feedback_per_request)
    ]
    return pd.DataFrame(rows)


def test_request_level_rates_count_each_request_once() -> None:
    detector = ErrorRateDetector(ErrorRateConfig())
    detector.fit(_requests(5, 500))
    once = detector.detect(_requests(40, 500))
    thrice = detector.detect(_requests(40, 500, feedback_per_request=3))
    assert once.verdict == thrice.verdict == "drift"
    assert thrice.measurements["current_samples"] == 500 and thrice.current_size == 1500
    assert thrice.p_value == once.p_value


def test_empty_and_refusal_rates_are_reported_apart() -> None:
    def replies(empty: int, refusals: int, total: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                frame.REQUEST_ID: [f"e-{i}" for i in range(total)],
                frame.EMPTY_RESPONSE: [i < empty for i in range(total)],
                frame.REFUSAL: [empty <= i < empty + refusals for i in range(total)],
            }
        )

    detector = EmptyRefusalDetector(EmptyRefusalConfig())
    detector.fit(replies(2, 8, 500))
    finding = detector.detect(replies(10, 40, 500))
    assert finding.verdict == "drift"
    assert finding.measurements["empty_response_rate"] == pytest.approx(0.02)
    assert finding.measurements["refusal_rate"] == pytest.approx(0.08)
    assert finding.effect_size == pytest.approx(0.08)


def _ratings(counts: dict[int, int]) -> pd.DataFrame:
    values = [float(v) for v, n in counts.items() for _ in range(n)]
    return pd.DataFrame(
        {
            frame.REQUEST_ID: [f"g-{i}" for i in range(len(values))],
            frame.FEEDBACK_KIND: "rating",
            frame.NEGATIVE: False,
            frame.RATING: values,
        }
    )


@pytest.mark.parametrize(
    ("current", "expected", "drop"),
    [
        ({3: 100, 4: 200, 5: 100}, "ok", 0.0),  # the reference itself
        ({2: 100, 3: 100, 4: 150, 5: 50}, "drift", 0.625),
        ({3: 125, 4: 175, 5: 100}, "ok", 0.0625),  # too small a drop to be sure at 400 ratings
        ({3: 20, 4: 5}, "ok", None),  # 25 ratings: below min_samples
    ],
)
def test_rating_verdicts(current: dict[int, int], expected: str, drop: float | None) -> None:
    detector = RatingDetector(RatingConfig())
    detector.fit(_ratings({3: 100, 4: 200, 5: 100}))
    finding = detector.detect(_ratings(current))
    assert finding.verdict == expected, finding
    assert finding.effect_size == (None if drop is None else pytest.approx(drop))


def test_a_small_but_certain_rating_drop_is_a_warning() -> None:
    detector = RatingDetector(RatingConfig())
    detector.fit(_ratings({3: 1000, 4: 2000, 5: 1000}))
    finding = detector.detect(_ratings({3: 1400, 4: 1800, 5: 800}))
    assert finding.verdict == "warning"
    assert finding.effect_size == pytest.approx(0.15)


def _latencies(values: list[float] | np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({frame.REQUEST_ID: [f"l-{i}" for i in range(len(values))], frame.LATENCY_MS: values})


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        (np.linspace(100, 1900, 1000), "ok"),  # every request within the p95 SLO
        (np.r_[np.full(900, 500.0), np.full(100, 2100.0)], "warning"),  # 10% at 2.1 s: p95 5% over
        (np.r_[np.full(900, 500.0), np.full(100, 3000.0)], "drift"),  # p95 50% over the SLO
        (np.r_[np.full(36, 500.0), np.full(4, 3000.0)], "ok"),  # 4 of 40 slow: could be chance
        (np.full(20, 9000.0), "ok"),  # 20 requests: below min_samples
    ],
)
def test_latency_verdicts(latency: np.ndarray, expected: str) -> None:
    detector = LatencyDetector(LatencyConfig(slo_p95_ms=2000, slo_p99_ms=None))
    finding = detector.detect(_latencies(latency))
    assert finding.verdict == expected, finding


def test_latency_names_the_breached_percentile_and_the_slow_requests() -> None:
    latency = np.r_[np.full(980, 400.0), np.full(20, 9000.0)]
    finding = LatencyDetector(LatencyConfig(slo_p50_ms=500)).detect(_latencies(latency))
    assert finding.verdict == "drift" and finding.threshold == 5000.0  # p99, not p50 or p95
    assert finding.measurements["decided_by.p99"] == 1.0
    assert finding.measurements["p50.observed_ms"] == 400.0
    assert finding.request_ids == [f"l-{i}" for i in range(980, 1000)]


def test_cost_against_reference_and_slo() -> None:
    def window(tokens: int, cost: float, n: int = 200) -> pd.DataFrame:
        wobble = np.tile([-1, 1], n // 2)
        return pd.DataFrame(
            {
                frame.REQUEST_ID: [f"c-{i}" for i in range(n)],
                frame.PROMPT_TOKENS: 100 + wobble * 10,
                frame.COMPLETION_TOKENS: tokens - 100 + wobble * 10,
                frame.COST_USD: cost * (1 + wobble * 0.1),
            }
        )

    detector = CostDetector(CostConfig(max_cost_per_request_usd=0.002))
    detector.fit(window(500, 0.001))
    assert detector.detect(window(500, 0.001)).verdict == "ok"
    longer = detector.detect(window(700, 0.0012))
    assert longer.verdict == "drift" and longer.effect_size == pytest.approx(0.4)
    assert longer.measurements["decided_by.tokens"] == 1.0
    over_slo = detector.detect(window(500, 0.003))
    assert over_slo.verdict == "drift" and over_slo.threshold == 0.002


# --------------------------------------------------------------------------
# Canary vs stable on real HH-RLHF replies and preferences
# --------------------------------------------------------------------------


def _joined_events(
    data_dir: Path, pairs: int = 600, noise: float = 0.3, seed: int = 0
) -> list[JoinedFeedback]:
    """A canary rollout on real data: 70% of prompts go to A (the human-preferred reply), 30% to B.

    Thumbs follow the real human preference (up for chosen, down for rejected),
    flipped with probability ``noise`` because users disagree with annotators.
    """
    rng = random.Random(seed)
    start = datetime(2026, 10, 2, tzinfo=UTC)
    events: list[JoinedFeedback] = []
    for n, (chosen, rejected) in enumerate(islice(hh_rlhf(data_dir), pairs)):
        exchange, version = (rejected, CANARY) if rng.random() < 0.3 else (chosen, STABLE)
        if rng.random() < noise:
            exchange = replace(exchange, thumbs_up=not exchange.thumbs_up)
        at = start + timedelta(seconds=30 * n)
        inference = InferenceLog.model_validate(inference_event(exchange, at, rng, version=version))
        for feedback in feedback_events(exchange, at):
            events.append(
                JoinedFeedback(
                    request_id=exchange.request_id,
                    inference=inference,
                    feedback=Feedback.model_validate(feedback),
                    inference_source=SourceRef(topic="llm.inference.v1", partition=0, offset=n),
                    feedback_source=SourceRef(topic="llm.feedback.v1", partition=0, offset=len(events)),
                    joined_at=at + timedelta(seconds=6),
                )
            )
    return events


@pytest.fixture(scope="module")
def joined(data_dir: Path) -> list[JoinedFeedback]:
    """Joined feedback events of the simulated rollout."""
    return _joined_events(data_dir)


@pytest.fixture(scope="module")
def rollout(joined: list[JoinedFeedback]) -> pd.DataFrame:
    """The rollout as window rows."""
    return pd.DataFrame([joined_row(event) for event in joined])


def test_canary_serving_the_rejected_replies_is_worse(rollout: pd.DataFrame) -> None:
    stable = rollout[rollout[frame.MODEL_VERSION] == STABLE]
    canary = rollout[rollout[frame.MODEL_VERSION] == CANARY]
    assert (len(stable), len(canary)) == (421, 179)
    detector = CanaryDetector(CanaryConfig())
    detector.fit(stable)
    finding = detector.detect(canary)
    m = finding.measurements
    assert finding.verdict == "drift"
    assert finding.score is not None and finding.score > 0.999
    assert m["decided_by.negative_feedback"] == 1.0
    assert m["negative_feedback.stable_rate"] == pytest.approx(119 / 421)
    assert m["negative_feedback.canary_rate"] == pytest.approx(118 / 179)
    assert m["negative_feedback.ci_low"] > 0.25 and finding.p_value is not None and finding.p_value < 1e-10
    assert m["error_rate.prob_canary_worse"] < 0.95  # no errors in either: not the reason
    assert len(finding.request_ids) == 20 and all(r.endswith("-rejected") for r in finding.request_ids)


def test_random_halves_of_the_stable_version_do_not_differ(rollout: pd.DataFrame) -> None:
    stable = rollout[rollout[frame.MODEL_VERSION] == STABLE].reset_index(drop=True)
    verdicts = []
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(len(stable))
        half = len(stable) // 2
        detector = CanaryDetector(CanaryConfig())
        detector.fit(stable.iloc[order[:half]])
        verdicts.append(detector.detect(stable.iloc[order[half:]]).verdict)
    # Each split is a false alarm with probability about 5% (min_probability 0.95).
    assert verdicts[0] == "ok"
    assert sum(v != "ok" for v in verdicts) <= 2, verdicts


def test_compare_versions_picks_the_busier_version_as_baseline(rollout: pd.DataFrame) -> None:
    report = compare_versions(rollout)
    assert report.baseline_version == STABLE and report.worse == [CANARY] and report.warnings == []
    canary = next(v for v in report.versions if v.version == CANARY)
    assert canary.requests == 179 and not canary.is_baseline
    assert canary.findings["quality.negative_feedback.v1"].verdict == "drift"
    assert canary.findings["quality.error_rate.v1"].verdict == "ok"
    # No ratings in HH-RLHF: the rating detector says so instead of failing.
    assert canary.findings["quality.rating.v1"].measurements["too_few_samples"] == 1.0


def test_compare_versions_corrects_each_version_like_a_window_of_the_stream(rollout: pd.DataFrame) -> None:
    report = compare_versions(rollout)
    for version in report.versions:
        tested = [f for f in version.findings.values() if f.p_value is not None]
        expected = adjust([f.p_value for f in tested if f.p_value is not None], "bh")
        assert [f.measurements["p_value_adjusted"] for f in tested] == pytest.approx(expected)
        untested = [f for f in version.findings.values() if f.p_value is None]
        assert all("p_value_adjusted" not in f.measurements for f in untested)
    canary = next(v for v in report.versions if v.version == CANARY)
    assert len([f for f in canary.findings.values() if f.p_value is not None]) > 2
    # Without the correction nothing else changes: the same verdicts, raw p-values kept.
    raw = next(v for v in compare_versions(rollout, correction=None).versions if v.version == CANARY)
    assert {i: f.verdict for i, f in raw.findings.items()} == {
        i: f.verdict for i, f in canary.findings.items()
    }
    assert all(raw.findings[i].p_value == f.p_value for i, f in canary.findings.items())


# --------------------------------------------------------------------------
# loopwatch detect quality
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def events_file(joined: list[JoinedFeedback], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rollout as JSONL, as published on loopwatch.feedback-joined.v1."""
    path = tmp_path_factory.mktemp("quality") / "joined.jsonl"
    path.write_text("".join(event.model_dump_json() + "\n" for event in joined))
    return path


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, ["detect", "quality", *args])


def test_cli_json_says_the_canary_is_worse(events_file: Path) -> None:
    result = _run("--input", str(events_file))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["baseline_version"] == STABLE and report["worse"] == [CANARY]
    canary = next(v for v in report["versions"] if v["version"] == CANARY)
    finding = canary["findings"]["quality.canary.v1"]
    assert finding["verdict"] == "drift" and finding["score"] > 0.999
    assert {"statistic", "p_value", "effect_size", "measurements"} <= finding.keys()


def test_cli_text_with_a_given_baseline_and_slo(events_file: Path) -> None:
    result = _run(
        "--input", str(events_file), "--baseline-version", CANARY, "--slo-p95-ms", "1000", "--format", "text"
    )
    assert result.exit_code == 0, result.output
    assert f"baseline version: {CANARY}" in result.output
    assert f"worse than {CANARY}: none" in result.output  # the preferred replies are not worse
    assert f"latency SLO breached: {STABLE}, {CANARY}" in result.output  # p95 is above 1.7 s in both


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_cli_reads_flat_rows_like_the_jsonl(
    events_file: Path, rollout: pd.DataFrame, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"rows.{suffix}"
    rows = rollout.drop(columns=[frame.PROMPT, frame.RESPONSE])
    if suffix == "csv":
        rows.to_csv(path, index=False)
    else:
        rows.to_parquet(path)
    from_rows, from_jsonl = _run("--input", str(path)), _run("--input", str(events_file))
    assert from_rows.exit_code == 0, from_rows.output
    assert json.loads(from_rows.output) == json.loads(from_jsonl.output)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"request_id": "r1"}\n', "bad.jsonl:1: not a JoinedFeedback event"),
        ("nothing.csv", "", "cannot be read"),
        ("flat.csv", "request_id,negative\nr1,true\n", "no 'model_version' column"),
        ("flags.csv", "request_id,model_version,negative\nr1,a,perhaps\n", "not a true/false value"),
        ("events.txt", "{}\n", "expected a .jsonl"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = _run("--input", str(path))
    assert result.exit_code == 2 and message in result.output, result.output


def test_cli_refuses_an_unknown_baseline(events_file: Path) -> None:
    result = _run("--input", str(events_file), "--baseline-version", "nope")
    assert result.exit_code == 2 and "baseline version 'nope' not in the file" in result.output
