"""What the serving stack says: errors, empty or refused replies, latency against SLOs, tokens and cost.

Error and empty/refusal rates are compared with a reference window by
Fisher's exact test (:class:`~detectors.quality_checks.RateDetector`, counting
each request once); latency percentiles are judged against SLOs by the exact
binomial test for a quantile; tokens and cost per request against a reference
(Welch's t-test) and optional SLOs.
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
    Part,
    RateConfig,
    RateDetector,
    bernoulli_rows,
    combine,
    first_request_ids,
    flag_values,
    number_values,
    part,
    request_rows,
    too_few,
)
from detectors.registry import register


class ErrorRateConfig(RateConfig):
    """Share of requests that failed."""

    min_effect_size: float = Field(0.02, ge=0, le=1, description="Smallest rate increase that is drift")


@register
class ErrorRateDetector(RateDetector[ErrorRateConfig]):
    """Share of requests with ``status == "error"`` vs a reference window."""

    id = "quality.error_rate.v1"
    Config = ErrorRateConfig
    name = "error_rate"

    def _units(self, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        rows = request_rows(window, [frame.ERROR])
        return rows, flag_values(rows, frame.ERROR)

    @classmethod
    def example(cls, seed: int = 0) -> Example[ErrorRateConfig]:
        """500 requests with 1% errors; the shifted window with 6%."""
        rng = np.random.default_rng(seed)
        return Example(
            cls.Config(),
            bernoulli_rows(500, 0.01, frame.ERROR, rng, "ref"),
            bernoulli_rows(500, 0.01, frame.ERROR, rng, "cur"),
            bernoulli_rows(500, 0.06, frame.ERROR, rng, "shift"),
        )


class EmptyRefusalConfig(RateConfig):
    """Share of replies that are empty or a refusal."""

    min_effect_size: float = Field(0.03, ge=0, le=1, description="Smallest rate increase that is drift")


@register
class EmptyRefusalDetector(RateDetector[EmptyRefusalConfig]):
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
            values = flag_values(rows, column)
            if values.size:
                extra[f"{column}_rate"] = float(values.mean())
        return extra

    @classmethod
    def example(cls, seed: int = 0) -> Example[EmptyRefusalConfig]:
        """500 replies with 2% refusals; the shifted window with 10% refusals."""
        rng = np.random.default_rng(seed)

        def replies(rate: float, prefix: str) -> pd.DataFrame:
            return bernoulli_rows(500, rate, frame.REFUSAL, rng, prefix, **{frame.EMPTY_RESPONSE: False})

        return Example(cls.Config(), replies(0.02, "ref"), replies(0.02, "cur"), replies(0.10, "shift"))


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
        latency = number_values(rows, frame.LATENCY_MS)
        slos = self.config.slos()
        if latency.size < self.config.min_samples or not slos:
            return combine([self._not_checked(latency.size)], 0, len(current))
        alpha = self.config.alpha / len(slos)
        checks = [self._check(latency, q, slo, alpha) for q, slo in slos.items()]
        slowest = rows[frame.LATENCY_MS] > min(slos.values())
        return combine(checks, 0, len(current), first_request_ids(rows, slowest.fillna(False)))

    def _not_checked(self, samples: int) -> Part:
        """An ok part saying why no SLO was tested."""
        if not self.config.slos():
            return part(self.id, "latency", 0, samples, verdict="ok", measurements={"no_slo_configured": 1.0})
        return part(
            self.id,
            "latency",
            0,
            samples,
            verdict="ok",
            measurements={
                "too_few_samples": 1.0,
                "min_samples": float(self.config.min_samples),
                "current_samples": float(samples),
            },
        )

    def _check(self, latency: np.ndarray, quantile: float, slo: float, alpha: float) -> Part:
        observed = float(np.quantile(latency, quantile))
        p_value = quantile_above(latency, quantile, slo)
        excess = observed / slo - 1
        return part(
            self.id,
            f"p{round(quantile * 100)}",
            0,
            latency.size,
            severity=excess,
            verdict=verdict(p_value, alpha, excess, self.config.min_excess),
            statistic=observed,
            p_value=p_value,
            effect_size=excess,
            threshold=slo,
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
    cost = number_values(request_rows(window, [frame.COST_USD]), frame.COST_USD)
    return tokens.to_numpy(dtype=float), cost


def _summary(values: np.ndarray) -> np.ndarray:
    """[mean, standard deviation, count]: all Welch's test needs of a reference sample."""
    if values.size < 2:
        return np.array([float(values.mean()) if values.size else 0.0, 0.0, float(values.size)])
    return np.array([values.mean(), values.std(ddof=1), values.size], dtype=float)


