"""The monitoring history: what loopwatch saw and did, as Delta tables other tools can read.

Layout: ``<history_root>/<table>`` for each table in :data:`SCHEMAS`, each
partitioned by :data:`PARTITION_BY`. ``day`` is the UTC date of the row's own
time (the window's start, the alert's transition, the action's time, the dead
letter's minute), so a page that shows a time range reads only those days.

Nested values (measurements, labels, CloudEvent data, dead-letter samples)
are JSON text: every reader (DuckDB, Spark, pandas) can parse them, and the
schemas stay fixed when an event gains a field.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import pyarrow as pa

from schemas.events import Alert, CloudEvent, DeadLetter, Detection, Segment, WindowClosed

_TIME = pa.timestamp("us", tz="UTC")

_SEGMENT = [
    ("model", pa.string()),
    ("model_version", pa.string()),
    ("app", pa.string()),
    ("route", pa.string()),
    ("tenant", pa.string()),
    # Segment.key(): model|version|app|route|tenant, what the console's URLs name.
    ("segment", pa.string()),
]

#: One row per (segment, kind, window) closed, judged or not: its bounds and how much traffic it held.
WINDOWS = pa.schema(
    [
        ("day", pa.date32()),
        *_SEGMENT,
        ("window_start", _TIME),
        ("window_end", _TIME),
        ("events", pa.int64()),  # inference events of the window (an inference row's count)
        ("sample_size", pa.int64()),  # rows the detectors saw
        ("first_detected_at", _TIME),
        ("feedback_events", pa.int64()),  # feedback events of the window (a feedback row's count)
        ("kind", pa.string()),  # inference | feedback (null: written before kinds had rows of their own)
        ("revision", pa.int64()),  # the WindowClosed's revision (null: known from detections only)
        ("outcome", pa.string()),  # judged | reference | waiting | skipped (null: from detections only)
        ("reference", pa.string()),  # what it was compared with, when judged
        ("closed_at", _TIME),
        ("closed_by", pa.string()),  # watermark|idle_timeout|revision|reference|timer|count (null: not said)
        ("waited_for", pa.string()),  # the input it waited for last (null: none lagged, or not said)
    ]
)

#: Every Detection, ``ok`` ones included; ``detection_id`` is unique.
DETECTIONS = pa.schema(
    [
        ("day", pa.date32()),
        *_SEGMENT,
        ("window_start", _TIME),
        ("window_end", _TIME),
        ("detection_id", pa.string()),
        ("detector_id", pa.string()),
        ("detector_version", pa.string()),
        ("config_id", pa.string()),  # short hash of the detector's config
        ("verdict", pa.string()),  # ok | warning | drift
        ("statistic", pa.float64()),
        ("p_value", pa.float64()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("effect_size", pa.float64()),
        ("reference_size", pa.int64()),
        ("current_size", pa.int64()),
        ("measurements", pa.string()),  # JSON object of name -> number
        ("reference", pa.string()),
        ("report_path", pa.string()),  # the window's Evidently report, when one was written
        ("detected_at", _TIME),
        ("revision", pa.int64()),  # 0: the window's first verdict; n: its n-th late correction
        ("judged", pa.bool_()),  # false: too few samples to test (verdict ok, nothing measured)
        ("samples", pa.int64()),  # when not judged: the samples it had (the smaller side)
        ("min_samples", pa.int64()),  # when not judged: the samples it needed
        ("threshold_of", pa.string()),  # what `threshold` bounds: p_value | effect_size | statistic | score
        # The Benjamini-Hochberg adjusted p its verdict used (null: not corrected, or written before).
        ("p_value_adjusted", pa.float64()),
    ]
)

#: Every alert transition (firing, resolved); (fingerprint, status, changed_at) is unique.
ALERTS = pa.schema(
    [
        ("day", pa.date32()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("fingerprint", pa.string()),
        ("status", pa.string()),  # firing | resolved
        ("severity", pa.string()),
        ("summary", pa.string()),
        ("labels", pa.string()),  # JSON object
        ("detections", pa.string()),  # JSON list of detection ids
        ("starts_at", _TIME),
        ("ends_at", _TIME),
        ("changed_at", _TIME),  # starts_at when firing, ends_at when resolved
        ("runbook_url", pa.string()),
        ("window_start", _TIME),  # the windows of the detections behind it: the first one's start
        ("window_end", _TIME),  # ... and the last one's end
        ("decided_at", _TIME),  # when the decide stage published the transition (its record's timestamp)
        ("resolved_by", pa.string()),  # why a resolved alert resolved (null: firing, or written before)
    ]
)

#: Every CloudEvent loopwatch published (retrain, rollback, verification, promotion, ...); ``id`` is unique.
ACTIONS = pa.schema(
    [
        ("day", pa.date32()),
        ("model", pa.string()),
        ("id", pa.string()),
        ("type", pa.string()),
        ("source", pa.string()),
        ("subject", pa.string()),
        ("time", _TIME),
        ("topic", pa.string()),
        ("data", pa.string()),  # JSON object: the CloudEvent's data
    ]
)

#: Dead letters counted per (minute, reason, source topic), with a bounded sample of them.
#: Readers sum ``count`` over rows with the same key: one row per batch that saw them.
DEADLETTERS = pa.schema(
    [
        ("day", pa.date32()),
        ("minute", _TIME),
        ("reason", pa.string()),
        ("source_topic", pa.string()),  # null for outputs too large to write
        ("count", pa.int64()),
        ("samples", pa.string()),  # JSON list of at most a few DeadLetter objects
        ("batch_id", pa.string()),  # makes a redelivered batch's row replace itself, not add to it
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "windows": WINDOWS,
    "detections": DETECTIONS,
    "alerts": ALERTS,
    "actions": ACTIONS,
    "deadletters": DEADLETTERS,
}

PARTITION_BY: dict[str, list[str]] = {
    "windows": ["day", "model"],
    "detections": ["day", "model"],
    "alerts": ["day"],
    "actions": ["day"],
    "deadletters": ["day"],
}

#: What identifies a row: a batch merges on these, so a redelivered event adds no row.
#: The partition columns come first (they follow from the rest), so a merge reads only those partitions.
UNIQUE_BY: dict[str, tuple[str, ...]] = {
    "windows": ("day", "model", "segment", "kind", "window_start"),
    "detections": ("day", "model", "detection_id", "revision"),
    "alerts": ("day", "fingerprint", "status", "changed_at"),
    "actions": ("day", "id"),
    "deadletters": ("day", "minute", "reason", "source_topic", "batch_id"),
}

#: At most this many dead letters of one row are kept as samples, each with at most this many value bytes.
SAMPLES_PER_ROW = 3
SAMPLE_VALUE_BYTES = 2048
_SAMPLE_DETAIL = 10  # per-field errors kept in a sample
_SAMPLE_ERROR_CHARS = 1000


def config_id(config: Mapping[str, Any]) -> str:
    """A short stable hash of a detector's config (the same config gives the same id in every process)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def _segment(segment: Segment) -> dict[str, Any]:
    return {
        "model": segment.model,
        "model_version": segment.model_version,
        "app": segment.app,
        "route": segment.route,
        "tenant": segment.tenant,
        "segment": segment.key(),
    }


