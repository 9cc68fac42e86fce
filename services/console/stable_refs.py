"""Which version of a model is stable, as the windows' references say.

The Overview labels each version stable or canary from ``LOOPWATCH_STABLE_VERSIONS`` and the
rollbacks in the history. A version marked stable on the control topic (``loopwatch model
mark-stable``) is in neither, so a model with no rollback had no labels (trial 12j). The detect
stage names the stable version in each canary window's reference (``stable:<kind>|<model>|<version>|...``),
so the newest such reference of a model says which version the workers compared its canaries with.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_PREFIX = "stable:"


def stable_from_references(windows: pa.Table) -> dict[str, str]:
    """Model -> the stable version its newest canary window was compared with (models with none: absent)."""
    if "reference" not in windows.column_names or not windows.num_rows:
        return {}
    # Plain strings (a kept day's columns are dictionary-encoded); Arrow picks each model's newest
    # reference: a page's range can hold tens of thousands of windows.
    rows = pa.table(
        {
            "model": pc.cast(windows["model"], pa.string()),
            "window_start": windows["window_start"],
            "reference": pc.cast(windows["reference"], pa.string()),
        }
    )
    compared = rows.filter(pc.fill_null(pc.starts_with(rows["reference"], _PREFIX), False))
    newest = (
        compared.sort_by([("window_start", "descending")])
        .group_by("model", use_threads=False)
        .aggregate([("reference", "first")])
    )
    stable: dict[str, str] = {}
    for row in newest.to_pylist():
        model, reference = row["model"], row["reference_first"]
        parts = str(reference)[len(_PREFIX) :].split("@", 1)[0].split("|")
        if len(parts) >= 3 and parts[1] == model:  # else not a reference this module can read
            stable[model] = parts[2]
    return stable
