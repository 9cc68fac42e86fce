"""A history written the way the stream writes it: WindowClosed events, real detector findings, revisions.

One canary segment, four one-minute windows, every event built with the
real models (``WindowClosed``, ``Detection`` via the detect stage's
``Judge`` and ``to_detection`` on real HH-RLHF traffic) and turned into rows by
the history stage itself:

- window 0 pinned as the reference (inference and feedback): no detection;
- window 1 judged: the inference detectors on 50 requests, the negative-feedback
  rate drifting at revision 0 and revised to ok by late feedback (revision 1);
- window 2 feedback only (late feedback), 7 thumbs: too few to judge;
- window 3 24 requests, fewer than the detectors' 30: not judged, the last window.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from faust.types.tuples import Message

from core.settings import Settings
from detectors import frame
from retrain_trigger.alerts import alert_value
from schemas.events import Alert, Detection, InferenceLog, Segment, WindowClosed
from services.sample_data import hh_rlhf, inference_event
from streams.detect import DetectorSpec, Judge, Reference, to_detection
from streams.history_stage import HistoryStage
from streams.ingest import Accepted
from streams.runtime import Batch
from streams.windows import ClosedWindow
from tests.test_runtime import runtime

SEGMENT = Segment(model="verdict-bot", model_version="v2", app="support", route="chat")
KEY = SEGMENT.key()
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
DATA = Settings().sample_data  # ../shared/data, or LOOPWATCH_SAMPLE_DATA
INFERENCE_SPECS = [
    DetectorSpec("toxicity.profanity.v1", "inference", {"column": "response"}),  # its threshold is alpha
    DetectorSpec("drift.script_mix.v1", "inference", {"column": "prompt"}),  # chi-square vs min effect
    DetectorSpec("quality.latency.v1", "inference"),  # the observed p95 vs its SLO
]
FEEDBACK_SPECS = [DetectorSpec("quality.negative_feedback.v1", "feedback")]
SMALL_SPECS = INFERENCE_SPECS[1:]  # those with a min_samples (profanity judges any window)
FIRED_AT = START + 2 * MINUTE + timedelta(seconds=3)  # when the firing alert was published
DECIDED_AT = START + 9 * MINUTE  # when the resolve timeout resolved the alert (not a window end)


def _requests(n: int, skip: int) -> list[dict[str, Any]]:
    rng = random.Random(skip)
    rows = []
    for chosen, _ in itertools.islice(hh_rlhf(DATA), skip, skip + n):
        event = InferenceLog.model_validate(inference_event(chosen, START, rng))
        rows.append(frame.log_row(event, frame.describe(event)))
    return rows


def _thumbs(negative: int, total: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {frame.REQUEST_ID: f"{prefix}-{i}", frame.FEEDBACK_KIND: "thumbs", frame.NEGATIVE: i < negative}
        for i in range(total)
    ]


def _judged(specs: list[DetectorSpec], reference: list[dict[str, Any]], rows: list[dict[str, Any]], n: int):
    """The detections the detect stage publishes for window ``n`` of the segment."""
    kind = specs[0].kind
    window = ClosedWindow(
        SEGMENT.model_dump(), kind, START + n * MINUTE, START + (n + 1) * MINUTE, len(rows), rows
    )
    pinned = Reference(f"pinned|{kind}|{KEY}", pd.DataFrame(reference), len(reference))
    return [to_detection(j, window, pinned) for j in Judge(specs).run(window, pinned, specs)]


def closed(kind: str, n: int, events: int, outcome: str, revision: int = 0) -> WindowClosed:
    """The WindowClosed of window ``n``, as the detect stage publishes it."""
    return WindowClosed(
        segment=SEGMENT,
        kind=kind,
        window_start=START + n * MINUTE,
        window_end=START + (n + 1) * MINUTE,
        events=events,
        sample_size=events,
        revision=revision,
        outcome=outcome,
        reference=None if outcome == "reference" else f"pinned|{kind}|{KEY}",
        closed_at=START + (n + 1) * MINUTE + timedelta(seconds=5 + 30 * revision),
    )


def events() -> dict[str, list[Any]]:
    """Per topic name (as in Settings().topics), the events of the fixture, in order."""
    reference, thumbs = _requests(40, 0), _thumbs(4, 40, "ref")
    drifting = _judged(FEEDBACK_SPECS, thumbs, _thumbs(30, 50, "w1"), 1)
    revised = [
        d.model_copy(update={"revision": 1, "detection_id": d.detection_id + "-r1"})
        for d in _judged(FEEDBACK_SPECS, thumbs, _thumbs(6, 60, "w1"), 1)
    ]
    detections: list[Detection] = [
        *_judged(INFERENCE_SPECS, reference, _requests(50, 40), 1),
        *drifting,
        *revised,
        *_judged(FEEDBACK_SPECS, thumbs, _thumbs(3, 7, "w2"), 2),
        *_judged(SMALL_SPECS, reference, _requests(24, 90), 3),
    ]
    windows = [
        closed("inference", 0, 40, "reference"),
        closed("feedback", 0, 40, "reference"),
        closed("inference", 1, 50, "judged"),
        closed("feedback", 1, 50, "judged"),
        closed("feedback", 1, 60, "judged", revision=1),
        closed("feedback", 2, 7, "judged"),
        closed("inference", 3, 24, "judged"),
    ]
    firing = Alert(
        fingerprint="fp-verdict",
        status="firing",
        severity="critical",
        summary="negative feedback of verdict-bot v2 up",
        labels={"alertname": "quality", "model": SEGMENT.model, "model_version": SEGMENT.model_version},
        starts_at=START + MINUTE,
        detections=[d.detection_id for d in drifting],
        values=[alert_value(d) for d in drifting],
    )
    resolved = firing.model_copy(update={"status": "resolved", "ends_at": DECIDED_AT})
    topics = Settings().topics
    return {topics.windows: windows, topics.detections: detections, topics.alerts: [firing, resolved]}


def write_verdicts_history(root: Path) -> dict[str, list[Any]]:
    """Write the fixture's events as the history stage does (its rows, its store); returns the events."""
    return write_events(root, events())


def write_events(root: Path, written: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Write events (per topic name) as the history stage does (its rows, its store); returns them."""
    rt = runtime()
    stage = HistoryStage(rt, Settings(history_root=str(root)), rt.metrics)
    for topic, items in written.items():
        # The records' Kafka timestamps (seconds): an alert's "decided at" is when its record was written.
        stamps = [FIRED_AT.timestamp(), DECIDED_AT.timestamp()] if topic == Settings().topics.alerts else None
        messages = [
            Message(
                topic, 0, n, stamps[n] if stamps else 0.0, 0, [], None, e.model_dump_json().encode(), None
            )
            for n, e in enumerate(items)
        ]
        accepted = [(m, a) for m in messages if isinstance(a := stage.inputs[topic](m, 0.0), Accepted)]
        assert len(accepted) == len(items), topic
        stage.store.write(stage.rows(Batch(topic, messages, accepted, 0.0)), now=START)
    return written
