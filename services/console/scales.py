"""The scale each detector's chart is drawn on: what its threshold bounds, and the axis that says so.

A detector's threshold bounds one field (``threshold_of`` in the history): the p-value against
alpha, the effect size against the minimum effect, the statistic against an SLO, the canary's
probability against its minimum. Its chart draws that field, per point on that point's scale.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

#: What a point or window shows: a verdict, or why there is none.
Shown = Literal["ok", "warning", "drift", "not judged"]
ThresholdKind = Literal["min_effect_size", "threshold", "alpha", "min_probability"]
THRESHOLD_LABELS: dict[ThresholdKind, str] = {
    "min_effect_size": "min effect size (drift needs a significant p too)",
    "threshold": "threshold",
    "alpha": "alpha (drift needs a p-value below it)",
    "min_probability": "min probability worse",
}
#: The y axis of a detector's chart, per threshold kind (a statistic's unit is its bound's).
AXIS_TITLES: dict[ThresholdKind, str] = {
    "alpha": "p-value (log)",
    "min_effect_size": "effect size",
    "min_probability": "probability worse (0-1)",
    "threshold": "statistic",
}
#: The history's ``threshold_of`` -> the column drawn against the threshold, its kind and its label.
#: A p-value is drawn as the verdict used it: Benjamini-Hochberg adjusted when corrected (``p_verdict``),
#: then against the correction's alpha, its raw p (``p_value``) against the detector's.
SCALES: dict[str, tuple[str, ThresholdKind, str]] = {
    "p_value": ("p_verdict", "alpha", "p-value"),
    "effect_size": ("effect_size", "min_effect_size", "effect size"),
    "statistic": ("statistic", "threshold", "statistic"),
    "score": ("score", "min_probability", "probability worse"),
}


def axis_title(kind: ThresholdKind, bound_units: list[str]) -> str:
    """A detector chart's y axis: ``p-value (log)``, or a statistic in its SLO's unit (``statistic (ms)``)."""
    title = AXIS_TITLES[kind]
    units = set(bound_units)
    return f"{title} ({units.pop()})" if kind == "threshold" and len(units) == 1 else title


def scale(group: pa.Table) -> tuple[ThresholdKind, str, pa.Array | pa.ChunkedArray]:
    """The threshold's kind, what is drawn against it and its values, per point on that point's scale."""
    scales = group["threshold_of"]
    known = scales.filter(pc.fill_null(pc.is_in(scales, value_set=pa.array(list(SCALES))), False))
    if len(known) == 0:
        # Rows written before threshold_of: as before.
        return _threshold_kind(group), "statistic", _finite(group["statistic"])
    # One detector can bound different fields per window (cost: alpha, or an SLO on its statistic).
    counted = pc.value_counts(known).to_pylist()  # in order of first appearance: the first of a tie wins
    names = [str(c["values"]) for c in sorted(counted, key=lambda c: -int(c["counts"]))]
    picked = pc.cast(group[SCALES[names[0]][0]], pa.float64())  # the main field, for unknown rows too
    for name in names[1:]:
        on_it = pc.fill_null(pc.equal(scales, name), False)
        picked = pc.if_else(on_it, pc.cast(group[SCALES[name][0]], pa.float64()), picked)
    labels = sorted(SCALES[name][2] for name in names)
    return SCALES[names[0]][1], " / ".join(labels), _finite(picked)


def _threshold_kind(group: pa.Table) -> ThresholdKind:
    # Detectors that judge an effect against a minimum report the effect as their statistic and the
    # minimum as their threshold; the verdict also needs a significant p, so the line is no breach line.
    statistic = pc.cast(group["statistic"], pa.float64())
    effect = pc.cast(group["effect_size"], pa.float64())
    both = pc.and_(_present(statistic), _present(effect))
    if not _count(both):
        return "threshold"
    close = pc.less_equal(pc.abs(pc.subtract(statistic.filter(both), effect.filter(both))), 1e-12)
    return "min_effect_size" if _count(close) == _count(both) else "threshold"


def _present(numbers: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # What pandas' dropna keeps: neither null nor NaN (infinities stay).
    return pc.fill_null(pc.invert(pc.is_nan(numbers)), False)


def _count(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _finite(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # Strict JSON out: NaN and infinities (a detector that could not decide) become null.
    numbers = pc.cast(column, pa.float64())
    return pc.if_else(pc.is_finite(numbers), numbers, pa.scalar(None, pa.float64()))
