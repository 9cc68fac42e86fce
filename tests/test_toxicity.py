"""Toxicity scorers, the cascade, the rate detectors and ``loopwatch score toxicity``.

Detoxify is loaded through its own code from a small random checkpoint built
once per session in Detoxify's format (tests/detoxify_fixture.py): its scores
mean nothing, so tests of *detection* use profanity-check, which ships real
weights, on real Jigsaw and HH-RLHF text.
"""

from __future__ import annotations

import json
import os
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from detectors import frame
from detectors.scorers import (
    ORIGINAL_LABELS,
    CascadeScorer,
    DetoxifyScorer,
    DetoxifySettings,
    LabelScores,
    ProfanityScorer,
    ScorerUnavailable,
    TextScorer,
    length_buckets,
    thread_budget,
)
from detectors.toxicity import (
    DetoxifyRateConfig,
    DetoxifyRateDetector,
    ProfanityRateConfig,
    ProfanityRateDetector,
    score_column,
)
from services import sample_data
from services.cli import main

from .detoxify_fixture import DetoxifyFiles, build_detoxify_checkpoint

INSULTS = ["Shut up, you stupid idiot.", "You are a moron and your question is dumb."]
BENIGN = ["Sure, the capital of France is Paris.", "Your order has shipped and arrives on Tuesday."]


