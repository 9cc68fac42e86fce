"""The policy's gates on the console: drawn on a Segment page's charts, and judged over the history.

Trial 12i: the charts drew the detector's alpha (0.01), while what rolled the canary back was the rule's
gate (``max_p_value 0.001``, ``immediate_p_value 1e-6``): an on-call engineer could not see how close a
window came to the action. Each rollback or retrain rule that matches the detector and the segment adds
its gates as lines of their own: ``rollback gate (bad-replies): p < 0.001``.

The Incidents page (:mod:`services.console.policy_explain`) asks the same gates of a range's detections,
a whole column at a time: which windows breached, which gate held the others back, how many breached in
a row. What a segment key means and which rule matches it is decided here, once, for both pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from retrain_trigger.policy import SEGMENT_FIELDS, Policy, Rule
from retrain_trigger.route import segment_matches
from schemas.events import Segment
from services.console.series import verdict_p

#: The gates drawn, and how each is named.
_GATES = (("max_p_value", "gate"), ("immediate_p_value", "immediate gate"))


class PolicyGate(BaseModel):
    """One p-value gate of a rollback or retrain rule on one detector's chart."""

    detector_id: str
    p_value: float = Field(description="A breach needs a p-value (adjusted, when corrected) below this")
    label: str = Field(description="rollback gate (bad-replies): p < 0.001")


def segment_of(key: str) -> Segment:
    """The segment a history key names (``model|version|app|route|tenant``; an empty label is none)."""
    fields = dict(zip(SEGMENT_FIELDS, key.split("|"), strict=False))
    return Segment(
        model=fields.get("model", ""),
        model_version=fields.get("model_version", ""),
        app=fields.get("app") or None,
        route=fields.get("route") or None,
        tenant=fields.get("tenant") or None,
    )


def p_value_gates(policy: Policy, segment: str, detector_ids: set[str]) -> list[PolicyGate]:
    """The rollback and retrain rules' p-value gates on ``detector_ids`` of ``segment`` (its key)."""
    where = segment_of(segment)
    out = []
    for rule in policy.rules:
        if rule.action not in ("rollback", "retrain") or not segment_matches(rule, where):
            continue
        for detector_id in sorted(d for d in detector_ids if rule.match.matches_detector(d)):
            for name, called in _GATES:
                value = getattr(rule.gates, name)
                if value is not None:
                    label = f"{rule.action} {called} ({rule.name}): p < {value:g}"
                    out.append(PolicyGate(detector_id=detector_id, p_value=value, label=label))
    return out


def segment_mask(rows: pa.Table, rule: Rule) -> pa.Array:
    """The rows (a dictionary-encoded ``segment`` column) whose segment the rule's patterns match.

    Asked once per distinct segment, as the decide stage's router asks it (``segment_matches``).
    """
    column = rows["segment"].combine_chunks()
    keys = column.dictionary.to_pylist()
    hit = np.array([segment_matches(rule, segment_of(k or "")) for k in keys], dtype=bool)
    return pa.array(hit[np.asarray(column.indices)] if len(keys) else np.zeros(rows.num_rows, dtype=bool))


def parsed_p(rows: pa.Table) -> np.ndarray:
    """Each row's adjusted p-value (its column, else its measurements'), else its p-value (NaN: none)."""
    return np.asarray(pc.fill_null(verdict_p(rows), np.nan).to_numpy(zero_copy_only=False), dtype=float)


def gate_outcomes(rule: Rule, rows: pa.Table) -> np.ndarray:
    """Per row what the rule's gates make of it: -1 skip (too few samples), 0 clear, 1 breach, 2 immediate.

    :func:`retrain_trigger.gates.judge`'s checks in its order, over whole columns (a week of one-minute
    windows is 10,080 rows per alert); ``tests/test_console_incidents.py`` holds the two to the same
    answers. ``rows`` carry ``p``, the p-value each verdict rests on (:func:`parsed_p`).
    """
    gates = rule.gates
    skip = np.asarray(pc.less(pc.fill_null(rows["current_size"], 0), gates.min_samples))
    breach = np.asarray(pc.is_in(rows["verdict"], pa.array(list(rule.match.verdicts)))) & ~skip
    if gates.min_effect_size is not None:
        breach &= ~np.asarray(
            pc.fill_null(pc.less(pc.abs(rows["effect_size"]), gates.min_effect_size), False)
        )
    immediate = np.zeros(len(skip), dtype=bool)
    if gates.max_p_value is not None or gates.immediate_p_value is not None:
        p = np.where(breach, np.asarray(rows["p"]), np.nan)
        if gates.max_p_value is not None:
            breach &= p < gates.max_p_value  # NaN (no p-value) is no breach
        if gates.immediate_p_value is not None:
            immediate = breach & (p < gates.immediate_p_value)
    return np.where(skip, -1, np.where(immediate, 2, breach.astype(int)))


