"""Which version of a model is stable, as the windows' references say.

The Overview labels each version stable or canary from ``LOOPWATCH_STABLE_VERSIONS`` and the
rollbacks in the history. A version marked stable on the control topic (``loopwatch model
mark-stable``) is in neither, so a model with no rollback had no labels (trial 12j). The detect
stage names the stable version in each canary window's reference (``stable:<kind>|<model>|<version>|...``),
so the newest such reference of a model says which version the workers compared its canaries with.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

_PREFIX = "stable:"


def stable_from_references(windows: pa.Table) -> dict[str, str]:
    """Model -> the stable version its newest canary window was compared with (models with none: absent)."""
    if "reference" not in windows.column_names or not windows.num_rows:
        return {}
    references = pc.cast(windows["reference"], pa.string())
    compared = windows.filter(pc.fill_null(pc.starts_with(references, _PREFIX), False))
    stable: dict[str, str] = {}
    newest: dict[str, datetime] = {}
    for row in compared.select(["model", "window_start", "reference"]).to_pylist():
        parts = str(row["reference"])[len(_PREFIX) :].split("@", 1)[0].split("|")
        if len(parts) < 3 or parts[1] != row["model"]:
            continue  # not a reference this module can read
        at = row["window_start"]
        if row["model"] not in newest or at > newest[row["model"]]:
            newest[row["model"]], stable[row["model"]] = at, parts[2]
    return stable
