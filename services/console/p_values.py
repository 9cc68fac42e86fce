"""The two p-values behind a verdict, and the two lines they must beat.

The detect stage corrects every p-value of a window together (``detectors.correction``): a detector
gives its verdict from its raw p against its own alpha, then the window's p-values are
Benjamini-Hochberg adjusted together and a verdict stays only if the adjusted p is below the
correction's alpha (the stream's ``LOOPWATCH_DRIFT_ALPHA``). Drift needs both. Trial 12n: the chart drew
the adjusted p (0.0157) against the detector's alpha (0.01) and coloured it drift above the line, so a
corrected chart draws each p against its own line. The history keeps the adjusted p in its own column
(``detections.p_value_adjusted``), and in ``measurements`` in rows written before it.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

from detectors.correction import DEFAULT_CORRECTION

#: The legend's title on a p-value chart of corrected windows: the rule a person checks the points with.
ADJUSTED_NOTE = "drift needs raw p < detector alpha and BH-adjusted p < correction alpha:"
#: The detector's alpha on a corrected chart: what it bounds.
RAW_ALPHA_LABEL = "detector alpha (raw p below it)"
#: The correction's alpha where the history does not say it: the stream's default (``LOOPWATCH_DRIFT_ALPHA``).
DEFAULT_CORRECTION_ALPHA = DEFAULT_CORRECTION.alpha
#: Said where the correction's alpha is assumed.
ASSUMED_NOTE = (
    "The correction's alpha is not in the history: drawn at the stream's default,"
    f" LOOPWATCH_DRIFT_ALPHA={DEFAULT_CORRECTION_ALPHA:g} (a stream run with another value used that one)."
)
# How json.dumps(sort_keys=True) writes them in a row's measurements.
_ADJUSTED_TEXT = r'"p_value_adjusted": (?P<p>[-+0-9.eE]+)'
_ALPHA_TEXT = r'"correction_alpha": (?P<a>[-+0-9.eE]+)'


def adjusted_p(detections: pa.Table) -> pa.Array | pa.ChunkedArray:
    """Each row's Benjamini-Hochberg adjusted p-value: its column, else its measurements' (rows written
    before the column), else null (the window was not corrected: the raw p is what the verdict used)."""
    n = detections.num_rows
    names = detections.column_names
    column = detections["p_value_adjusted"] if "p_value_adjusted" in names else pa.nulls(n, pa.float64())
    if "measurements" not in names or column.null_count == 0:
        return column
    return pc.coalesce(column, _measured(detections, _ADJUSTED_TEXT))


def verdict_p(detections: pa.Table) -> pa.Array | pa.ChunkedArray:
    """The p-value each row's verdict rests on (as in ``retrain_trigger.gates``): adjusted, else raw."""
    return pc.coalesce(adjusted_p(detections), pc.cast(detections["p_value"], pa.float64()))


def correction_alphas(detections: pa.Table) -> tuple[pa.Array | pa.ChunkedArray, bool]:
    """Per row: the alpha its adjusted p had to beat (null: not corrected), and whether the history said it.

    A row whose measurements carry ``correction_alpha`` gives its own; the others get the default.
    """
    corrected = pc.is_valid(adjusted_p(detections))
    given = _measured(detections, _ALPHA_TEXT)
    unsaid = int(pc.sum(pc.and_(corrected, pc.is_null(given))).as_py() or 0)
    recorded = unsaid == 0 and bool(pc.any(corrected).as_py())
    alphas = pc.coalesce(given, pa.scalar(DEFAULT_CORRECTION_ALPHA, pa.float64()))
    return pc.if_else(corrected, alphas, pa.scalar(None, pa.float64())), recorded


def correction_label(alpha: float | None, recorded: bool) -> str:
    """The correction's line in the legend: what it bounds, and that it is assumed when it is."""
    said = "" if recorded else "; the default: not in the history"
    return f"correction alpha {(alpha or DEFAULT_CORRECTION_ALPHA):g} (adjusted p below it{said})"


def _measured(detections: pa.Table, pattern: str) -> pa.Array | pa.ChunkedArray:
    """The number a row's measurements JSON holds under the pattern's name (null: none)."""
    if "measurements" not in detections.column_names:
        return pa.nulls(detections.num_rows, pa.float64())
    found = pc.extract_regex(pc.fill_null(detections["measurements"], ""), pattern)
    return pc.cast(pc.struct_field(found, [0]), pa.float64())


def log_floor(
    kind: str,
    values: pa.Array | pa.ChunkedArray,
    judged: pa.Array | pa.ChunkedArray,
    threshold: pa.Array | pa.ChunkedArray,
) -> tuple[float | None, int]:
    """Where a log axis draws p = 0, and how many judged windows have it (none: no floor).

    The power of ten a decade below the smallest positive p-value or alpha: the floor sits under every
    point, so a point there reads as "smaller than anything drawn" (its label says p < floor).
    """
    if kind != "alpha":
        return None, 0
    zero = pc.fill_null(pc.and_(judged, pc.less_equal(values, 0.0)), False)
    floored = int(pc.sum(zero).as_py() or 0)
    if not floored:
        return None, 0
    positive = [v for v in (pc.min(values.filter(pc.greater(values, 0.0))).as_py(),) if v]
    positive += [
        v for v in (pc.min(pc.cast(threshold, pa.float64()).filter(pc.greater(threshold, 0.0))).as_py(),) if v
    ]
    smallest = min(positive, default=0.05)
    return 10.0 ** (math.floor(math.log10(smallest)) - 1), floored
