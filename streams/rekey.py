"""Where a message came from, carried along when it is re-keyed: pure functions, no Kafka.

The join is partition-local, so a message whose Kafka key is not its
``request_id`` (or that has no key) sits in a partition its partner may never
reach. Ingest re-sends such a message, byte for byte and keyed by its
``request_id``, to the internal repartition topic (``Topics.rekey``), which it
also consumes. The headers built here carry the original topic, partition,
offset and key, so that dead letters and the source offsets of enriched and
joined records still point at the message the producer wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.events import SourceRef

Headers = list[tuple[str, bytes]]

#: Longest key a dead letter (or a re-keyed message's header) keeps: keys are ids, yet a key can be huge.
KEY_PREFIX_BYTES = 1_024

_SOURCE = "loopwatch-source"
_KEY = "loopwatch-source-key"
_KEY_BYTES = "loopwatch-source-key-bytes"


@dataclass(frozen=True, slots=True)
class Origin:
    """The message a record stands for: where it was read, and its key (at most KEY_PREFIX_BYTES of it)."""

    source: SourceRef
    key: bytes | None
    key_bytes: int | None

    @classmethod
    def of(cls, message: Any) -> Origin:
        """The origin of a message read from a producer's topic: the message itself."""
        key = message.key
        return cls(
            SourceRef(topic=message.topic, partition=message.partition, offset=message.offset),
            None if key is None else key[:KEY_PREFIX_BYTES],
            None if key is None else len(key),
        )


def headers_for(origin: Origin) -> Headers:
    """The headers of a re-keyed message that say where its bytes were first read."""
    headers = [(_SOURCE, origin.source.model_dump_json().encode())]
    if origin.key is not None:
        headers += [(_KEY, origin.key), (_KEY_BYTES, str(origin.key_bytes).encode())]
    return headers


def origin_in(headers: Any) -> Origin | None:
    """The origin a re-keyed message's headers name; None when they name none (not written by ingest)."""
    found = {name: value for name, value in headers or () if name in (_SOURCE, _KEY, _KEY_BYTES)}
    try:
        source = SourceRef.model_validate_json(found[_SOURCE])
        key_bytes = int(found[_KEY_BYTES]) if _KEY_BYTES in found else None
    except (KeyError, ValueError, ValidationError):
        return None
    return Origin(source, found.get(_KEY), key_bytes)