def unmet_gates(rule: Rule, matching: pa.Table) -> list[str]:
    """Each gate that kept the matching windows from breaching, with the numbers (in the gates' order)."""
    gates, n, parts = rule.gates, matching.num_rows, []
    size = pc.fill_null(matching["current_size"], 0)
    small = matching.filter(pc.less(size, gates.min_samples))
    if small.num_rows:
        most = "the largest had" if small.num_rows == n else f"{small.num_rows} of them had at most"
        parts.append(f"min_samples {gates.min_samples}: {most} {pc.max(small['current_size']).as_py()}")
    rest = matching.filter(pc.greater_equal(size, gates.min_samples))
    if rest.num_rows and gates.min_effect_size is not None:
        weak_mask = pc.fill_null(pc.less(pc.abs(rest["effect_size"]), gates.min_effect_size), False)
        weak = rest.filter(weak_mask)
        if weak.num_rows:
            top = pc.max(pc.abs(weak["effect_size"])).as_py()
            parts.append(
                f"min_effect_size {gates.min_effect_size:g}:"
                f" {_of(weak.num_rows, n)} had |effect| at most {top:.3g}"
            )
            rest = rest.filter(pc.invert(weak_mask))
    if rest.num_rows and gates.max_p_value is not None:
        p = np.asarray(rest["p"])
        low = f"p at least {np.nanmin(p):.2g}" if not np.isnan(p).all() else "no p-value"
        parts.append(f"max_p_value {gates.max_p_value:g}: {_of(rest.num_rows, n)} had {low}")
    return parts or ["each was judged clear by the rule's gates"]


def _of(some: int, n: int) -> str:
    return "the window" if n == 1 else "all of them" if some == n else f"{some} of them"


def breach_runs(
    rule: Rule, days: Sequence[pa.Table], outcomes: Sequence[np.ndarray]
) -> tuple[int, dict[str, Any] | None]:
    """The most breaches in a row of any of the rule's alerts, and the first row it would have fired on.

    As :func:`retrain_trigger.gates.step` counts them (a skipped window changes nothing, a clear one
    resets), a day at a time in window order; an alert's run at the end of a day carries into the next.
    ``days`` carry ``alert``, each row's alert (segment, detector) numbered within its day.
    """
    carry: dict[tuple[str, str], int] = {}
    longest, first = 0, None
    for rows, outcome in zip(days, outcomes, strict=True):
        at = np.flatnonzero(outcome >= 0)  # the rows that count: skipped ones change nothing
        if not len(at):
            continue
        codes, alert = outcome[at], np.asarray(rows["alert"])[at]
        index = np.arange(len(codes))
        breach = codes > 0
        new_alert = np.ones(len(codes), dtype=bool)
        new_alert[1:] = alert[1:] != alert[:-1]
        starts = np.flatnonzero(new_alert)
        group = np.cumsum(new_alert) - 1
        # The run of breaches ending at each row: from the last clear (or the alert's first row) to it.
        reset = np.maximum.accumulate(np.where(~breach, index, np.where(new_alert, index - 1, -1)))
        run = (index - reset) * breach
        firsts = rows.select(["segment", "detector_id"]).take(pa.array(at[starts]))
        alerts = list(zip(firsts["segment"].to_pylist(), firsts["detector_id"].to_pylist(), strict=True))
        before = np.array([carry.get(a, 0) for a in alerts])
        leading = breach & (reset == starts[group] - 1)  # no clear yet today: yesterday's run goes on
        run = run + np.where(leading, before[group], 0)
        longest = max(longest, int(run.max()))
        fires = at[(run >= rule.gates.for_windows) | (codes == 2)]
        if first is None and len(fires):
            candidates = rows.take(pa.array(fires))
            earliest = int(np.argmin(np.asarray(pc.cast(candidates["window_start"], pa.int64()))))
            first = candidates.slice(earliest, 1).to_pylist()[0]
        ends = np.append(starts[1:], len(codes)) - 1
        carry.update(zip(alerts, run[ends].tolist(), strict=True))
    return longest, first
