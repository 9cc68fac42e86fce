"""Quality detectors: what users and the serving stack say about a model's replies.

Rates (negative feedback, corrections, errors, empty or refused replies) are
compared with a reference window by one shared helper,
:func:`compare_proportions` (Fisher's exact test and a Newcombe confidence
interval of the difference); ratings by a Mann-Whitney U test; latency
percentiles against SLOs by the exact binomial test for a quantile; tokens and
cost per request against a reference (Welch's t-test) and optional SLOs;
and :class:`CanaryDetector` says whether a canary model version is worse than
the stable one and how sure it is (Beta-Binomial posteriors).

By default only a change for the *worse* is flagged (``alternative="worse"``):
fewer thumbs-down after a release should not page anyone.

Windows may mix row kinds: feedback rows (:func:`detectors.frame.feedback_row`)
carry ``negative``/``rating``/``correction``; request rows carry ``error``,
``latency_ms``, tokens and cost. Request-level detectors count each
``request_id`` once, so a file of joined feedback (one row per feedback event,
with the request's serving facts copied in, see :func:`joined_row`) does not
count a request twice because it got a thumbs-down *and* a rating.

:func:`compare_versions` runs all of them per model version against a baseline
version; ``loopwatch detect quality`` is its command line.
"""

from __future__ import annotations

import gzip
import math
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import stats

from detectors import frame
from detectors.base import Detector, DetectorConfig, DetectorNotReady, Example, Finding, Verdict, verdict
from detectors.registry import register
from schemas.errors import LoopwatchError
from schemas.events import EnrichedInference, JoinedFeedback

Alternative = Literal["worse", "either"]

_SEVERITY: dict[Verdict, int] = {"ok": 0, "warning": 1, "drift": 2}
_MAX_REQUEST_IDS = 20
_BOOL_COLUMNS = (frame.NEGATIVE, frame.CORRECTION, frame.ERROR, frame.EMPTY_RESPONSE, frame.REFUSAL)
_NEGATIVE_KINDS = ("thumbs", "correction", "flag")


class QualityInputError(LoopwatchError):
    """A file given to ``loopwatch detect quality`` cannot be read as quality rows."""


# --------------------------------------------------------------------------
# Rows of a window
# --------------------------------------------------------------------------


def feedback_rows(window: pd.DataFrame, kinds: Iterable[str] | None = None) -> pd.DataFrame:
    """The feedback rows of a window (``negative`` present), optionally only some feedback kinds."""
    if frame.NEGATIVE not in window.columns:
        return window.iloc[0:0]
    rows = window[window[frame.NEGATIVE].notna()]
    if kinds is not None and frame.FEEDBACK_KIND in rows.columns:
        kind = rows[frame.FEEDBACK_KIND]
        rows = rows[kind.isna() | kind.isin(list(kinds))]
    return rows


