"""Canary vs stable: is a new model version worse than the one it replaces, and how sure is that?

:class:`CanaryDetector` judges the canary's window (current) against the
stable version's (reference) on thumbs-down, errors and ratings, with
Beta-Binomial posteriors of the rates and a normal posterior of the mean
rating drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from detectors import frame
from detectors.base import Detector, DetectorConfig, DetectorNotReady, Example, Finding, Verdict
from detectors.feedback import rating_values
from detectors.quality_checks import (
    NEGATIVE_KINDS,
    Part,
    bernoulli_rows,
    combine,
    compare_proportions,
    feedback_rows,
    first_request_ids,
    flag_values,
    part,
    probability_rate_higher,
    request_rows,
    too_few,
)
from detectors.registry import register

# --------------------------------------------------------------------------
# Canary vs stable
# --------------------------------------------------------------------------


class CanaryConfig(DetectorConfig):
    """Canary (current window) vs stable (reference window) on feedback, errors and ratings."""

    min_probability: float = Field(
        0.95, gt=0.5, lt=1, description="Posterior probability that the canary is worse needed to flag it"
    )
    min_negative_rate_increase: float = Field(
        0.05, ge=0, le=1, description="Drift from this rise of thumbs-down"
    )
    min_error_rate_increase: float = Field(
        0.02, ge=0, le=1, description="Drift from this rise of the error rate"
    )
    min_rating_drop: float = Field(0.25, ge=0, description="Drift from this drop of the mean rating")
    min_samples: int = Field(30, ge=2, description="Fewer samples for a metric in either version: skipped")
    kinds: tuple[str, ...] = Field(NEGATIVE_KINDS, description="Feedback kinds of the negative rate")
    prior: tuple[float, float] = Field(
        (1.0, 1.0), description="Beta prior (successes, failures) of each rate"
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the reported confidence intervals")
    draws: int = Field(20_000, ge=1000, description="Posterior samples per rate")
    seed: int = Field(0, description="Seed of the posterior samples")


def _canary_verdict(probability: float, effect: float, config: CanaryConfig, min_effect: float) -> Verdict:
    """Drift when the canary is worse with high probability and by enough; warning when only probably."""
    if probability < config.min_probability:
        return "ok"
    return "drift" if effect >= min_effect else "warning"


def _canary_rate_check(
    detector_id: str,
    name: str,
    stable: tuple[int, int],
    canary: tuple[int, int],
    min_effect: float,
    config: CanaryConfig,
) -> Part:
    """One rate, canary vs stable: posterior probability, one-sided p-value, interval of the difference."""
    skipped = too_few(
        detector_id, name, stable[1], canary[1], config.min_samples, hits=(stable[0], canary[0])
    )
    if skipped is not None:
        return skipped
    c = compare_proportions(*stable, *canary, alternative="worse", confidence=config.confidence)
    probability = probability_rate_higher(
        *stable, *canary, prior=config.prior, draws=config.draws, seed=config.seed
    )
    return part(
        detector_id,
        name,
        stable[1],
        canary[1],
        severity=probability,
        verdict=_canary_verdict(probability, c.difference, config, min_effect),
        statistic=c.odds_ratio,
        p_value=c.p_value,
        effect_size=c.difference,
        score=probability,
        threshold=config.min_probability,
        measurements={
            "stable_rate": c.reference_rate,
            "canary_rate": c.current_rate,
            "prob_canary_worse": probability,
            "p_value": c.p_value,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "stable_samples": float(stable[1]),
            "canary_samples": float(canary[1]),
        },
    )


def _canary_rating_check(
    detector_id: str, stable: np.ndarray, canary: np.ndarray, config: CanaryConfig
) -> Part:
    """Ratings, canary vs stable: normal posterior of the drop of the mean, Mann-Whitney p-value."""
    skipped = too_few(detector_id, "rating", stable.size, canary.size, config.min_samples)
    if skipped is not None:
        return skipped
    drop = float(stable.mean() - canary.mean())
    se = math.sqrt(stable.var(ddof=1) / stable.size + canary.var(ddof=1) / canary.size)
    probability = float(stats.norm.cdf(drop / se)) if se > 0 else (1.0 if drop > 0 else 0.0)
    test = stats.mannwhitneyu(canary, stable, alternative="less")
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
    margin = float(stats.norm.ppf(0.5 + config.confidence / 2)) * se
    return part(
        detector_id,
        "rating",
        stable.size,
        canary.size,
        severity=probability,
        verdict=_canary_verdict(probability, drop, config, config.min_rating_drop),
        statistic=float(test.statistic),
        p_value=p_value,
        effect_size=drop,
        score=probability,
        threshold=config.min_probability,
        measurements={
            "stable_mean": float(stable.mean()),
            "canary_mean": float(canary.mean()),
            "prob_canary_worse": probability,
            "p_value": p_value,
            "ci_low": drop - margin,
            "ci_high": drop + margin,
            "stable_samples": float(stable.size),
            "canary_samples": float(canary.size),
        },
    )


@dataclass(frozen=True)
class _CanaryCounts:
    """What the canary detector needs of one version's window."""

    negative: tuple[int, int]
    errors: tuple[int, int]
    ratings: np.ndarray
    rows: int

    @classmethod
    def of(cls, window: pd.DataFrame, kinds: tuple[str, ...]) -> _CanaryCounts:
        """Count a window's negative feedback, errors and ratings."""
        negative = flag_values(feedback_rows(window, kinds), frame.NEGATIVE)
        errors = flag_values(request_rows(window, [frame.ERROR]), frame.ERROR)
        return cls(
            negative=(int(negative.sum()), negative.size),
            errors=(int(errors.sum()), errors.size),
            ratings=rating_values(window),
            rows=len(window),
        )


