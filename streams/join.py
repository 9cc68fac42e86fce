"""The feedback join as pure state transitions over one request_id.

The stream keeps one :class:`JoinState` per request_id in a changelog-backed
faust table. Feedback may arrive before its inference (it waits), after it
(it joins at once), twice (the duplicate is counted, not re-emitted) or never
matched (after ``ttl`` it is handed back as :class:`UnmatchedFeedback`, so
nothing is lost). States are plain JSON-able dicts; :func:`encode` turns one
into the compact bytes that the store and the changelog hold.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypedDict, cast

import lz4.block
from pydantic_core import from_json, to_json

from schemas.events import Feedback, InferenceLog, JoinedFeedback, SourceRef, UnmatchedFeedback
from streams.ingest import ReadAt


class PendingFeedback(TypedDict):
    """Feedback waiting for its inference."""

    feedback: str  # the Feedback JSON
    source: tuple[str, int, int]


class JoinState(TypedDict):
    """What the table holds for one request_id."""

    partition: int  # source partition, so expiry can write the changelog from a timer
    first_seen: float  # wall-clock seconds when this request_id was first seen
    inference: str | None  # the InferenceLog JSON, once it arrived
    inference_source: tuple[str, int, int] | None
    pending: list[PendingFeedback]
    seen: list[str]  # feedback event_ids already taken, for de-duplication


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The new state to store, and the joined records to publish."""

    state: JoinState
    joined: list[JoinedFeedback] = field(default_factory=list)
    duplicate: bool = False


def _new_state(partition: int, now: float) -> JoinState:
    return JoinState(
        partition=partition,
        first_seen=now,
        inference=None,
        inference_source=None,
        pending=[],
        seen=[],
    )


def _place(source: ReadAt) -> tuple[str, int, int]:
    return (source.topic, source.partition, source.offset)


def _ref(source: tuple[str, int, int] | list) -> SourceRef:
    topic, partition, offset = source
    return SourceRef(topic=topic, partition=partition, offset=offset)


def _join(
    log: InferenceLog, state: JoinState, feedback: Feedback, feedback_source: SourceRef, now: float
) -> JoinedFeedback:
    assert state["inference_source"] is not None
    return JoinedFeedback(
        request_id=log.request_id,
        inference=log,
        feedback=feedback,
        inference_source=_ref(state["inference_source"]),
        feedback_source=feedback_source,
        joined_at=datetime.fromtimestamp(now, UTC),
    )


def on_inference(
    state: JoinState | None,
    inference_json: str,
    log: InferenceLog,
    source: ReadAt,
    now: float,
    *,
    partition: int | None = None,
) -> JoinResult:
    """An inference arrived: remember it, and join any feedback that was waiting for it.

    ``partition`` is where a new state lives when that is not the source's (a re-keyed copy).
    """
    state = state or _new_state(source.partition if partition is None else partition, now)
    if state["inference"] is not None:
        # A redelivery (at-least-once) or a reused request_id: the first one wins.
        return JoinResult(state, duplicate=True)
    state["inference"] = inference_json
    state["inference_source"] = _place(source)
    joined = [
        _join(log, state, Feedback.model_validate_json(p["feedback"]), _ref(p["source"]), now)
        for p in state["pending"]
    ]
    state["pending"] = []
    return JoinResult(state, joined)


def on_feedback(
    state: JoinState | None,
    feedback_json: str,
    feedback: Feedback,
    source: ReadAt,
    now: float,
    *,
    partition: int | None = None,
) -> JoinResult:
    """Feedback arrived: join it if its inference is known, else keep it waiting (``partition``: as above)."""
    state = state or _new_state(source.partition if partition is None else partition, now)
    if feedback.event_id in state["seen"]:
        return JoinResult(state, duplicate=True)
    state["seen"].append(feedback.event_id)
    if state["inference"] is None:
        state["pending"].append(PendingFeedback(feedback=feedback_json, source=_place(source)))
        return JoinResult(state)
    log = InferenceLog.model_validate_json(state["inference"])
    ref = source if isinstance(source, SourceRef) else _ref(_place(source))  # ingest passes its message
    return JoinResult(state, [_join(log, state, feedback, ref, now)])


def is_expired(first_seen: float, now: float, ttl: float) -> bool:
    """True once a request_id first seen at ``first_seen`` has waited longer than ``ttl`` seconds."""
    return now - first_seen > ttl