def request_rows(window: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """One row per request that has a value in any of ``columns`` (first row of each request_id)."""
    present = [c for c in columns if c in window.columns]
    if not present:
        return window.iloc[0:0]
    rows = window[window[present].notna().any(axis=1)]
    if frame.REQUEST_ID in rows.columns:
        rows = rows.drop_duplicates(subset=frame.REQUEST_ID, keep="first")
    return rows


def _flags(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A boolean column as a numpy array, missing values dropped."""
    if column not in rows.columns:
        return np.zeros(0, dtype=bool)
    return rows[column].dropna().astype(bool).to_numpy()


def _numbers(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column as float64, missing values dropped."""
    if column not in rows.columns:
        return np.zeros(0)
    return pd.to_numeric(rows[column], errors="coerce").dropna().to_numpy(dtype=float)


def _request_ids(rows: pd.DataFrame, mask: np.ndarray | pd.Series) -> list[str]:
    """The first few request ids of the rows selected by ``mask``."""
    if frame.REQUEST_ID not in rows.columns:
        return []
    return [str(r) for r in rows.loc[np.asarray(mask, dtype=bool), frame.REQUEST_ID].head(_MAX_REQUEST_IDS)]


# --------------------------------------------------------------------------
# Shared maths
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProportionComparison:
    """Two rates compared: ``difference`` is current minus reference, the CI is Newcombe's."""

    reference_rate: float
    current_rate: float
    difference: float
    odds_ratio: float
    p_value: float
    ci_low: float
    ci_high: float


def compare_proportions(
    reference_hits: int,
    reference_n: int,
    current_hits: int,
    current_n: int,
    *,
    alternative: Alternative = "worse",
    confidence: float = 0.95,
) -> ProportionComparison:
    """Is the current rate higher (``worse``) or different (``either``) than the reference rate?

    Fisher's exact test, so small windows and zero counts are handled exactly;
    the interval of the difference is Newcombe's hybrid score interval built
    from the two Wilson intervals; the odds ratio has 0.5 added to every cell
    so it stays finite.

    >>> c = compare_proportions(10, 100, 30, 100)
    >>> round(c.difference, 2), c.p_value < 0.001, round(c.ci_low, 3), round(c.ci_high, 3)
    (0.2, True, 0.09, 0.306)
    """
    if min(reference_n, current_n) < 1:
        raise ValueError("both windows need at least one sample")
    table = [[current_hits, current_n - current_hits], [reference_hits, reference_n - reference_hits]]
    side = "greater" if alternative == "worse" else "two-sided"
    p_value = float(stats.fisher_exact(table, alternative=side).pvalue)
    reference_rate, current_rate = reference_hits / reference_n, current_hits / current_n
    ref_ci = stats.binomtest(reference_hits, reference_n).proportion_ci(confidence, method="wilson")
    cur_ci = stats.binomtest(current_hits, current_n).proportion_ci(confidence, method="wilson")
    difference = current_rate - reference_rate
    odds_ratio = ((current_hits + 0.5) * (reference_n - reference_hits + 0.5)) / (
        (current_n - current_hits + 0.5) * (reference_hits + 0.5)
    )
    return ProportionComparison(
        reference_rate=reference_rate,
        current_rate=current_rate,
        difference=difference,
        odds_ratio=odds_ratio,
        p_value=p_value,
        ci_low=difference - math.hypot(current_rate - cur_ci.low, ref_ci.high - reference_rate),
        ci_high=difference + math.hypot(cur_ci.high - current_rate, reference_rate - ref_ci.low),
    )


def probability_rate_higher(
    reference_hits: int,
    reference_n: int,
    current_hits: int,
    current_n: int,
    *,
    prior: tuple[float, float] = (1.0, 1.0),
    draws: int = 20_000,
    seed: int = 0,
) -> float:
    """Posterior probability that the current rate exceeds the reference rate.

    Each rate gets a Beta(prior + hits, prior + misses) posterior; the
    probability is estimated from ``draws`` seeded samples of each.

    >>> round(probability_rate_higher(10, 100, 30, 100), 3)
    1.0
    """
    rng = np.random.default_rng(seed)
    a, b = prior
    reference = rng.beta(a + reference_hits, b + reference_n - reference_hits, size=draws)
    current = rng.beta(a + current_hits, b + current_n - current_hits, size=draws)
    return float(np.mean(current > reference))


@dataclass(frozen=True)
class Check:
    """One named comparison inside a detector; the worst check of a detector becomes its Finding.

    ``severity`` breaks ties between checks with the same verdict (higher is worse).
    """

    name: str
    verdict: Verdict
    statistic: float | None = None
    p_value: float | None = None
    effect_size: float | None = None
    score: float | None = None
    threshold: float | None = None
    severity: float = 0.0
    measurements: dict[str, float] = field(default_factory=dict)


def _worst(checks: list[Check]) -> Check:
    """The check that decides a detector's verdict."""
    return max(checks, key=lambda c: (_SEVERITY[c.verdict], c.severity))


def _finding(
    detector_id: str,
    checks: list[Check],
    reference_size: int,
    current_size: int,
    request_ids: list[str] | None = None,
) -> Finding:
    """A Finding from the worst check; every check's measurements are kept, prefixed by its name."""
    measurements: dict[str, float] = {}
    for check in checks:
        for name, value in check.measurements.items():
            measurements[f"{check.name}.{name}" if len(checks) > 1 else name] = value
    worst = _worst(checks)
    if len(checks) > 1:
        measurements[f"decided_by.{worst.name}"] = 1.0
    return Finding(
        detector_id=detector_id,
        verdict=worst.verdict,
        reference_size=reference_size,
        current_size=current_size,
        statistic=worst.statistic,
        p_value=worst.p_value,
        score=worst.score,
        threshold=worst.threshold,
        effect_size=worst.effect_size,
        request_ids=(request_ids or []) if worst.verdict != "ok" else [],
        measurements=measurements,
    )


def _too_few(name: str, reference_samples: int, current_samples: int, min_samples: int) -> Check | None:
    """An ``ok`` check that says why nothing was tested, or None when there are enough samples."""
    if min(reference_samples, current_samples) >= min_samples:
        return None
    return Check(
        name=name,
        verdict="ok",
        measurements={
            "too_few_samples": 1.0,
            "min_samples": float(min_samples),
            "reference_samples": float(reference_samples),
            "current_samples": float(current_samples),
        },
    )


def _rate_check(
    name: str,
    reference: tuple[int, int],
    current: tuple[int, int],
    *,
    alpha: float,
    min_effect_size: float,
    min_samples: int,
    alternative: Alternative,
) -> Check:
    """A proportion test as a Check: effect = rate difference (absolute for ``either``)."""
    skipped = _too_few(name, reference[1], current[1], min_samples)
    if skipped is not None:
        return skipped
    c = compare_proportions(*reference, *current, alternative=alternative)
    effect = c.difference if alternative == "worse" else abs(c.difference)
    return Check(
        name=name,
        verdict=verdict(c.p_value, alpha, effect, min_effect_size),
        statistic=c.odds_ratio,
        p_value=c.p_value,
        effect_size=c.difference,
        threshold=alpha,
        severity=-c.p_value,
        measurements={
            "reference_rate": c.reference_rate,
            "current_rate": c.current_rate,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "reference_samples": float(reference[1]),
            "current_samples": float(current[1]),
        },
    )


# --------------------------------------------------------------------------
# Rates against a reference window
# --------------------------------------------------------------------------


class RateConfig(DetectorConfig):
    """A rate compared with a reference window by Fisher's exact test."""

    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level")
    min_effect_size: float = Field(
        0.05, ge=0, le=1, description="Smallest rate increase (absolute) that counts as drift"
    )
    min_samples: int = Field(30, ge=1, description="Fewer samples in either window: verdict ok")
    alternative: Alternative = Field("worse", description="'worse': only an increase; 'either': any change")


R = TypeVar("R", bound=RateConfig)


class _RateDetector(Detector[R]):
    """Shared body of the rate detectors: subclasses say which rows count and which are hits."""

    name: ClassVar[str]

    def __init__(self, config: R) -> None:
        super().__init__(config)
        self._reference: np.ndarray | None = None  # [hits, samples, window rows]

    @abstractmethod
    def _units(self, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The rows that are counted and, for each, whether it is a hit (a bad outcome)."""

    def _extra(self, rows: pd.DataFrame) -> dict[str, float]:
        """More measurements of the current window (per-part rates)."""
        return {}

    def fit(self, reference: pd.DataFrame) -> None:
        """Count the reference window's hits."""
        _, hits = self._units(reference)
        self._reference = np.array([int(hits.sum()), hits.size, len(reference)], dtype=np.int64)

    def detect(self, current: pd.DataFrame) -> Finding:
        """Compare the current window's rate with the reference rate."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() before detect()")
        rows, hits = self._units(current)
        ref_hits, ref_n, ref_rows = (int(v) for v in self._reference)
        check = _rate_check(
            self.name,
            (ref_hits, ref_n),
            (int(hits.sum()), hits.size),
            alpha=self.config.alpha,
            min_effect_size=self.config.min_effect_size,
            min_samples=self.config.min_samples,
            alternative=self.config.alternative,
        )
        if "too_few_samples" not in check.measurements:
            check.measurements.update(self._extra(rows))
        return _finding(self.id, [check], ref_rows, len(current), _request_ids(rows, hits))

    def state(self) -> dict[str, np.ndarray]:
        """The reference counts."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: nothing fitted yet")
        return {"reference": self._reference}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Take the reference counts from ``state``."""
        self._reference = np.asarray(state["reference"], dtype=np.int64)


def _bernoulli_rows(
    n: int, rate: float, column: str, rng: np.random.Generator, prefix: str, **columns: Any
) -> pd.DataFrame:
    """A small synthetic window for examples: ``column`` true with probability ``rate``."""
    return pd.DataFrame(
        {
            frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(n)],
            column: rng.random(n) < rate,
            **columns,
        }
    )


class NegativeFeedbackConfig(RateConfig):
    """Negative-feedback rate: thumbs-down, corrections and flags among those feedback kinds."""

    kinds: tuple[str, ...] = Field(_NEGATIVE_KINDS, description="Feedback kinds the rate is taken over")


@register
class NegativeFeedbackDetector(_RateDetector[NegativeFeedbackConfig]):
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
        return rows, _flags(rows, frame.NEGATIVE)

    @classmethod
    def example(cls, seed: int = 0) -> Example[NegativeFeedbackConfig]:
        """400 thumbs at 15% negative; the shifted window at 35%."""
        rng = np.random.default_rng(seed)

        def thumbs(rate: float, prefix: str) -> pd.DataFrame:
            return _bernoulli_rows(400, rate, frame.NEGATIVE, rng, prefix, **{frame.FEEDBACK_KIND: "thumbs"})

        return Example(cls.Config(), thumbs(0.15, "ref"), thumbs(0.15, "cur"), thumbs(0.35, "shift"))


class CorrectionRateConfig(RateConfig):
    """Share of feedback events that are corrections."""

    min_effect_size: float = Field(0.03, ge=0, le=1, description="Smallest rate increase that is drift")


@register
class CorrectionRateDetector(_RateDetector[CorrectionRateConfig]):
    """Share of feedback that is a correction (the user rewrote the reply) vs a reference window."""

    id = "quality.correction_rate.v1"
    Config = CorrectionRateConfig
    name = "correction_rate"

    def _units(self, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        rows = feedback_rows(window)
        if frame.CORRECTION not in rows.columns:
            return rows.iloc[0:0], np.zeros(0, dtype=bool)
        rows = rows[rows[frame.CORRECTION].notna()]
        return rows, _flags(rows, frame.CORRECTION)

    @classmethod
    def example(cls, seed: int = 0) -> Example[CorrectionRateConfig]:
        """400 feedback events with 5% corrections; the shifted window with 15%."""
        rng = np.random.default_rng(seed)

        def events(rate: float, prefix: str) -> pd.DataFrame:
            rows = _bernoulli_rows(400, rate, frame.CORRECTION, rng, prefix)
            rows[frame.NEGATIVE] = rows[frame.CORRECTION]
            return rows

        return Example(cls.Config(), events(0.05, "ref"), events(0.05, "cur"), events(0.15, "shift"))


class ErrorRateConfig(RateConfig):
    """Share of requests that failed."""

    min_effect_size: float = Field(0.02, ge=0, le=1, description="Smallest rate increase that is drift")


@register
class ErrorRateDetector(_RateDetector[ErrorRateConfig]):
    """Share of requests with ``status == "error"`` vs a reference window."""

    id = "quality.error_rate.v1"
    Config = ErrorRateConfig
    name = "error_rate"

    def _units(self, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        rows = request_rows(window, [frame.ERROR])
        return rows, _flags(rows, frame.ERROR)

    @classmethod
    def example(cls, seed: int = 0) -> Example[ErrorRateConfig]:
        """500 requests with 1% errors; the shifted window with 6%."""
        rng = np.random.default_rng(seed)
        return Example(
            cls.Config(),
            _bernoulli_rows(500, 0.01, frame.ERROR, rng, "ref"),
            _bernoulli_rows(500, 0.01, frame.ERROR, rng, "cur"),
            _bernoulli_rows(500, 0.06, frame.ERROR, rng, "shift"),
        )


class EmptyRefusalConfig(RateConfig):
    """Share of replies that are empty or a refusal."""

    min_effect_size: float = Field(0.03, ge=0, le=1, description="Smallest rate increase that is drift")


@register
class EmptyRefusalDetector(_RateDetector[EmptyRefusalConfig]):
    """Share of replies that are empty or refusals (ingest's descriptors) vs a reference window."""

    id = "quality.empty_refusal.v1"
    Config = EmptyRefusalConfig
    name = "empty_refusal"

    def _units(self, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        rows = request_rows(window, [frame.EMPTY_RESPONSE, frame.REFUSAL])
        empty = rows.get(frame.EMPTY_RESPONSE, pd.Series(False, index=rows.index))
        refusal = rows.get(frame.REFUSAL, pd.Series(False, index=rows.index))
        # eq(True): a missing flag (None in an object column) is "not empty", without a downcast warning.
        return rows, (empty.eq(True) | refusal.eq(True)).to_numpy()

    def _extra(self, rows: pd.DataFrame) -> dict[str, float]:
        """The two parts of the rate, apart."""
        extra = {}
        for column in (frame.EMPTY_RESPONSE, frame.REFUSAL):
            values = _flags(rows, column)
            if values.size:
                extra[f"{column}_rate"] = float(values.mean())
        return extra

    @classmethod
    def example(cls, seed: int = 0) -> Example[EmptyRefusalConfig]:
        """500 replies with 2% refusals; the shifted window with 10% refusals."""
        rng = np.random.default_rng(seed)

        def replies(rate: float, prefix: str) -> pd.DataFrame:
            return _bernoulli_rows(500, rate, frame.REFUSAL, rng, prefix, **{frame.EMPTY_RESPONSE: False})

        return Example(cls.Config(), replies(0.02, "ref"), replies(0.02, "cur"), replies(0.10, "shift"))


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


def _rating_values(window: pd.DataFrame) -> np.ndarray:
    """The ratings of a window's feedback rows."""
    return _numbers(feedback_rows(window), frame.RATING)


def _rating_check(
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    *,
    alpha: float,
    min_effect_size: float,
    min_samples: int,
    alternative: Alternative,
) -> Check:
    """Mann-Whitney U on two samples of ratings; effect = reference mean minus current mean (a drop)."""
    skipped = _too_few(name, reference.size, current.size, min_samples)
    if skipped is not None:
        return skipped
    side = "less" if alternative == "worse" else "two-sided"
    test = stats.mannwhitneyu(current, reference, alternative=side)
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
    drop = float(reference.mean() - current.mean())
    pooled_sd = math.sqrt((reference.var(ddof=1) + current.var(ddof=1)) / 2)
    effect = drop if alternative == "worse" else abs(drop)
    return Check(
        name=name,
        verdict=verdict(p_value, alpha, effect, min_effect_size),
        statistic=float(test.statistic),
        p_value=p_value,
        effect_size=drop,
        threshold=alpha,
        severity=-p_value,
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
    return _request_ids(rows, low.to_numpy())


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
        self._reference = _rating_values(reference)
        self._reference_rows = len(reference)

    def detect(self, current: pd.DataFrame) -> Finding:
        """Test whether the current ratings are lower than the reference ones."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() before detect()")
        ratings = _rating_values(current)
        check = _rating_check("rating", self._reference, ratings, **self.config.model_dump())
        ids = _low_rating_ids(current, self._reference)
        return _finding(self.id, [check], self._reference_rows, len(current), ids)

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


# --------------------------------------------------------------------------
# Latency against SLOs
# --------------------------------------------------------------------------


class LatencyConfig(DetectorConfig):
    """Latency percentiles against SLOs; leave an SLO empty to not check that percentile."""

    slo_p50_ms: float | None = Field(None, gt=0, description="SLO of the median latency")
    slo_p95_ms: float | None = Field(2000.0, gt=0, description="SLO of the 95th percentile")
    slo_p99_ms: float | None = Field(5000.0, gt=0, description="SLO of the 99th percentile")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level, split over the checked SLOs")
    min_excess: float = Field(
        0.1, ge=0, description="Relative excess over the SLO (0.1 = 10%) from which a breach is drift"
    )
    min_samples: int = Field(30, ge=1, description="Fewer requests: verdict ok")

    def slos(self) -> dict[float, float]:
        """The configured SLOs by quantile (0.5, 0.95, 0.99)."""
        pairs = ((0.5, self.slo_p50_ms), (0.95, self.slo_p95_ms), (0.99, self.slo_p99_ms))
        return {q: slo for q, slo in pairs if slo is not None}


def quantile_above(values: np.ndarray, quantile: float, limit: float) -> float:
    """p-value of "the ``quantile`` of the distribution is above ``limit``" (exact binomial test).

    If the quantile were at most ``limit``, at most a share ``1 - quantile`` of
    requests would be slower than ``limit``; the p-value is the chance of seeing
    as many slow requests as observed under that share. No resampling, so it is
    exact for small windows and deterministic.

    >>> quantile_above(np.arange(100.0), 0.95, 80.0) < 1e-5
    True
    >>> quantile_above(np.arange(100.0), 0.95, 96.0) > 0.5
    True
    """
    slower = int(np.sum(values > limit))
    return float(stats.binomtest(slower, values.size, 1 - quantile, alternative="greater").pvalue)


@register
class LatencyDetector(Detector[LatencyConfig]):
    """Latency p50/p95/p99 against SLOs, judged on the current window alone.

    A percentile counts as breached only when the exact binomial quantile test
    (:func:`quantile_above`) says it is above its SLO at ``alpha`` (Bonferroni
    split over the checked percentiles), so a small window does not page on a
    few slow requests: drift when it is also at least ``min_excess`` above the
    SLO, warning when only slightly above.

    >>> ex = LatencyDetector.example()
    >>> d = LatencyDetector(ex.config); d.fit(ex.reference)
    >>> d.detect(ex.current).verdict, d.detect(ex.shifted).verdict
    ('ok', 'drift')
    """

    id = "quality.latency.v1"
    Config = LatencyConfig
    needs_reference = False

    def fit(self, reference: pd.DataFrame) -> None:
        """Nothing to learn: the SLOs are the reference."""

    def detect(self, current: pd.DataFrame) -> Finding:
        """Check each configured percentile of the current window against its SLO."""
        rows = request_rows(current, [frame.LATENCY_MS])
        latency = _numbers(rows, frame.LATENCY_MS)
        slos = self.config.slos()
        if latency.size < self.config.min_samples or not slos:
            return _finding(self.id, [self._not_checked(latency.size)], 0, len(current))
        alpha = self.config.alpha / len(slos)
        checks = [self._check(latency, q, slo, alpha) for q, slo in slos.items()]
        slowest = rows[frame.LATENCY_MS] > min(slos.values())
        return _finding(self.id, checks, 0, len(current), _request_ids(rows, slowest.fillna(False)))

    def _not_checked(self, samples: int) -> Check:
        """An ok check saying why no SLO was tested."""
        if not self.config.slos():
            return Check("latency", "ok", measurements={"no_slo_configured": 1.0})
        return Check(
            "latency",
            "ok",
            measurements={
                "too_few_samples": 1.0,
                "min_samples": float(self.config.min_samples),
                "current_samples": float(samples),
            },
        )

    def _check(self, latency: np.ndarray, quantile: float, slo: float, alpha: float) -> Check:
        observed = float(np.quantile(latency, quantile))
        p_value = quantile_above(latency, quantile, slo)
        excess = observed / slo - 1
        return Check(
            name=f"p{round(quantile * 100)}",
            verdict=verdict(p_value, alpha, excess, self.config.min_excess),
            statistic=observed,
            p_value=p_value,
            effect_size=excess,
            threshold=slo,
            severity=excess,
            measurements={
                "observed_ms": observed,
                "slo_ms": slo,
                "share_above_slo": float(np.mean(latency > slo)),
            },
        )

    def state(self) -> dict[str, np.ndarray]:
        """Nothing fitted: an empty state."""
        return {}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Nothing to restore."""

    @classmethod
    def example(cls, seed: int = 0) -> Example[LatencyConfig]:
        """400 log-normal latencies around 600 ms (p95 ~1.1 s); the shifted window about 2.5x slower."""
        rng = np.random.default_rng(seed)

        def window(median_ms: float, prefix: str) -> pd.DataFrame:
            return pd.DataFrame(
                {
                    frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(400)],
                    frame.LATENCY_MS: rng.lognormal(math.log(median_ms), 0.4, size=400),
                }
            )

        return Example(cls.Config(), window(600, "ref"), window(600, "cur"), window(1500, "shift"))


# --------------------------------------------------------------------------
# Tokens and cost
# --------------------------------------------------------------------------


class CostConfig(DetectorConfig):
    """Tokens and cost per request against the reference window and optional SLOs."""

    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level of each check")
    min_relative_increase: float = Field(
        0.2, ge=0, description="Smallest relative rise of the mean per request (0.2 = 20%) that is drift"
    )
    max_tokens_per_request: float | None = Field(None, gt=0, description="SLO of the mean tokens per request")
    max_cost_per_request_usd: float | None = Field(None, gt=0, description="SLO of the mean cost per request")
    min_samples: int = Field(30, ge=2, description="Fewer requests in either window: verdict ok")


def _tokens_and_cost(window: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Total tokens and cost of each request of a window (each request once)."""
    token_columns = [c for c in (frame.PROMPT_TOKENS, frame.COMPLETION_TOKENS) if c in window.columns]
    rows = request_rows(window, token_columns)
    tokens = (
        rows[token_columns].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=1).dropna()
        if token_columns
        else pd.Series(dtype=float)
    )
    cost = _numbers(request_rows(window, [frame.COST_USD]), frame.COST_USD)
    return tokens.to_numpy(dtype=float), cost


def _summary(values: np.ndarray) -> np.ndarray:
    """[mean, standard deviation, count]: all Welch's test needs of a reference sample."""
    if values.size < 2:
        return np.array([float(values.mean()) if values.size else 0.0, 0.0, float(values.size)])
    return np.array([values.mean(), values.std(ddof=1), values.size], dtype=float)


def _mean_rise_check(name: str, reference: np.ndarray, current: np.ndarray, config: CostConfig) -> Check:
    """Welch's t-test: is the current mean per request higher than the reference mean?"""
    ref_mean, ref_sd, ref_n = (float(v) for v in reference)
    skipped = _too_few(name, int(ref_n), current.size, config.min_samples)
    if skipped is not None:
        return skipped
    cur_mean, cur_sd = float(current.mean()), float(current.std(ddof=1))
    test = stats.ttest_ind_from_stats(
        cur_mean, cur_sd, current.size, ref_mean, ref_sd, int(ref_n), equal_var=False, alternative="greater"
    )
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else (0.0 if cur_mean > ref_mean else 1.0)
    rise = cur_mean / ref_mean - 1 if ref_mean > 0 else (1.0 if cur_mean > 0 else 0.0)
    return Check(
        name=name,
        verdict=verdict(p_value, config.alpha, rise, config.min_relative_increase),
        statistic=float(test.statistic) if np.isfinite(test.statistic) else None,
        p_value=p_value,
        effect_size=rise,
        threshold=config.alpha,
        severity=-p_value,
        measurements={
            "reference_mean": ref_mean,
            "current_mean": cur_mean,
            "current_samples": float(current.size),
        },
    )


def _slo_check(name: str, current: np.ndarray, slo: float, config: CostConfig) -> Check:
    """One-sample t-test: is the mean per request above its SLO? Drift when 10% or more above."""
    skipped = _too_few(name, config.min_samples, current.size, config.min_samples)
    if skipped is not None:
        return skipped
    test = stats.ttest_1samp(current, slo, alternative="greater")
    mean = float(current.mean())
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else (0.0 if mean > slo else 1.0)
    excess = mean / slo - 1
    return Check(
        name=name,
        verdict=verdict(p_value, config.alpha, excess, 0.1),
        statistic=mean,
        p_value=p_value,
        effect_size=excess,
        threshold=slo,
        severity=excess,
        measurements={"current_mean": mean, "slo": slo},
    )


@register
class CostDetector(Detector[CostConfig]):
    """Mean tokens and cost per request vs the reference window (Welch's t-test) and optional SLOs.

    >>> ex = CostDetector.example()
    >>> d = CostDetector(ex.config); d.fit(ex.reference)
    >>> d.detect(ex.current).verdict, d.detect(ex.shifted).verdict
    ('ok', 'drift')
    """

    id = "quality.cost.v1"
    Config = CostConfig

    def __init__(self, config: CostConfig) -> None:
        super().__init__(config)
        self._reference: np.ndarray | None = None  # rows: tokens, cost; columns: mean, sd, n
        self._reference_rows = 0

    def fit(self, reference: pd.DataFrame) -> None:
        """Summarise the reference window's tokens and cost per request."""
        tokens, cost = _tokens_and_cost(reference)
        self._reference = np.vstack([_summary(tokens), _summary(cost)])
        self._reference_rows = len(reference)

    def detect(self, current: pd.DataFrame) -> Finding:
        """Compare tokens and cost per request with the reference and with the SLOs."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() before detect()")
        tokens, cost = _tokens_and_cost(current)
        checks = [
            _mean_rise_check("tokens", self._reference[0], tokens, self.config),
            _mean_rise_check("cost", self._reference[1], cost, self.config),
        ]
        if self.config.max_tokens_per_request is not None:
            checks.append(_slo_check("tokens_slo", tokens, self.config.max_tokens_per_request, self.config))
        if self.config.max_cost_per_request_usd is not None:
            checks.append(_slo_check("cost_slo", cost, self.config.max_cost_per_request_usd, self.config))
        return _finding(self.id, checks, self._reference_rows, len(current))

    def state(self) -> dict[str, np.ndarray]:
        """Mean, standard deviation and count of the reference tokens and cost."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: nothing fitted yet")
        return {"reference": self._reference, "rows": np.array([self._reference_rows])}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Take the reference summaries from ``state``."""
        self._reference = np.asarray(state["reference"], dtype=float)
        self._reference_rows = int(state["rows"][0])

    @classmethod
    def example(cls, seed: int = 0) -> Example[CostConfig]:
        """300 requests of ~500 tokens; the shifted window's replies are twice as long."""
        rng = np.random.default_rng(seed)

        def window(completion_mean: float, prefix: str) -> pd.DataFrame:
            prompt = rng.poisson(200, size=300)
            completion = rng.poisson(completion_mean, size=300)
            return pd.DataFrame(
                {
                    frame.REQUEST_ID: [f"{prefix}-{i}" for i in range(300)],
                    frame.PROMPT_TOKENS: prompt,
                    frame.COMPLETION_TOKENS: completion,
                    frame.COST_USD: (prompt * 0.15 + completion * 0.6) / 1e6,
                }
            )

        return Example(cls.Config(), window(300, "ref"), window(300, "cur"), window(600, "shift"))


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
    kinds: tuple[str, ...] = Field(_NEGATIVE_KINDS, description="Feedback kinds of the negative rate")
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
    name: str, stable: tuple[int, int], canary: tuple[int, int], min_effect: float, config: CanaryConfig
) -> Check:
    """One rate, canary vs stable: posterior probability, one-sided p-value, interval of the difference."""
    skipped = _too_few(name, stable[1], canary[1], config.min_samples)
    if skipped is not None:
        return skipped
    c = compare_proportions(*stable, *canary, alternative="worse", confidence=config.confidence)
    probability = probability_rate_higher(
        *stable, *canary, prior=config.prior, draws=config.draws, seed=config.seed
    )
    return Check(
        name=name,
        verdict=_canary_verdict(probability, c.difference, config, min_effect),
        statistic=c.odds_ratio,
        p_value=c.p_value,
        effect_size=c.difference,
        score=probability,
        threshold=config.min_probability,
        severity=probability,
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


def _canary_rating_check(stable: np.ndarray, canary: np.ndarray, config: CanaryConfig) -> Check:
    """Ratings, canary vs stable: normal posterior of the drop of the mean, Mann-Whitney p-value."""
    skipped = _too_few("rating", stable.size, canary.size, config.min_samples)
    if skipped is not None:
        return skipped
    drop = float(stable.mean() - canary.mean())
    se = math.sqrt(stable.var(ddof=1) / stable.size + canary.var(ddof=1) / canary.size)
    probability = float(stats.norm.cdf(drop / se)) if se > 0 else (1.0 if drop > 0 else 0.0)
    test = stats.mannwhitneyu(canary, stable, alternative="less")
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
    margin = float(stats.norm.ppf(0.5 + config.confidence / 2)) * se
    return Check(
        name="rating",
        verdict=_canary_verdict(probability, drop, config, config.min_rating_drop),
        statistic=float(test.statistic),
        p_value=p_value,
        effect_size=drop,
        score=probability,
        threshold=config.min_probability,
        severity=probability,
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
        negative = _flags(feedback_rows(window, kinds), frame.NEGATIVE)
        errors = _flags(request_rows(window, [frame.ERROR]), frame.ERROR)
        return cls(
            negative=(int(negative.sum()), negative.size),
            errors=(int(errors.sum()), errors.size),
            ratings=_rating_values(window),
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
                "negative_feedback",
                self._stable.negative,
                canary.negative,
                config.min_negative_rate_increase,
                config,
            ),
            _canary_rate_check(
                "error_rate", self._stable.errors, canary.errors, config.min_error_rate_increase, config
            ),
        ]
        if self._stable.ratings.size and canary.ratings.size:
            checks.append(_canary_rating_check(self._stable.ratings, canary.ratings, config))
        bad = feedback_rows(current, config.kinds)
        negative = bad[frame.NEGATIVE].astype(bool) if len(bad) else pd.Series(dtype=bool)
        return _finding(self.id, checks, self._stable.rows, len(current), _request_ids(bad, negative))

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
            rows = _bernoulli_rows(400, negative_rate, frame.NEGATIVE, rng, prefix)
            rows[frame.FEEDBACK_KIND] = "thumbs"
            rows[frame.ERROR] = rng.random(400) < 0.01
            return rows

        return Example(cls.Config(), version(0.2, "stable"), version(0.2, "canary"), version(0.35, "bad"))


# --------------------------------------------------------------------------
# Files of joined feedback, and one report per model version
# --------------------------------------------------------------------------


def joined_row(joined: JoinedFeedback) -> dict[str, Any]:
    """One window row for one joined feedback event: the feedback plus its request's serving facts."""
    enriched = EnrichedInference(
        inference=joined.inference,
        descriptors=frame.describe(joined.inference),
        source=joined.inference_source,
    )
    return {**frame.inference_row(enriched), **frame.feedback_row(joined)}


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows from a JSONL file of JoinedFeedback events; a bad line stops with its number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield joined_row(JoinedFeedback.model_validate_json(line))
            except ValidationError as exc:
                problem = exc.errors()[0]
                where = ".".join(str(p) for p in problem["loc"]) or "line"
                raise QualityInputError(
                    f"{path}:{number}: not a JoinedFeedback event ({where}: {problem['msg']})"
                ) from exc


def _as_bool(value: Any) -> bool | None:
    """A flag read from a file: bools, 0/1 and true/false/yes/no; missing stays missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_ | int | np.integer | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "t", "1.0"):
        return True
    if text in ("false", "0", "no", "f", "0.0"):
        return False
    raise ValueError(f"not a true/false value: {value!r}")


def load_quality_window(path: Path) -> pd.DataFrame:
    """Rows from a JSONL(.gz) file of JoinedFeedback events, or a CSV/Parquet file with the frame columns.

    Raises :class:`QualityInputError` with a reason when the file cannot be used.
    """
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            window = pd.DataFrame(list(_jsonl_rows(path)))
        elif name.endswith(".csv"):
            window = pd.read_csv(path)
        elif name.endswith(".parquet"):
            window = pd.read_parquet(path)
        else:
            raise QualityInputError(f"{path}: expected a .jsonl, .jsonl.gz, .csv or .parquet file")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QualityInputError(f"{path}: cannot be read ({exc})") from exc
    if window.empty:
        raise QualityInputError(f"{path}: no rows")
    if frame.MODEL_VERSION not in window.columns:
        raise QualityInputError(f"{path}: no {frame.MODEL_VERSION!r} column to group the rows by")
    for column in _BOOL_COLUMNS:
        if column in window.columns:
            try:
                window[column] = window[column].map(_as_bool).astype(object)
            except ValueError as exc:
                raise QualityInputError(f"{path}: column {column!r}: {exc}") from exc
    window[frame.MODEL_VERSION] = window[frame.MODEL_VERSION].astype(str)
    return window


class VersionReport(BaseModel):
    """Every quality detector's finding for one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    rows: int
    requests: int
    is_baseline: bool
    findings: dict[str, Finding]


class QualityReport(BaseModel):
    """Per-version quality against a baseline version, and the versions that are worse."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_version: str
    versions: list[VersionReport]
    worse: list[str] = Field(description="Versions with drift against the baseline")
    warnings: list[str] = Field(description="Versions with only warnings against the baseline")
    slo_breaches: list[str] = Field(description="Versions (baseline included) with latency drift")


# Detectors compared with the baseline version, in report order; latency runs on every version alone.
COMPARED = (
    CanaryDetector,
    NegativeFeedbackDetector,
    RatingDetector,
    CorrectionRateDetector,
    ErrorRateDetector,
    EmptyRefusalDetector,
    CostDetector,
)


def compare_versions(
    window: pd.DataFrame, baseline_version: str | None = None, latency: LatencyConfig | None = None
) -> QualityReport:
    """Run the quality detectors on every model version of ``window`` against a baseline version.

    The baseline is ``baseline_version`` or else the version with the most
    requests. Raises :class:`QualityInputError` for an unknown baseline.
    """
    versions = window.groupby(frame.MODEL_VERSION, sort=True)
    traffic = {str(v): _requests(rows) for v, rows in versions}
    baseline = baseline_version or max(sorted(traffic), key=lambda v: traffic[v])
    if baseline not in traffic:
        raise QualityInputError(
            f"baseline version {baseline!r} not in the file; versions: {', '.join(traffic)}"
        )
    reference = window[window[frame.MODEL_VERSION] == baseline]
    fitted: list[Detector[Any]] = []
    for cls in COMPARED:
        detector: Detector[Any] = cls(cls.Config())  # type: ignore[arg-type]  # each class's own Config
        detector.fit(reference)
        fitted.append(detector)
    latency_detector = LatencyDetector(latency or LatencyConfig())
    reports = []
    for version, rows in versions:
        findings = {} if version == baseline else {d.id: d.detect(rows) for d in fitted}
        findings[latency_detector.id] = latency_detector.detect(rows)
        reports.append(
            VersionReport(
                version=str(version),
                rows=len(rows),
                requests=traffic[str(version)],
                is_baseline=version == baseline,
                findings=findings,
            )
        )
    return QualityReport(
        baseline_version=baseline,
        versions=reports,
        worse=[r.version for r in reports if _worst_compared(r) == "drift"],
        warnings=[r.version for r in reports if _worst_compared(r) == "warning"],
        slo_breaches=[r.version for r in reports if r.findings[LatencyDetector.id].verdict == "drift"],
    )


def _requests(rows: pd.DataFrame) -> int:
    """Distinct requests in a window (rows, when there is no request id)."""
    return int(rows[frame.REQUEST_ID].nunique()) if frame.REQUEST_ID in rows.columns else len(rows)


def _worst_compared(report: VersionReport) -> Verdict:
    """The worst verdict of the detectors that compare a version with the baseline."""
    verdicts = [f.verdict for i, f in report.findings.items() if i != LatencyDetector.id]
    return max(verdicts, key=lambda v: _SEVERITY[v], default="ok")


def _number(value: float | None, digits: int = 3) -> str:
    """A number for the text table, '-' when absent."""
    return "-" if value is None else f"{value:.{digits}g}"


def render_text(report: QualityReport) -> str:
    """The report as a table a person can read in a terminal."""
    lines = [f"baseline version: {report.baseline_version}", ""]
    header = f"{'version':<16} {'detector':<30} {'verdict':<8} {'effect':>9} {'p-value':>9} {'score':>7}"
    lines += [header, "-" * len(header)]
    for version in report.versions:
        label = version.version + (" (base)" if version.is_baseline else "")
        for detector_id, f in version.findings.items():
            note = "  too few samples" if any(k.endswith("too_few_samples") for k in f.measurements) else ""
            lines.append(
                f"{label:<16} {detector_id:<30} {f.verdict:<8} {_number(f.effect_size):>9} "
                f"{_number(f.p_value):>9} {_number(f.score):>7}{note}"
            )
            label = ""
    lines += [
        "",
        f"worse than {report.baseline_version}: {', '.join(report.worse) or 'none'}",
        f"warnings: {', '.join(report.warnings) or 'none'}",
        f"latency SLO breached: {', '.join(report.slo_breaches) or 'none'}",
    ]
    return "\n".join(lines)
