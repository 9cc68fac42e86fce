"""The shared check-suite: every registered detector passes the same checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from detectors.base import Detector, DetectorNotReady, load_state, save_state
from detectors.registry import all_detectors, create

DETECTORS = all_detectors()


def _fitted(cls: type[Detector[Any]], seed: int = 0) -> tuple[Detector[Any], Any]:
    example = cls.example(seed)
    detector = cls(example.config)
    detector.fit(example.reference)
    return detector, example


def test_the_registry_holds_every_family() -> None:
    families = {detector_id.split(".")[0] for detector_id in DETECTORS}
    assert {"drift", "toxicity", "quality"} <= families


@pytest.mark.parametrize("detector_id", DETECTORS)
def test_config_round_trips_and_refuses_unknown_fields(detector_id: str) -> None:
    cls = DETECTORS[detector_id]
    config = cls.example().config
    assert cls.Config.model_validate(config.model_dump(mode="json")) == config
    assert create(detector_id, config.model_dump(mode="json")).config == config
    with pytest.raises(ValidationError):
        cls.Config.model_validate({**config.model_dump(mode="json"), "no_such_field": 1})


@pytest.mark.parametrize("detector_id", DETECTORS)
def test_no_shift_is_ok_and_a_shift_is_flagged(detector_id: str) -> None:
    detector, example = _fitted(DETECTORS[detector_id])
    same = detector.detect(example.current)
    shifted = detector.detect(example.shifted)
    assert same.verdict == "ok", same
    assert shifted.verdict in ("warning", "drift"), shifted
    assert same.detector_id == shifted.detector_id == detector_id
    assert shifted.current_size == len(example.shifted)


@pytest.mark.parametrize("detector_id", DETECTORS)
def test_state_save_and_restore_gives_the_same_finding(detector_id: str) -> None:
    cls = DETECTORS[detector_id]
    detector, example = _fitted(cls)
    restored = cls(example.config)
    load_state(restored, save_state(detector))
    assert restored.detect(example.shifted) == detector.detect(example.shifted)
    assert restored.detect(example.current) == detector.detect(example.current)


@pytest.mark.parametrize("detector_id", DETECTORS)
def test_deterministic_under_a_seed(detector_id: str) -> None:
    cls = DETECTORS[detector_id]
    first, example = _fitted(cls, seed=7)
    second, _ = _fitted(cls, seed=7)
    assert first.detect(example.shifted) == second.detect(example.shifted)


@pytest.mark.parametrize("detector_id", [i for i, c in DETECTORS.items() if c.needs_reference])
def test_detect_before_fit_says_not_ready(detector_id: str) -> None:
    cls = DETECTORS[detector_id]
    example = cls.example()
    with pytest.raises(DetectorNotReady):
        cls(example.config).detect(example.current)
