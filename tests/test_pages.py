"""The notify stage alone: a page is acked once delivered or recorded; copies skipped; a stop puts it back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings
from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers.base import page_id
from retrain_trigger.notify import DeliveryFailure
from schemas.events import DeadLetterReason
from streams.app import LoopwatchApp, create_app
from streams.ingest import Accepted, Rejected
from streams.metrics import metric_total
from streams.notify_stage import RECEIVERS_HEADER, NotifyStage
from streams.runtime import Batch, Effects
from tests.helpers import decoded_batch
from tests.http_recorder import Recorder, recording_server
from tests.test_notify import notifications

FAST = {"timeout_seconds": 2, "retries": 2, "backoff_seconds": 0.02, "max_backoff_seconds": 0.05}


class _Receiver:
    """/ok/<name> answers 200, /down/<name> 503; every request is recorded with its Idempotency-Key."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        recorder.respond = lambda r: (200 if r.path.startswith("/ok/") else 503, b"", "text/plain")

    @property
    def calls(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """(path, Idempotency-Key, body) of each request so far."""
        return [(r.path, r.headers.get("Idempotency-Key"), r.json()) for r in self.recorder.requests]


@pytest.fixture
def receiver() -> Iterator[tuple[str, _Receiver]]:
    with recording_server() as recorder:
        yield recorder.url, _Receiver(recorder)


@dataclass
class Message:
    """The parts of a faust message the notify stage reads."""

    value: bytes
    offset: int = 0
    partition: int = 2
    topic: str = ""
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def make_stage(tmp_path: Path, receivers: list[dict[str, Any]]) -> NotifyStage:
    """The notify stage of a worker built from settings, with these receivers."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "receivers.yaml"
    path.write_text(yaml.safe_dump(receivers))
    settings = Settings(data_dir=tmp_path / "state", detection=False, curation=False, receivers_file=path)
    stage = create_app(settings).runtime.stages["notify"]
    assert isinstance(stage, NotifyStage)
    return stage


def hook(url: str, name: str, path: str = "ok", **options: Any) -> dict[str, Any]:
    return {"kind": "webhook", "name": name, "url": f"{url}/{path}/{name}", **FAST, **options}


def batch(stage: NotifyStage, *messages: Message) -> Batch:
    """Decode ``messages`` as the runtime does (pages on the pages topic)."""
    for message in messages:
        message.topic = stage.topics.pages
    return decoded_batch(stage, stage.topics.pages, messages)


def page(notification: Notification, offset: int = 0, **headers: list[str]) -> Message:
    return Message(
        notification.model_dump_json().encode(),
        offset,
        key=notification.group_key.encode(),
        headers=[(name, json.dumps(value).encode()) for name, value in headers.items()],
    )


async def handled(stage: NotifyStage, work: Batch) -> Effects:
    await stage.start()
    try:
        return await stage.handle(work, time.time())
    finally:
        await stage.stop()


def by_topic(effects: Effects) -> dict[str, list[tuple[bytes | None, bytes | None, Any, int | None]]]:
    out: dict[str, list[tuple[bytes | None, bytes | None, Any, int | None]]] = {}
    for (topic, partition), queued in effects.records.take().items():
        for key, value, headers in queued:
            out.setdefault(topic, []).append((key, value, headers, partition))
    return out


def test_a_page_is_delivered_to_each_receiver_once_with_its_idempotency_key(
    tmp_path: Path, receiver: tuple[str, _Receiver]
) -> None:
    url, server = receiver
    firing, resolved = notifications()
    stage = make_stage(tmp_path, [hook(url, "a"), hook(url, "b")])
    # The firing page twice (a redelivered copy), and a resolved page put back for "b" only.
    work = batch(stage, page(firing, 0), page(firing, 1), page(resolved, 2, **{RECEIVERS_HEADER: ["b"]}))
    effects = asyncio.run(handled(stage, work))
    assert by_topic(effects) == {}  # all delivered: nothing to record, the batch is acked
    sent = sorted((path, key, body["status"]) for path, key, body in server.calls)
    assert sent == sorted(
        [
            ("/ok/a", page_id(firing), "firing"),
            ("/ok/b", page_id(firing), "firing"),
            ("/ok/b", page_id(resolved), "resolved"),
        ]
    )
    assert page_id(firing) != page_id(resolved)


def test_a_page_that_cannot_be_delivered_is_recorded_on_the_failures_topic(
    tmp_path: Path, receiver: tuple[str, _Receiver]
) -> None:
    url, server = receiver
    firing, _ = notifications()
    stage = make_stage(tmp_path, [hook(url, "dead", "down"), hook(url, "live")])
    effects = asyncio.run(handled(stage, batch(stage, page(firing))))
    out = by_topic(effects)
    [(key, value, _, _)] = out.pop(stage.topics.delivery_failures)
    assert out == {}
    failure = DeliveryFailure.model_validate_json(value or b"")
    assert key == firing.group_key.encode() and failure.notification == firing
    assert (failure.receiver, failure.attempts, failure.http_status, failure.recoverable) == (
        "dead",
        3,
        503,
        True,
    )
    assert url not in (value or b"").decode()  # the receiver's URL is a secret
    assert [path for path, _, _ in server.calls].count("/ok/live") == 1
    metrics = stage.metrics.render().decode()
    assert metric_total(metrics, "loopwatch_delivery_failures_total", receiver="dead") == 1


def test_a_stop_puts_a_page_still_being_retried_back_on_the_pages_topic_for_its_receiver(
    tmp_path: Path, receiver: tuple[str, _Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, server = receiver
    firing, _ = notifications()
    down = hook(url, "dead", "down", retries=1000, backoff_seconds=0.05, max_backoff_seconds=0.05)
    stage = make_stage(tmp_path, [down, hook(url, "live")])
    stopping = [False]
    monkeypatch.setattr(LoopwatchApp, "should_stop", property(lambda app: stopping[0]))
    message = page(firing)

    async def scenario() -> Effects:
        await stage.start()
        try:
            work = asyncio.ensure_future(stage.handle(batch(stage, message), time.time()))
            while sum(path == "/down/dead" for path, _, _ in server.calls) < 2 and not work.done():
                await asyncio.sleep(0.01)
            stopping[0] = True  # the worker stops while the page is being retried
            return await asyncio.wait_for(work, 10)
        finally:
            await stage.stop()

    out = by_topic(asyncio.run(scenario()))
    [(key, value, headers, partition)] = out.pop(stage.topics.pages)
    assert out == {}  # not a failure: the next owner of the partition delivers it
    assert (key, value, partition) == (message.key, message.value, message.partition)
    assert headers == [(RECEIVERS_HEADER, b'["dead"]')]  # "live" has it already
    assert [path for path, _, _ in server.calls].count("/ok/live") == 1


def test_a_record_that_is_not_a_page_is_rejected_by_the_stages_decoder(tmp_path: Path) -> None:
    stage = make_stage(tmp_path, [])
    decode = stage.inputs[stage.topics.pages]
    rejected = decode(Message(b'{"group_key": "g"}'), time.time())
    assert isinstance(rejected, Rejected) and rejected.reason == DeadLetterReason.MISSING_FIELD
    firing, _ = notifications()
    assert isinstance(decode(page(firing), time.time()), Accepted)


def test_a_page_handled_before_a_restart_is_not_delivered_again(
    tmp_path: Path, receiver: tuple[str, _Receiver]
) -> None:
    url, server = receiver
    firing, _ = notifications()
    crashed = make_stage(tmp_path / "a", [hook(url, "a")])
    effects = asyncio.run(handled(crashed, batch(crashed, page(firing, 7))))
    [write] = effects.writes  # the last offset handled on partition 2, durable after the unit's records
    assert (write.key, write.value, write.partition) == (b"2", b"7", 2)
    restarted = make_stage(tmp_path / "b", [hook(url, "a")])
    restarted.table.apply(write.key, write.value, write.partition)  # recovered from the changelog
    # Its offset was not committed before the crash: the restarted worker gets it again.
    asyncio.run(handled(restarted, batch(restarted, page(firing, 7))))
    assert [path for path, _, _ in server.calls] == ["/ok/a"]
