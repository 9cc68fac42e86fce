"""What each detector's ``threshold`` bounds: its p-value, its effect size, its statistic or its score.

A Finding carries one ``threshold``, but detectors compare different fields
with it: the quality rate checks and the significance tests report their
``alpha`` (a bound on the p-value) next to an odds ratio or a chi-square
statistic; the drift distances report their minimum effect size; the latency
and cost SLOs and PSI, Jensen-Shannon and the online detector bound the
statistic itself; the canary bounds its probability of being worse (``score``).
A chart draws a detector against its threshold on that field's scale.
``tests/test_console_scales.py`` checks every registered detector is listed
and that a shifted example crosses its threshold on that field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

ThresholdOf = Literal["p_value", "effect_size", "statistic", "score"]

#: Detector id -> the field its threshold bounds.
THRESHOLD_OF: dict[str, ThresholdOf] = {
    "drift.chi2.v1": "effect_size",  # Cramér's V against min_effect_size; the statistic is chi-square
    "drift.embedding_lsdd.v1": "p_value",  # alpha of the permutation test
    "drift.embedding_mmd.v1": "p_value",
    "drift.embedding_mmd_online.v1": "statistic",  # the calibrated threshold of its test statistic
    "drift.flag_rate.v1": "effect_size",
    "drift.jensen_shannon.v1": "statistic",  # the distance itself
    "drift.ks.v1": "effect_size",  # D, also its statistic
    "drift.psi.v1": "statistic",  # the index against drift_threshold
    "drift.script_mix.v1": "effect_size",
    "drift.text_length.v1": "effect_size",
    "drift.wasserstein.v1": "effect_size",  # the distance over the reference's scale; the statistic is raw
    "quality.canary.v1": "score",  # the probability the canary is worse, against min_probability
    "quality.correction_rate.v1": "p_value",  # alpha; the statistic is an odds ratio
    "quality.cost.v1": "p_value",  # alpha of the relative rise (its SLO checks: see SLO_CHECKS)
    "quality.empty_refusal.v1": "p_value",
    "quality.error_rate.v1": "p_value",
    "quality.latency.v1": "statistic",  # the observed percentile against its SLO (ms)
    "quality.negative_feedback.v1": "p_value",
    "quality.rating.v1": "p_value",
    "toxicity.detoxify.v1": "p_value",
    "toxicity.profanity.v1": "p_value",  # alpha; the statistic is the flagged rate
}

#: Checks (the ``decided_by`` of a detector with several) whose threshold is an SLO on the statistic.
SLO_CHECKS = frozenset({"tokens_slo", "cost_slo"})


def threshold_of(detector_id: str, measurements: Mapping[str, float]) -> ThresholdOf | None:
    """The field a detection's threshold bounds (None: a detector this table does not know)."""
    decider = next((k.removeprefix("decided_by.") for k in measurements if k.startswith("decided_by.")), None)
    if decider in SLO_CHECKS:
        return "statistic"
    return THRESHOLD_OF.get(detector_id)
