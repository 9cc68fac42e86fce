"""Dead letters a person can work with: read them back, count them, print them safely, replay them.

The dead-letter topic keeps, per refused message, its reason and error, where
it was read (``source``), its key and the first bytes of its value with the
whole value's length and SHA-256. Replaying re-sends the original bytes with
the original key: from the dead letter when it kept them whole, else from the
source offset while the topic retains it, checked against the SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.events import DeadLetter
from services.topic_reader import Fetched, Place, TopicRecord

#: Header of a replayed message: the dead letter's source, so the copy can be traced back.
REPLAY_HEADER = "loopwatch-replay-of"


@dataclass(frozen=True)
class StoredLetter:
    """One dead letter and where it sits on the dead-letter topic."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def place(self) -> str:
        """``partition@offset`` on the dead-letter topic."""
        return f"{self.partition}@{self.offset}"


def parse_letters(records: Iterable[TopicRecord]) -> tuple[list[StoredLetter], list[str]]:
    """The dead letters among ``records``, and one line per record that is not one."""
    letters: list[StoredLetter] = []
    unreadable: list[str] = []
    for record in records:
        try:
            letters.append(
                StoredLetter(record.partition, record.offset, DeadLetter.model_validate_json(record.value))
            )
        except ValidationError as exc:
            unreadable.append(f"{record.partition}@{record.offset}: {exc.errors()[0]['msg']}")
    return letters, unreadable


def source_topic(letter: DeadLetter) -> str:
    """The topic the refused message was read from; ``output:T`` for an output loopwatch could not write."""
    return letter.source.topic if letter.source else f"output:{letter.output_topic or '?'}"


def select(
    letters: Iterable[StoredLetter],
    *,
    reasons: Iterable[str] = (),
    topic: str | None = None,
    since: datetime | None = None,
) -> list[StoredLetter]:
    """The letters with one of ``reasons`` (any if none), from source ``topic``, received since ``since``."""
    wanted = set(reasons)
    return [
        s
        for s in letters
        if (not wanted or s.letter.reason.value in wanted)
        and (topic is None or source_topic(s.letter) == topic)
        and (since is None or s.letter.received_at >= since)
    ]


# -- stats ------------------------------------------------------------------------


@dataclass
class Stats:
    """Dead letters counted by reason, by source topic, and by hour, source topic and reason."""

    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    by_hour: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None


def stats(letters: Iterable[StoredLetter]) -> Stats:
    """Count ``letters``; hours are the UTC hour in which loopwatch refused each message.

    >>> letter = DeadLetter(reason="malformed_json", error="bad", source=None, output_topic="t",
    ...     value_b64="", value_bytes=0, value_sha256="0",
    ...     received_at=datetime(2026, 1, 1, 9, 30, tzinfo=UTC))
    >>> stats([StoredLetter(0, 0, letter)]).by_hour
    Counter({('2026-01-01T09:00Z', 'output:t', 'malformed_json'): 1})
    """
    counted = Stats()
    for stored in letters:
        letter = stored.letter
        at = letter.received_at
        topic, reason = source_topic(letter), letter.reason.value
        counted.total += 1
        counted.by_reason[reason] += 1
        counted.by_topic[topic] += 1
        counted.by_hour[(_hour(at), topic, reason)] += 1
        counted.first = at if counted.first is None else min(counted.first, at)
        counted.last = at if counted.last is None else max(counted.last, at)
    return counted


def _hour(at: datetime) -> str:
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y-%m-%dT%H:00Z")


def stats_lines(counted: Stats, topic: str) -> Iterator[str]:
    """The counts as text: totals by reason and by source topic, then one line per hour, topic and reason."""
    if not counted.total:
        yield f"no dead letters on {topic}"
        return
    assert counted.first is not None and counted.last is not None
    span = f"{counted.first.isoformat()} .. {counted.last.isoformat()}"
    yield f"{counted.total} dead letters on {topic}, received {span}"
    yield "by reason:"
    yield from (f"  {reason:<26} {n:>8}" for reason, n in counted.by_reason.most_common())
    yield "by source topic:"
    yield from (f"  {printable(name):<40} {n:>8}" for name, n in counted.by_topic.most_common())
    yield "by hour (UTC), source topic and reason:"
    for (hour, name, reason), n in sorted(counted.by_hour.items()):
        yield f"  {hour}  {printable(name):<40} {reason:<26} {n:>8}"


