"""The demo's scenario: which real exchanges are served when, how some are broken, and the worker's setup.

A stable phase, then an A/B window in which a canary version serves the
replies people rejected in HH-RLHF, then the stable version alone again once
the rollback is requested. The policy and the worker's settings make that
incident play out in about a minute.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from core.settings import Settings, Topics
from retrain_trigger.policy import DEFAULT_POLICY, parse_policy
from schemas.events import MAX_TEXT_CHARS
from services import sample_data


@dataclass
class Traffic:
    """Messages to send, in order, and what a correct pipeline must make of them."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, value)
    # Sent once the rollback request is out: the stable version serving again.
    after_rollback: list[tuple[str, bytes]] = field(default_factory=list)
    # With --mlflow, sent once the incident settled: a second canary, as good as stable (not counted).
    second_canary: list[tuple[str, bytes]] = field(default_factory=list)
    expected_rejections: Counter[str] = field(default_factory=Counter)
    valid_inference: int = 0
    expected_joins: int = 0
    expected_unmatched: int = 0
    duplicates: int = 0
    feedback_first: int = 0
    # With --otlp: inference logs that arrive as LLM spans, and the Collector messages that carry them.
    otlp_spans: int = 0
    otlp_messages: int = 0

    def count(self, topic: str) -> int:
        """How many messages go to ``topic``."""
        return sum(1 for t, _ in self.messages + self.after_rollback if t == topic)

    def as_otlp(self, topics: Topics) -> None:
        """Send the valid inference logs as LLM spans in OTLP Collector messages, plus one undecodable one."""
        from services.demo.otlp import as_collector_traffic  # the OpenTelemetry SDK only for --otlp

        for messages in (self.messages, self.after_rollback):
            converted, spans, written = as_collector_traffic(messages, topics.inference, topics.otlp_spans)
            messages[:] = converted
            self.otlp_spans += spans
            self.otlp_messages += written
        # A message cut short on its way, as a Collector's would be by a broken proxy: a dead letter.
        self.messages.append((topics.otlp_spans, b"\x0a\xff\x01truncated"))
        self.expected_rejections["malformed_otlp"] += 1


