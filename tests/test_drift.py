"""Drift detectors, descriptor drift, multiple-testing correction, file reading, the Evidently report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detectors import embedding, frame
from detectors.base import DetectorNotReady, Finding, load_state, save_state
from detectors.correction import adjust, correct
from detectors.descriptors import (
    FlagRateConfig,
    FlagRateDrift,
    ScriptMixConfig,
    ScriptMixDrift,
    TextLengthConfig,
    TextLengthDrift,
    dominant_script,
    two_proportion_p_value,
)
from detectors.drift import (
    ChiSquareConfig,
    ChiSquareDrift,
    JensenShannonConfig,
    JensenShannonDrift,
    KSConfig,
    KSDrift,
    PSIConfig,
    PSIDrift,
    UnivariateDrift,
    WassersteinConfig,
    WassersteinDrift,
)
from detectors.files import DataFileError, drift_report, format_table, read_frame
from detectors.report import render_drift_report
from schemas.errors import ConfigError, LoopwatchError

BIG = 100_000


def _numeric(seed: int, shift: float, size: int = BIG) -> pd.DataFrame:
    return pd.DataFrame({"x": np.random.default_rng(seed).normal(shift, 1.0, size)})


def _categorical(seed: int, share_a: float, size: int = BIG) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"c": rng.choice(["a", "b"], size, p=[share_a, 1 - share_a])})


def _judge(detector: UnivariateDrift[Any], reference: pd.DataFrame, current: pd.DataFrame) -> Finding:
    detector.fit(reference)
    return detector.detect(current)


# --- The key property: large windows do not alarm on trivia -------------------------------------------


@pytest.fixture(scope="module")
def big_numeric() -> dict[str, pd.DataFrame]:
    """100k reference values, 100k shifted by 0.05 sd (trivial), 100k shifted by 0.7 sd (real)."""
    return {"reference": _numeric(1, 0.0), "trivial": _numeric(2, 0.05), "real": _numeric(3, 0.7)}


@pytest.mark.parametrize(
    ("detector", "trivial_verdict"),
    [
        (KSDrift(KSConfig(column="x")), "warning"),
        (PSIDrift(PSIConfig(column="x")), "ok"),  # significant, but PSI far below the 0.1 warning threshold
        (WassersteinDrift(WassersteinConfig(column="x", n_permutations=200)), "ok"),
    ],
    ids=lambda value: getattr(value, "id", value),
)
def test_a_trivial_shift_in_100k_rows_is_not_drift_but_a_real_one_is(
    detector: UnivariateDrift[Any], trivial_verdict: str, big_numeric: dict[str, pd.DataFrame]
) -> None:
    trivial = _judge(detector, big_numeric["reference"], big_numeric["trivial"])
    assert trivial.verdict == trivial_verdict, trivial
    assert trivial.effect_size is not None and trivial.effect_size < 0.1
    real = detector.detect(big_numeric["real"])
    assert real.verdict == "drift", real
    assert real.current_size == BIG


def test_ks_on_100k_rows_calls_a_005_sd_shift_significant_but_small(
    big_numeric: dict[str, pd.DataFrame],
) -> None:
    finding = _judge(KSDrift(KSConfig(column="x")), big_numeric["reference"], big_numeric["trivial"])
    assert finding.p_value is not None and finding.p_value < 1e-10
    # For normals shifted by d sd, the population KS distance is 2 * Phi(d / 2) - 1 = 0.0199 at d = 0.05.
    assert finding.effect_size == pytest.approx(0.02, abs=0.008)
    assert finding.threshold == 0.1


def test_wasserstein_effect_is_the_shift_in_reference_sds(big_numeric: dict[str, pd.DataFrame]) -> None:
    finding = _judge(
        WassersteinDrift(WassersteinConfig(column="x", n_permutations=200)),
        big_numeric["reference"],
        big_numeric["real"],
    )
    assert finding.effect_size == pytest.approx(0.7, abs=0.03)
    assert finding.p_value == pytest.approx(1 / 201)  # no permutation beat the observed distance
    assert finding.measurements["permutation_sample_size"] == 1000


@pytest.mark.parametrize(
    "detector",
    [ChiSquareDrift(ChiSquareConfig(column="c")), JensenShannonDrift(JensenShannonConfig(column="c"))],
    ids=lambda detector: detector.id,
)
def test_categorical_trivial_shift_warns_and_real_shift_drifts(detector: UnivariateDrift[Any]) -> None:
    reference = _categorical(1, 0.5)
    trivial = _judge(detector, reference, _categorical(2, 0.51))
    assert trivial.verdict == "warning", trivial
    assert trivial.p_value is not None and trivial.p_value < 0.01
    real = detector.detect(_categorical(3, 0.65))
    assert real.verdict == "drift", real


def test_cramers_v_of_a_known_table() -> None:
    # Counts a: 60 / 40, b: 40 / 60 -> chi2 = 8.0 on 200 rows, V = sqrt(8 / 200) = 0.2.
    reference = pd.DataFrame({"c": ["a"] * 60 + ["b"] * 40})
    current = pd.DataFrame({"c": ["a"] * 40 + ["b"] * 60})
    finding = _judge(ChiSquareDrift(ChiSquareConfig(column="c")), reference, current)
    assert finding.statistic == pytest.approx(8.0)
    assert finding.effect_size == pytest.approx(0.2)
    assert finding.verdict == "drift"


def test_a_new_category_in_bulk_is_drift_and_counted() -> None:
    reference = pd.DataFrame({"c": ["a", "b"] * 200})
    current = pd.DataFrame({"c": ["a", "b", "c", "c"] * 100})
    finding = _judge(ChiSquareDrift(ChiSquareConfig(column="c")), reference, current)
    assert finding.verdict == "drift"
    assert finding.measurements["new_categories"] == 1


def test_psi_of_known_bins_and_its_thresholds() -> None:
    # Reference deciles of 0..999; the current window puts everything in the lowest half.
    reference = pd.DataFrame({"x": np.arange(1000.0)})
    current = pd.DataFrame({"x": np.arange(500.0)})
    finding = _judge(PSIDrift(PSIConfig(column="x")), reference, current)
    # Five bins at 0.2 against 0.1 and five at epsilon: 5 * (0.1 ln 2) + 5 * (0.1 - 1e-4) ln(0.1 / 1e-4).
    expected = 5 * 0.1 * np.log(2) + 5 * (0.1 - 1e-4) * np.log(0.1 / 1e-4)
    assert finding.statistic == pytest.approx(expected)
    assert finding.verdict == "drift"
    with pytest.raises(ValueError, match="warning_threshold"):
        PSIConfig(column="x", warning_threshold=0.3, drift_threshold=0.2)


def test_psi_p_value_holds_its_level_without_drift() -> None:
    """The chi-square approximation of PSI must not alarm much more often than alpha on null windows."""
    rng = np.random.default_rng(5)
    detector = PSIDrift(PSIConfig(column="x", warning_threshold=0.0, drift_threshold=0.0))
    significant = 0
    for _ in range(200):
        detector.fit(pd.DataFrame({"x": rng.normal(size=500)}))
        finding = detector.detect(pd.DataFrame({"x": rng.normal(size=500)}))
        significant += finding.verdict != "ok"
    assert significant / 200 <= 0.08


# --- Missing values, small windows, state ---------------------------------------------------------------


def test_missing_values_are_dropped_and_counted() -> None:
    values = np.random.default_rng(0).normal(size=200)
    reference = pd.DataFrame({"x": np.concatenate([values, [np.nan] * 7])})
    current = pd.DataFrame({"x": [*values[:150], None, "not a number", np.inf]})
    finding = _judge(KSDrift(KSConfig(column="x")), reference, current)
    assert finding.measurements["missing_reference"] == 7
    assert finding.measurements["missing_current"] == 3
    assert (finding.reference_size, finding.current_size) == (200, 150)
    assert finding.verdict == "ok"


@pytest.mark.parametrize(
    "detector",
    [
        KSDrift(KSConfig(column="x", min_samples=50)),
        ChiSquareDrift(ChiSquareConfig(column="x", min_samples=50)),
    ],
    ids=lambda detector: detector.id,
)
def test_too_few_samples_is_ok_and_says_so(detector: UnivariateDrift[Any]) -> None:
    reference = pd.DataFrame({"x": [1.0] * 100})
    current = pd.DataFrame({"x": [5.0] * 49 + [None] * 20})
    finding = _judge(detector, reference, current)
    assert finding.verdict == "ok"
    assert finding.measurements["too_few_samples"] == 1
    assert finding.measurements["min_samples"] == 50
    assert finding.p_value is None


def test_a_missing_column_is_a_config_error_and_detect_needs_fit() -> None:
    detector = KSDrift(KSConfig(column="nope"))
    with pytest.raises(DetectorNotReady):
        detector.detect(pd.DataFrame({"x": [1.0]}))
    with pytest.raises(ConfigError, match="no column 'nope'"):
        detector.fit(pd.DataFrame({"x": [1.0]}))


def test_categorical_state_round_trips_through_npz() -> None:
    example = ChiSquareDrift.example(3)
    detector = ChiSquareDrift(example.config)
    detector.fit(example.reference)
    restored = ChiSquareDrift(example.config)
    load_state(restored, save_state(detector))
    assert restored.detect(example.shifted) == detector.detect(example.shifted)


# --- Descriptors ----------------------------------------------------------------------------------------


def test_text_length_reads_a_text_column_or_a_length_column() -> None:
    short, long = ["ok"] * 100, ["a much longer answer than before"] * 100
    by_text = TextLengthDrift(TextLengthConfig(column=frame.RESPONSE))
    finding = _judge(by_text, pd.DataFrame({frame.RESPONSE: short}), pd.DataFrame({frame.RESPONSE: long}))
    assert finding.verdict == "drift" and finding.effect_size == 1.0
    by_chars = TextLengthDrift(TextLengthConfig())
    same = _judge(
        by_chars,
        pd.DataFrame({frame.RESPONSE_CHARS: [2] * 100}),
        pd.DataFrame({frame.RESPONSE_CHARS: [2] * 90}),
    )
    assert same.verdict == "ok"


def test_refusal_rate_effect_is_the_rate_difference() -> None:
    reference = pd.DataFrame({frame.REFUSAL: [True] * 50 + [False] * 950})
    current = pd.DataFrame({frame.REFUSAL: [True] * 100 + [False] * 900})
    finding = _judge(FlagRateDrift(FlagRateConfig()), reference, current)
    assert finding.effect_size == pytest.approx(0.05)
    assert finding.p_value == pytest.approx(
        two_proportion_p_value(np.array([50, 100]), np.array([1000, 1000]))
    )
    assert finding.verdict == "drift"
    assert finding.measurements["rate_current"] == pytest.approx(0.1)


def test_a_tiny_rate_change_in_a_big_window_only_warns() -> None:
    reference = pd.DataFrame({frame.EMPTY_RESPONSE: np.arange(BIG) < 0.050 * BIG})
    current = pd.DataFrame({frame.EMPTY_RESPONSE: np.arange(BIG) < 0.055 * BIG})
    finding = _judge(FlagRateDrift(FlagRateConfig(column=frame.EMPTY_RESPONSE)), reference, current)
    assert finding.verdict == "warning", finding


def test_small_flag_counts_use_fishers_exact_test() -> None:
    # 0 of 40 against 4 of 40: Fisher's two-sided p = 0.1156 (the chi-square test would say 0.04).
    assert two_proportion_p_value(np.array([0, 4]), np.array([40, 40])) == pytest.approx(0.11555, abs=1e-4)
    assert two_proportion_p_value(np.array([0, 0]), np.array([40, 40])) == 1.0


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("Where is my order?", "latin"),
        ("Где мой заказ?", "cyrillic"),
        ("Πού είναι η παραγγελία μου;", "greek"),
        ("أين طلبي؟", "arabic"),
        ("איפה ההזמנה שלי?", "hebrew"),
        ("我的订单在哪里", "cjk"),
        ("注文はどこですか", "cjk"),
        ("제 주문은 어디에 있나요?", "hangul"),
        ("मेरा ऑर्डर कहाँ है?", "devanagari"),
        ("ኦርደሬ የት ነው?", "other"),  # Ethiopic
        ("", "none"),
        ("12345 !!!", "none"),
        ("OK: Где мой заказ, пожалуйста?", "cyrillic"),
    ],
)
def test_dominant_script(text: str, script: str) -> None:
    assert dominant_script(text) == script


def test_script_mix_on_real_english_prompts_flags_an_influx_of_russian(data_dir: Path) -> None:
    comments = pd.read_csv(data_dir / "jigsaw" / "train.5k.csv", usecols=["comment_text"])["comment_text"]
    english = comments.iloc[:1000].tolist()
    russian = ["Как мне вернуть заказ и получить деньги назад?"] * 200
    detector = ScriptMixDrift(ScriptMixConfig())
    reference = pd.DataFrame({frame.PROMPT: english[:500]})
    assert _judge(detector, reference, pd.DataFrame({frame.PROMPT: english[500:]})).verdict == "ok"
    shifted = detector.detect(pd.DataFrame({frame.PROMPT: english[500:800] + russian}))
    assert shifted.verdict == "drift"
    assert shifted.effect_size is not None and shifted.effect_size > 0.3


# --- Correction -----------------------------------------------------------------------------------------


def _finding(p: float | None, verdict: str = "drift", effect: float = 0.5) -> Finding:
    return Finding.model_validate(
        {"detector_id": "drift.ks.v1", "verdict": verdict, "reference_size": 100, "current_size": 100,
         "p_value": p, "effect_size": effect, "threshold": 0.1}
    )  # fmt: skip


def test_bh_and_bonferroni_match_the_textbook_values() -> None:
    p_values = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    # Benjamini & Hochberg step-up: min over k >= i of p_(k) * m / k.
    expected_bh = [0.01, 0.04, 0.084, 0.084, 0.084, 0.1, 0.10571429, 0.216, 0.216, 0.216]
    assert adjust(p_values) == pytest.approx(expected_bh)
    assert adjust(p_values, "bonferroni") == pytest.approx([0.01, 0.08, 0.39, 0.41, 0.42, 0.6, 0.74, 1, 1, 1])
    with pytest.raises(ValueError, match="unknown correction"):
        adjust([0.1], "holm")  # type: ignore[arg-type]


def test_correction_demotes_what_is_no_longer_significant_and_keeps_effect_gating() -> None:
    findings = [
        _finding(0.001, "drift"),
        _finding(0.001, "warning", effect=0.01),
        _finding(0.04, "drift"),
        _finding(None, "ok"),
        _finding(0.5, "ok"),
    ]
    corrected = correct(findings, method="bh", alpha=0.05)
    assert [f.verdict for f in corrected] == ["drift", "warning", "ok", "ok", "ok"]
    assert [f.measurements.get("p_value_adjusted") for f in corrected] == pytest.approx(
        [0.002, 0.002, 0.16 / 3, None, 0.5]
    )
    assert corrected[3] == findings[3]
    assert [f.p_value for f in corrected] == [f.p_value for f in findings]
    bonferroni = correct(findings, method="bonferroni", alpha=0.05)
    assert [f.verdict for f in bonferroni] == ["drift", "warning", "ok", "ok", "ok"]
    assert bonferroni[2].measurements["p_value_adjusted"] == pytest.approx(0.16)


# --- Files and the report model -------------------------------------------------------------------------


def test_read_frame_by_extension(tmp_path: Path) -> None:
    data = pd.DataFrame({"x": [1.5, 2.5], "c": ["a", "b"]})
    data.to_csv(tmp_path / "a.csv", index=False)
    data.to_parquet(tmp_path / "a.parquet")
    data.to_json(tmp_path / "a.jsonl.gz", orient="records", lines=True)
    for name in ("a.csv", "a.parquet", "a.jsonl.gz"):
        pd.testing.assert_frame_equal(read_frame(tmp_path / name), data)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.xlsx", "x", "unknown file kind"),
        ("missing.csv", None, "no such file"),
        ("empty.csv", "x\n", "no rows"),
        ("bad.jsonl", "{not json\n", "cannot read it as jsonl"),
    ],
)
def test_read_frame_errors_are_clear(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataFileError, match=message) as caught:
        read_frame(tmp_path / name)
    assert isinstance(caught.value, LoopwatchError)


def test_drift_report_picks_tests_skips_identifiers_and_corrects() -> None:
    rng = np.random.default_rng(0)

    def window(shift: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "request_id": [f"r{i}" for i in rng.permutation(10_000)[:600]],
                "x": rng.normal(shift, 1, 600),
                "flag": rng.random(600) < 0.3,
                "tier": rng.choice(["free", "pro"], 600),
            }
        )

    report = drift_report(window(0), window(1.0))
    assert report.skipped == {"request_id": "almost every value distinct (an identifier or free text?)"}
    assert [(t.column, t.test, t.finding.verdict) for t in report.tests] == [
        ("x", "ks", "drift"),
        ("flag", "chi2", "ok"),
        ("tier", "chi2", "ok"),
    ]
    assert report.drift is True
    assert all(
        t.p_value_adjusted is not None and t.p_value_adjusted >= t.finding.p_value  # type: ignore[operator]
        for t in report.tests
    )
    assert "DRIFT: 1 of 3 tests drifted" in format_table(report)
    with pytest.raises(DataFileError, match="no column 'y'"):
        drift_report(window(0), window(0), columns=["x", "y"])


def test_drift_report_adds_the_embedding_tests_of_the_text_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the embedding call is replaced: the plumbing around it (texts, correction, rows) is real."""
    seen: dict[str, Any] = {}

    def fake_text_drift(reference_texts: list[str], current_texts: list[str], seed: int = 0) -> list[Finding]:
        seen.update(reference=reference_texts, current=current_texts, seed=seed)
        mmd = _finding(0.004, "drift").model_copy(update={"detector_id": "drift.embedding_mmd.v1"})
        lsdd = _finding(0.4, "ok").model_copy(update={"detector_id": "drift.embedding_lsdd.v1"})
        return [mmd, lsdd]

    monkeypatch.setattr(embedding, "text_drift", fake_text_drift)
    reference = pd.DataFrame({"x": np.arange(100.0), frame.PROMPT: ["hello"] * 99 + [None]})
    current = pd.DataFrame({"x": np.arange(100.0), frame.PROMPT: ["bonjour"] * 100})
    report = drift_report(reference, current, text_column=frame.PROMPT, seed=3)
    assert seen == {"reference": ["hello"] * 99, "current": ["bonjour"] * 100, "seed": 3}
    assert [(t.column, t.test, t.finding.verdict) for t in report.tests] == [
        ("x", "ks", "ok"),
        (frame.PROMPT, "embedding_mmd", "drift"),
        (frame.PROMPT, "embedding_lsdd", "ok"),
    ]
    assert report.tests[1].p_value_adjusted == pytest.approx(0.012)
    assert report.drift is True


# --- Evidently report -----------------------------------------------------------------------------------


def test_render_drift_report_writes_html_naming_the_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {"latency_ms": rng.normal(300, 30, 300), "tier": rng.choice(["free", "pro"], 300)}
    )
    current = pd.DataFrame({"latency_ms": rng.normal(400, 30, 300), "tier": rng.choice(["free", "pro"], 300)})
    path = render_drift_report(reference, current, ["latency_ms", "tier"], tmp_path / "out" / "drift.html")
    html = path.read_text()
    assert path == tmp_path / "out" / "drift.html"
    assert len(html) > 50_000
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:2000].lower()
    assert "latency_ms" in html and "tier" in html
    # Written aside and renamed into place, so a path that exists is a whole report: nothing is left over.
    assert [p.name for p in path.parent.iterdir()] == ["drift.html"]
    with pytest.raises(DataFileError, match="'nope'"):
        render_drift_report(reference, current, ["nope"], tmp_path / "x.html")