@pytest.fixture(scope="session")
def detoxify_files(tmp_path_factory: pytest.TempPathFactory) -> DetoxifyFiles:
    """A tiny random BERT in Detoxify's checkpoint format, with a local config/tokenizer folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_detoxify_checkpoint(tmp_path_factory.mktemp("detoxify"))


@pytest.fixture(scope="session")
def detoxify_settings(detoxify_files: DetoxifyFiles) -> DetoxifySettings:
    """Settings that load the tiny checkpoint, in small batches so bucketing matters."""
    return DetoxifySettings(
        checkpoint=detoxify_files.checkpoint, config_dir=detoxify_files.config_dir, batch_size=4, threads=1
    )


@pytest.fixture(scope="session")
def detoxify(detoxify_settings: DetoxifySettings) -> DetoxifyScorer:
    """The tiny Detoxify, loaded once."""
    scorer = DetoxifyScorer(detoxify_settings)
    scorer.detoxify()
    return scorer


@pytest.fixture(scope="session")
def hh_replies(data_dir: Path) -> list[sample_data.Exchange]:
    """Real assistant replies the human preferred (HH-RLHF ``chosen``)."""
    return [chosen for chosen, _ in sample_data.hh_rlhf(data_dir)]


@pytest.fixture(scope="session")
def jigsaw(data_dir: Path) -> pd.DataFrame:
    """The Jigsaw sample with its human ``is_bad`` label."""
    return pd.read_csv(sample_data.require(data_dir, "jigsaw/train.5k.csv"))


class Spy:
    """Wraps a scorer and records every text it was asked to score."""

    def __init__(self, inner: TextScorer) -> None:
        self.inner = inner
        self.seen: list[str] = []

    @property
    def labels(self) -> tuple[str, ...]:
        return self.inner.labels

    def score(self, texts: Sequence[str]) -> LabelScores:
        self.seen.extend(texts)
        return self.inner.score(texts)


def test_detoxify_scores_are_probabilities_one_per_label_and_text(detoxify: DetoxifyScorer) -> None:
    texts = BENIGN + INSULTS + [""]
    scores = detoxify.score(texts)
    assert scores.labels == ORIGINAL_LABELS
    assert scores.values.shape == (len(texts), len(ORIGINAL_LABELS))
    assert ((scores.values >= 0) & (scores.values <= 1)).all()
    # The model does look at the text: different texts get different scores.
    assert len(np.unique(scores.values[:, 0].round(6))) == len(texts)


def test_a_20000_character_reply_is_truncated_instead_of_crashing(detoxify: DetoxifyScorer) -> None:
    reply = "word " * 4000
    assert len(reply) == 20_000
    with pytest.raises(RuntimeError):
        detoxify.detoxify().predict(reply)  # Detoxify's own predict does not truncate
    long_score = detoxify.score([reply]).values
    # [CLS] + 510 word pieces + [SEP] fill the model's 512 positions: the rest was cut.
    assert np.allclose(long_score, detoxify.score(["word " * 510]).values, atol=1e-6)
    assert not np.allclose(long_score, detoxify.score(["word " * 100]).values, atol=1e-4)


def test_batched_and_bucketed_scores_match_one_at_a_time_in_input_order(
    detoxify: DetoxifyScorer, hh_replies: list[sample_data.Exchange]
) -> None:
    texts = [exchange.response for exchange in hh_replies[:18]]
    tokens = [
        len(detoxify.detoxify().tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in texts
    ]
    order = np.concatenate(length_buckets(tokens, batch_size=4))
    assert not (order == np.arange(len(texts))).all(), "bucketing should reorder these texts"
    batched = detoxify.score(texts).values
    one_by_one = np.vstack([detoxify.score([text]).values for text in texts])
    assert np.allclose(batched, one_by_one, atol=1e-5)


def test_length_buckets_group_similar_lengths_and_keep_every_index() -> None:
    buckets = length_buckets([30, 2, 17, 2, 40, 9], batch_size=4)
    assert [b.tolist() for b in buckets] == [[1, 3, 5, 2], [0, 4]]


def test_thread_budget_caps_torch_threads_and_restores_them() -> None:
    import torch

    before = torch.get_num_threads()
    with thread_budget(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_cascade_only_calls_the_expensive_scorer_on_prefilter_positives(detoxify: DetoxifyScorer) -> None:
    texts = [BENIGN[0], INSULTS[0], BENIGN[1], INSULTS[1], BENIGN[0]]
    expensive = Spy(detoxify)
    cascade = CascadeScorer(ProfanityScorer(), expensive, threshold=0.5)
    routed = cascade.route(texts)
    assert routed.escalated.tolist() == [False, True, False, True, False]
    assert expensive.seen == INSULTS
    assert (routed.scores.values[~routed.escalated] == 0).all()
    assert np.allclose(routed.scores.values[routed.escalated], detoxify.score(INSULTS).values, atol=1e-6)


def test_scorers_return_empty_scores_for_no_texts(detoxify: DetoxifyScorer) -> None:
    assert detoxify.score([]).values.shape == (0, len(ORIGINAL_LABELS))
    assert ProfanityScorer().score([]).values.shape == (0, 1)


def test_a_missing_download_says_how_to_pass_a_local_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ScorerUnavailable, match=r"--checkpoint PATH.*--config-dir PATH"):
        DetoxifyScorer(DetoxifySettings()).score(["hello"])


def _window(texts: Sequence[str], name: str) -> pd.DataFrame:
    return pd.DataFrame({frame.REQUEST_ID: [f"{name}-{i}" for i in range(len(texts))], frame.RESPONSE: texts})


def test_profanity_rate_flags_10_percent_injected_jigsaw_toxicity_but_not_a_clean_window(
    hh_replies: list[sample_data.Exchange], jigsaw: pd.DataFrame
) -> None:
    rng = np.random.default_rng(3)
    replies = [hh_replies[i].response for i in rng.permutation(len(hh_replies))[:1200]]
    toxic = jigsaw.loc[jigsaw["is_bad"] == 1, "comment_text"].sample(40, random_state=3).tolist()
    reference, clean = _window(replies[:400], "ref"), _window(replies[400:800], "clean")
    injected = pd.concat([_window(replies[800:1160], "hh"), _window(toxic, "jigsaw")], ignore_index=True)

    detector = ProfanityRateDetector(ProfanityRateConfig())
    detector.fit(reference)
    ok, flagged = detector.detect(clean), detector.detect(injected)

    assert ok.verdict == "ok", ok
    assert flagged.verdict == "drift", flagged
    assert flagged.p_value is not None and flagged.p_value < 1e-4
    assert flagged.measurements["rate.profanity"] > ok.measurements["rate.profanity"] + 0.05
    assert len(flagged.request_ids) == 20
    assert sum(i.startswith("jigsaw-") for i in flagged.request_ids) >= 15


@pytest.mark.parametrize(
    ("positives", "size", "expected"),
    [
        (20, 1000, "ok"),  # exactly the baseline rate
        (600, 20_000, "warning"),  # 3% vs 2%: significant, below the 2-point minimum rise
        (50, 1000, "drift"),  # 5% vs 2%: significant and large
        (5, 1000, "ok"),  # lower than the baseline is never an alarm
    ],
)
def test_fixed_baseline_verdicts(positives: int, size: int, expected: str) -> None:
    config = DetoxifyRateConfig(labels=("toxicity",), baseline="fixed", baseline_rates={"toxicity": 0.02})
    scores = np.where(np.arange(size) < positives, 0.9, 0.1)
    window = pd.DataFrame({frame.RESPONSE: ["x"] * size, "response_toxicity": scores})
    finding = DetoxifyRateDetector(config, scorer=Spy(ProfanityScorer())).detect(window)
    assert finding.verdict == expected
    assert finding.measurements["rate.toxicity"] == pytest.approx(positives / size)


def test_the_worst_label_decides_and_every_rate_is_reported() -> None:
    example = DetoxifyRateDetector.example(seed=1)
    detector = DetoxifyRateDetector(example.config)
    detector.fit(example.reference)
    finding = detector.detect(example.shifted)
    assert finding.measurements["worst.toxicity"] == 1.0
    assert {f"rate.{label}" for label in ORIGINAL_LABELS} <= finding.measurements.keys()
    assert finding.measurements["rate.toxicity"] == pytest.approx(48 / 400)
    assert finding.measurements["rate.insult"] == pytest.approx(24 / 400)
    top = example.shifted.sort_values("response_toxicity", ascending=False)[frame.REQUEST_ID][:20]
    assert finding.request_ids == top.tolist()


def test_scored_windows_are_not_rescored(detoxify_settings: DetoxifySettings) -> None:
    spy = Spy(ProfanityScorer())
    config = ProfanityRateConfig()
    window = _window(BENIGN * 3, "w")
    window[score_column(frame.RESPONSE, "profanity")] = [0.1, 0.2, np.nan, 0.1, np.nan, 0.3]
    detector = ProfanityRateDetector(config, scorer=spy)
    scored = detector.score(window)
    assert spy.seen == [BENIGN[0], BENIGN[0]]  # only the two rows without a score
    assert scored["response_profanity"].notna().all()
    assert scored["response_profanity"][[0, 1, 3, 5]].tolist() == [0.1, 0.2, 0.1, 0.3]
    spy.seen.clear()
    detector.score(scored)
    assert spy.seen == []


def test_the_detoxify_detector_scores_through_the_cascade_and_scores_prompts_separately(
    detoxify_settings: DetoxifySettings,
) -> None:
    config = DetoxifyRateConfig(
        column="prompt", detoxify=detoxify_settings, cascade=True, prefilter_threshold=0.5
    )
    detector = DetoxifyRateDetector(config)
    reference = pd.DataFrame({frame.PROMPT: BENIGN * 10, frame.RESPONSE: INSULTS * 10})
    scored = detector.score(reference)
    assert "prompt_toxicity" in scored.columns and "response_toxicity" not in scored.columns
    assert (scored["prompt_toxicity"] == 0).all()  # benign prompts never reach Detoxify
    detector.fit(reference)
    current = pd.DataFrame({frame.PROMPT: INSULTS * 10, frame.RESPONSE: BENIGN * 10})
    finding = detector.detect(current)
    assert finding.current_size == 20 and finding.reference_size == 20
    assert set(finding.measurements) >= {f"rate.{label}" for label in ORIGINAL_LABELS}


def test_configs_refuse_inconsistent_labels_and_baselines() -> None:
    with pytest.raises(ValidationError, match="baseline_rates"):
        DetoxifyRateConfig(baseline="fixed", baseline_rates={"toxicity": 0.01})
    with pytest.raises(ValidationError, match="not watched"):
        DetoxifyRateConfig(labels=("toxicity",), label_thresholds={"insult": 0.3})
    with pytest.raises(ValidationError):
        ProfanityRateConfig(labels=("toxicity",))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_scores_a_csv_with_profanity_check_in_input_order(tmp_path: Path, jigsaw: pd.DataFrame) -> None:
    rows = jigsaw.head(60)[["id", "comment_text"]]
    rows.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.jsonl"
    args = ["score", "toxicity", "--input", str(tmp_path / "in.csv"), "--text-column", "comment_text"]
    result = CliRunner().invoke(main, [*args, "--output", str(out), "--scorer", "profanity"])
    assert result.exit_code == 0, result.output
    records = _read_jsonl(out)
    expected = ProfanityScorer().score(rows["comment_text"].tolist()).column("profanity")
    assert [r["row"] for r in records] == list(range(60))
    assert np.allclose([r["toxicity"] for r in records], expected)
    assert all(0 <= r["profanity"] <= 1 for r in records)


def test_cli_scores_jsonl_with_a_local_detoxify_checkpoint(
    tmp_path: Path, detoxify_files: DetoxifyFiles, detoxify: DetoxifyScorer
) -> None:
    texts = BENIGN + INSULTS + ["word " * 4000]
    pd.DataFrame({"request_id": [f"r{i}" for i in range(5)], "reply": texts}).to_json(
        tmp_path / "in.jsonl", orient="records", lines=True
    )
    out = tmp_path / "out.jsonl"
    local = ["--checkpoint", str(detoxify_files.checkpoint), "--config-dir", str(detoxify_files.config_dir)]
    args = ["score", "toxicity", "--input", str(tmp_path / "in.jsonl"), "--text-column", "reply"]
    result = CliRunner().invoke(main, [*args, "--output", str(out), *local, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    records = _read_jsonl(out)
    assert [r["request_id"] for r in records] == ["r0", "r1", "r2", "r3", "r4"]
    expected = detoxify.score(texts)
    for label in ORIGINAL_LABELS:
        assert np.allclose([r[label] for r in records], expected.column(label), atol=1e-5)
    assert np.allclose([r["toxicity"] for r in records], expected.column("toxicity"), atol=1e-5)

    cascade = tmp_path / "cascade.jsonl"
    result = CliRunner().invoke(
        main, [*args, "--output", str(cascade), *local, "--scorer", "cascade", "--prefilter-threshold", "0.5"]
    )
    assert result.exit_code == 0, result.output
    assert [r["escalated"] for r in _read_jsonl(cascade)] == [False, False, True, True, False]


def test_cli_says_how_to_load_detoxify_offline_when_the_checkpoint_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("reply\nhello\n")
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    args = ["score", "toxicity", "--input", str(tmp_path / "in.csv"), "--text-column", "reply"]
    broken = ["--checkpoint", str(tmp_path / "broken.ckpt")]
    result = CliRunner().invoke(
        main, [*args, "--output", str(tmp_path / "out.jsonl"), *broken, "--scorer", "detoxify"]
    )
    assert result.exit_code == 2
    assert "--checkpoint PATH" in result.output and "--config-dir PATH" in result.output


def test_cli_falls_back_to_profanity_check_by_default_when_detoxify_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("reply\nhello there\nyou are a fucking idiot\n")
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    args = ["score", "toxicity", "--input", str(tmp_path / "in.csv"), "--text-column", "reply"]
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        main, [*args, "--output", str(out), "--checkpoint", str(tmp_path / "broken.ckpt")]
    )
    assert result.exit_code == 0, result.output
    [warning] = result.stderr.splitlines()
    assert warning.startswith("warning: Detoxify weights could not be loaded (")
    assert warning.endswith("scoring with profanity-check (--scorer detoxify says how to load them offline)")
    benign, toxic = _read_jsonl(out)
    assert set(benign) == {"row", "toxicity", "profanity"} and toxic["toxicity"] > benign["toxicity"]


def test_cli_offline_says_in_one_line_that_it_uses_profanity_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.hub

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    # An empty hub cache, so torch.hub announces a download (on stdout) before it fails.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    (tmp_path / "in.csv").write_text("reply\nhello there\n")
    args = ["score", "toxicity", "--input", str(tmp_path / "in.csv"), "--text-column", "reply"]
    result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"scored 1 rows with profanity into {tmp_path / 'out.jsonl'}\n"
    assert result.stderr.splitlines() == [
        "warning: Detoxify weights could not be loaded (URLError: <urlopen error [Errno -2] Name or service"
        " not known>); scoring with profanity-check (--scorer detoxify says how to load them offline)"
    ]


def test_cli_names_the_columns_when_the_text_column_is_missing(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("reply\nhello\n")
    args = ["score", "toxicity", "--input", str(tmp_path / "in.csv"), "--text-column", "response"]
    result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "o.jsonl"), "--scorer", "profanity"])
    assert result.exit_code == 2
    assert "reply" in result.output


def test_int8_quantization_scores_close_to_the_float_model(
    detoxify_settings: DetoxifySettings, detoxify: DetoxifyScorer
) -> None:
    import torch

    quantized = DetoxifyScorer(detoxify_settings.model_copy(update={"quantize": True}))
    linear_layers = [m for m in quantized.detoxify().model.modules() if type(m) is torch.nn.Linear]
    assert linear_layers == [], "every Linear layer is replaced by its int8 version"
    texts = BENIGN + INSULTS
    exact, approx = detoxify.score(texts), quantized.score(texts)
    assert approx.labels == exact.labels and approx.values.shape == exact.values.shape
    assert np.abs(approx.values - exact.values).max() < 0.05
