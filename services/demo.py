"""``loopwatch demo``: real traffic through the whole loop, and a summary of what happened.

The demo starts what it needs (the embedded broker unless ``--bootstrap`` names
a Kafka, and one worker), replays real HH-RLHF and OASST1 exchanges with their
human feedback plus malformed messages derived from them, then reads the
output topics like any downstream consumer would and reports what it saw.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from schemas.events import MAX_TEXT_CHARS, Detection
from services import sample_data
from services.broker import free_port, start_broker
from services.processes import spawn, stop_process, wait_until_healthy
from services.replay import Replayer
from services.settings import Settings, Topics
from streams.metrics import metric_total


@dataclass
class Traffic:
    """Messages to send, in order, and what a correct pipeline must make of them."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, value)
    expected_rejections: Counter[str] = field(default_factory=Counter)
    valid_inference: int = 0
    expected_joins: int = 0
    expected_unmatched: int = 0
    duplicates: int = 0
    feedback_first: int = 0

    def count(self, topic: str) -> int:
        """How many messages go to ``topic``."""
        return sum(1 for t, _ in self.messages if t == topic)


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
WINDOW_SECONDS = 20
_SPACING = timedelta(seconds=0.1)


def _served(data_dir: Path, pairs: int, oasst: int) -> list[tuple[sample_data.Exchange, str]]:
    """Which model version served which real exchange, in time order.

    First the stable version alone answers HH-RLHF prompts (the reply people
    chose) and OASST1 prompts. Then a canary version goes live beside it and
    answers half of the HH-RLHF prompts with the reply people *rejected*:
    the incident the detectors must catch.
    """
    hh = list(zip(range(pairs), sample_data.hh_rlhf(data_dir), strict=False))
    oa = [e for _, e in zip(range(oasst), sample_data.oasst1(data_dir), strict=False)]
    half = len(hh) // 2
    stable_phase = [(pair[0], sample_data.STABLE_VERSION) for _, pair in hh[:half]]
    served = []
    for n in range(max(len(stable_phase), len(oa))):
        served += stable_phase[n : n + 1] + [(e, sample_data.STABLE_VERSION) for e in oa[n : n + 1]]
    for n, (_, (chosen, rejected)) in enumerate(hh[half:]):
        served.append((chosen, sample_data.STABLE_VERSION) if n % 2 else (rejected, CANARY_VERSION))
    return served


