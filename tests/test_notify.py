"""Notifiers: payload formats, and delivery against a local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from retrain_trigger.alerts import Notification
from retrain_trigger.notifiers import NOTIFIERS, notifier_for
from retrain_trigger.notifiers.base import Receiver
from retrain_trigger.notify import (
    AlertmanagerReceiver,
    DeliveryFailure,
    Dispatcher,
    PagerDutyReceiver,
    ReceiverConfig,
    SlackReceiver,
    WebhookReceiver,
    alertmanager_payload,
    pagerduty_payload,
    render,
    slack_payload,
    webhook_payload,
)
from tests.test_decide_pipeline import T0, detection, stable_decider

TOKEN = "T0KEN-s3cr3t-9f8e7d"
ROUTING_KEY = "R0UTING-k3y-5ecret"
FAST = {"timeout_seconds": 0.3, "retries": 2, "backoff_seconds": 0.02, "max_backoff_seconds": 0.05}


class _Misbehaving(BaseHTTPRequestHandler):
    """/ok stores the body; /fail500 always 500; /flaky 500 twice then 200; /slow answers only once the
    test is over (``release``); /close hangs up without answering; /bad400 refuses with 400."""

    hits: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    bodies: list[tuple[str, dict[str, object]]] = []
    lock = threading.Lock()
    release = threading.Event()

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = self.path.strip("/").split("/")[0]
        with self.lock:
            self.hits[kind] += 1
            count = self.hits[kind]
        if kind == "close":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "slow":
            # Far beyond any receiver's timeout: the client gives up long before this answers.
            self.release.wait(timeout=30)
        status = {"ok": 200, "fail500": 500, "bad400": 400, "slow": 200}.get(kind, 200)
        if kind == "flaky":
            status = 500 if count <= 2 else 200
        if status == 200:
            with self.lock:
                self.bodies.append((kind, json.loads(body)))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        with self.lock:
            self.answered[kind] += 1


@pytest.fixture
def server() -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 (an ephemeral port), stopped after the test."""
    _Misbehaving.hits = Counter()
    _Misbehaving.answered = Counter()
    _Misbehaving.bodies = []
    _Misbehaving.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Misbehaving.release.set()
    httpd.shutdown()
    httpd.server_close()


def notifications() -> tuple[Notification, Notification]:
    """A real firing page and its resolved page, from the Decider."""
    decider = stable_decider()
    firing = decider.decide(detection(0), T0).notifications[0]
    decider.decide(detection(1, verdict="ok"), T0 + timedelta(minutes=2))
    resolved = decider.decide(detection(2, verdict="ok"), T0 + timedelta(minutes=3)).notifications[0]
    return firing, resolved


def webhook(server: str, kind: str, name: str | None = None, **options: object) -> WebhookReceiver:
    """A webhook receiver whose URL carries a secret token."""
    return WebhookReceiver(
        name=name or kind, url=SecretStr(f"{server}/{kind}/{TOKEN}"), **{**FAST, **options}
    )


async def _run(receivers: list[ReceiverConfig], pages: list[Notification], **kwargs: Any) -> Dispatcher:
    dispatcher = Dispatcher(receivers, seed=1, **kwargs)
    await dispatcher.start()
    for page in pages:
        dispatcher.submit(page)
    await dispatcher.stop(timeout=10)
    return dispatcher


# ---------------------------------------------------------------- payloads


def test_pagerduty_trigger_and_resolve_share_the_group_dedup_key() -> None:
    firing, resolved = notifications()
    trigger, resolve = pagerduty_payload(firing, "rk"), pagerduty_payload(resolved, "rk")
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] and trigger["dedup_key"].startswith("loopwatch-")
    assert trigger["routing_key"] == "rk" and "payload" not in resolve
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and payload["source"] == "chat" and payload["component"] == "v2"
    assert trigger["links"] == [{"href": "https://runbooks.example.com/bad-replies", "text": "runbook"}]


