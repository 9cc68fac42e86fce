"""What users say: negative feedback, corrections and ratings, each against a reference window.

The two rates are Fisher's exact tests (:class:`~detectors.quality_checks.RateDetector`);
ratings a Mann-Whitney U test. By default only a change for the *worse* is
flagged (``alternative="worse"``): fewer thumbs-down after a release should
not page anyone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from detectors import frame
from detectors.base import Detector, DetectorConfig, DetectorNotReady, Example, Finding, verdict
from detectors.quality_checks import (
    NEGATIVE_KINDS,
    Alternative,
    Part,
    RateConfig,
    RateDetector,
    bernoulli_rows,
    combine,
    feedback_rows,
    first_request_ids,
    flag_values,
    number_values,
    part,
    too_few,
)
from detectors.registry import register


class NegativeFeedbackConfig(RateConfig):
    """Negative-feedback rate: thumbs-down, corrections and flags among those feedback kinds."""

    kinds: tuple[str, ...] = Field(NEGATIVE_KINDS, description="Feedback kinds the rate is taken over")


@register
class NegativeFeedbackDetector(RateDetector[NegativeFeedbackConfig]):
    """Share of negative feedback (thumbs-down, correction, flag) vs a reference window.

    >>> ex = NegativeFeedbackDetector.example()
    >>> d = NegativeFeedbackDetector(ex.config); d.fit(ex.reference)
    >>> d.detect(ex.current).verdict, d.detect(ex.shifted).verdict
    ('ok', 'drift')
    """

    id = "quality.negative_feedback.v1"
    Config = NegativeFeedbackConfig
    name = "negative_feedback"

    def _units(self, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        rows = feedback_rows(window, self.config.kinds)
        return rows, flag_values(rows, frame.NEGATIVE)

    @classmethod
    def example(cls, seed: int = 0) -> Example[NegativeFeedbackConfig]:
        """400 thumbs at 15% negative; the shifted window at 35%."""
        rng = np.random.default_rng(seed)

        def thumbs(rate: float, prefix: str) -> pd.DataFrame:
            return bernoulli_rows(400, rate, frame.NEGATIVE, rng, prefix, **{frame.FEEDBACK_KIND: "thumbs"})

        return Example(cls.Config(), thumbs(0.15, "ref"), thumbs(0.15, "cur"), thumbs(0.35, "shift"))


class CorrectionRateConfig(RateConfig):
    """Share of feedback events that are corrections."""

    min_effect_size: float = Field(0.03, ge=0, le=1, description="Smallest rate increase that is drift")


@register
class CorrectionRateDetector(RateDetector[CorrectionRateConfig]):
    """Share of feedback that is a correction (the user rewrote the reply) vs a reference window."""

    id = "quality.correction_rate.v1"
    Config = CorrectionRateConfig
    name = "correction_rate"

    def _units(self, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        rows = feedback_rows(window)
        if frame.CORRECTION not in rows.columns:
            return rows.iloc[0:0], np.zeros(0, dtype=bool)
        rows = rows[rows[frame.CORRECTION].notna()]
        return rows, flag_values(rows, frame.CORRECTION)

    @classmethod
    def example(cls, seed: int = 0) -> Example[CorrectionRateConfig]:
        """400 feedback events with 5% corrections; the shifted window with 15%."""
        rng = np.random.default_rng(seed)

        def events(rate: float, prefix: str) -> pd.DataFrame:
            rows = bernoulli_rows(400, rate, frame.CORRECTION, rng, prefix)
            rows[frame.NEGATIVE] = rows[frame.CORRECTION]
            return rows

        return Example(cls.Config(), events(0.05, "ref"), events(0.05, "cur"), events(0.15, "shift"))


# --------------------------------------------------------------------------
# Ratings
# --------------------------------------------------------------------------


class RatingConfig(DetectorConfig):
    """Mean rating compared with a reference window (Mann-Whitney U)."""

    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level")
    min_effect_size: float = Field(
        0.25, ge=0, description="Smallest drop of the mean rating (rating points) that is drift"
    )
    min_samples: int = Field(30, ge=1, description="Fewer ratings in either window: verdict ok")
    alternative: Alternative = Field("worse", description="'worse': only a drop; 'either': any change")


def rating_values(window: pd.DataFrame) -> np.ndarray:
    """The ratings of a window's feedback rows."""
    return number_values(feedback_rows(window), frame.RATING)


