"""Scale-out traffic and its truth, for ``bench/windows_bench.py`` and ``tests/test_scaleout*.py``.

One model served by four versions in event-time windows over 8 partitions: a
stable version, a canary that is clearly worse (about 70% of its feedback
negative against 15%), and two more versions as good as stable. The text and
the feedback are real: a request with negative feedback is answered with the
HH-RLHF reply people rejected and gets a thumbs-down, one with positive
feedback with the reply they chose and a thumbs-up. Event times are spread
over ``windows`` windows from a window boundary in the recent past; a trailing
burst one window later, on every partition and version, moves every segment
and every input partition past the last measured window, so that it closes.

:class:`Sender` replays the traffic paced by event time (``speed`` times
faster), optionally holding one partition's events back by ``hold_seconds``
(a slow producer: they are sent late, in bursts, with their original event time).
:class:`Truth` counts the events of each (version, kind, window); :func:`score`
compares it with what the workers published: each window's final verdict (the
Detections of its highest revision), and the rollback and retrain requests.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from kafka.partitioner.default import murmur2

from core.settings import Settings, Topics
from schemas.events import CloudEvent, Detection
from services import sample_data
from services.replay import Replayer

Kind = Literal["inference", "feedback"]
#: (model version, kind, window id): one window of one segment (one model, app, route and tenant).
WindowKey = tuple[str, Kind, int]

MODEL = "scaleout-bot"
STABLE, CANARY = "v1", "v2"
VERSIONS = (STABLE, CANARY, "v3", "v4")
NEGATIVE = {CANARY: 0.70}  # the other versions: 0.15
PARTITIONS = 8
WINDOW_SECONDS = 10.0
#: The feedback's delay after its reply (sample_data.feedback_events sets it).
FEEDBACK_DELAY = 5.0
#: Seconds between two sends of the paced replay.
STEP = 0.02
ROLLBACK = "io.loopwatch.rollback.requested"
RETRAIN = "io.loopwatch.retrain.requested"

#: Fast detectors only: the run measures window completeness, and the embedding detectors'
#: child would take most of the two cores. Text length on replies, both feedback checks.
_KIND_OF: dict[str, Kind] = {
    "drift.text_length.v1": "inference",
    "quality.negative_feedback.v1": "feedback",
    "quality.canary.v1": "feedback",
}
DETECTORS = [
    {
        "detector_id": detector,
        "kind": kind,
        "config": {"column": "response_chars"} if kind == "inference" else {},
    }
    for detector, kind in _KIND_OF.items()
]


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition the producer's default partitioner (murmur2, as Java's) picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Planned:
    """One message to send: its event time (epoch seconds), version served, topic kind, partition, value."""

    at: float
    version: str
    kind: Kind
    partition: int
    value: bytes


@dataclass
class Truth:
    """Events per (version, kind, window), and which windows are measured."""

    counts: Counter[WindowKey] = field(default_factory=Counter)
    first_window: int = 0
    windows: int = 0

    def add(self, version: str, kind: Kind, at: float) -> None:
        """Count one event of ``version`` at event time ``at``."""
        self.counts[version, kind, int(at // WINDOW_SECONDS)] += 1

    def measured(self) -> dict[WindowKey, int]:
        """The windows a correct pipeline judges on all their events, with their true counts.

        The trailing window is left out (it closes only when the segment goes quiet), and so is
        the stable version's first window of each kind: it is pinned as the reference, not judged.
        """
        last = self.first_window + self.windows
        return {
            key: count
            for key, count in sorted(self.counts.items())
            if self.first_window <= key[2] < last and not (key[0] == STABLE and key[2] == self.first_window)
        }


@dataclass
class Traffic:
    """The messages of one run, in event-time order, with their truth."""

    start: float
    messages: list[Planned]
    truth: Truth
    model: str = MODEL

    def hold_out(self, version: str, kind: Kind, window: int, count: int) -> Traffic:
        """Take ``count`` messages of one measured window (0 is the first) out, to send late.

        The truth still counts them: a correct pipeline counts them in once they come.
        """
        window_id = self.truth.first_window + window
        taken = [
            m
            for m in self.messages
            if (m.version, m.kind, int(m.at // WINDOW_SECONDS)) == (version, kind, window_id)
        ][:count]
        gone = {id(m) for m in taken}
        self.messages = [m for m in self.messages if id(m) not in gone]
        return Traffic(self.start, taken, self.truth, self.model)


def build(
    data_dir: Path,
    *,
    inference: int,
    feedback: int,
    windows: int,
    seed: int = 17,
    model: str = MODEL,
    after: float = 0.0,
) -> Traffic:
    """``inference`` requests (``feedback`` rated) over ``windows`` windows, and the trailing burst.

    ``after``: the latest event time of traffic sent before to the same topics. An input
    partition's watermark never goes back, so traffic from before it would be late on
    arrival (its windows closed by the first partial): this traffic starts a window later.
    """
    rng = random.Random(seed)
    pairs = [pair for _, pair in zip(range(2_000), sample_data.hh_rlhf(data_dir), strict=False)]
    # A window boundary a few minutes back: well inside the accepted timestamp range.
    start = (time.time() // WINDOW_SECONDS - 30) * WINDOW_SECONDS
    start = max(start, (after // WINDOW_SECONDS + 2) * WINDOW_SECONDS)
    span = windows * WINDOW_SECONDS
    rated = set(rng.sample(range(inference), feedback))
    truth = Truth(first_window=int(start // WINDOW_SECONDS), windows=windows)
    run = uuid.uuid4().hex[:6]
    messages: list[Planned] = []

    def serve(n: int, version: str, at: float, thumbs: bool | None) -> None:
        chosen, rejected = pairs[n % len(pairs)]
        negative = thumbs is False or (thumbs is None and rng.random() < NEGATIVE.get(version, 0.15))
        exchange = replace(
            rejected if negative else chosen, request_id=f"{model}-{run}-{n}", thumbs_up=thumbs
        )
        moment = datetime.fromtimestamp(at, UTC)
        at = moment.timestamp()  # in whole microseconds, as the event's timestamp says (and ingest reads)
        event = sample_data.inference_event(exchange, moment, rng, version=version)
        event["model"]["name"] = model
        partition = partition_of(exchange.request_id.encode())
        messages.append(Planned(at, version, "inference", partition, json.dumps(event).encode()))
        truth.add(version, "inference", at)
        for fb in sample_data.feedback_events(exchange, moment):
            later = datetime.fromisoformat(fb["timestamp"]).timestamp()
            messages.append(Planned(later, version, "feedback", partition, json.dumps(fb).encode()))
            truth.add(version, "feedback", later)

    for n in range(inference):
        version = VERSIONS[n % len(VERSIONS)]
        thumbs = (rng.random() >= NEGATIVE.get(version, 0.15)) if n in rated else None
        serve(n, version, start + (n + rng.random()) * span / inference, thumbs)
    # The trailing burst: one rated request per (partition, version), FEEDBACK_DELAY + 1 s after
    # the last measured window, so its feedback also passes the feedback that window caused.
    n, tail = inference, start + span + FEEDBACK_DELAY + 1
    for partition in range(PARTITIONS):
        for version in VERSIONS:
            while partition_of(f"{model}-{run}-{n}".encode()) != partition:
                n += 1
            serve(n, version, tail, True)
            n += 1
    messages.sort(key=lambda m: m.at)
    return Traffic(start, messages, truth, model)


def schedule(
    traffic: Traffic, speed: float, held_partition: int | None, hold_seconds: float
) -> list[tuple[float, Planned]]:
    """When to send each message (seconds from the start), in order: by event time, one partition late.

    The held partition's producer is slow and bursty: it sends every ``hold_seconds`` what it has
    held back since one more period before, so each of its messages goes out between one and two
    periods late (a steady delay keeps partials coming, and the timer rule would wait for them).
    """

    def due(message: Planned) -> float:
        at = (message.at - traffic.start) / speed
        if message.partition != held_partition or hold_seconds <= 0:
            return at
        return (at // hold_seconds + 2) * hold_seconds

    return sorted(((due(m), m) for m in traffic.messages), key=lambda item: item[0])


class Sender:
    """Replays traffic paced by event time; one partition's messages may be held back."""

    def __init__(
        self,
        traffic: Traffic,
        bootstrap: str,
        topics: Topics,
        *,
        speed: float = 1.0,
        held_partition: int | None = None,
        hold_seconds: float = 1.5,
    ) -> None:
        self.topics = topics
        self.replayer = Replayer(Settings(kafka_bootstrap=bootstrap))
        self.queue = schedule(traffic, speed, held_partition, hold_seconds)
        self.sent = 0
        self.began: float | None = None

    @property
    def duration(self) -> float:
        """Seconds of wall time the whole replay takes."""
        return self.queue[-1][0] if self.queue else 0.0

    def send_until(self, fraction: float = 1.0) -> None:
        """Send (paced) up to ``fraction`` of the replay's duration; call again to go on."""
        if self.began is None:
            self.began = time.monotonic()
        until = fraction * self.duration
        step = 0.0
        while self.sent < len(self.queue) and self.queue[self.sent][0] <= until:
            # At most one delivery round trip per STEP: a flush per message would take the cores.
            step = max(self.queue[self.sent][0], step + STEP)
            ahead = self.began + step - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the producer, not waiting for a result
            # Everything due by now goes out together, then is delivered before the next step.
            now = time.monotonic() - self.began
            while self.sent < len(self.queue) and self.queue[self.sent][0] <= min(now, until):
                message = self.queue[self.sent][1]
                topic = self.topics.inference if message.kind == "inference" else self.topics.feedback
                self.replayer.send(topic, message.value)
                self.sent += 1
            self.replayer.flush()

    def close(self) -> None:
        """Deliver what is queued and close the producer."""
        self.replayer.close()


