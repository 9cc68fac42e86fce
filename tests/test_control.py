"""Control events without Kafka: signatures, silence limits, announcements, marks driving references."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from core.settings import Settings
from retrain_trigger.control import SIGNATURE_HEADER, ControlEvent, Refused, check, sign, signature_headers
from retrain_trigger.silence import Silence, Silences, parse_matcher
from retrain_trigger.stable import StableVersionMarked
from streams.control import ControlFollower
from streams.detect import References
from streams.metrics import Metrics
from streams.windows import ClosedWindow

KEY = SecretStr("operators-only")
WEEK = timedelta(days=7)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _silence(*matchers: str, hours: float = 2, force: bool = False, silence_id: str = "s1") -> Silence:
    return Silence(
        id=silence_id,
        matchers=[parse_matcher(m) for m in matchers],
        starts_at=T0,
        ends_at=T0 + timedelta(hours=hours),
        comment="maintenance",
        force=force,
    )


def _record(event: ControlEvent, key: SecretStr | None) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    value = event.model_dump_json().encode()
    return event.key(), value, signature_headers(value, key)


def _check(key_: bytes | None, value: bytes, headers: Any, key: SecretStr | None = KEY) -> Any:
    return check(key_, value, headers, key=key, max_silence=WEEK)


# -- signatures ----------------------------------------------------------------


def test_a_signed_event_is_accepted_and_any_change_to_it_is_refused() -> None:
    event = ControlEvent(silence=_silence("model=chat"))
    key, value, headers = _record(event, KEY)
    assert _check(key, value, headers) == event
    assert _check(key, value, []) == Refused("unsigned", _check(key, value, []).detail)
    tampered = value.replace(b"model", b"route")
    assert _check(key, tampered, headers).reason == "bad_signature"
    wrong_key = [(SIGNATURE_HEADER, sign(value, SecretStr("guessed")))]
    assert _check(key, value, wrong_key).reason == "bad_signature"


def test_without_a_key_unsigned_events_are_accepted() -> None:
    event = ControlEvent(stable=StableVersionMarked(model="chat", version="v1", marked_at=T0))
    key, value, headers = _record(event, None)
    assert headers == []
    assert _check(key, value, headers, key=None) == event


def test_a_record_under_another_events_key_or_malformed_is_refused() -> None:
    event = ControlEvent(silence=_silence("model=chat"))
    _, value, headers = _record(event, KEY)
    assert _check(b"stable:chat", value, headers).reason == "key_mismatch"
    bad = b'{"silence": 3}'
    refused = _check(b"x", bad, [(SIGNATURE_HEADER, sign(bad, KEY))])
    assert refused.reason == "invalid" and "silence" in refused.detail


# -- silence limits ------------------------------------------------------------


@pytest.mark.parametrize(
    ("matchers", "hours", "force", "expected"),
    [
        (("model=chat",), 2, False, None),
        (("model=~chat-.*",), 2, False, None),
        (("model=~chat|bot", "severity!=info"), 2, False, None),
        (("model=~.*",), 2, False, "too_broad"),
        (("model=~.+",), 2, False, "too_broad"),
        (("model!=nothing",), 2, False, "too_broad"),
        (("model!~x", "tenant="), 2, False, "too_broad"),
        (("model=chat",), 24 * 8, False, "too_long"),
        (("model=~.*",), 24 * 365 * 10, True, None),
    ],
)
def test_a_silence_matching_everything_or_too_long_needs_force(
    matchers: tuple[str, ...], hours: float, force: bool, expected: str | None
) -> None:
    silence = _silence(*matchers, hours=hours, force=force)
    found = silence.needs_force(WEEK)
    assert (found[0] if found else None) == expected
    key, value, headers = _record(ControlEvent(silence=silence), KEY)
    outcome = _check(key, value, headers)
    assert (outcome.reason if isinstance(outcome, Refused) else None) == expected


def test_replaying_an_old_copy_of_a_silence_does_not_revive_it_after_its_expiry() -> None:
    silences = Silences()
    original = silences.add(_silence("model=chat"))
    ended = silences.expire(original.id, T0 + timedelta(minutes=5))
    assert silences.add(original) == ended
    assert silences.muting({"model": "chat"}, T0 + timedelta(minutes=10)) is None


def test_each_silence_is_announced_once_while_it_lasts_and_once_when_it_ends() -> None:
    silences = Silences()
    silences.add(_silence("model=chat", hours=1))
    silences.add(_silence("model=old", hours=1, silence_id="gone").model_copy(update={"ends_at": T0}))
    announced: dict[str, datetime] = {}
    [firing] = silences.announce(announced, T0 + timedelta(minutes=1))
    assert firing.status == "firing" and firing.severity == "info"
    alert = firing.alerts[0]
    assert alert.labels == {
        "alertname": "silence",
        "severity": "info",
        "silence_id": "s1",
        "matchers": "model=chat",
        "model": "chat",
    }
    assert "mutes model=chat" in alert.summary and "maintenance" in alert.summary
    assert silences.announce(announced, T0 + timedelta(minutes=2)) == []
    [ended] = silences.announce(announced, T0 + timedelta(hours=2))
    assert ended.status == "resolved" and ended.alerts[0].fingerprint == alert.fingerprint
    assert announced == {}


# -- stable marks drive references ---------------------------------------------


def _window(version: str, index: int, mean: float) -> ClosedWindow:
    rng = random.Random(index)
    rows = [
        {"request_id": f"{version}-{index}-{i}", "response_chars": rng.gauss(mean, 50)} for i in range(50)
    ]
    segment = {"model": "m", "model_version": version, "app": "chat", "route": None, "tenant": None}
    start = T0 + timedelta(minutes=index)
    return ClosedWindow(segment, "inference", start, start + timedelta(minutes=1), 50, rows)


class _Store(dict[str, bytes]):
    def apply(self, updates: list[tuple[str, bytes]] | list[tuple[str, bytes, str]]) -> None:
        self.update((update[0], update[1]) for update in updates)


def test_a_version_marked_stable_after_its_windows_is_the_canarys_reference_at_once() -> None:
    store = _Store()
    references = References(store)
    for index in range(2):
        window = _window("v1", index, 500)
        references.for_window(window)
        store.apply(references.observe(window))
    canary = _window("v2", 2, 900)
    # Not marked yet: v2 would be pinned against its own first window.
    assert not references.awaits_stable(canary)
    updates = references.mark_stable("m", "v1")
    store.apply(updates)
    assert [segment for _, _, segment in updates] == ["m|v1|chat||"]
    reference = references.for_window(canary)
    assert reference is not None and reference.name.startswith("stable:inference|m|v1|chat")
    assert set(reference.frame["request_id"].str.split("-").str[1]) == {"1"}  # v1's latest window


def test_a_new_stable_version_without_windows_makes_canaries_wait_rather_than_use_the_old_one() -> None:
    store = _Store()
    references = References(store, stable_versions={"m": "v1"})
    store.apply(references.observe(_window("v1", 0, 500)))
    assert not references.awaits_stable(_window("v3", 1, 500))
    store.apply(references.mark_stable("m", "v2"))
    assert references.awaits_stable(_window("v3", 1, 500))
    # v1 is no longer stable: it is compared with v2 too, once v2 has a window.
    assert references.awaits_stable(_window("v1", 1, 500))


# -- the worker's follower, fed records by hand ----------------------------------


@dataclass
class _Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str = "loopwatch.control.v1"
    partition: int = 0
    offset: int = 0


def test_the_follower_hands_verified_events_to_every_subscriber_and_counts_refusals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    follower = ControlFollower(None, Settings(control_key=KEY, stable_versions={"m": "v0"}), metrics)  # type: ignore[arg-type]
    silences: list[Silence] = []
    marks: list[tuple[str, str]] = []

    def on_silence(silence: Silence) -> None:
        silences.append(silence)

    def on_stable(mark: StableVersionMarked) -> None:
        marks.append((mark.model, mark.version))

    follower.subscribe(silence=on_silence, stable=on_stable)
    follower.subscribe(stable=on_stable)
    newer = StableVersionMarked(model="m", version="v2", marked_at=T0)
    older = StableVersionMarked(model="m", version="v1", marked_at=T0 - timedelta(days=1))
    forged = ControlEvent(silence=_silence("model=~.*", hours=24 * 3650, silence_id="forged"))
    records = [
        _Record(*_record(ControlEvent(silence=_silence("model=m")), KEY)),
        _Record(*_record(ControlEvent(stable=newer), KEY)),
        _Record(*_record(ControlEvent(stable=older), KEY)),  # older than the current mark
        _Record(*_record(forged, None)),
        _Record(b"silence:x", None, []),  # a tombstone
    ]

    async def feed() -> None:
        for record in records:
            await follower.handle(record)

    asyncio.run(feed())
    assert [s.id for s in silences] == ["s1"]
    assert marks == [("m", "v2"), ("m", "v2")]
    assert follower.stable.target("m") == "v2"
    assert metrics.control_events._value.get() == 3
    assert metrics.control_rejected.labels("unsigned")._value.get() == 1
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert line.startswith("control record refused (unsigned)") and "key=b'silence:forged'" in line


def test_the_follower_logs_an_expired_silence_as_expired_not_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    follower = ControlFollower(None, Settings(), Metrics())  # type: ignore[arg-type]
    now = datetime.now(UTC)
    live = Silence(id="live", matchers=[parse_matcher("model=m")], starts_at=now, ends_at=now + WEEK)
    # What `silence expire` publishes: the same silence, ending now.
    ended = live.model_copy(
        update={"id": "ended", "starts_at": now - WEEK, "ends_at": now - timedelta(seconds=1)}
    )
    caplog.set_level("WARNING", logger="loopwatch.control")

    async def feed() -> None:
        for silence in (live, ended):
            await follower.handle(_Record(*_record(ControlEvent(silence=silence), None)))

    asyncio.run(feed())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("silence ")]
    assert [line.split(" ", 3)[:3] for line in lines] == [
        ["silence", "live", "applied"],
        ["silence", "ended", "expired"],
    ]