def unmatched(state: JoinState, request_id: str, now: float) -> list[UnmatchedFeedback]:
    """The feedback of an expired state that never met its inference."""
    return [
        UnmatchedFeedback(
            request_id=request_id,
            feedback=Feedback.model_validate_json(p["feedback"]),
            feedback_source=_ref(p["source"]),
            first_seen=datetime.fromtimestamp(state["first_seen"], UTC),
            expired_at=datetime.fromtimestamp(now, UTC),
        )
        for p in state["pending"]
    ]


# -- the stored form ---------------------------------------------------------------

# A stored state is a small fixed header, which the expiry sweep reads without
# decompressing, then the rest of the state LZ4-compressed. LZ4, not zlib: on
# 1 KB HH-RLHF events zlib-1 took 16 us per state (a third of the ingest budget
# per event) for 450 bytes, LZ4 takes 1.7 us for 620. The same bytes go to the
# changelog, so recovery moves compressed states too. LZ4's faster levels were
# measured on the bench's 1 KB states (issue 16): acceleration 4 saved 0.2 us
# of the 1.6 us per state for 12% more bytes, 8 saved 0.3 us for 22%; the
# default level stays, as the bytes go to RocksDB and the changelog again.
#
# Format 2 keeps the inference JSON as its own UTF-8 bytes, length-prefixed,
# before the JSON of the other fields. Format 1 nested it in that JSON as a
# string, escaping its every quote and unescaping them again: encode plus decode
# of a 1 KB state took 9.6 us in format 1 and 6.3 us in format 2 (measured side by
# side). Format 1 and plain JSON (earlier versions) still decode, from the
# changelogs they wrote.
_FORMAT = 2
_HEADER = struct.Struct("<BdI")  # format, first_seen, partition
_LENGTH = struct.Struct("<I")  # the inference's bytes (_NO_INFERENCE: none yet)
_NO_INFERENCE = 0xFFFFFFFF


def encode(state: JoinState) -> bytes:
    """The stored (and changelog) bytes of ``state``."""
    inference = state["inference"]
    body = b"" if inference is None else inference.encode()
    rest = {"inference_source": state["inference_source"], "pending": state["pending"], "seen": state["seen"]}
    length = _NO_INFERENCE if inference is None else len(body)
    header = _HEADER.pack(_FORMAT, state["first_seen"], state["partition"])
    return header + lz4.block.compress(_LENGTH.pack(length) + body + to_json(rest))


def encode_first_inference(raw: bytes, source: ReadAt, partition: int, now: float) -> bytes:
    """``encode(on_inference(None, raw.decode(), log, source, now, partition=partition).state)``, directly.

    Nearly every inference is the first event of its request_id: its state is
    the log and where it was read, nothing pending, nothing seen. Built from the
    message's own bytes (``raw``, the log's UTF-8 JSON), without the state dict,
    the JoinResult and a second UTF-8 encoding of the log; a test checks that the
    bytes are :func:`encode`'s.
    """
    rest = b'{"inference_source":[%s,%d,%d],"pending":[],"seen":[]}' % (
        to_json(source.topic),
        source.partition,
        source.offset,
    )
    header = _HEADER.pack(_FORMAT, now, partition)
    return header + lz4.block.compress(_LENGTH.pack(len(raw)) + raw + rest)


def decode(stored: bytes) -> JoinState:
    """The state in stored bytes (also formats that earlier versions wrote)."""
    if stored[:1] == b"{":
        return cast(JoinState, from_json(stored))
    version, first_seen, partition = _HEADER.unpack_from(stored)
    unpacked = lz4.block.decompress(memoryview(stored)[_HEADER.size :])
    if version == 1:
        return cast(JoinState, {"partition": partition, "first_seen": first_seen, **from_json(unpacked)})
    (length,) = _LENGTH.unpack_from(unpacked)
    start = _LENGTH.size
    inference = None
    if length != _NO_INFERENCE:
        inference = unpacked[start : start + length].decode()
        start += length
    rest = from_json(unpacked[start:])
    return cast(JoinState, {"partition": partition, "first_seen": first_seen, "inference": inference, **rest})


def stored_first_seen(stored: bytes) -> float:
    """When the state in ``stored`` was first seen, read from its header alone."""
    if stored[:1] == b"{":
        return float(from_json(stored)["first_seen"])
    return float(_HEADER.unpack_from(stored)[1])


def stored_partition(stored: bytes) -> int:
    """The partition of the state in ``stored``, read from its header alone."""
    if stored[:1] == b"{":
        return int(from_json(stored)["partition"])
    return int(_HEADER.unpack_from(stored)[2])
