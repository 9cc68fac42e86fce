"""The windows table from WindowClosed events: one row per segment, kind and window, the latest revision.

Built with the real event models and the history stage's own rows (the
detect stage's publisher is tested with the detect stage).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from core.settings import Settings
from curation.history_store import HistoryStore
from streams.history_stage import HistoryStage
from streams.ingest import Accepted
from streams.runtime import Batch
from tests.console_verdicts_fixture import closed
from tests.test_history import T0, detection
from tests.test_history_stage import kafka_message
from tests.test_runtime import runtime

TOPICS = Settings().topics


def _write(stage: HistoryStage, topic: str, events: list) -> dict[str, int]:
    messages = [kafka_message(topic, n, e.model_dump_json().encode()) for n, e in enumerate(events)]
    accepted = [(m, a) for m in messages if isinstance(a := stage.inputs[topic](m, 0.0), Accepted)]
    assert len(accepted) == len(events)
    return stage.store.write(stage.rows(Batch(topic, messages, accepted, 0.0)), now=T0)


def _rows(store: HistoryStore) -> dict[tuple[str, int], dict]:
    rows = store.read("windows").to_pylist()
    return {(r["kind"], r["window_start"].minute): r for r in rows}


def test_a_later_revision_replaces_the_row_and_a_redelivery_changes_nothing(tmp_path: Path) -> None:
    rt = runtime()
    stage = HistoryStage(rt, Settings(history_root=str(tmp_path)), rt.metrics)
    first = [closed("inference", 0, 40, "reference"), closed("feedback", 0, 12, "judged")]
    assert _write(stage, TOPICS.windows, first) == {"windows": 2}
    # Late feedback revises the feedback window; the same revision comes twice, an older one late.
    revised = closed("feedback", 0, 19, "judged", revision=1)
    assert _write(stage, TOPICS.windows, [revised, revised, first[1]]) == {"windows": 0}
    assert _write(stage, TOPICS.windows, [*first, revised]) == {"windows": 0}  # a replay after a crash
    rows = _rows(stage.store)
    assert sorted(rows) == [("feedback", 0), ("inference", 0)]
    inference, feedback = rows[("inference", 0)], rows[("feedback", 0)]
    assert (inference["events"], inference["feedback_events"], inference["outcome"]) == (
        40,
        None,
        "reference",
    )
    assert (feedback["events"], feedback["feedback_events"], feedback["revision"]) == (None, 19, 1)
    assert feedback["closed_at"] == revised.closed_at and inference["first_detected_at"] is None


def test_detections_add_their_time_but_not_their_counts_to_a_closed_window(tmp_path: Path) -> None:
    rt = runtime()
    stage = HistoryStage(rt, Settings(history_root=str(tmp_path)), rt.metrics)
    segment = detection(1).segment  # the detections' segment and window (one minute at T0)
    window = closed("feedback", 0, 150, "judged").model_copy(update={"segment": segment, "window_start": T0})
    window = window.model_copy(
        update={"window_end": T0 + timedelta(minutes=1), "events": 170, "sample_size": 170}
    )
    early = detection(
        1
    )  # window_events 150, current_size 100: what its detection saw before the WindowClosed
    _write(stage, TOPICS.detections, [early])
    assert _rows(stage.store)[("feedback", 0)]["outcome"] is None  # the detections' row until then
    _write(stage, TOPICS.windows, [window])
    late = detection(2, size=400, at=T0 - timedelta(seconds=5)).model_copy(update={"revision": 1})
    _write(stage, TOPICS.detections, [late, early])
    (row,) = stage.store.read("windows").to_pylist()
    assert (row["feedback_events"], row["sample_size"], row["outcome"]) == (170, 170, "judged")
    assert row["first_detected_at"] == late.detected_at  # the earliest detection still says when
    detections = stage.store.read("detections").to_pylist()
    assert sorted((d["detection_id"], d["revision"]) for d in detections) == [("d-1", 0), ("d-2", 1)]
