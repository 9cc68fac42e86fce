"""The one contract every detector follows.

A detector is configured by a frozen, validated :class:`DetectorConfig`
(a misspelt field fails loudly), learns from a *reference* window with
:meth:`Detector.fit` and judges a *current* window with
:meth:`Detector.detect`, returning a typed :class:`Finding`. Windows are
pandas DataFrames whose columns are named in :mod:`detectors.frame`.

Everything a fitted detector knows lives in :meth:`Detector.state`, a dict of
numpy arrays, so it can be saved (:func:`save_state`) and restored without
refitting, and the shared check-suite (``tests/test_detector_contract.py``)
can verify that a restored detector gives the same answer.

Two levels of alarm, as in river's detectors: ``warning`` (statistically
significant, but the shift is smaller than the minimum effect size worth
acting on: a reason to start curating) and ``drift`` (significant *and*
large enough: a reason to act).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import LoopwatchError

Verdict = Literal["ok", "warning", "drift"]


class DetectorNotReady(LoopwatchError):
    """``detect`` was called before ``fit`` (or ``restore``) gave the detector a reference."""


class DetectorConfig(BaseModel):
    """Base of every detector's configuration: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Finding(BaseModel):
    """A detector's verdict on one current window, before it is tied to a segment and time.

    ``measurements`` holds extra named numbers a person needs to read the
    verdict (per-label rates, percentiles, the adjusted p-value).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    detector_id: str
    verdict: Verdict
    reference_size: int = Field(ge=0)
    current_size: int = Field(ge=0)
    statistic: float | None = None
    p_value: float | None = None
    score: float | None = None
    threshold: float | None = None
    effect_size: float | None = None
    request_ids: list[str] = Field(default_factory=list)
    measurements: dict[str, float] = Field(default_factory=dict)


C = TypeVar("C", bound=DetectorConfig)


@dataclass(frozen=True)
class Example(Generic[C]):
    """A small runnable case for a detector: docs and the shared check-suite use it.

    ``shifted`` must be a window the detector flags (``warning`` or ``drift``)
    against ``reference``; ``current`` one drawn like the reference.
    """

    config: C
    reference: pd.DataFrame
    current: pd.DataFrame
    shifted: pd.DataFrame


class Detector(ABC, Generic[C]):
    """Base class: set ``id`` (``family.name.vN``) and ``Config``, implement the four methods."""

    id: ClassVar[str]
    Config: ClassVar[type[DetectorConfig]]
    #: False for detectors that judge a window on its own (against an SLO, say).
    needs_reference: ClassVar[bool] = True
    #: True for detectors that compare one version with another (a canary with the stable version):
    #: they judge only windows whose reference is another version's, never a version against itself.
    compares_versions: ClassVar[bool] = False

    def __init__(self, config: C) -> None:
        self.config = config

    @property
    def version(self) -> str:
        """The ``vN`` suffix of the id."""
        return self.id.rsplit(".", 1)[-1]

    @abstractmethod
    def fit(self, reference: pd.DataFrame) -> None:
        """Learn what normal looks like from a reference window."""

    @abstractmethod
    def detect(self, current: pd.DataFrame) -> Finding:
        """Judge a current window; raise :class:`DetectorNotReady` before ``fit``."""

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Everything ``fit`` learnt, as numpy arrays (no pickled objects)."""

    @abstractmethod
    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Become the detector that produced ``state``, without refitting."""

    @classmethod
    @abstractmethod
    def example(cls, seed: int = 0) -> Example[Any]:
        """A small reference / no-shift / shifted case, deterministic under ``seed``."""


def save_state(detector: Detector[Any]) -> bytes:
    """A fitted detector's state as ``.npz`` bytes (no pickle, safe to load)."""
    buffer = io.BytesIO()
    np.savez(buffer, **detector.state())
    return buffer.getvalue()


def load_state(detector: Detector[Any], data: bytes) -> None:
    """Restore ``detector`` from :func:`save_state` bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        detector.restore({name: arrays[name] for name in arrays.files})


def verdict(p_value: float, alpha: float, effect_size: float, min_effect_size: float) -> Verdict:
    """``drift`` when significant and large enough, ``warning`` when only significant.

    >>> verdict(0.001, 0.05, 0.3, 0.1), verdict(0.001, 0.05, 0.01, 0.1), verdict(0.2, 0.05, 0.3, 0.1)
    ('drift', 'warning', 'ok')
    """
    if p_value >= alpha:
        return "ok"
    return "drift" if effect_size >= min_effect_size else "warning"
