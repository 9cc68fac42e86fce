"""Drift in cheap descriptors of LLM text: length, empty/refusal rate, and script (language) mix.

These run on every window without a model: the descriptor columns ingest
derives (:mod:`detectors.frame`) or the raw prompt/response text. The
statistics are the ones in :mod:`detectors.drift` (KS, chi-square with
Cramér's V); only the values fed to them differ.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from detectors import frame
from detectors.base import Example, Finding, verdict
from detectors.drift import (
    ChiSquareConfig,
    ChiSquareDrift,
    KSConfig,
    KSDrift,
    UnivariateConfig,
    UnivariateDrift,
    category_values,
    column_of,
    contingency_test,
    numeric_values,
)
from detectors.registry import register

# --- Text length ----------------------------------------------------------------------------------------


class TextLengthConfig(KSConfig):
    """KS test on a length column (``response_chars``, ``prompt_tokens``...) or on a text column's lengths."""

    column: str = Field(frame.RESPONSE_CHARS, min_length=1, description="Length column, or a text column")


def lengths(series: pd.Series) -> tuple[np.ndarray, int]:
    """Numbers of a length column, or the character counts of a text column; and how many were missing."""
    if pd.api.types.is_numeric_dtype(series):
        return numeric_values(series)
    present = series.dropna()
    return present.astype(str).str.len().to_numpy(dtype=float), len(series) - len(present)


@register
class TextLengthDrift(KSDrift):
    """Drift in prompt or response length: KS distance D as the effect size, as in ``drift.ks.v1``."""

    id = "drift.text_length.v1"
    Config = TextLengthConfig

    def _values(self, window: pd.DataFrame) -> tuple[np.ndarray, int]:
        return lengths(column_of(window, self.config.column))

    @classmethod
    def example(cls, seed: int = 0) -> Example[KSConfig]:
        """Log-normal response lengths around 400 chars; the shifted replies are about half as long."""
        rng = np.random.default_rng(seed)

        def window(median: float) -> pd.DataFrame:
            chars = np.round(rng.lognormal(np.log(median), 0.6, 300)).astype(int)
            return pd.DataFrame({frame.RESPONSE_CHARS: chars})

        return Example(
            config=TextLengthConfig(), reference=window(400), current=window(400), shifted=window(200)
        )


# --- Empty / refusal rate -------------------------------------------------------------------------------


class FlagRateConfig(UnivariateConfig):
    """Two-proportion test of a boolean column's rate; the effect size is the absolute rate difference."""

    column: str = Field(
        frame.REFUSAL, min_length=1, description="Boolean column, e.g. refusal or empty_response"
    )
    min_effect_size: float = Field(
        0.02, ge=0, le=1, description="Smallest absolute change of the rate that counts as drift"
    )


def two_proportion_p_value(flagged: np.ndarray, totals: np.ndarray) -> float:
    """Two-sided p-value that two rates are equal: chi-square (the z test), or Fisher's exact on small counts.

    ``flagged[i]`` of ``totals[i]`` rows were flagged on side ``i``.

    >>> round(two_proportion_p_value(np.array([50, 100]), np.array([1000, 1000])), 6)
    2.2e-05
    """
    table = np.array([flagged, totals - flagged])
    if table.sum(axis=1).min() == 0:
        return 1.0  # No row flagged, or every row flagged: the two rates are identical.
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    if expected.min() < 5:
        return float(stats.fisher_exact(table).pvalue)
    return contingency_test(table.T)[1]


def flags(series: pd.Series) -> tuple[np.ndarray, int]:
    """A boolean-like column as 0/1 floats, and how many values were missing."""
    present = series.dropna()
    if present.dtype == object:
        truthy = present.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))
        return truthy.to_numpy(dtype=float), len(series) - len(present)
    return (pd.to_numeric(present) != 0).to_numpy(dtype=float), len(series) - len(present)