def stats_json(counted: Stats, topic: str) -> dict[str, Any]:
    """The counts as one JSON-ready document."""
    return {
        "topic": topic,
        "total": counted.total,
        "first": counted.first.isoformat() if counted.first else None,
        "last": counted.last.isoformat() if counted.last else None,
        "by_reason": dict(counted.by_reason.most_common()),
        "by_source_topic": dict(counted.by_topic.most_common()),
        "by_hour": [
            {"hour": hour, "source_topic": name, "reason": reason, "count": n}
            for (hour, name, reason), n in sorted(counted.by_hour.items())
        ],
    }


# -- safe printing ----------------------------------------------------------------

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(data: bytes | str) -> str:
    r"""``data`` as text that is safe on a terminal: control, format and separator characters escaped.

    Bytes that are not UTF-8 show as ``\xNN``; so do terminal escapes (ESC is a
    control character) and bidirectional overrides (format characters, ``\u202e``),
    so a message cannot rewrite the screen or disguise what it holds.

    >>> printable(b'{"a": "\x1b[2J\xff"}\n')
    '{"a": "\\x1b[2J\\xff"}\\n'
    >>> printable("abc\u202edef é")
    'abc\\u202edef é'
    """
    text = data.decode("utf-8", errors="backslashreplace") if isinstance(data, bytes) else data
    return "".join(_escape(c) if _unsafe(c) else c for c in text)


def _unsafe(char: str) -> bool:
    # Every C category (controls, format, surrogates, private use, unassigned) and every
    # separator but the plain space: line separators and odd spaces hide what follows.
    return char != " " and unicodedata.category(char)[0] in "CZ"


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def kept_key(letter: DeadLetter) -> bytes | None:
    """The key bytes the dead letter kept (None: the message had no key)."""
    return None if letter.key_b64 is None else base64.b64decode(letter.key_b64)


def kept_value(letter: DeadLetter) -> bytes:
    """The value bytes the dead letter kept (its first ``LOOPWATCH_DEADLETTER_VALUE_BYTES``)."""
    return base64.b64decode(letter.value_b64)


def show_lines(stored: StoredLetter, topic: str, max_bytes: int) -> Iterator[str]:
    """One dead letter as text: where, reason, error, detail, key and value, every part escaped."""
    letter = stored.letter
    yield f"{printable(topic)} {stored.place}  {letter.received_at.isoformat()}  {letter.reason.value}"
    if letter.source:
        source = letter.source
        yield f"  source  {printable(source.topic)}/{source.partition}@{source.offset}"
    else:
        yield f"  source  none: an output for {printable(letter.output_topic or '?')} loopwatch did not write"
    yield f"  error   {printable(letter.error)}"
    for detail in letter.detail:
        yield f"  detail  {printable(json.dumps(detail, ensure_ascii=False, default=str))}"
    key = kept_key(letter)
    if key is None:
        yield "  key     none"
    else:
        whole = letter.key_bytes if letter.key_bytes is not None else len(key)
        cut = f", first {len(key):,} kept" if len(key) < whole else ""
        yield f"  key     {printable(key[:max_bytes])} ({whole:,} bytes{cut})"
    value = kept_value(letter)
    missing = letter.value_bytes - len(value)
    kept = (
        f"kept {len(value):,}: TRUNCATED, {missing:,} bytes not kept (replay fetches them from the source)"
        if missing > 0
        else "kept whole"
    )
    yield f"  value   {letter.value_bytes:,} bytes, sha256 {letter.value_sha256[:16]}…, {kept}"
    hidden = len(value) - max_bytes
    more = f" …[{hidden:,} more kept bytes not shown: --max-bytes]" if hidden > 0 else ""
    more += f" …[{missing:,} bytes not kept]" if missing > 0 else ""
    yield f"          {printable(value[:max_bytes])}{more}"


