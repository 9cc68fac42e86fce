"""What the quality detectors share: a window's rows, the rate maths, and checks that make one Finding.

Windows may mix row kinds: feedback rows (:func:`detectors.frame.feedback_row`)
carry ``negative``/``rating``/``correction``; request rows carry ``error``,
``latency_ms``, tokens and cost. Request-level detectors count each
``request_id`` once (:func:`request_rows`), so a file of joined feedback (one
row per feedback event, with the request's serving facts copied in, see
:func:`detectors.quality.joined_row`) does not count a request twice because
it got a thumbs-down *and* a rating.

Rates are compared by one helper, :func:`compare_proportions` (Fisher's exact
test and a Newcombe confidence interval of the difference). A detector that
checks several things (p50, p95 and p99; tokens and cost) judges each as a
:class:`Part` and reports the worst as its Finding (:func:`combine`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from detectors import frame
from detectors.base import Detector, DetectorConfig, DetectorNotReady, Finding, Verdict, verdict

Alternative = Literal["worse", "either"]

#: Verdicts from best to worst.
SEVERITY: dict[Verdict, int] = {"ok": 0, "warning": 1, "drift": 2}
_MAX_REQUEST_IDS = 20
#: Feedback kinds that count towards the negative-feedback rate by default.
NEGATIVE_KINDS = ("thumbs", "correction", "flag")


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


def flag_values(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A boolean column as a numpy array, missing values dropped."""
    if column not in rows.columns:
        return np.zeros(0, dtype=bool)
    return rows[column].dropna().astype(bool).to_numpy()


def number_values(rows: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column as float64, missing values dropped."""
    if column not in rows.columns:
        return np.zeros(0)
    return pd.to_numeric(rows[column], errors="coerce").dropna().to_numpy(dtype=float)


def first_request_ids(rows: pd.DataFrame, mask: np.ndarray | pd.Series) -> list[str]:
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
class Part:
    """One named check inside a detector: its Finding, and what breaks ties between equal verdicts.

    ``severity`` is higher for the worse of two parts with the same verdict.
    """

    name: str
    finding: Finding
    severity: float = 0.0


def part(
    detector_id: str,
    name: str,
    reference_samples: int,
    current_samples: int,
    *,
    severity: float = 0.0,
    **result: Any,
) -> Part:
    """A Part of ``detector_id``'s verdict: ``result`` holds its verdict, statistic, p-value..."""
    finding = Finding(
        detector_id=detector_id, reference_size=reference_samples, current_size=current_samples, **result
    )
    return Part(name, finding, severity)


def worst(parts: list[Part]) -> Part:
    """The part that decides a detector's verdict."""
    return max(parts, key=lambda p: (SEVERITY[p.finding.verdict], p.severity))


def combine(
    parts: list[Part],
    reference_size: int,
    current_size: int,
    request_ids: list[str] | None = None,
) -> Finding:
    """The detector's Finding: the worst part's, with every part's measurements, prefixed by its name."""
    measurements: dict[str, float] = {}
    for each in parts:
        for name, value in each.finding.measurements.items():
            measurements[f"{each.name}.{name}" if len(parts) > 1 else name] = value
    decider = worst(parts)
    if len(parts) > 1:
        measurements[f"decided_by.{decider.name}"] = 1.0
    return decider.finding.model_copy(
        update={
            "reference_size": reference_size,
            "current_size": current_size,
            "request_ids": (request_ids or []) if decider.finding.verdict != "ok" else [],
            "measurements": measurements,
        }
    )


def too_few(
    detector_id: str,
    name: str,
    reference_samples: int,
    current_samples: int,
    min_samples: int,
    hits: tuple[int, int] | None = None,
) -> Part | None:
    """An ``ok`` part that says why nothing was tested, or None when there are enough samples.

    A rate's ``hits`` (reference, current) are kept as ``reference_hits`` and ``current_hits``: windows
    too small alone can still be pooled (trial 12k: 89 of 95 thumbs down over 9 windows of 6 to 28).
    No rate is written, so nothing that reads ``current_rate`` takes the window as measured.
    """
    if min(reference_samples, current_samples) >= min_samples:
        return None
    measurements = {
        "too_few_samples": 1.0,
        "min_samples": float(min_samples),
        "reference_samples": float(reference_samples),
        "current_samples": float(current_samples),
    }
    if hits is not None:
        measurements |= {"reference_hits": float(hits[0]), "current_hits": float(hits[1])}
    return part(
        detector_id, name, reference_samples, current_samples, verdict="ok", measurements=measurements
    )


def rate_part(
    detector_id: str,
    name: str,
    reference: tuple[int, int],
    current: tuple[int, int],
    *,
    alpha: float,
    min_effect_size: float,
    min_samples: int,
    alternative: Alternative,
) -> Part:
    """A proportion test as a Part: effect = rate difference (absolute for ``either``)."""
    skipped = too_few(detector_id, name, reference[1], current[1], min_samples, (reference[0], current[0]))
    if skipped is not None:
        return skipped
    c = compare_proportions(*reference, *current, alternative=alternative)
    effect = c.difference if alternative == "worse" else abs(c.difference)
    return part(
        detector_id,
        name,
        reference[1],
        current[1],
        severity=-c.p_value,
        verdict=verdict(c.p_value, alpha, effect, min_effect_size),
        statistic=c.odds_ratio,
        p_value=c.p_value,
        effect_size=c.difference,
        threshold=alpha,
        measurements={
            "reference_rate": c.reference_rate,
            "current_rate": c.current_rate,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "reference_samples": float(reference[1]),
            "current_samples": float(current[1]),
        },
    )


def bernoulli_rows(
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


class RateDetector(Detector[R]):
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
        check = rate_part(
            self.id,
            self.name,
            (ref_hits, ref_n),
            (int(hits.sum()), hits.size),
            alpha=self.config.alpha,
            min_effect_size=self.config.min_effect_size,
            min_samples=self.config.min_samples,
            alternative=self.config.alternative,
        )
        if "too_few_samples" not in check.finding.measurements:
            measurements = {**check.finding.measurements, **self._extra(rows)}
            check = replace(check, finding=check.finding.model_copy(update={"measurements": measurements}))
        return combine([check], ref_rows, len(current), first_request_ids(rows, hits))

    def state(self) -> dict[str, np.ndarray]:
        """The reference counts."""
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: nothing fitted yet")
        return {"reference": self._reference}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Take the reference counts from ``state``."""
        self._reference = np.asarray(state["reference"], dtype=np.int64)
