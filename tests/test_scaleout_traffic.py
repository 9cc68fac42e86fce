"""The scale-out traffic generator's truth, and the scoring of verdicts against it (no broker)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from schemas.events import CloudEvent, Detection, Segment
from tests.scaleout_traffic import (
    CANARY,
    MODEL,
    PARTITIONS,
    ROLLBACK,
    STABLE,
    VERSIONS,
    WINDOW_SECONDS,
    Actions,
    Traffic,
    Truth,
    Verdicts,
    build,
    partition_of,
    schedule,
    score,
)


def _traffic(data_dir: Path) -> Traffic:
    return build(data_dir, inference=800, feedback=400, windows=2, seed=3)


def test_the_truth_counts_every_message_sent_and_the_canary_is_clearly_worse(data_dir: Path) -> None:
    traffic = _traffic(data_dir)
    counted: Counter[tuple[str, str, int]] = Counter()
    thumbs: dict[str, list[bool]] = {version: [] for version in VERSIONS}
    for message in traffic.messages:
        event = json.loads(message.value)
        assert partition_of(event["request_id"].encode()) == message.partition
        assert datetime.fromisoformat(event["timestamp"]).timestamp() == message.at
        counted[message.version, message.kind, int(message.at // WINDOW_SECONDS)] += 1
        if message.kind == "feedback":
            thumbs[message.version].append(event["value"])
    assert counted == traffic.truth.counts
    negative = {version: values.count(False) / len(values) for version, values in thumbs.items()}
    assert negative[CANARY] > 0.55 and all(negative[v] < 0.3 for v in VERSIONS if v != CANARY), negative
    # The trailing burst reaches every partition, one window after the last measured one.
    last = traffic.truth.first_window + traffic.truth.windows
    assert {m.partition for m in traffic.messages if int(m.at // WINDOW_SECONDS) > last} == set(
        range(PARTITIONS)
    )
    measured = traffic.truth.measured()
    # 2 windows x 4 versions x 2 kinds, less the stable version's first two (its pinned reference).
    assert len(measured) == 14 and (STABLE, "inference", traffic.truth.first_window) not in measured
    assert sum(n for (_, kind, _), n in measured.items() if kind == "inference") == 800 - 100


def test_late_messages_are_held_out_but_still_counted_and_a_held_partition_is_sent_late(
    data_dir: Path,
) -> None:
    traffic = _traffic(data_dir)
    before = len(traffic.messages)
    late = traffic.hold_out(CANARY, "feedback", 1, 5)
    assert len(late.messages) == 5 and len(traffic.messages) == before - 5
    assert {(m.version, m.kind) for m in late.messages} == {(CANARY, "feedback")}
    assert late.truth is traffic.truth
    due = schedule(traffic, 2.0, 3, 1.5)
    assert [d for d, _ in due] == sorted(d for d, _ in due)
    for d, m in due:
        on_time = (m.at - traffic.start) / 2
        # Partition 3 goes out in bursts every 1.5 s, each message 1.5 to 3 s late; the others on time.
        assert on_time + 1.5 < d <= on_time + 3.0 and d % 1.5 == 0 if m.partition == 3 else d == on_time


def _detection(
    version: str, window: int, events: float, revision: int = 0, detector: str = "quality.canary.v1"
):
    start = datetime.fromtimestamp(window * WINDOW_SECONDS, UTC)
    detection = Detection(
        detection_id=f"d-{version}-{window}-{revision}-{detector}",
        detector_id=detector,
        detector_version="1",
        config={},
        segment=Segment(model=MODEL, model_version=version),
        window_start=start,
        window_end=start,
        reference_size=1,
        current_size=1,
        verdict="ok",
        measurements={"window_events": events},
        reference="stable",
        detected_at=start,
        revision=revision,
    )
    return SimpleNamespace(value=detection.model_dump_json().encode())


def test_a_window_is_complete_when_its_highest_revision_counts_every_event() -> None:
    truth = Truth(first_window=10, windows=1)
    for version, true in ((CANARY, 50), ("v3", 40), ("v4", 30)):
        truth.counts[version, "feedback", 10] = true
    records = [
        _detection(CANARY, 10, 38),
        _detection(CANARY, 10, 50, revision=1),  # a revision corrects it
        _detection("v3", 10, 40),
        _detection("v3", 10, 41, detector="quality.negative_feedback.v1"),  # its detectors disagree
    ]  # v4: never judged
    result = score(truth, Verdicts.of(records))
    assert (result.complete, result.windows) == (1, 3)
    assert result.wrong == {("v3", "feedback", 10): (40, 40.0), ("v4", "feedback", 10): (30, None)}
    assert result.spread() == (0.0, 1.0, 1.0)
    assert (result.first_complete, result.revised) == (0, 1)  # the canary's first verdict missed 12


def test_duplicate_actions_are_distinct_requests_beyond_one_per_incident() -> None:
    def request(event_id: str, version: str) -> SimpleNamespace:
        data = {"from_version": version, "target_version": STABLE}
        event = CloudEvent(
            id=event_id, source="loopwatch", type=ROLLBACK, subject=MODEL, time=datetime.now(UTC), data=data
        )
        return SimpleNamespace(value=event.model_dump_json().encode())

    # The same request twice (at-least-once) is one; a second id for the same incident is a duplicate.
    actions = Actions.of(
        [request("a", CANARY), request("a", CANARY), request("b", CANARY), request("c", "v3")]
    )
    assert (actions.rollbacks(CANARY), actions.rollbacks("v3"), actions.duplicates) == (2, 1, 1)