#: Which input a detection's window counted: the ``events`` column or ``feedback_events`` (None: unknown).
WindowInput = Literal["inference", "feedback"] | None


def window_row(detection: Detection, counted: WindowInput = "inference") -> dict[str, Any]:
    """The ``windows`` row one detection tells about: its bounds, sample size and the events it ``counted``.

    A detection's ``window_events`` counts only the input (``kind``) its window
    held, so the count goes into that input's column (into neither when
    unknown). What the window's WindowClosed says replaces these counts
    (:func:`merge_windows`); the detections still give ``first_detected_at``.
    """
    seen = detection.measurements.get("window_events")
    events = None if seen is None else int(seen)
    return {
        "day": _day(detection.window_start),
        **_segment(detection.segment),
        "window_start": detection.window_start,
        "window_end": detection.window_end,
        "events": events if counted == "inference" else None,
        "sample_size": detection.current_size,
        "first_detected_at": detection.detected_at,
        "feedback_events": events if counted == "feedback" else None,
        "kind": counted,
        "revision": None,
        "outcome": None,
        "reference": None,
        "closed_at": None,
        "closed_by": None,
        "waited_for": None,
    }


def window_closed_row(closed: WindowClosed) -> dict[str, Any]:
    """A closed window (judged, pinned as a reference, waiting or skipped) as its ``windows`` row."""
    return {
        "day": _day(closed.window_start),
        **_segment(closed.segment),
        "window_start": closed.window_start,
        "window_end": closed.window_end,
        "events": closed.events if closed.kind == "inference" else None,
        "sample_size": closed.sample_size,
        "first_detected_at": None,
        "feedback_events": closed.events if closed.kind == "feedback" else None,
        "kind": closed.kind,
        "revision": closed.revision,
        "outcome": closed.outcome,
        "reference": closed.reference,
        "closed_at": closed.closed_at,
        "closed_by": closed.closed_by,
        "waited_for": closed.waited_for,
    }