def _rating_part(
    detector_id: str,
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    *,
    alpha: float,
    min_effect_size: float,
    min_samples: int,
    alternative: Alternative,
) -> Part:
    """Mann-Whitney U on two samples of ratings; effect = reference mean minus current mean (a drop)."""
    skipped = too_few(detector_id, name, reference.size, current.size, min_samples)
    if skipped is not None:
        return skipped
    side = "less" if alternative == "worse" else "two-sided"
    test = stats.mannwhitneyu(current, reference, alternative=side)
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
    drop = float(reference.mean() - current.mean())
    pooled_sd = math.sqrt((reference.var(ddof=1) + current.var(ddof=1)) / 2)
    effect = drop if alternative == "worse" else abs(drop)
    return part(
        detector_id,
        name,
        reference.size,
        current.size,
        severity=-p_value,
        verdict=verdict(p_value, alpha, effect, min_effect_size),
        statistic=float(test.statistic),
        p_value=p_value,
        effect_size=drop,
        threshold=alpha,
        measurements={
            "reference_mean": float(reference.mean()),
            "current_mean": float(current.mean()),
            "standardised_drop": drop / pooled_sd if pooled_sd > 0 else 0.0,
            "reference_samples": float(reference.size),
            "current_samples": float(current.size),
        },
    )


def _low_rating_ids(window: pd.DataFrame, reference: np.ndarray) -> list[str]:
    """Requests rated below the reference median: the ones to read first."""
    rows = feedback_rows(window)
    if not reference.size or frame.RATING not in rows.columns:
        return []
    low = pd.to_numeric(rows[frame.RATING], errors="coerce") < float(np.median(reference))
    return first_request_ids(rows, low.to_numpy())


@register
class RatingDetector(Detector[RatingConfig]):
    """Mean rating vs a reference window: Mann-Whitney U, effect = drop of the mean in rating points.

    >>> ex = RatingDetector.example()
    >>> d = RatingDetector(ex.config); d.fit(ex.reference)
    >>> d.detect(ex.current).verdict, d.detect(ex.shifted).verdict
    ('ok', 'drift')
    """

    id = "quality.rating.v1"
    Config = RatingConfig

    def __init__(self, config: RatingConfig) -> None:
        super().__init__(config)
        self._reference: np.ndarray | None = None
        self._reference_rows = 0

    def fit(self, reference: pd.DataFrame) -> None:
        """Keep the reference ratings."""
        self._reference = rating_values(reference)
        self._reference_rows = len(reference)

    def detect(self, current: pd.DataFrame) -> Finding:
        """Test whether the current ratings are lower than the reference ones."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() before detect()")
        ratings = rating_values(current)
        check = _rating_part(self.id, "rating", self._reference, ratings, **self.config.model_dump())
        ids = _low_rating_ids(current, self._reference)
        return combine([check], self._reference_rows, len(current), ids)

    def state(self) -> dict[str, np.ndarray]:
        """The reference ratings as distinct values and their counts."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: nothing fitted yet")
        values, counts = np.unique(self._reference, return_counts=True)
        return {"values": values, "counts": counts, "rows": np.array([self._reference_rows])}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Rebuild the reference ratings from their values and counts."""
        self._reference = np.repeat(state["values"].astype(float), state["counts"])
        self._reference_rows = int(state["rows"][0])

    @classmethod
    def example(cls, seed: int = 0) -> Example[RatingConfig]:
        """300 ratings from 1 to 5 averaging about 3.9; the shifted window about 3.3."""
        rng = np.random.default_rng(seed)
        scale = np.arange(1, 6)

        def ratings(weights: list[int], prefix: str) -> pd.DataFrame:
            values = rng.choice(scale, size=300, p=np.array(weights) / sum(weights)).astype(float)
            return pd.DataFrame(
                {
                    frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(300)],
                    frame.FEEDBACK_KIND: "rating",
                    frame.NEGATIVE: False,
                    frame.RATING: values,
                }
            )

        good, worse = [1, 1, 2, 5, 4], [2, 3, 3, 4, 2]
        return Example(cls.Config(), ratings(good, "ref"), ratings(good, "cur"), ratings(worse, "shift"))
