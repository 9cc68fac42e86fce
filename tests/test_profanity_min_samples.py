"""A profanity rate of a few texts is not judged (issue 12: a 12-request window read "ok, judged")."""

from __future__ import annotations

from detectors.toxicity import ProfanityRateConfig, ProfanityRateDetector


def test_a_window_of_fewer_texts_than_min_samples_is_marked_not_judged() -> None:
    example = ProfanityRateDetector.example()
    detector = ProfanityRateDetector(ProfanityRateConfig())
    detector.fit(example.reference)
    small = detector.detect(example.shifted.head(12))
    assert small.verdict == "ok" and small.p_value is None
    assert (small.measurements["too_few_samples"], small.measurements["min_samples"]) == (1.0, 30.0)
    assert detector.detect(example.shifted).verdict == "drift"
