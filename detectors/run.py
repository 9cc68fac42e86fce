"""One way to run detectors: fit on a reference, judge a current window, correct, return the results.

The stream's :class:`~streams.detect.Judge`, ``loopwatch detect drift``
(:func:`detectors.files.drift_report`) and ``loopwatch detect quality``
(:func:`detectors.quality.compare_versions`) all call :func:`run_detectors`,
so every path applies the same multiple-testing correction
(:class:`~detectors.correction.Correction`) and returns the same result: a
:class:`~detectors.base.Finding` with the exact config that produced it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pandas as pd

from detectors.base import Detector, Finding
from detectors.correction import DEFAULT_CORRECTION, Correction
from detectors.registry import create


class Spec(Protocol):
    """What :func:`run_detectors` needs of a detector to run: its registry id and config."""

    @property
    def detector_id(self) -> str:
        """The versioned registry id, e.g. ``drift.ks.v1``."""

    @property
    def config(self) -> Mapping[str, Any]:
        """The plain config dict the detector is built from (defaults for missing fields)."""


@dataclass(frozen=True)
class DetectorRun:
    """The plainest :class:`Spec`: a detector id and its config."""

    detector_id: str
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Judged:
    """A detector's finding with the exact config that produced it."""

    config: dict[str, Any]
    finding: Finding


S = TypeVar("S", bound=Spec)


def fit_detector(spec: Spec, reference: pd.DataFrame) -> Detector[Any]:
    """A detector built from ``spec`` and fitted on ``reference`` (the default way to get one)."""
    detector = create(spec.detector_id, dict(spec.config))
    detector.fit(reference)
    return detector


def run_detectors(
    specs: Sequence[S],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    correction: Correction | None = DEFAULT_CORRECTION,
    *,
    fit: Callable[[S, pd.DataFrame], Detector[Any]] = fit_detector,
    on_error: Callable[[S, Exception], None] | None = None,
    computed: Sequence[Judged] = (),
) -> list[Judged]:
    """Every spec fitted on ``reference`` and run on ``current``, corrected together, in spec order.

    ``fit`` gives the fitted detector of a spec (the stream caches them per
    reference). A spec whose fit or detect raises is left out and handed to
    ``on_error`` when one is given (the stream carries on with the others);
    without ``on_error`` the error propagates (a file command stops with it).
    ``computed`` are results found another way on the same two windows (the
    text column's embedding tests of ``detect drift``): they come after the
    specs' results and are corrected with them. ``correction=None`` returns
    the raw findings.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> before = pd.DataFrame({"x": rng.normal(0, 1, 300)})
    >>> after = pd.DataFrame({"x": rng.normal(1, 1, 300)})
    >>> ks = DetectorRun("drift.ks.v1", {"column": "x"})
    >>> [judged.finding.verdict for judged in run_detectors([ks], before, after)]
    ['drift']
    """
    judged: list[Judged] = []
    for spec in specs:
        try:
            detector = fit(spec, reference)
            finding = detector.detect(current)
        except Exception as error:
            if on_error is None:
                raise
            on_error(spec, error)
            continue
        judged.append(Judged(detector.config.model_dump(mode="json"), finding))
    judged += computed
    if correction is None:
        return judged
    corrected = correction.apply([item.finding for item in judged])
    return [Judged(item.config, finding) for item, finding in zip(judged, corrected, strict=True)]
