"""The windows table counts inference and feedback apart: which input each detection's window counted."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from core.settings import Settings
from curation.history import WINDOWS, window_row
from curation.history_store import HistoryStore
from curation.store import create_table
from detectors.registry import create
from schemas.events import Detection
from streams.detect import DEFAULT_SPECS, DetectorSpec
from streams.history_stage import HistoryStage, WindowInputs
from streams.ingest import Accepted
from streams.runtime import Batch
from tests.test_history import T0, batch, detection
from tests.test_history_stage import kafka_message
from tests.test_runtime import runtime


def judged(detector_id: str, config: dict[str, object], events: int, n: int) -> Detection:
    """A detection of the test window as the detect stage makes it: the detector's validated config."""
    full = create(detector_id, config).config.model_dump(mode="json")  # what run_detectors copies in
    return detection(n).model_copy(
        update={
            "detection_id": f"d-{detector_id}-{n}",
            "detector_id": detector_id,
            "config": full,
            "measurements": {"window_events": float(events)},
        }
    )


def test_a_detection_tells_its_input_by_its_detector_and_config() -> None:
    counted = WindowInputs(list(DEFAULT_SPECS))
    assert counted(judged("drift.text_length.v1", {"column": "response_chars"}, 1, 1)) == "inference"
    assert counted(judged("quality.negative_feedback.v1", {}, 1, 2)) == "feedback"
    assert counted(judged("quality.canary.v1", {}, 1, 3)) == "feedback"
    # Another worker's config of a known detector: its id alone tells, when it runs on one kind here.
    assert counted(judged("quality.latency.v1", {"slo_p95_ms": 1.0}, 1, 4)) == "inference"
    # A detector this worker does not run at all: unknown, counted in neither column.
    assert counted(judged("drift.ks.v1", {"column": "latency_ms"}, 1, 5)) is None


def test_a_detector_on_both_kinds_is_told_apart_by_its_config() -> None:
    specs = [
        DetectorSpec("drift.text_length.v1", "inference", {"column": "prompt_chars"}),
        DetectorSpec("drift.text_length.v1", "feedback", {"column": "response_chars"}),
    ]
    counted = WindowInputs(specs)
    assert counted(judged("drift.text_length.v1", {"column": "prompt_chars"}, 1, 1)) == "inference"
    assert counted(judged("drift.text_length.v1", {"column": "response_chars"}, 1, 2)) == "feedback"
    assert counted(judged("drift.text_length.v1", {"column": "tokens_prompt"}, 1, 3)) is None


def test_a_window_keeps_its_inference_events_and_its_feedback_events_apart(tmp_path: Path) -> None:
    rt = runtime()
    stage = HistoryStage(rt, Settings(history_root=str(tmp_path / "history")), rt.metrics)
    # More feedback than inference in one window (the case a user saw: 1,259 "events" for 848 sent).
    detections = [
        judged("quality.negative_feedback.v1", {}, 1259, 1),
        judged("drift.text_length.v1", {"column": "prompt_chars"}, 848, 2),
        judged("quality.error_rate.v1", {}, 848, 3),
        judged("quality.rating.v1", {}, 1259, 4),
    ]
    topic = Settings().topics.detections
    messages = [kafka_message(topic, n, d.model_dump_json().encode()) for n, d in enumerate(detections)]
    accepted = [(m, event) for m in messages if isinstance(event := stage.inputs[topic](m, 0.0), Accepted)]
    assert len(accepted) == len(detections)
    decoded = Batch(topic, messages, accepted, 0.0)
    rows = stage.rows(decoded)
    for split in (rows.rows["windows"][:1], rows.rows["windows"][1:], rows.rows["windows"]):  # any batching
        stage.store.write(batch(windows=split), now=T0)
    # One row per kind of window now (issue 12): the inference row counts 848, the feedback row 1,259.
    rows = {row["kind"]: row for row in stage.store.read("windows").to_pylist()}
    assert sorted(rows) == ["feedback", "inference"]
    assert (rows["inference"]["events"], rows["feedback"]["feedback_events"]) == (848, 1259)
    assert rows["inference"]["feedback_events"] is None and rows["feedback"]["events"] is None


def test_a_windows_table_an_older_worker_created_gains_the_new_column(tmp_path: Path) -> None:
    old = pa.schema([field for field in WINDOWS if field.name != "feedback_events"])
    store = HistoryStore(tmp_path)
    create_table(store.uri("windows"), old, ["day", "model"], "windows", "an older worker's", None)
    row = window_row(judged("quality.negative_feedback.v1", {}, 40, 1), "feedback")
    assert store.write(batch(windows=[row]), now=T0) == {"windows": 1}
    (written,) = store.read("windows").to_pylist()
    assert (written["events"], written["feedback_events"]) == (None, 40)