def test_alertmanager_payload_is_version_4() -> None:
    firing, resolved = notifications()
    body = alertmanager_payload(firing, "oncall")
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "oncall"
    assert body["groupKey"] == '{model="chat"}' and body["groupLabels"] == {"model": "chat"}
    (alert,) = body["alerts"]
    assert alert["fingerprint"] == firing.alerts[0].fingerprint and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert body["commonLabels"]["alertname"] == "bad-replies"
    assert body["commonAnnotations"]["runbook_url"] == "https://runbooks.example.com/bad-replies"
    done = alertmanager_payload(resolved, "oncall")
    assert done["status"] == "resolved" and done["alerts"][0]["endsAt"] == "2026-03-01T12:03:00Z"


def test_slack_and_generic_webhook_payloads() -> None:
    firing, _ = notifications()
    slack = slack_payload(firing)
    assert slack["text"].startswith(":rotating_light: [FIRING] critical")
    assert "runbooks.example.com/bad-replies|runbook" in slack["blocks"][1]["text"]["text"]
    generic = webhook_payload(firing)
    assert generic["version"] == "1" and generic["group_key"] == '{model="chat"}'
    assert Notification.model_validate({k: v for k, v in generic.items() if k != "version"}) == firing


def test_each_receiver_kind_has_its_own_notifier_building_its_payload() -> None:
    firing, _ = notifications()
    url = SecretStr(f"https://hooks.example.com/{TOKEN}")
    receivers: list[ReceiverConfig] = [
        WebhookReceiver(name="hook", url=url),
        SlackReceiver(name="slack", url=url),
        PagerDutyReceiver(name="pd", routing_key=SecretStr(ROUTING_KEY)),
        AlertmanagerReceiver(name="am", url=url, external_url="https://lw.example.com"),
    ]
    expected = [
        webhook_payload(firing),
        slack_payload(firing),
        pagerduty_payload(firing, ROUTING_KEY),
        alertmanager_payload(firing, "am", "https://lw.example.com"),
    ]
    kinds = {type(r) for r in receivers}
    assert set(NOTIFIERS) == kinds and len({NOTIFIERS[k] for k in kinds}) == len(kinds)
    for receiver, body in zip(receivers, expected, strict=True):
        notifier = notifier_for(receiver)
        assert type(notifier) is NOTIFIERS[type(receiver)] and notifier.receiver is receiver
        target = (
            "https://events.pagerduty.com/v2/enqueue"
            if receiver.kind == "pagerduty"
            else url.get_secret_value()
        )
        assert notifier.request(firing) == render(receiver, firing) == (target, body)


def test_a_receiver_type_without_a_notifier_is_refused() -> None:
    class Pigeon(Receiver):
        """An integration nobody wrote a notifier for."""

    with pytest.raises(TypeError, match="no notifier for receiver settings Pigeon"):
        notifier_for(Pigeon(name="coo"))


# ---------------------------------------------------------------- delivery


def test_good_endpoints_receive_every_format(server: str) -> None:
    firing, resolved = notifications()
    receivers: list[ReceiverConfig] = [
        webhook(server, "ok", "hook"),
        SlackReceiver(name="slack", url=SecretStr(f"{server}/ok/slack/{TOKEN}"), **FAST),
        PagerDutyReceiver(name="pd", routing_key=SecretStr(ROUTING_KEY), url=f"{server}/ok/pd", **FAST),
        AlertmanagerReceiver(name="am", url=SecretStr(f"{server}/ok/am/{TOKEN}"), **FAST),
    ]
    dispatcher = asyncio.run(_run(receivers, [firing, resolved]))
    assert not dispatcher.failures
    assert len(dispatcher.delivered) == 8 and _Misbehaving.hits["ok"] == 8
    pd = [b for _, b in _Misbehaving.bodies if b.get("routing_key") == ROUTING_KEY]
    assert sorted(str(b["event_action"]) for b in pd) == ["resolve", "trigger"]
    assert sum(1 for _, b in _Misbehaving.bodies if b.get("version") == "4") == 2


