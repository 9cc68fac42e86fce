"""Text detectors on windows with no text: said as ``no input sent``, not judged ``ok`` on empty strings.

Trial 17j: a tabular model's events carry ``features`` and ``prediction`` but no
prompt or response. The built-in text detectors then compared empty texts with
empty texts (length drift ``ok`` with p = 1, and 14 embedding tests of nothing on
a busy 2-core machine), and the console counted them as judged. A detector whose
column holds no text on either side (the window and its reference) is not run:
its Detection has 0 samples (of the rows it had) and ``too_few_samples``, which
the console reads as a detector the segment never fed (``no input sent``). A
window with some text runs as before, empty replies included (an all-empty
window beside a reference with text is drift).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pandas as pd

from detectors import frame
from detectors.base import Finding
from detectors.registry import all_detectors
from detectors.run import Judged, Spec

S = TypeVar("S", bound=Spec)

#: The columns of texts (their strings) and of text lengths (counts: 0 is no text).
TEXTS = {frame.PROMPT, frame.RESPONSE}
LENGTHS = {frame.PROMPT_CHARS, frame.RESPONSE_CHARS}


def has_text(column: str, reference: pd.DataFrame, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``column`` holds any text in the reference or the window (True: not a text column)."""
    if column not in TEXTS | LENGTHS or column not in reference.columns:
        return True  # not a text column, or one the detector will report missing as before
    written = (lambda v: bool(v)) if column in TEXTS else (lambda v: bool(v and v > 0))
    return any(written(row.get(column)) for row in rows) or any(map(written, reference[column]))


def full_config(detector_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A detector's config with its defaults filled in (what its Detection carries)."""
    return all_detectors()[detector_id].Config.model_validate(dict(config)).model_dump(mode="json")


def split_textless(
    specs: Sequence[S], reference: pd.DataFrame, rows: Sequence[Mapping[str, Any]]
) -> tuple[list[S], list[Judged]]:
    """The specs to run, and the Detections of those whose text column is empty on both sides."""
    run: list[S] = []
    textless: list[Judged] = []
    for spec in specs:
        config = full_config(spec.detector_id, spec.config)
        if has_text(str(config.get("column", "")), reference, rows):
            run.append(spec)
        else:
            textless.append(no_text(spec.detector_id, config, len(reference), len(rows)))
    return run, textless


def no_text(detector_id: str, full: dict[str, Any], reference_rows: int, rows: int) -> Judged:
    """The Detection of a text detector that had no text to read: 0 samples of so many rows, not judged."""
    measurements = {
        "too_few_samples": 1.0,
        "min_samples": float(full.get("min_samples", 0)),
        "reference_samples": 0.0,
        "current_samples": 0.0,
        "no_text": 1.0,
    }
    finding = Finding(
        detector_id=detector_id,
        verdict="ok",
        reference_size=reference_rows,
        current_size=rows,
        measurements=measurements,
    )
    return Judged(full, finding)