# Each rule breaks a real event the way producers really do; the value is the
# reason the dead letter must carry.
_BREAKAGES: list[tuple[str, Any]] = [
    (
        "invalid_utf8",
        lambda e: json.dumps(e).encode().replace(b'"response": "', b'"response": "\xff', 1),
    ),
    ("malformed_json", lambda e: json.dumps(e).encode()[: len(json.dumps(e)) // 2]),
    ("not_an_object", lambda e: json.dumps([e]).encode()),
    ("unknown_schema_version", lambda e: json.dumps({**e, "schema_version": "2"}).encode()),
    ("missing_field", lambda e: json.dumps({k: v for k, v in e.items() if k != "model"}).encode()),
    ("unknown_field", lambda e: json.dumps({**e, "respose": e["response"]}).encode()),
    ("wrong_type", lambda e: json.dumps({**e, "latency_ms": "fast"}).encode()),
    ("oversize", lambda e: json.dumps({**e, "response": "x" * (MAX_TEXT_CHARS + 1)}).encode()),
    ("invalid_value", lambda e: json.dumps({**e, "latency_ms": -5}).encode()),
]


CANARY_VERSION = "2026-11-20"
#: With ``--mlflow``: the registry's version numbers, and a second, good canary served after the incident.
MLFLOW_VERSIONS = ("1", "2", "3")
WINDOW_SECONDS = 20
AFTER_ROLLBACK_SECONDS = 3 * WINDOW_SECONDS  # phase 3 of _served
SECOND_CANARY_SECONDS = 5 * WINDOW_SECONDS  # phase 4 of _served
#: Replies of phase 3 served in window 4: the model's next window, which tells the rollback watch
#: that the canary did not serve beside window 3 (only then does window 3 verify the rollback).
_TAIL_REPLIES = 3
_SECOND_CANARY_PAIRS = 270


def _served(
    data_dir: Path, pairs: int, oasst: int, versions: tuple[str, str, str | None] | None = None
) -> list[tuple[sample_data.Exchange, str, float]]:
    """Which model version served which real exchange, and when (seconds into the replay).

    Each phase fills whole windows (feedback comes 5 s after its reply, so a
    phase ends 6 s before its last window does):

    1. windows 0-1, the stable version alone answers HH-RLHF prompts (with the
       reply people chose) and OASST1 prompts;
    2. window 2, a canary version goes live beside it (an A/B test): each
       HH-RLHF prompt is answered by both, the stable version with the reply
       people chose, the canary with the reply they *rejected*: the incident;
    3. window 3, after the rollback, the stable version serves alone again
       (and a few replies in window 4, the model's next window);
    4. with a third version in ``versions`` (stable, canary, second canary),
       windows 5-7: a second canary beside the stable version, both answering
       with the replies people chose (each its own prompts).
    """
    stable, canary, second = versions or (sample_data.STABLE_VERSION, CANARY_VERSION, None)
    extra = _SECOND_CANARY_PAIRS if second else 0
    every = [pair for _, pair in zip(range(pairs + extra), sample_data.hh_rlhf(data_dir), strict=False)]
    hh, later = every[:pairs], every[pairs:]
    oa = [e for _, e in zip(range(oasst), sample_data.oasst1(data_dir), strict=False)]
    quarter = len(hh) // 4
    before: list[tuple[sample_data.Exchange, str]] = []
    for n in range(max(quarter, len(oa))):
        before += [(pair[0], stable) for pair in hh[n : min(n + 1, quarter)]]
        before += [(e, stable) for e in oa[n : n + 1]]
    incident = [
        served
        for chosen, rejected in hh[quarter : len(hh) - quarter]
        for served in ((chosen, stable), (rejected, canary))
    ]
    after = [(chosen, stable) for chosen, _ in hh[len(hh) - quarter :]]
    after, tail = after[:-_TAIL_REPLIES], after[-_TAIL_REPLIES:]
    good = [
        served
        for n in range(0, len(later) - 1, 2)
        for served in ((later[n][0], stable), (later[n + 1][0], second or stable))
    ]
    served = []
    phases = [(before, (0, 2)), (incident, (2, 1)), (after, (3, 1)), (tail, (4, 1))]
    phases += [(good, (5, 3))] if good else []
    for phase, (first_window, windows) in phases:
        span = windows * WINDOW_SECONDS - 6
        served += [
            (exchange, version, first_window * WINDOW_SECONDS + n * span / len(phase))
            for n, (exchange, version) in enumerate(phase)
        ]
    return served


def build_traffic(
    data_dir: Path,
    topics: Topics,
    *,
    pairs: int,
    oasst: int,
    seed: int = 7,
    versions: tuple[str, str, str | None] | None = None,
) -> Traffic:
    """The demo's traffic: real exchanges and feedback, shuffled in realistic ways, plus breakage."""
    rng = random.Random(seed)
    traffic = Traffic()
    early: dict[int, list[tuple[str, bytes]]] = {id(traffic.messages): [], id(traffic.after_rollback): []}
    served = _served(data_dir, pairs, oasst, versions)
    # Event time starts on a window boundary in the recent past, so windows fill predictably.
    start = datetime.fromtimestamp((time.time() // 60 - 10) * 60, UTC)
    for n, (exchange, version, offset) in enumerate(served):
        at = start + timedelta(seconds=offset)
        inference = sample_data.inference_event(exchange, at, rng, version=version)
        feedback = [json.dumps(f).encode() for f in sample_data.feedback_events(exchange, at)]
        broken = _BREAKAGES[n // 3] if n % 3 == 0 and n // 3 < len(_BREAKAGES) else None
        if offset >= SECOND_CANARY_SECONDS:
            # Clean traffic, sent after the incident's counts were taken.
            traffic.second_canary.append((topics.inference, json.dumps(inference).encode()))
            traffic.second_canary += [(topics.feedback, value) for value in feedback]
            continue
        messages = traffic.messages if offset < AFTER_ROLLBACK_SECONDS else traffic.after_rollback
        if broken:
            reason, breaker = broken
            messages.append((topics.inference, breaker(inference)))
            traffic.expected_rejections[reason] += 1
            traffic.expected_unmatched += len(feedback)
        else:
            messages.append((topics.inference, json.dumps(inference).encode()))
            traffic.valid_inference += 1
            traffic.expected_joins += len(feedback)
        for value in feedback:
            if rng.random() < 0.15:
                early[id(messages)].append((topics.feedback, value))
                traffic.feedback_first += 0 if broken else 1
            else:
                messages.append((topics.feedback, value))
            if rng.random() < 0.05:
                messages.append((topics.feedback, value))  # a client retry
                traffic.duplicates += 1
    # Feedback from a client that leaks raw e-mail addresses: refused, never stored.
    leaky = sample_data.feedback_events(served[0][0], start)[0]
    traffic.messages.append((topics.feedback, json.dumps({**leaky, "user_id": "jane@example.com"}).encode()))
    traffic.expected_rejections["invalid_value"] += 1
    traffic.messages[:0] = early[id(traffic.messages)]
    traffic.after_rollback[:0] = early[id(traffic.after_rollback)]
    return traffic


# Demo only: a canary whose replies people rejected also asks for a retrain on
# the curated feedback (its preference pairs), once its rollback is out.
_DEMO_RULE = {
    "name": "retrain-on-rejected-replies",
    "match": {"detectors": ["quality.canary.v1"], "verdicts": ["drift"]},
    "action": "retrain",
    "severity": "warning",
    "gates": {"min_samples": 30, "for_windows": 1},
}


def demo_policy(path: Path) -> Path:
    """The default policy, with alerts resolving 15 s after their last evidence (not 30 min),
    and one more rule, so that the demo's incident also leads to a retrain request."""
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    # Its own name: the console and each action say which policy decided, and this is not the built-in one.
    policy["name"] = "demo"
    policy["resolve_timeout"] = "15s"
    policy["rules"].append(_DEMO_RULE)
    # A firing rollback normally holds retrain requests for its model; the demo shows both.
    policy["inhibit"] = [rule for rule in policy["inhibit"] if rule["target"] != {"action": "retrain"}]
    # The second canary (--mlflow) serves about 135 replies: too few to show a 0.02 toxicity margin.
    for margin in policy["promote"]["margins"].values():
        margin["margin"] = max(margin["margin"], 0.05)
    text = yaml.safe_dump(policy, sort_keys=False)
    parse_policy(text, str(path))  # a mistake here fails the demo now, not in the worker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def worker_env(
    settings: Settings, bootstrap: str, topics: Topics, *, run_id: str, web_port: int
) -> dict[str, str]:
    """The environment of the demo's worker: short windows, joins and timeouts, and the demo policy."""
    return {
        **os.environ,
        "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
        "LOOPWATCH_APP_ID": f"loopwatch-demo-{run_id}",
        "LOOPWATCH_WEB_PORT": str(web_port),
        "LOOPWATCH_JOIN_TTL_SECONDS": "6",
        "LOOPWATCH_JOIN_SWEEP_SECONDS": "1",
        "LOOPWATCH_COMMIT_INTERVAL_SECONDS": "0.5",
        "LOOPWATCH_DATA_DIR": str(settings.data_dir / f"demo-{run_id}"),
        "LOOPWATCH_LOG_LEVEL": "warning",
        "LOOPWATCH_WINDOW_SECONDS": str(WINDOW_SECONDS),
        "LOOPWATCH_WINDOW_GRACE_SECONDS": "1",
        "LOOPWATCH_WINDOW_IDLE_SECONDS": "4",
        "LOOPWATCH_STABLE_VERSIONS": json.dumps({sample_data.MODEL: sample_data.STABLE_VERSION}),
        "LOOPWATCH_POLICY_FILE": str(demo_policy(settings.data_dir / f"demo-{run_id}-policy.yaml")),
        **{f"LOOPWATCH_TOPIC_{k.upper()}": v for k, v in topics.model_dump().items()},
    }