@pytest.mark.parametrize(
    "kind,attempts,recoverable,error",
    [
        ("fail500", 3, True, "HTTP 500"),
        ("slow", 3, True, "timed out after 0.3s"),
        ("close", 3, True, "connection failed (ServerDisconnectedError)"),
        ("bad400", 1, False, "HTTP 400"),
    ],
)
def test_misbehaving_endpoint_is_retried_then_recorded(
    server: str, kind: str, attempts: int, recoverable: bool, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    firing, _ = notifications()
    seen: list[DeliveryFailure] = []
    with caplog.at_level(logging.DEBUG):
        dispatcher = asyncio.run(_run([webhook(server, kind)], [firing], on_failure=seen.append))
    (failure,) = list(dispatcher.failures)
    assert seen == [failure]
    assert _Misbehaving.hits[kind] == attempts
    assert (failure.attempts, failure.recoverable, failure.error) == (attempts, recoverable, error)
    assert failure.group_key == firing.group_key and failure.fingerprints == [firing.alerts[0].fingerprint]
    assert failure.notification == firing  # the page itself is kept, so it can be re-sent
    assert "retry" in caplog.text if recoverable else "retry" not in caplog.text
    assert TOKEN not in caplog.text and TOKEN not in failure.model_dump_json()


def test_a_flaky_endpoint_succeeds_on_retry(server: str) -> None:
    firing, _ = notifications()
    dispatcher = asyncio.run(_run([webhook(server, "flaky")], [firing]))
    assert not dispatcher.failures and _Misbehaving.hits["flaky"] == 3
    assert list(dispatcher.delivered) == [("flaky", firing.group_key)]


def test_a_dead_endpoint_does_not_delay_the_others(server: str) -> None:
    firing, _ = notifications()

    async def scenario() -> tuple[Counter[str], int, int, Dispatcher]:
        dispatcher = Dispatcher([webhook(server, "slow", "dead"), webhook(server, "ok", "alive")], seed=1)
        await dispatcher.start()
        dispatcher.submit(firing)
        # submit returned without waiting for the network: no endpoint has been contacted yet.
        contacted_at_submit = +_Misbehaving.hits
        async with asyncio.timeout(10):
            while not dispatcher.delivered:
                await asyncio.sleep(0.01)
        slow_answers, failures_then = _Misbehaving.answered["slow"], len(dispatcher.failures)
        await dispatcher.stop(timeout=10)
        return contacted_at_submit, slow_answers, failures_then, dispatcher

    contacted_at_submit, slow_answers, failures_then, dispatcher = asyncio.run(scenario())
    assert contacted_at_submit == Counter()
    # The live receiver got its page while the dead one had no answer yet and was still retrying.
    assert dispatcher.delivered[0] == ("alive", firing.group_key) and slow_answers == 0 and failures_then == 0
    assert [(f.receiver, f.attempts) for f in dispatcher.failures] == [("dead", 3)]


def test_queue_overflow_is_recorded_not_dropped(server: str) -> None:
    firing, resolved = notifications()
    dispatcher = asyncio.run(
        _run([webhook(server, "ok")], [firing, resolved, firing], queue_size=1, concurrency=1)
    )
    assert [f.error for f in dispatcher.failures] == ["queue full", "queue full"]
    assert len(dispatcher.delivered) + len(dispatcher.failures) == 3


def test_pages_below_a_receivers_severity_are_not_sent(server: str) -> None:
    firing, _ = notifications()
    quiet = firing.model_copy(update={"severity": "info"})
    dispatcher = asyncio.run(_run([webhook(server, "ok", min_severity="warning")], [quiet, firing]))
    assert len(dispatcher.delivered) == 1 and not dispatcher.failures


def test_a_failing_pagerduty_key_is_never_logged_or_recorded(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    firing, _ = notifications()
    receiver = PagerDutyReceiver(
        name="pd", routing_key=SecretStr(ROUTING_KEY), url=f"{server}/fail500", **FAST
    )
    with caplog.at_level(logging.DEBUG):
        dispatcher = asyncio.run(_run([receiver], [firing]))
    (failure,) = list(dispatcher.failures)
    assert failure.error == "HTTP 500" and failure.attempts == 3 and "retry" in caplog.text
    assert ROUTING_KEY not in caplog.text and ROUTING_KEY not in failure.model_dump_json()


def test_secrets_are_hidden_in_configs() -> None:
    receiver = PagerDutyReceiver(name="pd", routing_key=SecretStr(ROUTING_KEY))
    assert ROUTING_KEY not in repr(receiver) and ROUTING_KEY not in receiver.model_dump_json()
