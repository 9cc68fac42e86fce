"""Univariate drift detectors: one column of a reference window against the same column now.

Numeric columns: Kolmogorov-Smirnov (``drift.ks.v1``), normalised Wasserstein
distance (``drift.wasserstein.v1``) and the population stability index
(``drift.psi.v1``). Categorical columns: chi-square with Cramér's V
(``drift.chi2.v1``) and Jensen-Shannon distance (``drift.jensen_shannon.v1``).

Every detector pairs a significance test with an effect size and reports
``drift`` only when both agree. The effect-size gate is what keeps a
100,000-event window from alarming on a shift nobody would act on: with that
many rows almost any difference is "significant", so a significant but small
shift is only a ``warning``.

Missing values (NaN, None) are dropped and counted in ``measurements``; a
window with fewer than ``min_samples`` usable values on either side gets an
``ok`` finding that says so (``measurements["too_few_samples"] == 1``) rather
than a verdict built on noise.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy import stats
from scipy.spatial.distance import jensenshannon

from detectors.base import (
    C,
    Detector,
    DetectorConfig,
    DetectorNotReady,
    Example,
    Finding,
    Verdict,
    verdict,
)
from detectors.registry import register
from schemas.errors import ConfigError

#: Name of the column in the frames that the examples build.
EXAMPLE_COLUMN = "value"


class UnivariateConfig(DetectorConfig):
    """Fields every one-column drift detector shares."""

    column: str = Field(min_length=1, description="Window column to compare")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the test")
    min_samples: int = Field(30, ge=2, description="Fewer usable values on either side: verdict ok")


def column_of(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]``, or a :class:`ConfigError` naming the columns there are."""
    if column not in frame.columns:
        known = ", ".join(map(str, frame.columns[:20]))
        raise ConfigError(f"window has no column {column!r}; it has: {known}")
    return frame[column]