def not_judged(
    measurements: Mapping[str, float], reference_size: int, current_size: int
) -> tuple[int, int] | None:
    """(samples it had, samples it needed) when a detection tested nothing for too few samples, else None.

    A detector says so with ``too_few_samples`` in its measurements (drift,
    descriptors, quality), next to its ``min_samples`` and, for quality checks,
    both sides' counts; one with several checks prefixes each check's names
    (``cost.too_few_samples``) and is not judged only when none of its checks was.
    """
    checks = {k.split(".", 1)[0] for k in measurements if "." in k and not k.startswith("decided_by.")}
    several = any(k.startswith("decided_by.") for k in measurements)
    prefixes = sorted(f"{c}." for c in checks) if several else [""]
    if not prefixes or any(measurements.get(f"{p}too_few_samples") != 1.0 for p in prefixes):
        return None
    decider = next(
        (k.removeprefix("decided_by.") + "." for k in measurements if k.startswith("decided_by.")), ""
    )
    prefix = decider if several else ""
    sides = [measurements.get(f"{prefix}{side}_samples") for side in ("reference", "current")]
    known = [int(n) for n in sides if n is not None]
    had = min(known) if known else min(reference_size, current_size)
    return had, int(measurements.get(f"{prefix}min_samples", 0))


def detection_row(detection: Detection, threshold_of: str | None = None) -> dict[str, Any]:
    """A Detection as a ``detections`` row; ``threshold_of`` names the field its threshold bounds."""
    unjudged = not_judged(detection.measurements, detection.reference_size, detection.current_size)
    return {
        "day": _day(detection.window_start),
        **_segment(detection.segment),
        "window_start": detection.window_start,
        "window_end": detection.window_end,
        "detection_id": detection.detection_id,
        "detector_id": detection.detector_id,
        "detector_version": detection.detector_version,
        "config_id": config_id(detection.config),
        "verdict": detection.verdict,
        "statistic": detection.statistic,
        "p_value": detection.p_value,
        "score": detection.score,
        "threshold": detection.threshold,
        "effect_size": detection.effect_size,
        "reference_size": detection.reference_size,
        "current_size": detection.current_size,
        "measurements": json.dumps(detection.measurements, sort_keys=True),
        "reference": detection.reference,
        "report_path": detection.evidence.report_path,
        "detected_at": detection.detected_at,
        "revision": detection.revision,
        "judged": unjudged is None,
        "samples": None if unjudged is None else unjudged[0],
        "min_samples": None if unjudged is None else unjudged[1],
        "threshold_of": threshold_of,
        "p_value_adjusted": _adjusted(detection.measurements),
    }


def _adjusted(measurements: Mapping[str, float]) -> float | None:
    value = measurements.get("p_value_adjusted")
    return None if value is None else float(value)


def alert_row(alert: Alert, decided_at: datetime | None = None) -> dict[str, Any]:
    """An alert transition as an ``alerts`` row; ``decided_at``: when it was published (its record's time)."""
    changed_at = alert.ends_at if alert.status == "resolved" and alert.ends_at else alert.starts_at
    return {
        "day": _day(changed_at),
        "model": alert.labels.get("model"),
        "model_version": alert.labels.get("model_version"),
        "fingerprint": alert.fingerprint,
        "status": alert.status,
        "severity": alert.severity,
        "summary": alert.summary,
        "labels": json.dumps(alert.labels, sort_keys=True),
        "detections": json.dumps(alert.detections),
        "starts_at": alert.starts_at,
        "ends_at": alert.ends_at,
        "changed_at": changed_at,
        "runbook_url": alert.runbook_url,
        "window_start": min((v.window_start for v in alert.values), default=None),
        "window_end": max((v.window_end for v in alert.values), default=None),
        "decided_at": decided_at,
        "resolved_by": alert.resolved_by,
    }


