"""Toxicity-rate detectors: is the share of toxic prompts or replies higher than it should be?

Each text of a window is scored per label (Detoxify's ``toxicity``,
``insult``, ... or profanity-check's ``profanity``); a text counts as toxic
for a label when its score reaches the label's threshold. The share of toxic
texts is compared, label by label, with a baseline: the reference window's
share (one-sided Fisher exact test) or a fixed rate from the config
(one-sided exact binomial test). p-values are Bonferroni-corrected over the
labels and the worst label decides the verdict.

Scores are kept in the window as ``<column>_<label>`` columns
(``response_toxicity``): a window that already has them is not rescored,
so the stream layer can score once and reuse the rows.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy import stats

from detectors import frame
from detectors.base import Detector, DetectorConfig, DetectorNotReady, Example, Finding, verdict
from detectors.registry import register
from detectors.scorers import (
    ORIGINAL_LABELS,
    PROFANITY_LABEL,
    CascadeScorer,
    DetoxifySettings,
    ProfanityScorer,
    TextScorer,
    shared_detoxify_scorer,
)
from schemas.errors import ConfigError


class ToxicityRateConfig(DetectorConfig):
    """What to score, when a text counts as toxic, and what rate is normal."""

    column: Literal["prompt", "response"] = Field("response", description="Which text to score")
    labels: tuple[str, ...] = Field(description="Labels to watch; the worst one decides")
    threshold: float = Field(0.5, gt=0, lt=1, description="A text is toxic for a label at this score")
    label_thresholds: dict[str, float] = Field(default_factory=dict, description="Per-label overrides")
    baseline: Literal["reference", "fixed"] = Field(
        "reference", description="Compare with the reference window's rate, or with baseline_rates"
    )
    baseline_rates: dict[str, float] = Field(default_factory=dict, description="Fixed rate per label")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level after Bonferroni over labels")
    min_rate_increase: float = Field(
        0.02, ge=0, le=1, description="Smallest rise in the toxic share (absolute) worth a drift verdict"
    )
    max_request_ids: int = Field(20, ge=0, description="Most flagged request ids carried in a finding")
    min_samples: int = Field(
        1,
        ge=1,
        description="Windows (and reference windows) with fewer texts are not judged (too_few_samples)",
    )

    @model_validator(mode="after")
    def _labels_are_consistent(self) -> ToxicityRateConfig:
        if not self.labels:
            raise ValueError("labels must name at least one label")
        unknown = set(self.label_thresholds) - set(self.labels)
        if unknown:
            raise ValueError(f"label_thresholds names labels not watched: {sorted(unknown)}")
        if any(not 0 < t < 1 for t in self.label_thresholds.values()):
            raise ValueError("every label threshold must be in (0, 1)")
        if self.baseline == "fixed":
            missing = set(self.labels) - set(self.baseline_rates)
            if missing:
                raise ValueError(f"baseline 'fixed' needs baseline_rates for {sorted(missing)}")
            if any(not 0 < r < 1 for r in self.baseline_rates.values()):
                raise ValueError("every baseline rate must be in (0, 1)")
        return self

    def threshold_for(self, label: str) -> float:
        """The score at which a text counts as toxic for ``label``."""
        return self.label_thresholds.get(label, self.threshold)


class DetoxifyRateConfig(ToxicityRateConfig):
    """Toxicity rates from Detoxify, optionally behind the profanity-check prefilter."""

    labels: tuple[str, ...] = Field(ORIGINAL_LABELS, description="Detoxify labels to watch")
    detoxify: DetoxifySettings = Field(default_factory=DetoxifySettings)
    cascade: bool = Field(False, description="Send only prefilter positives to Detoxify")
    prefilter_threshold: float = Field(
        0.1, ge=0, le=1, description="profanity-check score below which a text is taken as non-toxic"
    )


class ProfanityRateConfig(ToxicityRateConfig):
    """Profanity rates from profanity-check alone (cheap, no model download)."""

    labels: tuple[Literal["profanity"], ...] = Field((PROFANITY_LABEL,), description="The only label")
    # A rate of a few texts pages for nothing (a new user's 24-request window read "ok, judged").
    min_samples: int = Field(
        30, ge=1, description="Windows with fewer texts are not judged (too_few_samples)"
    )


def score_column(column: str, label: str) -> str:
    """The window column holding ``label`` scores of ``column`` texts, e.g. ``response_toxicity``."""
    return f"{column}_{label}"


def scored_window(
    window: pd.DataFrame, column: str, scorer: TextScorer, labels: Sequence[str]
) -> pd.DataFrame:
    """``window`` with a score column per label; rows that already have every score are not rescored."""
    names = [score_column(column, label) for label in labels]
    if all(name in window.columns for name in names):
        todo = ~window[names].notna().all(axis=1).to_numpy()
    else:
        todo = np.ones(len(window), dtype=bool)
    if not todo.any():
        return window
    if column not in window.columns:
        raise ConfigError(f"window has no {column!r} column to score and no {names} score columns")
    texts = window[column].fillna("").astype(str).to_numpy()[todo].tolist()
    scores = scorer.score(texts)
    missing = set(labels) - set(scores.labels)
    if missing:
        raise ConfigError(f"the scorer has no labels {sorted(missing)}; it scores {list(scores.labels)}")
    out = window.copy()
    for label in scores.labels:
        name = score_column(column, label)
        if name not in out.columns:
            out[name] = np.nan
        out.loc[todo, name] = scores.column(label)
    return out


@dataclass(frozen=True)
class LabelRate:
    """One label's toxic share in the current window against its baseline."""

    label: str
    positives: int
    size: int
    baseline_rate: float
    p_value: float  # one-sided, before correction over labels

    @property
    def rate(self) -> float:
        """Share of current texts at or above the label's threshold."""
        return self.positives / self.size if self.size else 0.0

    @property
    def increase(self) -> float:
        """How far the rate rose above the baseline (negative when it fell)."""
        return self.rate - self.baseline_rate