def worker_settings(workdir: Path, models: Iterable[str] = (MODEL,), **extra: Any) -> dict[str, Any]:
    """The workers' settings for scale-out runs of ``models`` (WorkerStack keyword arguments)."""
    detectors = workdir / "detectors.yaml"
    detectors.write_text(yaml.safe_dump(DETECTORS))
    return {
        "partitions": PARTITIONS,
        "window_seconds": WINDOW_SECONDS,
        "detectors_file": detectors,
        "stable_versions": json.dumps(dict.fromkeys(models, STABLE)),
        "curation": "false",
        "history": "false",
        "otlp": "false",
        **extra,
    }


@dataclass
class Verdicts:
    """The final verdict of each window: the window_events its highest revision's Detections counted."""

    events: dict[WindowKey, set[float]] = field(default_factory=dict)
    revision: dict[WindowKey, int] = field(default_factory=dict)
    #: What the first verdict (revision 0) counted: the verdict actions are first taken on.
    first: dict[WindowKey, set[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[Any], model: str = MODEL) -> Verdicts:
        """From the records of the detections topic (other models' are skipped)."""
        verdicts = cls()
        for record in records:
            detection = Detection.model_validate_json(record.value)
            kind = _KIND_OF.get(detection.detector_id)
            if detection.segment.model != model or kind is None:
                continue
            key = (
                detection.segment.model_version,
                kind,
                int(detection.window_start.timestamp() // WINDOW_SECONDS),
            )
            events = detection.measurements["window_events"]
            if detection.revision == 0:
                verdicts.first.setdefault(key, set()).add(events)
            if detection.revision > verdicts.revision.get(key, -1):
                verdicts.revision[key], verdicts.events[key] = detection.revision, {events}
            elif detection.revision == verdicts.revision[key]:
                verdicts.events[key].add(events)
        return verdicts

    def final(self, key: WindowKey) -> float | None:
        """The window's final count (None: not judged; the smallest if its detectors disagreed)."""
        found = self.events.get(key)
        return min(found) if found else None


@dataclass(frozen=True)
class Actions:
    """Rollback and retrain requests: distinct requests per incident (type, model, version)."""

    requests: dict[tuple[str, str, str], set[str]]

    @classmethod
    def of(cls, records: Iterable[Any], model: str = MODEL) -> Actions:
        """From the records of the rollback and retrain request topics (other types and models skipped)."""
        requests: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for record in records:
            event = CloudEvent.model_validate_json(record.value)
            if event.type in (ROLLBACK, RETRAIN) and event.subject == model:
                data = event.data if isinstance(event.data, dict) else {}
                version = str(data.get("from_version") or "")
                requests[event.type, event.subject or "", version].add(event.id)
        return cls(dict(requests))

    @property
    def duplicates(self) -> int:
        """Requests beyond the first for one incident."""
        return sum(len(ids) - 1 for ids in self.requests.values())

    def rollbacks(self, version: str, model: str = MODEL) -> int:
        """Distinct rollback requests away from ``version``."""
        return len(self.requests.get((ROLLBACK, model, version), ()))


@dataclass(frozen=True)
class Score:
    """How the published verdicts compare with the truth."""

    windows: int
    complete: int
    judged_over_true: list[float]
    wrong: dict[WindowKey, tuple[int, float | None]]
    #: Windows whose first verdict (revision 0) already counted every event, and windows revised.
    first_complete: int = 0
    revised: int = 0

    @property
    def fraction(self) -> float:
        """Windows whose final verdict counted every one of their events."""
        return self.complete / self.windows if self.windows else 0.0

    def spread(self) -> tuple[float, float, float]:
        """Min, median and max of events judged / true events (a window not judged counts 0)."""
        ratios = self.judged_over_true or [0.0]
        return min(ratios), statistics.median(ratios), max(ratios)


def score(truth: Truth, verdicts: Verdicts) -> Score:
    """Each measured window's final verdict against its true count."""
    measured = truth.measured()
    wrong: dict[WindowKey, tuple[int, float | None]] = {}
    ratios = []
    for key, count in measured.items():
        judged = verdicts.final(key)
        ratios.append((judged or 0.0) / count)
        if verdicts.events.get(key) != {count}:  # detectors of one verdict that disagree are wrong too
            wrong[key] = (count, judged)
    first = sum(1 for key, count in measured.items() if verdicts.first.get(key) == {count})
    revised = sum(1 for key in measured if verdicts.revision.get(key, 0) > 0)
    return Score(len(measured), len(measured) - len(wrong), ratios, wrong, first, revised)


def missing(truth: Truth, verdicts: Verdicts) -> list[WindowKey]:
    """Measured windows with no verdict yet."""
    return [key for key in truth.measured() if verdicts.final(key) is None]
