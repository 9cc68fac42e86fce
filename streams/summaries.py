"""The summaries topic as the detect stage reads it: partials and progress-only records, or why not.

Ingest writes two shapes of record there (:mod:`streams.ingest_stage`): a
:class:`~streams.windows.Partial` as JSON, with the watermarks of the batch's
input partitions under ``progress``; and progress-only records,
``{"progress": {"<topic>|<partition>": <event time>}}``. Anything else is
rejected with a dead-letter reason (the runtime dead-letters it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, cast, get_args

from schemas.events import DeadLetterReason
from streams.ingest import Accepted, Rejected
from streams.watermarks import Source
from streams.windows import Partial, WindowKind

# The JSON type of each field of a summary (Partial.to_json); bool is an int in Python, and harmless here.
_SUMMARY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "segment": dict,
    "kind": str,
    "window_id": int,
    "first_seen": (int, float),
    "last_seen": (int, float),
    "seen": int,
    "capacity": int,
    "floor": (int, float),
    "keys": list,
    "rows": list,
}


@dataclass(frozen=True)
class ProgressOnly:
    """A progress-only record of the summaries topic: the watermarks of one ingest worker's sources."""

    progress: dict[Source, float]


def _progress_error(progress: Any) -> Rejected | None:
    """Why a summary's ``progress`` is not a map of source -> finite event time (None: it is)."""
    if not isinstance(progress, dict):
        return Rejected(
            DeadLetterReason.WRONG_TYPE, f"the summary's 'progress' is a {type(progress).__name__}"
        )
    for source, mark in progress.items():
        if isinstance(mark, bool) or not isinstance(mark, int | float):
            return Rejected(
                DeadLetterReason.WRONG_TYPE, f"the watermark of {source[:100]!r} is a {type(mark).__name__}"
            )
        if not math.isfinite(mark):
            return Rejected(
                DeadLetterReason.NON_FINITE_NUMBER, f"the watermark of {source[:100]!r} is {mark}"
            )
    return None


def decode_summary(message: Any, now: float) -> Accepted[Any] | Rejected:
    """A window summary (a :class:`Partial`, or a :class:`ProgressOnly`) from the summaries topic, or why not.

    ``Accepted[Any]``: its event is a Partial, not one of the pydantic events ingest decodes.
    """
    raw = message.value
    if not raw:
        return Rejected(DeadLetterReason.MALFORMED_JSON, "the summary has no value (empty or tombstone)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(DeadLetterReason.INVALID_UTF8, f"the summary is not UTF-8: {exc}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Rejected(DeadLetterReason.MALFORMED_JSON, f"the summary is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return Rejected(DeadLetterReason.NOT_AN_OBJECT, "a window summary must be a JSON object")
    if "progress" in data and (error := _progress_error(data["progress"])) is not None:
        return error
    if set(data) == {"progress"}:
        return Accepted(cast(Any, ProgressOnly(data["progress"])), text)
    for name, kind in _SUMMARY_FIELDS.items():
        if name not in data:
            return Rejected(DeadLetterReason.MISSING_FIELD, f"the summary has no {name!r}")
        if not isinstance(data[name], kind):
            return Rejected(
                DeadLetterReason.WRONG_TYPE, f"the summary's {name!r} is a {type(data[name]).__name__}"
            )
    if data["kind"] not in get_args(WindowKind):
        return Rejected(
            DeadLetterReason.INVALID_VALUE, f"the summary's kind {data['kind']!r} is not a window kind"
        )
    try:
        partial = Partial.from_json(data)
    except (TypeError, ValueError) as exc:  # e.g. keys and rows of different lengths, a key not a number
        return Rejected(DeadLetterReason.INVALID_VALUE, f"the summary's sample is not one: {exc}")
    return Accepted(cast(Any, partial), text)