def show_json(stored: StoredLetter, topic: str) -> str:
    """One dead letter as a JSON line (ASCII only, so also safe to print), with where it sits."""
    body = {
        "deadletter": {"topic": topic, "partition": stored.partition, "offset": stored.offset},
        **stored.letter.model_dump(mode="json"),
        "value_truncated": len(kept_value(stored.letter)) < stored.letter.value_bytes,
    }
    return json.dumps(body)


# -- replay -----------------------------------------------------------------------


@dataclass(frozen=True)
class Original:
    """The message a dead letter stands for, ready to be sent again."""

    stored: StoredLetter
    key: bytes | None
    value: bytes
    fetched: bool  # read again from the source offset (the dead letter kept only a prefix)


@dataclass(frozen=True)
class Unreplayable:
    """A dead letter that cannot be replayed, and why."""

    stored: StoredLetter
    why: str


@dataclass
class ReplayPlan:
    """What a replay sends, what it cannot send, and how many repeats of one message it skips."""

    originals: list[Original] = field(default_factory=list)
    unreplayable: list[Unreplayable] = field(default_factory=list)
    duplicates: int = 0


def _whole(letter: DeadLetter) -> bool:
    key = kept_key(letter)
    key_whole = key is None or letter.key_bytes is None or len(key) >= letter.key_bytes
    return key_whole and len(kept_value(letter)) >= letter.value_bytes


def _place(letter: DeadLetter) -> Place:
    assert letter.source is not None
    return (letter.source.topic, letter.source.partition, letter.source.offset)


def plan_replay(letters: Iterable[StoredLetter], fetch: Callable[[list[Place]], Fetched]) -> ReplayPlan:
    """The originals of ``letters``: kept whole in the letter, else fetched from the source and verified.

    ``fetch`` reads the records at source places (:func:`services.topic_reader.read_records`).
    A message is sent once per replay even when several letters stand for it (same key
    and bytes): downstream it would be a duplicate anyway.
    """
    plan = ReplayPlan()
    chosen = list(letters)
    truncated = [s for s in chosen if s.letter.source is not None and not _whole(s.letter)]
    fetched = fetch([_place(s.letter) for s in truncated]) if truncated else Fetched({}, {})
    seen: set[tuple[bytes | None, str]] = set()
    for stored in chosen:
        outcome = _original(stored, fetched)
        if isinstance(outcome, Unreplayable):
            plan.unreplayable.append(outcome)
            continue
        identity = (outcome.key, stored.letter.value_sha256)
        if identity in seen:
            plan.duplicates += 1
            continue
        seen.add(identity)
        plan.originals.append(outcome)
    return plan


def _original(stored: StoredLetter, fetched: Fetched) -> Original | Unreplayable:
    letter = stored.letter
    if letter.source is None:
        return Unreplayable(
            stored, f"{letter.reason.value}: an output loopwatch derived, no message to re-send"
        )
    if _whole(letter):
        key, value, from_source = kept_key(letter), kept_value(letter), False
    else:
        place = _place(letter)
        if place not in fetched.records:
            why = fetched.missing.get(place, "not read")
            return Unreplayable(
                stored,
                f"only {len(kept_value(letter)):,} of {letter.value_bytes:,} bytes kept,"
                f" and the original is {why}",
            )
        record = fetched.records[place]
        key, value, from_source = record.key, record.value, True
        prefix = kept_key(letter)
        if (prefix is None) != (key is None) or (
            key is not None and prefix is not None and not key.startswith(prefix)
        ):
            return Unreplayable(
                stored, f"the record at {_where(letter)} has another key: not the refused message"
            )
    if hashlib.sha256(value).hexdigest() != letter.value_sha256:
        where = f"the record at {_where(letter)}" if from_source else "the kept bytes"
        return Unreplayable(stored, f"SHA-256 mismatch: {where} are not the refused message")
    return Original(stored, key, value, from_source)


def _where(letter: DeadLetter) -> str:
    topic, partition, offset = _place(letter)
    return f"{printable(topic)}/{partition}@{offset}"


def replay_headers(original: Original) -> list[tuple[str, bytes]]:
    """The headers of a replayed message: where the refused message was first read."""
    return [(REPLAY_HEADER, _where(original.stored.letter).encode())]
