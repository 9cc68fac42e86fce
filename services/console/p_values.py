"""The p-value a verdict used: Benjamini-Hochberg adjusted when the window's findings were corrected together.

The detect stage corrects every p-value of a window together (``detectors.correction``): a finding whose
adjusted p is not below alpha is ``ok`` whatever its raw p. Trial 12h: the embedding MMD chart drew the
raw p (0.03, below the alpha line) coloured ok. The history keeps the adjusted p in its own column
(``detections.p_value_adjusted``), and in ``measurements`` in rows written before it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

#: What a p-value chart draws when its windows' p-values were corrected together (the legend's title).
ADJUSTED_NOTE = "Benjamini-Hochberg adjusted p (what the verdict used):"
# How json.dumps(sort_keys=True) writes it in the measurements of rows written before its own column.
_ADJUSTED_TEXT = r'"p_value_adjusted": (?P<p>[-+0-9.eE]+)'


def adjusted_p(detections: pa.Table) -> pa.Array | pa.ChunkedArray:
    """Each row's Benjamini-Hochberg adjusted p-value: its column, else its measurements' (rows written
    before the column), else null (the window was not corrected: the raw p is what the verdict used)."""
    n = detections.num_rows
    names = detections.column_names
    column = detections["p_value_adjusted"] if "p_value_adjusted" in names else pa.nulls(n, pa.float64())
    if "measurements" not in names or column.null_count == 0:
        return column
    found = pc.extract_regex(pc.fill_null(detections["measurements"], ""), _ADJUSTED_TEXT)
    return pc.coalesce(column, pc.cast(pc.struct_field(found, [0]), pa.float64()))


def verdict_p(detections: pa.Table) -> pa.Array | pa.ChunkedArray:
    """The p-value each row's verdict rests on (as in ``retrain_trigger.gates``): adjusted, else raw."""
    return pc.coalesce(adjusted_p(detections), pc.cast(detections["p_value"], pa.float64()))