@register
class FlagRateDrift(UnivariateDrift[FlagRateConfig]):
    """Change in the rate of a flag (empty response, refusal); the effect size is the rate difference."""

    id = "drift.flag_rate.v1"
    Config = FlagRateConfig

    def _values(self, window: pd.DataFrame) -> tuple[np.ndarray, int]:
        return flags(column_of(window, self.config.column))

    def _compare(self, reference: np.ndarray, current: np.ndarray) -> Finding:
        flagged = np.array([reference.sum(), current.sum()], dtype=np.int64)
        totals = np.array([len(reference), len(current)], dtype=np.int64)
        p = two_proportion_p_value(flagged, totals)
        rate_reference, rate_current = flagged / totals
        effect = float(abs(rate_current - rate_reference))
        return self._found(
            reference,
            current,
            verdict=verdict(p, self.config.alpha, effect, self.config.min_effect_size),
            statistic=effect,
            p_value=p,
            effect_size=effect,
            threshold=self.config.min_effect_size,
            measurements={"rate_reference": float(rate_reference), "rate_current": float(rate_current)},
        )

    @classmethod
    def example(cls, seed: int = 0) -> Example[FlagRateConfig]:
        """Refusals at 5% against 5%, and against 20%."""
        rng = np.random.default_rng(seed)

        def window(rate: float) -> pd.DataFrame:
            return pd.DataFrame({frame.REFUSAL: rng.random(400) < rate})

        return Example(
            config=FlagRateConfig(), reference=window(0.05), current=window(0.05), shifted=window(0.2)
        )


# --- Script mix -----------------------------------------------------------------------------------------

#: Unicode name prefixes of the scripts told apart; any other letter counts as "other".
SCRIPTS = {
    "LATIN": "latin",
    "CYRILLIC": "cyrillic",
    "GREEK": "greek",
    "ARABIC": "arabic",
    "HEBREW": "hebrew",
    "CJK": "cjk",
    "HIRAGANA": "cjk",
    "KATAKANA": "cjk",
    "HANGUL": "hangul",
    "DEVANAGARI": "devanagari",
}
#: The script of a text with no letters at all (empty, digits, emoji).
NO_LETTERS = "none"


@lru_cache(maxsize=8192)
def letter_script(char: str) -> str | None:
    """The script of one character, or None when it is not a letter.

    >>> letter_script("ж"), letter_script("語"), letter_script("7")
    ('cyrillic', 'cjk', None)
    """
    if not char.isalpha():
        return None
    return SCRIPTS.get(unicodedata.name(char, "").split(" ", 1)[0], "other")


def dominant_script(text: str, max_letters: int = 200) -> str:
    """The script most of a text's first ``max_letters`` letters are written in.

    >>> dominant_script("Привет, world!"), dominant_script("안녕하세요"), dominant_script("42 :)")
    ('cyrillic', 'hangul', 'none')
    """
    counts: Counter[str] = Counter()
    for char in text:
        script = letter_script(char)
        if script is not None:
            counts[script] += 1
            if counts.total() >= max_letters:
                break
    return counts.most_common(1)[0][0] if counts else NO_LETTERS


class ScriptMixConfig(ChiSquareConfig):
    """Chi-square test of the texts' dominant scripts; the effect size is Cramér's V."""

    column: str = Field(frame.PROMPT, min_length=1, description="Text column, e.g. prompt or response")
    max_letters: int = Field(200, ge=1, description="Letters read per text to decide its script")


@register
class ScriptMixDrift(ChiSquareDrift):
    """Drift in the language mix, told cheaply by each text's dominant Unicode script (no language model)."""

    id = "drift.script_mix.v1"
    Config = ScriptMixConfig

    def _values(self, window: pd.DataFrame) -> tuple[np.ndarray, int]:
        texts, missing = category_values(column_of(window, self.config.column))
        limit = self.config.max_letters if isinstance(self.config, ScriptMixConfig) else 200
        return np.array([dominant_script(text, limit) for text in texts], dtype=str), missing

    @classmethod
    def example(cls, seed: int = 0) -> Example[ChiSquareConfig]:
        """Prompts 90% Latin / 10% Cyrillic against the same mix, and against a mix with 40% Japanese."""
        rng = np.random.default_rng(seed)
        texts = {
            "latin": "How do I reset my password?",
            "cyrillic": "Как сбросить пароль?",
            "cjk": "パスワードをリセットするには",
        }
        names = np.array(list(texts))

        def window(counts: list[int]) -> pd.DataFrame:
            # Exact counts in a seeded order: "like the reference" means the very same mix.
            prompts = np.repeat(np.array([texts[name] for name in names]), counts)
            return pd.DataFrame({frame.PROMPT: rng.permutation(prompts)})

        usual = [270, 30, 0]
        return Example(
            config=ScriptMixConfig(),
            reference=window(usual),
            current=window(usual),
            shifted=window([150, 30, 120]),
        )
