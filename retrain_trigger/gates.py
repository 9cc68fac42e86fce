"""Evidence gates: minimum samples, minimum effect size, N consecutive windows (hysteresis)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from retrain_trigger.policy import Rule
from schemas.events import Detection

Outcome = Literal["breach", "clear", "skip"]


@dataclass(frozen=True)
class Evidence:
    """What one window says for one rule: a breach, a clear window, or no evidence (skipped)."""

    outcome: Outcome
    reason: str


def judge(rule: Rule, detection: Detection) -> Evidence:
    """Classify one detection for one rule (pure: no state)."""
    gates = rule.gates
    if detection.current_size < gates.min_samples:
        # Too small a window says nothing either way: it neither fires nor resolves.
        return Evidence("skip", f"{detection.current_size} samples < min_samples {gates.min_samples}")
    if detection.verdict not in rule.match.verdicts:
        return Evidence("clear", f"verdict {detection.verdict}")
    effect = detection.effect_size
    if gates.min_effect_size is not None and effect is not None and abs(effect) < gates.min_effect_size:
        return Evidence(
            "clear", f"verdict {detection.verdict} but |effect| {abs(effect):.3g} < {gates.min_effect_size}"
        )
    return Evidence("breach", f"verdict {detection.verdict}")


@dataclass(frozen=True)
class Step:
    """The counters after one window, and whether the alert fires or resolves on it."""

    breaches: int
    clears: int
    fires: bool
    resolves: bool


def step(rule: Rule, firing: bool, breaches: int, clears: int, outcome: Outcome) -> Step:
    """Advance the consecutive-window counters of one alert (hysteresis in both directions)."""
    if outcome == "skip":
        return Step(breaches, clears, False, False)
    if outcome == "breach":
        breaches, clears = breaches + 1, 0
        return Step(breaches, clears, not firing and breaches >= rule.gates.for_windows, False)
    breaches, clears = 0, clears + 1
    return Step(breaches, clears, False, firing and clears >= rule.gates.resolve_windows)