def rate_vs_reference(label: str, positives: int, size: int, ref_positives: int, ref_size: int) -> LabelRate:
    """One-sided Fisher exact test: is the current toxic share higher than the reference's?"""
    p_value = 1.0
    if size and ref_size:
        table = [[positives, size - positives], [ref_positives, ref_size - ref_positives]]
        p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
    return LabelRate(label, positives, size, ref_positives / ref_size if ref_size else 0.0, p_value)


def rate_vs_fixed(label: str, positives: int, size: int, baseline_rate: float) -> LabelRate:
    """One-sided exact binomial test: is the current toxic share higher than ``baseline_rate``?"""
    p_value = 1.0
    if size:
        p_value = float(stats.binomtest(positives, size, baseline_rate, alternative="greater").pvalue)
    return LabelRate(label, positives, size, baseline_rate, p_value)


def worst_label(rates: Sequence[LabelRate]) -> int:
    """Index of the label with the smallest p-value (the largest rise breaks ties)."""
    return min(range(len(rates)), key=lambda j: (rates[j].p_value, -rates[j].increase))


C = TypeVar("C", bound=ToxicityRateConfig)


class _ToxicityRateDetector(Detector[C]):
    """Shared maths of the toxicity-rate detectors; subclasses only choose the scorer."""

    def __init__(self, config: C, scorer: TextScorer | None = None) -> None:
        super().__init__(config)
        self._scorer = scorer
        self._reference: tuple[np.ndarray, int] | None = None

    @abstractmethod
    def _default_scorer(self) -> TextScorer:
        """The scorer built from the config when none was passed in."""

    @property
    def scorer(self) -> TextScorer:
        """The scorer in use (models load on first scoring, not here)."""
        if self._scorer is None:
            self._scorer = self._default_scorer()
        return self._scorer

    def score(self, window: pd.DataFrame) -> pd.DataFrame:
        """``window`` with its ``<column>_<label>`` score columns filled in (reusable downstream)."""
        return scored_window(window, self.config.column, self.scorer, self.config.labels)

    def _flags(self, scored: pd.DataFrame) -> np.ndarray:
        """One boolean column per label: the text reached that label's threshold."""
        flags = np.zeros((len(scored), len(self.config.labels)), dtype=bool)
        for j, label in enumerate(self.config.labels):
            scores = scored[score_column(self.config.column, label)].to_numpy(dtype=np.float64)
            flags[:, j] = scores >= self.config.threshold_for(label)
        return flags

    def fit(self, reference: pd.DataFrame) -> None:
        """Count the reference window's toxic texts per label."""
        flags = self._flags(self.score(reference))
        self._reference = (flags.sum(axis=0).astype(np.int64), len(reference))

    def _rates(self, flags: np.ndarray) -> list[LabelRate]:
        config = self.config
        positives = flags.sum(axis=0)
        if config.baseline == "fixed":
            return [
                rate_vs_fixed(label, int(positives[j]), len(flags), config.baseline_rates[label])
                for j, label in enumerate(config.labels)
            ]
        if self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() with a reference window first")
        ref_positives, ref_size = self._reference
        return [
            rate_vs_reference(label, int(positives[j]), len(flags), int(ref_positives[j]), ref_size)
            for j, label in enumerate(config.labels)
        ]

    def _too_few_hits(self, current: pd.DataFrame) -> dict[str, float]:
        """A too-small window's toxic texts, as the rate checks keep theirs (``current_hits``, and
        ``reference_hits`` against a reference window), so windows too small alone can be pooled.

        Counted for the first watched label (Detoxify's ``toxicity``, profanity-check's ``profanity``),
        named by ``hits_label.<label>``: one label, so the windows' counts add up.
        """
        label = self.config.labels[0]
        toxic = self._flags(self.score(current))[:, 0].sum() if len(current) else 0
        hits = {f"hits_label.{label}": 1.0, "current_hits": float(toxic)}
        if self.config.baseline == "reference" and self._reference is not None:
            hits["reference_hits"] = float(self._reference[0][0])
        return hits

    def _flagged_ids(self, scored: pd.DataFrame, label: str) -> list[str]:
        if frame.REQUEST_ID not in scored.columns or self.config.max_request_ids == 0:
            return []
        scores = scored[score_column(self.config.column, label)].to_numpy(dtype=np.float64)
        flagged = np.flatnonzero(scores >= self.config.threshold_for(label))
        top = flagged[np.argsort(-scores[flagged], kind="stable")][: self.config.max_request_ids]
        return [str(i) for i in scored[frame.REQUEST_ID].to_numpy()[top]]

    def detect(self, current: pd.DataFrame) -> Finding:
        """Per-label toxic shares against the baseline; the worst label gives the verdict."""
        if self.config.baseline == "reference" and self._reference is None:
            raise DetectorNotReady(f"{self.id}: call fit() with a reference window first")
        reference_size = self._reference[1] if self._reference else 0
        smallest = min(len(current), reference_size) if self.config.baseline == "reference" else len(current)
        if smallest < self.config.min_samples:
            # Marked as the other detectors mark it: the window reads "not judged", not "ok".
            return Finding(
                detector_id=self.id,
                verdict="ok",
                reference_size=reference_size,
                current_size=len(current),
                threshold=self.config.alpha,
                measurements={
                    "too_few_samples": 1.0,
                    "min_samples": float(self.config.min_samples),
                    "reference_samples": float(reference_size),
                    "current_samples": float(len(current)),
                    **self._too_few_hits(current),
                },
            )
        scored = self.score(current)
        rates = self._rates(self._flags(scored))
        corrected = [min(1.0, r.p_value * len(rates)) for r in rates]
        worst = worst_label(rates)
        measurements: dict[str, float] = {}
        for rate, p_value in zip(rates, corrected, strict=True):
            measurements[f"rate.{rate.label}"] = rate.rate
            measurements[f"baseline_rate.{rate.label}"] = rate.baseline_rate
            measurements[f"p_value.{rate.label}"] = p_value
        measurements[f"worst.{rates[worst].label}"] = 1.0
        return Finding(
            detector_id=self.id,
            verdict=verdict(
                corrected[worst], self.config.alpha, rates[worst].increase, self.config.min_rate_increase
            ),
            reference_size=self._reference[1] if self._reference else 0,
            current_size=len(current),
            statistic=rates[worst].rate,
            p_value=corrected[worst],
            threshold=self.config.alpha,
            effect_size=rates[worst].increase,
            request_ids=self._flagged_ids(scored, rates[worst].label),
            measurements=measurements,
        )

    def state(self) -> dict[str, np.ndarray]:
        """The reference's toxic counts per label and its size (nothing before ``fit``)."""
        if self._reference is None:
            return {}
        positives, size = self._reference
        return {"reference_positives": positives, "reference_size": np.asarray(size, dtype=np.int64)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Take back the reference counts saved by :meth:`state`."""
        if "reference_positives" not in state:
            self._reference = None
            return
        positives = np.asarray(state["reference_positives"], dtype=np.int64)
        if positives.shape != (len(self.config.labels),):
            raise ValueError(
                f"state has {positives.shape[0]} labels, config watches {len(self.config.labels)}"
            )
        self._reference = (positives, int(state["reference_size"]))


@register
class DetoxifyRateDetector(_ToxicityRateDetector[DetoxifyRateConfig]):
    """Per-label Detoxify toxicity rates against a baseline (optionally behind a cheap prefilter)."""

    id: ClassVar[str] = "toxicity.detoxify.v1"
    Config: ClassVar[type[DetectorConfig]] = DetoxifyRateConfig

    def _default_scorer(self) -> TextScorer:
        detoxify = shared_detoxify_scorer(self.config.detoxify)
        if self.config.cascade:
            return CascadeScorer(ProfanityScorer(), detoxify, self.config.prefilter_threshold)
        return detoxify

    @classmethod
    def example(cls, seed: int = 0) -> Example[DetoxifyRateConfig]:
        """Windows with Detoxify scores already in them: runs offline, no model is loaded."""
        rng = np.random.default_rng(seed)
        config = DetoxifyRateConfig()
        return Example(
            config=config,
            reference=_prescored_window(rng, "reference", size=400, toxic=8),
            current=_prescored_window(rng, "current", size=400, toxic=8),
            shifted=_prescored_window(rng, "shifted", size=400, toxic=48),
        )


@register
class ProfanityRateDetector(_ToxicityRateDetector[ProfanityRateConfig]):
    """Profanity rate (profanity-check) against a baseline: cheap, offline, no model download."""

    id: ClassVar[str] = "toxicity.profanity.v1"
    Config: ClassVar[type[DetectorConfig]] = ProfanityRateConfig

    def _default_scorer(self) -> TextScorer:
        return ProfanityScorer()

    @classmethod
    def example(cls, seed: int = 0) -> Example[ProfanityRateConfig]:
        """Short support replies; the shifted window has six times as many insults."""
        rng = np.random.default_rng(seed)
        return Example(
            config=ProfanityRateConfig(),
            reference=_text_window(rng, "reference", size=400, insults=8),
            current=_text_window(rng, "current", size=400, insults=8),
            shifted=_text_window(rng, "shifted", size=400, insults=48),
        )


def _prescored_window(rng: np.random.Generator, name: str, size: int, toxic: int) -> pd.DataFrame:
    """``size`` replies of which ``toxic`` score high on toxicity (and half of those on insult)."""
    scores = rng.uniform(0.0, 0.3, size=(size, len(ORIGINAL_LABELS)))
    rows = rng.permutation(size)[:toxic]
    scores[rows, ORIGINAL_LABELS.index("toxicity")] = rng.uniform(0.6, 1.0, size=toxic)
    scores[rows[::2], ORIGINAL_LABELS.index("insult")] = rng.uniform(0.6, 1.0, size=len(rows[::2]))
    window = pd.DataFrame(scores, columns=[score_column(frame.RESPONSE, label) for label in ORIGINAL_LABELS])
    window.insert(0, frame.RESPONSE, [f"reply {i}" for i in range(size)])
    window.insert(0, frame.REQUEST_ID, [f"{name}-{i}" for i in range(size)])
    return window


_BENIGN = (
    "Thanks for asking, here is how to reset your password.",
    "Sure, the capital of France is Paris.",
    "Happy to help with your recipe: add the eggs one at a time.",
    "Your order has shipped and should arrive on Tuesday.",
    "I could not find that file; could you share the exact path?",
    "Here is a summary of the article in three sentences.",
)
_INSULTS = (
    "Shut up, you stupid idiot.",
    "You are a moron and your question is dumb.",
    "What the hell is wrong with you, idiot?",
)


def _text_window(rng: np.random.Generator, name: str, size: int, insults: int) -> pd.DataFrame:
    """``size`` replies drawn from short benign answers, ``insults`` of them insulting."""
    texts: list[Any] = list(rng.choice(_BENIGN, size=size))
    for row in rng.permutation(size)[:insults]:
        texts[row] = rng.choice(_INSULTS)
    return pd.DataFrame(
        {frame.REQUEST_ID: [f"{name}-{i}" for i in range(size)], frame.RESPONSE: [str(t) for t in texts]}
    )
