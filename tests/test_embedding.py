"""Embedding drift on real prompts: HH-RLHF (red-teaming) against OpenAssistant oasst1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from core.settings import Settings
from detectors import frame, online
from detectors.base import load_state, save_state
from detectors.embedding import (
    Embedder,
    EmbedderConfig,
    EmbeddingLSDD,
    EmbeddingMMD,
    EmbeddingModelMissing,
    MMDConfig,
    text_drift,
)
from detectors.online import OnlineConfig, OnlineEmbeddingMMD
from schemas.errors import LoopwatchError
from services import sample_data


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Other work shares these two cores; one thread embeds faster than two fighting ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hh_prompts() -> list[str]:
    """Distinct last human turns of HH-RLHF harmless-base test, in a fixed shuffled order."""
    prompts = [chosen.prompt[-1]["content"] for chosen, _ in sample_data.hh_rlhf(Settings().sample_data)]
    unique = list(dict.fromkeys(prompts))
    order = np.random.default_rng(0).permutation(len(unique))
    return [unique[i] for i in order]


@pytest.fixture(scope="module")
def oasst_prompts() -> list[str]:
    """Distinct prompter messages of the oasst1 trees that got a reply, in a fixed shuffled order."""
    prompts = [exchange.prompt[-1]["content"] for exchange in sample_data.oasst1(Settings().sample_data)]
    unique = list(dict.fromkeys(prompts))
    order = np.random.default_rng(0).permutation(len(unique))
    return [unique[i] for i in order]


def _window(texts: list[str], prefix: str) -> pd.DataFrame:
    return pd.DataFrame({frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(len(texts))], frame.PROMPT: texts})


def test_embedder_is_offline_normalised_and_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["Where is my parcel?", "My package has not arrived yet.", "Prove that sqrt(2) is irrational."]
    uncached = Embedder(EmbedderConfig(cache_size=0, batch_size=2))
    first = uncached.embed(texts)
    again = uncached.embed(list(reversed(texts)))[::-1]
    assert first.shape == (3, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first, again, atol=1e-5)
    # Paraphrases sit closer together than unrelated questions.
    assert first[0] @ first[1] > 0.5 > first[0] @ first[2]
    cached = Embedder().embed(texts)
    np.testing.assert_allclose(cached, first, atol=1e-5)


def test_a_missing_model_folder_is_a_clear_loopwatch_error(tmp_path: Path) -> None:
    embedder = Embedder(EmbedderConfig(model_path=str(tmp_path / "no-model")))
    with pytest.raises(EmbeddingModelMissing, match=r"modules\.json") as caught:
        embedder.embed(["hello"])
    assert isinstance(caught.value, LoopwatchError)


def test_hh_rlhf_prompts_against_oasst1_prompts_drift(
    hh_prompts: list[str], oasst_prompts: list[str]
) -> None:
    findings = text_drift(hh_prompts[:150], oasst_prompts[:150], seed=0)
    assert [f.detector_id for f in findings] == ["drift.embedding_mmd.v1", "drift.embedding_lsdd.v1"]
    for finding in findings:
        assert finding.verdict == "drift", finding
        assert finding.p_value is not None and finding.p_value < 0.05
        assert (
            finding.effect_size is not None and finding.effect_size >= finding.measurements["min_effect_size"]
        )
        assert finding.reference_size == finding.current_size == 150


def test_two_random_halves_of_hh_rlhf_prompts_are_ok(hh_prompts: list[str]) -> None:
    findings = text_drift(hh_prompts[:150], hh_prompts[150:300], seed=0)
    for finding in findings:
        assert finding.verdict == "ok", finding
        assert finding.p_value is not None and finding.p_value >= 0.05


def test_a_significant_but_small_shift_is_only_a_warning(
    hh_prompts: list[str], oasst_prompts: list[str]
) -> None:
    detector = EmbeddingMMD(MMDConfig(min_effect_size=0.5))
    detector.fit(_window(hh_prompts[:150], "hh"))
    finding = detector.detect(_window(oasst_prompts[:150], "oa"))
    assert finding.verdict == "warning"
    assert finding.effect_size is not None and 0.005 < finding.effect_size < 0.5


@pytest.mark.parametrize("cls", [EmbeddingMMD, EmbeddingLSDD])
def test_flagged_request_ids_come_from_the_new_kind_of_prompt(
    cls: type[EmbeddingMMD] | type[EmbeddingLSDD], hh_prompts: list[str], oasst_prompts: list[str]
) -> None:
    detector = cls(cls.Config())
    detector.fit(_window(hh_prompts[:150], "hh"))
    # Half old, half new: significant, and the flagged rows should be the new half.
    mixed = pd.concat([_window(hh_prompts[150:250], "hh"), _window(oasst_prompts[:100], "oa")])
    finding = detector.detect(mixed.reset_index(drop=True))
    assert finding.verdict in ("warning", "drift"), finding
    assert len(finding.request_ids) == 10
    assert sum(rid.startswith("oa-") for rid in finding.request_ids) >= 9, finding.request_ids


def test_restored_offline_detector_needs_no_embedding_of_the_reference(
    hh_prompts: list[str], oasst_prompts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = EmbeddingMMD(MMDConfig())
    detector.fit(_window(hh_prompts[:150], "hh"))
    current = _window(oasst_prompts[:100], "oa")
    expected = detector.detect(current)
    restored = EmbeddingMMD(MMDConfig())
    seen: list[int] = []
    real_embed = Embedder.embed

    def counting_embed(self: Embedder, texts: list[str]) -> np.ndarray:
        seen.append(len(texts))
        return real_embed(self, texts)

    monkeypatch.setattr(Embedder, "embed", counting_embed)
    load_state(restored, save_state(detector))
    assert restored.detect(current) == expected
    assert seen == [100]  # only the current window was embedded


def test_online_detector_finds_the_switch_and_reuses_its_calibration(
    hh_prompts: list[str], oasst_prompts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = OnlineConfig(
        reference_size=200, window_size=20, ert=500.0, n_bootstraps=1000, cache_dir=str(tmp_path)
    )
    reference = _window(hh_prompts[:200], "ref")
    stream = pd.concat([_window(hh_prompts[200:300], "hh"), _window(oasst_prompts[:100], "oa")])
    stream = stream.reset_index(drop=True)

    calibrations = online.calibration_count
    first = OnlineEmbeddingMMD(config)
    first.fit(reference)
    assert first.calibration is not None and first.calibration.source == "calibrated"
    assert online.calibration_count == calibrations + 1
    assert len(list(tmp_path.glob("mmd_online-*.npz"))) == 1
    finding = first.detect(stream)
    assert finding.verdict == "drift"
    row = int(finding.measurements["detection_row"])
    assert 100 <= row < 130, row  # not on the HH rows, soon after the switch
    assert finding.statistic is not None and finding.threshold is not None
    assert finding.statistic > finding.threshold
    assert finding.request_ids[-1] == f"oa-{row - 100}" and len(finding.request_ids) == 20
    assert first.detect(stream.iloc[:100]).verdict == "ok"

    # A second start with the same reference and config must read the cache, not recalibrate.
    from alibi_detect.cd.pytorch.mmd_online import MMDDriftOnlineTorch

    def no_calibration(self: object) -> None:
        raise AssertionError("calibrated again instead of using the cache")

    monkeypatch.setattr(MMDDriftOnlineTorch, "_configure_thresholds", no_calibration)
    second = OnlineEmbeddingMMD(config)
    second.fit(reference)
    assert second.calibration is not None and second.calibration.source == "cache"
    np.testing.assert_array_equal(second.calibration.thresholds, first.calibration.thresholds)
    assert second.detect(stream) == finding

    # So must a restore from saved state, even with no cache folder at all.
    restored = OnlineEmbeddingMMD(config.model_copy(update={"cache_dir": None}))
    load_state(restored, save_state(first))
    assert restored.calibration is not None and restored.calibration.source == "state"
    assert restored.detect(stream) == finding
    assert online.calibration_count == calibrations + 1


def test_online_config_refuses_too_few_bootstraps_for_the_run_time() -> None:
    with pytest.raises(ValidationError, match="n_bootstraps"):
        OnlineConfig(ert=1000.0, n_bootstraps=1500)
