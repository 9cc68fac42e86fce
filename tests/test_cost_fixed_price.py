"""A fixed price per request is no cost rise: equal means that differ only by float rounding (trial 12f)."""

from __future__ import annotations

import pandas as pd

from detectors import frame
from detectors.serving import CostConfig, CostDetector


def _window(n: int, cost: float = 0.0004) -> pd.DataFrame:
    return pd.DataFrame(
        {
            frame.REQUEST_ID: [f"c-{i}" for i in range(n)],
            frame.PROMPT_TOKENS: [100] * n,
            frame.COMPLETION_TOKENS: [200] * n,
            frame.COST_USD: [cost] * n,
        }
    )


def test_the_same_fixed_price_in_windows_of_other_sizes_is_ok() -> None:
    detector = CostDetector(CostConfig())
    detector.fit(_window(60))  # its mean is 0.00040000000000000013
    finding = detector.detect(_window(47))  # ... and this one's 0.0004000000000000002
    assert finding.verdict == "ok", finding
    assert finding.effect_size == 0.0


def test_a_fixed_price_that_went_up_is_still_a_rise() -> None:
    detector = CostDetector(CostConfig())
    detector.fit(_window(60))
    finding = detector.detect(_window(47, cost=0.0006))
    assert finding.verdict == "drift" and finding.effect_size > 0.4
