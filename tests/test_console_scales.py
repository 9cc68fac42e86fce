"""What each detector's threshold bounds (detectors/thresholds.py), and what the Segment page charts."""

from __future__ import annotations

import pytest

from curation.history import not_judged
from detectors.registry import all_detectors, create
from detectors.thresholds import THRESHOLD_OF, threshold_of
from services.console.views import is_rate

# Examples that load a model (embeddings, Detoxify) are left to their own tests.
_LOADS_A_MODEL = {"drift.embedding_lsdd.v1", "drift.embedding_mmd.v1", "drift.embedding_mmd_online.v1"}
_LOADS_A_MODEL |= {"toxicity.detoxify.v1"}


def test_every_registered_detector_says_what_its_threshold_bounds() -> None:
    assert sorted(THRESHOLD_OF) == sorted(all_detectors())


@pytest.mark.parametrize("detector_id", sorted(set(THRESHOLD_OF) - _LOADS_A_MODEL))
def test_a_shifted_example_crosses_its_threshold_on_the_field_it_bounds(detector_id: str) -> None:
    cls = all_detectors()[detector_id]
    example = cls.example(0)
    detector = create(detector_id, example.config.model_dump(mode="json"))
    detector.fit(example.reference)
    finding = detector.detect(example.shifted)
    field = threshold_of(detector_id, finding.measurements)
    value, bound = getattr(finding, str(field)), finding.threshold
    assert finding.verdict != "ok" and value is not None and bound is not None, finding
    # Alpha bounds the p-value; any other threshold is not the detector's alpha.
    assert (bound == getattr(detector.config, "alpha", None)) == (field == "p_value"), (field, bound)
    if field == "p_value":
        assert value < bound, (field, value, bound)  # significant below it
    elif finding.verdict == "drift":
        assert value >= bound, (field, value, bound)  # an effect, SLO or probability: drift at or above it


def test_a_cost_slo_bounds_the_statistic_and_its_relative_rise_the_p_value() -> None:
    assert threshold_of("quality.cost.v1", {"decided_by.cost_slo": 1.0}) == "statistic"
    assert threshold_of("quality.cost.v1", {"decided_by.tokens": 1.0}) == "p_value"
    assert threshold_of("no.such.v1", {}) is None


@pytest.mark.parametrize(
    ("measurements", "sizes", "expected"),
    [
        ({"too_few_samples": 1.0, "min_samples": 30.0, "current_samples": 24.0}, (40, 24), (24, 30)),
        ({"too_few_samples": 1.0, "min_samples": 30.0}, (40, 24), (24, 30)),  # drift: the smaller side
        (
            {"too_few_samples": 1.0, "min_samples": 30.0, "reference_samples": 0.0, "current_samples": 0.0},
            (0, 0),
            (0, 30),
        ),
        (
            {
                "a.too_few_samples": 1.0,
                "a.min_samples": 30.0,
                "a.current_samples": 7.0,
                "b.too_few_samples": 1.0,
                "b.min_samples": 30.0,
                "decided_by.a": 1.0,
            },
            (40, 7),
            (7, 30),
        ),
        # One check of two judged: the detection judged something.
        (
            {"a.too_few_samples": 1.0, "a.min_samples": 30.0, "b.current_rate": 0.2, "decided_by.a": 1.0},
            (40, 7),
            None,
        ),
        ({"current_rate": 0.2, "window_events": 50.0}, (40, 50), None),
    ],
)
def test_a_detection_says_it_was_not_judged_with_too_few_samples(measurements, sizes, expected) -> None:
    assert not_judged(measurements, *sizes) == expected


def test_sample_counts_are_not_charted_among_the_rates() -> None:
    rates = [
        "current_rate",
        "error_rate.current_rate",
        "p95.observed_ms",
        "cost.current_mean",
        "rate.profanity",
    ]
    counts = [
        "error_rate.min_samples",
        "min_samples",
        "negative_feedback.current_samples",
        "p_value.profanity",
    ]
    assert [name for name in rates + counts if is_rate(name)] == rates