def numeric_values(series: pd.Series) -> tuple[np.ndarray, int]:
    """Finite float values of ``series`` and how many were missing or not numbers."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    return finite, len(values) - len(finite)


def category_values(series: pd.Series) -> tuple[np.ndarray, int]:
    """Non-missing values of ``series`` as strings, and how many were missing."""
    present = series.dropna()
    return present.astype(str).to_numpy(dtype=str), len(series) - len(present)


def cramers_v(chi2_statistic: float, total: int, table_shape: tuple[int, int]) -> float:
    """Cramér's V of a contingency table: 0 = no association, 1 = complete.

    >>> round(cramers_v(40.0, 1000, (2, 5)), 4)
    0.2
    """
    smaller_side = min(table_shape) - 1
    if total == 0 or smaller_side <= 0:
        return 0.0
    return float(np.sqrt(chi2_statistic / (total * smaller_side)))


def contingency_test(table: np.ndarray) -> tuple[float, float]:
    """Chi-square statistic and p-value of a 2 x K table of counts (rows: reference, current).

    Categories seen on neither side are dropped; with fewer than two
    categories left there is nothing to compare (statistic 0, p-value 1).
    """
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def _too_few(
    detector_id: str, reference_size: int, current_size: int, missing: dict[str, float], minimum: int
) -> Finding:
    """The ``ok`` finding for a window too small to judge."""
    return Finding(
        detector_id=detector_id,
        verdict="ok",
        reference_size=reference_size,
        current_size=current_size,
        measurements={**missing, "too_few_samples": 1.0, "min_samples": float(minimum)},
    )


class UnivariateDrift(Detector[C]):
    """Shared fit/detect plumbing: pick values from the column, guard sizes, wrap the result."""

    def __init__(self, config: C) -> None:
        super().__init__(config)
        self._reference: np.ndarray | None = None
        self._reference_missing = 0

    @property
    def _column_config(self) -> UnivariateConfig:
        assert isinstance(self.config, UnivariateConfig)
        return self.config

    @abstractmethod
    def _values(self, frame: pd.DataFrame) -> tuple[np.ndarray, int]:
        """Usable values of the configured column and the count of missing ones."""

    @abstractmethod
    def _compare(self, reference: np.ndarray, current: np.ndarray) -> Finding:
        """The test proper, on values that passed the size guard (build it with :meth:`_found`)."""

    def _found(self, reference: np.ndarray, current: np.ndarray, **result: Any) -> Finding:
        """This detector's Finding on these values: ``result`` holds the verdict, statistic, p-value..."""
        return Finding(
            detector_id=self.id, reference_size=len(reference), current_size=len(current), **result
        )

    def fit(self, reference: pd.DataFrame) -> None:
        """Keep the reference column's usable values."""
        self._reference, self._reference_missing = self._values(reference)

    def detect(self, current: pd.DataFrame) -> Finding:
        """Compare the current window's column with the reference."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() or restore() before detect()")
        values, missing = self._values(current)
        counts = {"missing_reference": float(self._reference_missing), "missing_current": float(missing)}
        minimum = self._column_config.min_samples
        if min(len(self._reference), len(values)) < minimum:
            return _too_few(self.id, len(self._reference), len(values), counts, minimum)
        result = self._compare(self._reference, values)
        return result.model_copy(update={"measurements": {**counts, **result.measurements}})

    def state(self) -> dict[str, np.ndarray]:
        """The reference values and how many reference rows were missing."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: nothing to save before fit()")
        return {"reference": self._reference, "reference_missing": np.array(self._reference_missing)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Take back the reference values saved by :meth:`state`."""
        self._reference = np.asarray(state["reference"])
        self._reference_missing = int(state["reference_missing"])


class NumericDrift(UnivariateDrift[C]):
    """A detector over one numeric column."""

    def _values(self, frame: pd.DataFrame) -> tuple[np.ndarray, int]:
        return numeric_values(column_of(frame, self._column_config.column))

    @classmethod
    def _normal_example(cls, config: C, seed: int, shift: float = 1.0) -> Example[C]:
        """Normal samples; the shifted window's mean moves by ``shift`` standard deviations."""
        rng = np.random.default_rng(seed)

        def frame(loc: float) -> pd.DataFrame:
            return pd.DataFrame({EXAMPLE_COLUMN: rng.normal(loc, 1.0, 400)})

        return Example(config=config, reference=frame(0.0), current=frame(0.0), shifted=frame(shift))


# --- Kolmogorov-Smirnov ---------------------------------------------------------------------------------


class KSConfig(UnivariateConfig):
    """Two-sample KS test; the effect size is the KS distance D (largest gap between the two CDFs)."""

    min_effect_size: float = Field(0.1, ge=0, le=1, description="Smallest D that counts as drift")
    method: Literal["auto", "exact", "asymp"] = Field(
        "asymp", description="scipy's p-value method; 'exact' is slow on large windows"
    )


@register
class KSDrift(NumericDrift[KSConfig]):
    """Kolmogorov-Smirnov drift on one numeric column (scipy.stats.ks_2samp)."""

    id = "drift.ks.v1"
    Config = KSConfig

    def _compare(self, reference: np.ndarray, current: np.ndarray) -> Finding:
        result = stats.ks_2samp(reference, current, method=self.config.method)
        d, p = float(result.statistic), float(result.pvalue)
        return self._found(
            reference,
            current,
            verdict=verdict(p, self.config.alpha, d, self.config.min_effect_size),
            statistic=d,
            p_value=p,
            effect_size=d,
            threshold=self.config.min_effect_size,
        )

    @classmethod
    def example(cls, seed: int = 0) -> Example[KSConfig]:
        """400 standard normal values against 400 more, and against 400 shifted by one sd."""
        return cls._normal_example(KSConfig(column=EXAMPLE_COLUMN), seed)


# --- Wasserstein ----------------------------------------------------------------------------------------


class WassersteinConfig(UnivariateConfig):
    """Wasserstein-1 distance divided by a robust reference scale, with a permutation p-value."""

    min_effect_size: float = Field(
        0.1, ge=0, description="Smallest distance, in reference scale units, that counts as drift"
    )
    n_permutations: int = Field(1000, ge=50, description="Permutations behind the p-value")
    max_permutation_samples: int = Field(
        1000, ge=10, description="Values drawn from each side for the permutation test"
    )
    seed: int = Field(0, description="Seed of the subsample and the permutations")


def robust_scale(values: np.ndarray) -> float:
    """A spread that outliers barely move: IQR / 1.349 (the sd of a normal), else the sd, else 1.

    >>> robust_scale(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    1.4825...
    """
    q1, q3 = np.quantile(values, [0.25, 0.75])
    for scale in ((q3 - q1) / 1.349, np.std(values)):
        if scale > 0:
            return float(scale)
    return 1.0


def _sorted_gap(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Wasserstein-1 distance between equal-size samples: the mean gap between their sorted values."""
    return np.asarray(np.mean(np.abs(np.sort(x, axis=axis) - np.sort(y, axis=axis)), axis=axis))


@register
class WassersteinDrift(NumericDrift[WassersteinConfig]):
    """Normalised Wasserstein distance on one numeric column.

    The effect size is ``wasserstein_distance(reference, current) / scale``
    on all values, where ``scale`` is :func:`robust_scale` of the reference:
    a mean shift of 0.1 standard deviations of a normal column scores 0.1,
    the same units as Evidently's "Wasserstein distance (normed)". The
    p-value comes from ``scipy.stats.permutation_test`` on seeded, equal-size
    subsamples of at most ``max_permutation_samples`` per side, which keeps it
    exact for the subsample and the cost bounded on large windows (the
    permutation test then has less power than a test on every value, which
    errs on the side of fewer alarms).
    """

    id = "drift.wasserstein.v1"
    Config = WassersteinConfig

    def _compare(self, reference: np.ndarray, current: np.ndarray) -> Finding:
        config = self.config
        scale = robust_scale(reference)
        distance = float(stats.wasserstein_distance(reference, current))
        rng = np.random.default_rng(config.seed)
        size = min(len(reference), len(current), config.max_permutation_samples)
        sample_ref = rng.choice(reference, size, replace=False)
        sample_cur = rng.choice(current, size, replace=False)
        result = stats.permutation_test(
            (sample_ref, sample_cur),
            _sorted_gap,
            vectorized=True,
            n_resamples=config.n_permutations,
            alternative="greater",
            random_state=rng,
        )
        p, effect = float(result.pvalue), distance / scale
        return self._found(
            reference,
            current,
            verdict=verdict(p, config.alpha, effect, config.min_effect_size),
            statistic=distance,
            p_value=p,
            effect_size=effect,
            threshold=config.min_effect_size,
            measurements={"reference_scale": scale, "permutation_sample_size": float(size)},
        )

    @classmethod
    def example(cls, seed: int = 0) -> Example[WassersteinConfig]:
        """400 standard normal values against 400 more, and against 400 shifted by one sd."""
        return cls._normal_example(WassersteinConfig(column=EXAMPLE_COLUMN, n_permutations=200), seed)


# --- Population stability index -------------------------------------------------------------------------


class PSIConfig(UnivariateConfig):
    """PSI over quantile bins of the reference, with the conventional 0.1 / 0.25 thresholds."""

    bins: int = Field(10, ge=2, le=100, description="Quantile bins cut from the reference")
    warning_threshold: float = Field(0.1, ge=0, description="PSI from which a significant shift warns")
    drift_threshold: float = Field(0.25, ge=0, description="PSI from which a significant shift is drift")
    epsilon: float = Field(1e-4, gt=0, lt=0.01, description="Share that stands in for an empty bin")

    @model_validator(mode="after")
    def _warning_below_drift(self) -> PSIConfig:
        if self.warning_threshold > self.drift_threshold:
            raise ValueError("warning_threshold must not exceed drift_threshold")
        return self


def bin_shares(values: np.ndarray, inner_edges: np.ndarray, epsilon: float) -> np.ndarray:
    """Share of ``values`` in each bin (``len(inner_edges) + 1`` bins); empty bins get ``epsilon``."""
    counts = np.bincount(np.searchsorted(inner_edges, values, side="right"), minlength=len(inner_edges) + 1)
    shares = counts / max(len(values), 1)
    return np.asarray(np.clip(shares, epsilon, None))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two vectors of bin shares.

    >>> round(psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])), 4)
    0.2747
    """
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@register
class PSIDrift(NumericDrift[PSIConfig]):
    """Population stability index on one numeric column.

    Bins are the reference's quantiles (ties merge bins, so a column with
    few distinct values gets fewer bins). PSI is a symmetrised
    Kullback-Leibler divergence, and for two samples of sizes n and m from
    one distribution ``PSI / (1/n + 1/m)`` is asymptotically chi-square with
    ``bins - 1`` degrees of freedom (Yurdakul 2018, "Statistical properties
    of the population stability index"); that gives the p-value. Verdict:
    ``drift`` when significant and PSI >= ``drift_threshold``, ``warning``
    when significant and PSI >= ``warning_threshold``, else ``ok``: the
    thresholds are the minimum effect sizes.
    """

    id = "drift.psi.v1"
    Config = PSIConfig

    def _compare(self, reference: np.ndarray, current: np.ndarray) -> Finding:
        config = self.config
        quantiles = np.linspace(0, 1, config.bins + 1)[1:-1]
        edges = np.unique(np.quantile(reference, quantiles))
        expected = bin_shares(reference, edges, config.epsilon)
        index = psi(expected, bin_shares(current, edges, config.epsilon))
        degrees = len(edges)
        p = float(stats.chi2.sf(index / (1 / len(reference) + 1 / len(current)), degrees)) if degrees else 1.0
        level: Verdict = "ok"
        if p < config.alpha and index >= config.drift_threshold:
            level = "drift"
        elif p < config.alpha and index >= config.warning_threshold:
            level = "warning"
        return self._found(
            reference,
            current,
            verdict=level,
            statistic=index,
            p_value=p,
            effect_size=index,
            threshold=config.drift_threshold,
            measurements={"bins": float(degrees + 1), "warning_threshold": config.warning_threshold},
        )

    @classmethod
    def example(cls, seed: int = 0) -> Example[PSIConfig]:
        """400 standard normal values against 400 more, and against 400 shifted by one sd."""
        return cls._normal_example(PSIConfig(column=EXAMPLE_COLUMN), seed)


# --- Categorical ----------------------------------------------------------------------------------------


class CategoricalDrift(UnivariateDrift[C]):
    """A detector over one categorical column: compares category counts."""

    def _values(self, frame: pd.DataFrame) -> tuple[np.ndarray, int]:
        return category_values(column_of(frame, self._column_config.column))

    @staticmethod
    def _table(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The categories seen on either side and the 2 x K table of their counts."""
        categories, codes = np.unique(np.concatenate([reference, current]), return_inverse=True)
        table = np.zeros((2, len(categories)), dtype=np.int64)
        np.add.at(table[0], codes[: len(reference)], 1)
        np.add.at(table[1], codes[len(reference) :], 1)
        return categories, table

    @staticmethod
    def _new_categories(table: np.ndarray) -> float:
        """Categories present now that the reference never had."""
        return float(np.sum((table[0] == 0) & (table[1] > 0)))

    @classmethod
    def _colour_example(cls, config: C, seed: int) -> Example[C]:
        """Colours drawn 50/30/20; the shifted window draws them 20/30/50."""
        rng = np.random.default_rng(seed)
        colours = np.array(["red", "green", "blue"])

        def frame(shares: list[float]) -> pd.DataFrame:
            return pd.DataFrame({EXAMPLE_COLUMN: rng.choice(colours, 400, p=shares)})

        usual = [0.5, 0.3, 0.2]
        return Example(
            config=config, reference=frame(usual), current=frame(usual), shifted=frame(usual[::-1])
        )


class ChiSquareConfig(UnivariateConfig):
    """Chi-square test of the category counts; the effect size is Cramér's V."""

    min_effect_size: float = Field(0.1, ge=0, le=1, description="Smallest Cramér's V that counts as drift")


@register
class ChiSquareDrift(CategoricalDrift[ChiSquareConfig]):
    """Chi-square drift on one categorical column (scipy.stats.chi2_contingency, Cramér's V).

    A category unseen in the reference counts as one more column of the
    table, so a new value appearing in bulk is drift, not an error.
    """

    id = "drift.chi2.v1"
    Config = ChiSquareConfig

    def _compare(self, reference: np.ndarray, current: np.ndarray) -> Finding:
        _, table = self._table(reference, current)
        statistic, p = contingency_test(table)
        effect = cramers_v(statistic, int(table.sum()), (2, int((table.sum(axis=0) > 0).sum())))
        return self._found(
            reference,
            current,
            verdict=verdict(p, self.config.alpha, effect, self.config.min_effect_size),
            statistic=statistic,
            p_value=p,
            effect_size=effect,
            threshold=self.config.min_effect_size,
            measurements={"categories": float(table.shape[1]), "new_categories": self._new_categories(table)},
        )

    @classmethod
    def example(cls, seed: int = 0) -> Example[ChiSquareConfig]:
        """Colours drawn 50/30/20 against the same, and against 20/30/50."""
        return cls._colour_example(ChiSquareConfig(column=EXAMPLE_COLUMN), seed)


class JensenShannonConfig(UnivariateConfig):
    """Jensen-Shannon distance (base 2, so within [0, 1]) between the category shares."""

    threshold: float = Field(0.1, ge=0, le=1, description="Smallest JS distance that counts as drift")


@register
class JensenShannonDrift(CategoricalDrift[JensenShannonConfig]):
    """Jensen-Shannon distance on one categorical column (scipy.spatial.distance.jensenshannon).

    The distance is the effect size, judged against ``threshold`` (0.1, as
    in Evidently). Small windows have a sizeable distance by chance alone,
    so the chi-square test of the same counts must also be significant at
    ``alpha``: significant but below the threshold is a ``warning``.
    """

    id = "drift.jensen_shannon.v1"
    Config = JensenShannonConfig

    def _compare(self, reference: np.ndarray, current: np.ndarray) -> Finding:
        _, table = self._table(reference, current)
        distance = float(jensenshannon(table[0], table[1], base=2))
        _, p = contingency_test(table)
        return self._found(
            reference,
            current,
            verdict=verdict(p, self.config.alpha, distance, self.config.threshold),
            statistic=distance,
            p_value=p,
            effect_size=distance,
            threshold=self.config.threshold,
            measurements={"categories": float(table.shape[1]), "new_categories": self._new_categories(table)},
        )

    @classmethod
    def example(cls, seed: int = 0) -> Example[JensenShannonConfig]:
        """Colours drawn 50/30/20 against the same, and against 20/30/50."""
        return cls._colour_example(JensenShannonConfig(column=EXAMPLE_COLUMN), seed)


def numeric_detector(column: str, alpha: float = 0.05, **config: Any) -> KSDrift:
    """The default detector for a numeric column: KS with the default minimum effect size."""
    return KSDrift(KSConfig(column=column, alpha=alpha, **config))


def categorical_detector(column: str, alpha: float = 0.05, **config: Any) -> ChiSquareDrift:
    """The default detector for a categorical column: chi-square with Cramér's V."""
    return ChiSquareDrift(ChiSquareConfig(column=column, alpha=alpha, **config))


#: Short test names the CLI prints, by detector id.
TEST_NAMES: dict[str, str] = {
    KSDrift.id: "ks",
    WassersteinDrift.id: "wasserstein",
    PSIDrift.id: "psi",
    ChiSquareDrift.id: "chi2",
    JensenShannonDrift.id: "jensen_shannon",
}
