"""Leftovers of issues 17 and 12 on the console: repeated detections, windows pinned in one kind only.

Issue 17: a verdict published twice (the same ``detection_id``) is one verdict on every console page.

After a worker's ``kill -9`` the worker taking over publishes the verdicts of the instant before the kill
again, with the same ids and a later ``detected_at`` (trial 17j: 11 repeats). The history written by
the history stage from real detector findings (tests/console_verdicts_fixture.py) gets a copy of every
detection row appended as such a repeat; each page must read as it did before the copies.

Issue 12 (trial 12n): a window pinned as the reference for feedback but judged for inference was listed
by its inference verdict only, so the Segment page listed 2 reference windows where the Overview said
"v1's first 3 feedback windows". It is listed now, saying what each kind was.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from fastapi.testclient import TestClient

from core.settings import Settings
from curation.history import PARTITION_BY
from retrain_trigger.policy import DEFAULT_POLICY, load_policy
from services.console import build_console, create_app
from services.console.overview_verdicts import one_per_detection
from services.console.reader import HistoryReader
from services.console.segment import segment_view
from services.console.views import incidents_view, overview_view, resolve_range

from .console_verdicts_fixture import (
    INFERENCE_SPECS,
    KEY,
    SMALL_SPECS,
    _judged,
    _requests,
    closed,
    write_events,
    write_verdicts_history,
)


def _pages(root: Path) -> dict[str, Any]:
    """The Overview, the segment's page and Incidents (under the default policy) as their API gives them."""
    history = HistoryReader(str(root))  # a new reader: no table version kept from before
    span = resolve_range(history, None, 1, ("detections",))
    policy = load_policy(DEFAULT_POLICY)
    return {
        "overview": overview_view(history, span).model_dump(mode="json"),
        "segment": segment_view(history, KEY, span).model_dump(mode="json"),
        "incidents": incidents_view(history, span, policy, "default").model_dump(mode="json"),
    }


def _repeat_every_detection(root: Path) -> int:
    """Append each detection row again, 42 s later, as a worker taking over publishes it; rows now."""
    table = DeltaTable(str(root / "detections")).to_pyarrow_table()
    later = pc.add(table["detected_at"], pa.scalar(timedelta(seconds=42)))
    table = table.set_column(table.schema.get_field_index("detected_at"), "detected_at", later)
    write_deltalake(str(root / "detections"), table, mode="append", partition_by=PARTITION_BY["detections"])
    return DeltaTable(str(root / "detections")).to_pyarrow_table().num_rows


def test_every_page_reads_a_repeated_detection_once(tmp_path: Path) -> None:
    root = tmp_path / "history"
    write_verdicts_history(root)
    rows = DeltaTable(str(root / "detections")).to_pyarrow_table().num_rows
    before = _pages(root)
    assert _repeat_every_detection(root) == 2 * rows  # the history holds each verdict twice now
    after = _pages(root)
    # The charts: one point per verdict, as before (each detector's windows, statistics, notes).
    charted = {s["detector_id"]: s["window_start"] for s in before["segment"]["detectors"]}
    assert {s["detector_id"]: s["window_start"] for s in after["segment"]["detectors"]} == charted
    assert (
        sum(len(starts) for starts in charted.values()) == rows - 1
    )  # the revised verdict's first is not drawn
    assert after["segment"] == before["segment"]
    assert after["overview"] == before["overview"]
    assert after["incidents"] == before["incidents"]


def test_one_per_detection_keeps_the_first_row_of_an_id_rows_without_one_and_the_order() -> None:
    table = pa.table(
        {
            "detection_id": ["a", None, "b", "a", None, "c", "b"],
            "detected_at": [1, 2, 3, 4, 5, 6, 7],
        }
    )
    kept = one_per_detection(table)
    assert kept.to_pydict() == {"detection_id": ["a", None, "b", None, "c"], "detected_at": [1, 2, 3, 5, 6]}
    unique = table.slice(0, 3)
    assert one_per_detection(unique) is unique  # nothing repeated: the table itself, not a copy


def test_a_window_pinned_for_feedback_but_judged_for_inference_is_listed_with_each_kind(
    tmp_path: Path,
) -> None:
    reference = _requests(40, 0)
    detections = _judged(INFERENCE_SPECS, reference, _requests(50, 40), 1)  # judged ok
    detections += _judged(SMALL_SPECS, reference, _requests(24, 90), 2)  # 24 < 30: not judged
    windows = [closed("inference", 0, 40, "reference"), closed("feedback", 0, 17, "reference")]
    windows += [closed("inference", 1, 50, "judged"), closed("feedback", 1, 17, "reference")]
    windows += [closed("inference", 2, 24, "judged"), closed("feedback", 2, 15, "reference")]
    topics = Settings().topics
    write_events(tmp_path / "history", {topics.windows: windows, topics.detections: detections})
    history = HistoryReader(str(tmp_path / "history"))
    view = segment_view(history, KEY, resolve_range(history, None, 1))
    assert view.shown == ["reference", "ok", "not judged"]  # the charts' verdicts: the judged kind's
    # All 3 feedback reference windows listed, as the Overview counts them ("first 3 feedback windows").
    assert view.noted_total == 3
    assert [(w.shown, w.note) for w in view.noted] == [
        ("not judged", "inference: not judged (24 < 30 samples); feedback: reference"),
        ("ok", "inference: ok; feedback: reference"),
        ("reference", "reference"),  # pinned in both kinds: said once, as before
    ]
    console = build_console(
        Settings(), history=str(tmp_path / "history"), datasets=str(tmp_path / "datasets")
    )
    with TestClient(create_app(console)) as client:
        html = client.get(f"/segments/{KEY.replace('|', '%7C')}").text
    assert "Windows without a plain verdict (3)" in html
    assert "inference: ok; feedback: reference</td>" in html
