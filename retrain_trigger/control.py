"""Control events: silences and stable-version marks, on a compacted topic every worker reads whole.

``loopwatch silence add|expire`` and ``loopwatch model mark-stable`` publish
them; each worker replays the topic from the start and keeps following it,
so every worker mutes and rolls back the same way. The Kafka key is the
silence id or the model, so compaction keeps the latest of each.

Authenticity: with a control key (``LOOPWATCH_CONTROL_KEY``) every record
carries the header ``loopwatch-signature: hmac-sha256=<hex>``, an HMAC-SHA256
of the record's value bytes under that key, and :func:`check` refuses records
without it, with a wrong one, or whose Kafka key is not the event's own. Without
a key, records are neither signed nor verified. Either way a silence that
matches every alert or outlasts the maximum is refused unless it carries
``force`` (``silence add --force``).

>>> from pydantic import SecretStr
>>> key = SecretStr("k")
>>> signed = [(SIGNATURE_HEADER, sign(b"{}", key))]
>>> signature_problem(b"{}", signed, key) is None, signature_problem(b"{}", [], key)
(True, 'unsigned')
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from retrain_trigger.silence import Silence
from retrain_trigger.stable import StableVersionMarked

SIGNATURE_HEADER = "loopwatch-signature"
_SCHEME = b"hmac-sha256="

RefusalReason = Literal["unsigned", "bad_signature", "invalid", "key_mismatch", "too_broad", "too_long"]
Headers = Sequence[tuple[str, bytes | None]]


class ControlEvent(BaseModel):
    """One control event: a silence (added or expired early) or a version marked stable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["1"] = "1"
    silence: Silence | None = None
    stable: StableVersionMarked | None = None

    def key(self) -> bytes:
        """The compaction key: the silence id, or the model."""
        if self.silence is not None:
            return f"silence:{self.silence.id}".encode()
        if self.stable is not None:
            return f"stable:{self.stable.model}".encode()
        raise ValueError("a control event carries a silence or a stable mark")


@dataclass(frozen=True)
class Refused:
    """A control record that was not applied, and why (``reason`` is the metric label)."""

    reason: RefusalReason
    detail: str


def sign(value: bytes, key: SecretStr) -> bytes:
    """The signature header value of a control record's value bytes."""
    digest = hmac.new(key.get_secret_value().encode(), value, hashlib.sha256).hexdigest()
    return _SCHEME + digest.encode()


def signature_headers(value: bytes, key: SecretStr | None) -> list[tuple[str, bytes]]:
    """The headers to send a control record with: its signature, or none without a key."""
    return [] if key is None else [(SIGNATURE_HEADER, sign(value, key))]


def signature_problem(value: bytes, headers: Headers, key: SecretStr | None) -> RefusalReason | None:
    """Why the record's signature does not hold (None when it does, or when no key is set)."""
    if key is None:
        return None
    found = [v for name, v in headers if name == SIGNATURE_HEADER and v is not None]
    if not found:
        return "unsigned"
    # compare_digest: how long a comparison takes says nothing about the right signature.
    return None if hmac.compare_digest(found[-1], sign(value, key)) else "bad_signature"


def check(
    record_key: bytes | None,
    value: bytes,
    headers: Headers,
    *,
    key: SecretStr | None,
    max_silence: timedelta,
) -> ControlEvent | Refused:
    """A control record as the event to apply, or why it is refused (signature, shape, limits)."""
    problem = signature_problem(value, headers, key)
    if problem is not None:
        what = "no signature header" if problem == "unsigned" else "a signature that does not verify"
        return Refused(problem, f"{what} ({SIGNATURE_HEADER}), and LOOPWATCH_CONTROL_KEY is set")
    try:
        event = ControlEvent.model_validate_json(value)
        event_key = event.key()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        return Refused("invalid", f"{where}: {first['msg']}")
    except ValueError as exc:
        return Refused("invalid", str(exc))
    if record_key is not None and record_key != event_key:
        return Refused("key_mismatch", f"Kafka key {record_key!r} is not the event's {event_key!r}")
    if event.silence is not None:
        limit = event.silence.needs_force(max_silence)
        if limit is not None:
            return Refused(limit[0], f"silence {event.silence.id}: {limit[1]} (needs --force)")
    return event