def action_row(event: CloudEvent, topic: str) -> dict[str, Any]:
    """A published CloudEvent (read from ``topic``) as an ``actions`` row."""
    model = event.data.get("model")
    return {
        "day": _day(event.time),
        "model": model if isinstance(model, str) else event.subject,
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        "time": event.time,
        "topic": topic,
        "data": json.dumps(event.data, sort_keys=True, default=str),
    }


#: What a WindowClosed says of its window: its row's values, replaced by a higher revision.
CLOSED_COLUMNS = (
    "window_end",
    "events",
    "feedback_events",
    "sample_size",
    "revision",
    "outcome",
    "reference",
    "closed_at",
    "closed_by",
    "waited_for",
)


def merge_windows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (segment, kind, window): what its latest WindowClosed says, the first detection time.

    A window's WindowClosed rows (``outcome`` set) replace one another by
    revision; rows from detections only give the first detection time, and
    their counts (the most events and rows any detection saw) stand only
    until a WindowClosed comes. The same rule is the table merge's update, so
    the result does not depend on how the events were split into batches.
    """
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[column] for column in UNIQUE_BY["windows"])
        seen = merged.get(key)
        if seen is None:
            merged[key] = dict(row)
            continue
        if row["outcome"] is not None and (seen["outcome"] is None or row["revision"] > seen["revision"]):
            seen.update({column: row[column] for column in CLOSED_COLUMNS})
        elif row["outcome"] is None and seen["outcome"] is None:
            for column in ("events", "feedback_events", "sample_size"):
                if row[column] is not None and (seen[column] is None or row[column] > seen[column]):
                    seen[column] = row[column]
        times = [t for t in (seen["first_detected_at"], row["first_detected_at"]) if t is not None]
        seen["first_detected_at"] = min(times, default=None)
    return list(merged.values())


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter as read from the dead-letter topic, with where it was read."""

    partition: int
    offset: int
    letter: DeadLetter


def deadletter_rows(letters: Sequence[Letter]) -> list[dict[str, Any]]:
    """Dead letters counted per (minute, reason, source topic), each row with its first few as samples.

    ``batch_id`` names the offsets counted (a hash of each partition's range), so
    the same dead letters give the same rows however often they are read.
    """
    if not letters:
        return []
    ranges: dict[int, list[int]] = {}
    for item in letters:
        ranges.setdefault(item.partition, []).append(item.offset)
    spans = ",".join(f"{p}@{min(o)}-{max(o)}" for p, o in sorted(ranges.items()))
    batch_id = hashlib.sha256(spans.encode()).hexdigest()[:16]
    groups: dict[tuple[datetime, str, str | None], list[Letter]] = {}
    for item in sorted(letters, key=lambda i: (i.partition, i.offset)):
        letter = item.letter
        minute = letter.received_at.astimezone(UTC).replace(second=0, microsecond=0)
        source = letter.source.topic if letter.source else None
        groups.setdefault((minute, letter.reason.value, source), []).append(item)
    return [
        {
            "day": minute.date(),
            "minute": minute,
            "reason": reason,
            "source_topic": source,
            "count": len(group),
            "samples": json.dumps([_sample(item.letter) for item in group[:SAMPLES_PER_ROW]]),
            "batch_id": batch_id,
        }
        for (minute, reason, source), group in groups.items()
    ]


def _sample(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter cut to a bounded size: still a DeadLetter (its value is a prefix, as on the topic)."""
    value = base64.b64decode(letter.value_b64)[:SAMPLE_VALUE_BYTES]
    cut = letter.model_copy(
        update={
            "value_b64": base64.b64encode(value).decode(),
            "detail": letter.detail[:_SAMPLE_DETAIL],
            "error": letter.error[:_SAMPLE_ERROR_CHARS],
        }
    )
    return dict(cut.model_dump(mode="json"))
