"""Multiple-testing correction across many findings (features, segments, tests).

Twenty features tested at alpha = 0.05 on a window with no drift at all
still alarm on about one window in three. :func:`correct` adjusts the
p-values of a batch of findings together, Benjamini-Hochberg (false
discovery rate) by default or Bonferroni (family-wise error), and takes
back the verdicts whose adjusted p-value is no longer significant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from detectors.base import Finding

Method = Literal["bh", "bonferroni"]


def adjust(p_values: Sequence[float], method: Method = "bh") -> list[float]:
    """Adjusted p-values, in the given order.

    >>> [round(p, 4) for p in adjust([0.01, 0.02, 0.04, 0.5])], adjust([0.01, 0.5], "bonferroni")
    ([0.04, 0.04, 0.0533, 0.5], [0.02, 1.0])
    """
    if not p_values:
        return []
    values = np.asarray(p_values, dtype=float)
    if method == "bh":
        return [float(p) for p in stats.false_discovery_control(values, method="bh")]
    if method == "bonferroni":
        return [float(p) for p in np.minimum(values * len(values), 1.0)]
    raise ValueError(f"unknown correction {method!r}; use 'bh' or 'bonferroni'")


def correct(findings: Sequence[Finding], method: Method = "bh", alpha: float = 0.05) -> list[Finding]:
    """The findings with p-values adjusted together, and verdicts judged again with the adjusted p.

    A finding whose adjusted p-value is at or above ``alpha`` becomes
    ``ok``; one still below keeps the verdict its detector gave, so each
    detector's effect-size gate (``drift`` only for a large enough shift)
    stands. The correction never raises a verdict. The adjusted p-value is
    in ``measurements["p_value_adjusted"]`` (and ``alpha`` in ``correction_alpha``);
    ``p_value`` stays the raw one.
    Findings without a p-value (too few samples, threshold-only detectors)
    pass through unchanged and do not count towards the number of tests.
    """
    tested = [i for i, finding in enumerate(findings) if finding.p_value is not None]
    adjusted = adjust([findings[i].p_value or 0.0 for i in tested], method)
    result = list(findings)
    for index, p_adjusted in zip(tested, adjusted, strict=True):
        finding = findings[index]
        level = finding.verdict if p_adjusted < alpha else "ok"
        result[index] = finding.model_copy(
            update={
                "verdict": level,
                # With the level it had to beat: the console draws it (trial 12n read the detector's alpha).
                "measurements": {
                    **finding.measurements,
                    "p_value_adjusted": p_adjusted,
                    "correction_alpha": alpha,
                },
            }
        )
    return result


@dataclass(frozen=True)
class Correction:
    """How a batch of findings is corrected together: the method and the level adjusted p-values must beat.

    The stream, ``detect drift`` and ``detect quality`` all use it; the default
    is the stream's (Benjamini-Hochberg at the default ``drift_alpha``).

    >>> Correction().method, Correction().alpha
    ('bh', 0.05)
    """

    method: Method = "bh"
    alpha: float = 0.05

    def apply(self, findings: Sequence[Finding]) -> list[Finding]:
        """The findings corrected together (see :func:`correct`)."""
        return correct(findings, method=self.method, alpha=self.alpha)


#: Benjamini-Hochberg at 0.05: the stream's correction with default settings.
DEFAULT_CORRECTION = Correction()