@register
class CanaryDetector(Detector[CanaryConfig]):
    """Is the canary (current window) worse than the stable version (reference window), and how sure?

    For the negative-feedback rate and the error rate it reports the posterior
    probability that the canary's rate is higher (Beta-Binomial), Fisher's
    one-sided p-value and an interval of the difference; for ratings (when
    both versions have enough) the same from a normal posterior of the mean
    drop and a Mann-Whitney test. The metric most likely worse decides: drift
    when the canary is worse with probability ``min_probability`` and by at
    least that metric's minimum effect, warning when it is only probably worse.
    ``score`` is that probability.

    >>> ex = CanaryDetector.example()
    >>> d = CanaryDetector(ex.config); d.fit(ex.reference)
    >>> d.detect(ex.current).verdict, d.detect(ex.shifted).verdict
    ('ok', 'drift')
    """

    id = "quality.canary.v1"
    Config = CanaryConfig
    compares_versions = True

    def __init__(self, config: CanaryConfig) -> None:
        super().__init__(config)
        self._stable: _CanaryCounts | None = None

    def fit(self, reference: pd.DataFrame) -> None:
        """Count the stable version's window."""
        self._stable = _CanaryCounts.of(reference, self.config.kinds)

    def detect(self, current: pd.DataFrame) -> Finding:
        """Compare the canary's window with the stable counts."""
        if self._stable is None:
            raise DetectorNotReady(f"{self.id}: call fit() before detect()")
        canary, config = _CanaryCounts.of(current, self.config.kinds), self.config
        checks = [
            _canary_rate_check(
                self.id,
                "negative_feedback",
                self._stable.negative,
                canary.negative,
                config.min_negative_rate_increase,
                config,
            ),
            _canary_rate_check(
                self.id,
                "error_rate",
                self._stable.errors,
                canary.errors,
                config.min_error_rate_increase,
                config,
            ),
        ]
        if self._stable.ratings.size and canary.ratings.size:
            checks.append(_canary_rating_check(self.id, self._stable.ratings, canary.ratings, config))
        bad = feedback_rows(current, config.kinds)
        negative = bad[frame.NEGATIVE].astype(bool) if len(bad) else pd.Series(dtype=bool)
        return combine(checks, self._stable.rows, len(current), first_request_ids(bad, negative))

    def state(self) -> dict[str, np.ndarray]:
        """The stable version's counts and ratings."""
        if self._stable is None:
            raise DetectorNotReady(f"{self.id}: nothing fitted yet")
        s = self._stable
        return {"counts": np.array([*s.negative, *s.errors, s.rows], dtype=np.int64), "ratings": s.ratings}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Become the detector fitted on the stable window that produced ``state``."""
        neg_hits, neg_n, err_hits, err_n, rows = (int(v) for v in state["counts"])
        self._stable = _CanaryCounts(
            (neg_hits, neg_n), (err_hits, err_n), state["ratings"].astype(float), rows
        )

    @classmethod
    def example(cls, seed: int = 0) -> Example[CanaryConfig]:
        """Stable at 20% thumbs-down and 1% errors; the shifted canary at 35% thumbs-down."""
        rng = np.random.default_rng(seed)

        def version(negative_rate: float, prefix: str) -> pd.DataFrame:
            rows = bernoulli_rows(400, negative_rate, frame.NEGATIVE, rng, prefix)
            rows[frame.FEEDBACK_KIND] = "thumbs"
            rows[frame.ERROR] = rng.random(400) < 0.01
            return rows

        return Example(cls.Config(), version(0.2, "stable"), version(0.2, "canary"), version(0.35, "bad"))
