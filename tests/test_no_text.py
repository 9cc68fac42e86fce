"""A tabular model's windows (features, no texts): its text detectors say no input, they judge nothing.

Trial 17j: events with ``features`` and ``prediction`` but no prompt or response were judged ``ok`` with
p = 1 by every text detector (lengths of empty texts against lengths of empty texts).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from curation.history import detection_row
from detectors import frame
from schemas.events import InferenceLog
from services.console.unjudged import never_judged_ids
from streams.detect import DEFAULT_SPECS, Judge, Reference, to_detection
from streams.windows import ClosedWindow

START = datetime(2026, 12, 3, tzinfo=UTC)
TEXT_DETECTORS = {"drift.text_length.v1", "drift.script_mix.v1", "toxicity.profanity.v1"}


def _rows(data_dir: Path, first: int, n: int, *, text: bool = False) -> list[dict[str, Any]]:
    """Window rows of Elec2 requests to a price-direction classifier (a prompt only if ``text``)."""
    lines = (data_dir / "drift" / "elec2_data.dat").read_text().splitlines()[first : first + n]
    rows = []
    for i, line in enumerate(lines):
        values = [float(v) for v in line.split()]
        event = InferenceLog.model_validate(
            {
                "schema_version": "1",
                "event_id": f"e{first + i}",
                "request_id": f"r{first + i}",
                "timestamp": (START + timedelta(seconds=i)).isoformat(),
                "model": {"name": "nsw-price", "version": "1"},
                "features": {"nswprice": values[3], "nswdemand": values[4]},
                "prediction": "up" if values[3] > 0.06 else "down",
                "latency_ms": 12.0,
                **({"prompt": f"price {values[3]:.4f} demand {values[4]:.4f}"} if text else {}),
            }
        )
        rows.append(frame.log_row(event, frame.describe(event)))
    return rows


def _judged(reference_rows: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[Any]:
    segment = {"model": "nsw-price", "model_version": "1", "app": None, "route": None, "tenant": None}
    window = ClosedWindow(segment, "inference", START, START + timedelta(minutes=1), len(rows), rows)
    reference = Reference("pinned:test", pd.DataFrame(reference_rows), len(reference_rows))
    specs = [s for s in DEFAULT_SPECS if s.kind == "inference" and not s.slow]
    return [to_detection(j, window, reference) for j in Judge(specs).run(window, reference, specs)]


def test_text_detectors_on_a_window_without_texts_say_no_input(data_dir: Path) -> None:
    detections = _judged(_rows(data_dir, 0, 300), _rows(data_dir, 20_000, 300))
    text = [d for d in detections if d.detector_id in TEXT_DETECTORS]
    assert len(text) == 4  # two text lengths, the script mix, profanity
    for d in text:
        assert (d.current_size, d.reference_size, d.p_value) == (300, 300, None), d
        assert d.measurements["too_few_samples"] == 1 and d.measurements["no_text"] == 1
        assert d.measurements["current_samples"] == d.measurements["reference_samples"] == 0
    # The others still judge the window: latency, errors, cost.
    assert any(d.p_value is not None or d.statistic is not None for d in detections if d not in text)
    # The console reads them as detectors the segment never fed ("no input sent").
    rows = pa.Table.from_pylist([detection_row(d) for d in detections])
    assert never_judged_ids(rows) >= TEXT_DETECTORS  # quality.cost.v1 too: these events carry no cost
    assert "quality.latency.v1" not in never_judged_ids(rows)


def test_a_window_with_texts_is_judged_by_them_as_before(data_dir: Path) -> None:
    detections = _judged(_rows(data_dir, 0, 300, text=True), _rows(data_dir, 20_000, 300, text=True))
    prompt_length = [d for d in detections if d.config.get("column") == "prompt_chars"]
    assert prompt_length and prompt_length[0].current_size == 300 and prompt_length[0].p_value is not None