def _mean_rise_check(
    detector_id: str, name: str, reference: np.ndarray, current: np.ndarray, config: CostConfig
) -> Part:
    """Welch's t-test: is the current mean per request higher than the reference mean?"""
    ref_mean, ref_sd, ref_n = (float(v) for v in reference)
    skipped = too_few(detector_id, name, int(ref_n), current.size, config.min_samples)
    if skipped is not None:
        return skipped
    cur_mean, cur_sd = float(current.mean()), float(current.std(ddof=1))
    if math.isclose(cur_mean, ref_mean, rel_tol=1e-9):
        # Equal but for float rounding: a fixed price per request sums to 0.00040000000000000013 in one
        # window and 0.0004000000000000002 in the next, and Welch's test called that a significant rise.
        cur_mean = ref_mean
    test = stats.ttest_ind_from_stats(
        cur_mean, cur_sd, current.size, ref_mean, ref_sd, int(ref_n), equal_var=False, alternative="greater"
    )
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else (0.0 if cur_mean > ref_mean else 1.0)
    rise = cur_mean / ref_mean - 1 if ref_mean > 0 else (1.0 if cur_mean > 0 else 0.0)
    return part(
        detector_id,
        name,
        int(ref_n),
        current.size,
        severity=-p_value,
        verdict=verdict(p_value, config.alpha, rise, config.min_relative_increase),
        statistic=float(test.statistic) if np.isfinite(test.statistic) else None,
        p_value=p_value,
        effect_size=rise,
        threshold=config.alpha,
        measurements={
            "reference_mean": ref_mean,
            "current_mean": cur_mean,
            "current_samples": float(current.size),
        },
    )


def _slo_check(detector_id: str, name: str, current: np.ndarray, slo: float, config: CostConfig) -> Part:
    """One-sample t-test: is the mean per request above its SLO? Drift when 10% or more above."""
    skipped = too_few(detector_id, name, config.min_samples, current.size, config.min_samples)
    if skipped is not None:
        return skipped
    test = stats.ttest_1samp(current, slo, alternative="greater")
    mean = float(current.mean())
    p_value = float(test.pvalue) if np.isfinite(test.pvalue) else (0.0 if mean > slo else 1.0)
    excess = mean / slo - 1
    return part(
        detector_id,
        name,
        0,
        current.size,
        severity=excess,
        verdict=verdict(p_value, config.alpha, excess, 0.1),
        statistic=mean,
        p_value=p_value,
        effect_size=excess,
        threshold=slo,
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
            _mean_rise_check(self.id, "tokens", self._reference[0], tokens, self.config),
            _mean_rise_check(self.id, "cost", self._reference[1], cost, self.config),
        ]
        if self.config.max_tokens_per_request is not None:
            checks.append(
                _slo_check(self.id, "tokens_slo", tokens, self.config.max_tokens_per_request, self.config)
            )
        if self.config.max_cost_per_request_usd is not None:
            checks.append(
                _slo_check(self.id, "cost_slo", cost, self.config.max_cost_per_request_usd, self.config)
            )
        return combine(checks, self._reference_rows, len(current))

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