def build_traffic(data_dir: Path, topics: Topics, *, pairs: int, oasst: int, seed: int = 7) -> Traffic:
    """The demo's traffic: real exchanges and feedback, shuffled in realistic ways, plus breakage."""
    rng = random.Random(seed)
    traffic = Traffic()
    early_feedback: list[tuple[str, bytes]] = []
    served = _served(data_dir, pairs, oasst)
    # Event time starts on a window boundary in the recent past, so windows fill predictably.
    start = datetime.fromtimestamp((time.time() // 60 - 10) * 60, UTC)
    for n, (exchange, version) in enumerate(served):
        at = start + n * _SPACING
        inference = sample_data.inference_event(exchange, at, rng, version=version)
        feedback = [json.dumps(f).encode() for f in sample_data.feedback_events(exchange, at)]
        broken = _BREAKAGES[n // 3] if n % 3 == 0 and n // 3 < len(_BREAKAGES) else None
        if broken:
            reason, breaker = broken
            traffic.messages.append((topics.inference, breaker(inference)))
            traffic.expected_rejections[reason] += 1
            traffic.expected_unmatched += len(feedback)
        else:
            traffic.messages.append((topics.inference, json.dumps(inference).encode()))
            traffic.valid_inference += 1
            traffic.expected_joins += len(feedback)
        for value in feedback:
            if rng.random() < 0.15:
                early_feedback.append((topics.feedback, value))
                traffic.feedback_first += 0 if broken else 1
            else:
                traffic.messages.append((topics.feedback, value))
            if rng.random() < 0.05:
                traffic.messages.append((topics.feedback, value))  # a client retry
                traffic.duplicates += 1
    # Feedback from a client that leaks raw e-mail addresses: refused, never stored.
    leaky = sample_data.feedback_events(served[0][0], start)[0]
    traffic.messages.append((topics.feedback, json.dumps({**leaky, "user_id": "jane@example.com"}).encode()))
    traffic.expected_rejections["invalid_value"] += 1
    traffic.messages = early_feedback + traffic.messages
    return traffic


@dataclass
class Observed:
    """What the output topics held once the pipeline settled."""

    enriched: int = 0
    joined: int = 0
    unmatched: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)


def observe(bootstrap: str, topics: Topics, traffic: Traffic, timeout: float) -> Observed:
    """Read the output topics until every expected record arrived, or ``timeout`` passes."""
    consumer = KafkaConsumer(
        topics.deadletter,
        topics.enriched,
        topics.joined,
        topics.unmatched,
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    seen = Observed()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.topic == topics.deadletter:
                        letter = json.loads(record.value)
                        seen.rejections[letter["reason"]] += 1
                        seen.examples.setdefault(letter["reason"], letter["error"])
                    elif record.topic == topics.enriched:
                        seen.enriched += 1
                    elif record.topic == topics.joined:
                        seen.joined += 1
                    else:
                        seen.unmatched += 1
            if (
                seen.rejections == traffic.expected_rejections
                and seen.joined >= traffic.expected_joins
                and seen.unmatched >= traffic.expected_unmatched
                and seen.enriched >= traffic.valid_inference
            ):
                break
    finally:
        consumer.close()
    return seen


def observe_detections(bootstrap: str, topic: str, *, quiet: float, timeout: float) -> list[Detection]:
    """Read Detections until none arrived for ``quiet`` seconds (the last windows closed)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    detections: list[Detection] = []
    deadline = time.monotonic() + timeout
    last_news = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last_news < quiet:
            for records in consumer.poll(timeout_ms=500).values():
                detections += [Detection.model_validate_json(r.value) for r in records]
                last_news = time.monotonic()
    finally:
        consumer.close()
    return sorted(detections, key=lambda d: (d.window_start, d.segment.key(), d.detector_id))


def run_demo(
    settings: Settings,
    *,
    bootstrap: str | None = None,
    pairs: int = 150,
    oasst: int = 150,
    summary_json: Path | None = None,
    timeout: float = 180,
    out: Any = sys.stdout,
) -> dict[str, Any]:
    """Run the whole demo and return (and print) its summary."""
    started = time.monotonic()
    run_id = f"{int(time.time())}-{os.getpid()}"
    broker = None
    if bootstrap is None:
        port = free_port()
        broker = start_broker(port)
        bootstrap = f"127.0.0.1:{port}"
        topics = settings.topics
        where = f"embedded Tansu broker at {bootstrap}"
    else:
        # A shared Kafka may already hold these topics: keep this run's apart.
        topics = settings.topics.with_prefix(f"demo-{run_id}.")
        where = f"Kafka at {bootstrap}"
    web_port = free_port()
    env = {
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
        **{f"LOOPWATCH_TOPIC_{k.upper()}": v for k, v in topics.model_dump().items()},
    }
    worker_log = settings.data_dir / f"demo-{run_id}.log"
    worker_log.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"loopwatch demo: starting a worker against the {where} (log: {worker_log}) ...",
        file=out,
        flush=True,
    )
    with worker_log.open("wb") as log_file:
        worker = spawn(
            [sys.executable, "-m", "services.cli", "worker"],
            env=env,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        traffic = build_traffic(settings.sample_data, topics, pairs=pairs, oasst=oasst)
        wait_until_healthy(f"http://127.0.0.1:{web_port}/health", worker)
        print(f"replaying {len(traffic.messages)} real events ...", file=out, flush=True)
        replayer = Replayer(bootstrap)
        for topic, value in traffic.messages:
            replayer.send(topic, value)
        replayer.close()
        seen = observe(bootstrap, topics, traffic, timeout)
        # Windows close a few seconds after their last event; slow detectors take longer.
        detections = observe_detections(bootstrap, topics.detections, quiet=10, timeout=timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as response:
            metrics_text = response.read().decode()
    finally:
        stop_process(worker, timeout=30)
        if broker is not None:
            stop_process(broker)

    summary = _summary(traffic, seen, topics, metrics_text, where, time.monotonic() - started)
    summary["detections"] = _detections_summary(detections)
    print(render(summary), file=out, flush=True)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {summary_json}", file=out)
    return summary


def _summary(
    traffic: Traffic, seen: Observed, topics: Topics, metrics_text: str, where: str, elapsed: float
) -> dict[str, Any]:
    events_in = {
        "inference": traffic.count(topics.inference),
        "feedback": traffic.count(topics.feedback),
    }
    total_in = sum(events_in.values())
    valid_feedback = int(metric_total(metrics_text, "loopwatch_events_valid_total", topic=topics.feedback))
    dead = sum(seen.rejections.values())
    return {
        "broker": where,
        "elapsed_seconds": round(elapsed, 1),
        "events_in": {**events_in, "total": total_in},
        "valid": {"inference": seen.enriched, "feedback": valid_feedback},
        "dead_lettered": {
            "total": dead,
            "by_reason": dict(sorted(seen.rejections.items())),
            "examples": dict(sorted(seen.examples.items())),
        },
        "feedback": {
            "joined": seen.joined,
            "sent_before_their_inference": traffic.feedback_first,
            "duplicates_ignored": int(metric_total(metrics_text, "loopwatch_feedback_duplicate_total")),
            "unmatched_expired": seen.unmatched,
        },
        "counts_add_up": total_in == seen.enriched + valid_feedback + dead,
        "expected": {
            "dead_lettered": dict(sorted(traffic.expected_rejections.items())),
            "joined": traffic.expected_joins,
            "unmatched": traffic.expected_unmatched,
            "duplicates": traffic.duplicates,
        },
        "alerts": [],
        "actions": [],
        "datasets": [],
    }


def _detections_summary(detections: list[Detection]) -> dict[str, Any]:
    """Counts by verdict, and every warning or drift with what a person needs to read it."""
    return {
        "total": len(detections),
        "by_verdict": dict(sorted(Counter(d.verdict for d in detections).items())),
        "flagged": [
            {
                "id": d.detection_id,
                "detector": d.detector_id,
                "verdict": d.verdict,
                "model": d.segment.model,
                "version": d.segment.model_version,
                "tenant": d.segment.tenant,
                "window_start": d.window_start.isoformat(),
                "window_end": d.window_end.isoformat(),
                "reference": d.reference,
                "statistic": d.statistic,
                "p_value": d.p_value,
                "effect_size": d.effect_size,
                "flagged_request_ids": d.evidence.request_ids[:5],
            }
            for d in detections
            if d.verdict != "ok"
        ],
    }


def render(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    s = summary
    lines = [
        "",
        f"loopwatch demo: real HH-RLHF and OASST1 traffic through the {s['broker']}",
        f"  in:        {s['events_in']['inference']} inference logs, "
        f"{s['events_in']['feedback']} feedback events",
        f"  valid:     {s['valid']['inference']} inference logs enriched and forwarded for detection, "
        f"{s['valid']['feedback']} feedback events",
        f"  rejected:  {s['dead_lettered']['total']} messages dead-lettered with a reason:",
    ]
    for reason, count in s["dead_lettered"]["by_reason"].items():
        example = s["dead_lettered"]["examples"][reason]
        lines.append(f"     {count:3d}  {reason:<24} e.g. {example[:90]}")
    fb = s["feedback"]
    lines += [
        f"  join:      {fb['joined']} feedback events joined to their inference "
        f"({fb['sent_before_their_inference']} had arrived first), "
        f"{fb['duplicates_ignored']} duplicates ignored, {fb['unmatched_expired']} unmatched kept after TTL",
        f"  check:     in {s['events_in']['total']} = valid "
        f"{s['valid']['inference'] + s['valid']['feedback']} + dead-lettered {s['dead_lettered']['total']}: "
        + ("adds up" if s["counts_add_up"] else "DOES NOT ADD UP"),
    ]
    det = s["detections"]
    verdicts = ", ".join(f"{n} {verdict}" for verdict, n in det["by_verdict"].items()) or "none"
    lines.append(f"  detect:    {det['total']} detections on {WINDOW_SECONDS}s windows ({verdicts})")
    for d in det["flagged"]:
        effect = "" if d["effect_size"] is None else f" effect {d['effect_size']:.3g}"
        p_value = "" if d["p_value"] is None else f" p={d['p_value']:.2g}"
        lines.append(
            f"     {d['verdict']:<7} {d['detector']:<30} {d['model']}@{d['version']} ({d['tenant']}) "
            f"window {d['window_start'][11:19]}{effect}{p_value}"
        )
    lines.append(f"  took {s['elapsed_seconds']}s")
    return "\n".join(lines)
