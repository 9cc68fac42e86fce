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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer

from core.processes import spawn_worker, stop_process, wait_until_healthy
from core.settings import Settings, Topics
from retrain_trigger.actions import (
    RETRAIN_REQUESTED,
    ROLLBACK_FAILED,
    ROLLBACK_REQUESTED,
    ROLLBACK_VERIFIED,
    from_kafka,
)
from retrain_trigger.policy import DEFAULT_POLICY, parse_policy
from schemas.events import MAX_TEXT_CHARS, Alert, CloudEvent, Detection
from services import sample_data
from services.broker import free_port, start_broker
from services.replay import Replayer
from streams.metrics import metric_total


@dataclass
class Traffic:
    """Messages to send, in order, and what a correct pipeline must make of them."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, value)
    # Sent once the rollback request is out: the stable version serving again.
    after_rollback: list[tuple[str, bytes]] = field(default_factory=list)
    expected_rejections: Counter[str] = field(default_factory=Counter)
    valid_inference: int = 0
    expected_joins: int = 0
    expected_unmatched: int = 0
    duplicates: int = 0
    feedback_first: int = 0

    def count(self, topic: str) -> int:
        """How many messages go to ``topic``."""
        return sum(1 for t, _ in self.messages + self.after_rollback if t == topic)


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
AFTER_ROLLBACK_SECONDS = 3 * WINDOW_SECONDS  # phase 3 of _served


def _served(data_dir: Path, pairs: int, oasst: int) -> list[tuple[sample_data.Exchange, str, float]]:
    """Which model version served which real exchange, and when (seconds into the replay).

    Each phase fills whole windows (feedback comes 5 s after its reply, so a
    phase ends 6 s before its last window does):

    1. windows 0-1, the stable version alone answers HH-RLHF prompts (with the
       reply people chose) and OASST1 prompts;
    2. window 2, a canary version goes live beside it (an A/B test): each
       HH-RLHF prompt is answered by both, the stable version with the reply
       people chose, the canary with the reply they *rejected*: the incident;
    3. window 3, after the rollback, the stable version serves alone again.
    """
    hh = [pair for _, pair in zip(range(pairs), sample_data.hh_rlhf(data_dir), strict=False)]
    oa = [e for _, e in zip(range(oasst), sample_data.oasst1(data_dir), strict=False)]
    quarter = len(hh) // 4
    before: list[tuple[sample_data.Exchange, str]] = []
    for n in range(max(quarter, len(oa))):
        before += [(pair[0], sample_data.STABLE_VERSION) for pair in hh[n : min(n + 1, quarter)]]
        before += [(e, sample_data.STABLE_VERSION) for e in oa[n : n + 1]]
    incident = [
        served
        for chosen, rejected in hh[quarter : len(hh) - quarter]
        for served in ((chosen, sample_data.STABLE_VERSION), (rejected, CANARY_VERSION))
    ]
    after = [(chosen, sample_data.STABLE_VERSION) for chosen, _ in hh[len(hh) - quarter :]]
    served = []
    for phase, (first_window, windows) in zip(
        (before, incident, after), ((0, 2), (2, 1), (3, 1)), strict=True
    ):
        span = windows * WINDOW_SECONDS - 6
        served += [
            (exchange, version, first_window * WINDOW_SECONDS + n * span / len(phase))
            for n, (exchange, version) in enumerate(phase)
        ]
    return served


def build_traffic(data_dir: Path, topics: Topics, *, pairs: int, oasst: int, seed: int = 7) -> Traffic:
    """The demo's traffic: real exchanges and feedback, shuffled in realistic ways, plus breakage."""
    rng = random.Random(seed)
    traffic = Traffic()
    early: dict[int, list[tuple[str, bytes]]] = {id(traffic.messages): [], id(traffic.after_rollback): []}
    served = _served(data_dir, pairs, oasst)
    # Event time starts on a window boundary in the recent past, so windows fill predictably.
    start = datetime.fromtimestamp((time.time() // 60 - 10) * 60, UTC)
    for n, (exchange, version, offset) in enumerate(served):
        at = start + timedelta(seconds=offset)
        inference = sample_data.inference_event(exchange, at, rng, version=version)
        feedback = [json.dumps(f).encode() for f in sample_data.feedback_events(exchange, at)]
        broken = _BREAKAGES[n // 3] if n % 3 == 0 and n // 3 < len(_BREAKAGES) else None
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


@dataclass
class Observed:
    """What the output topics held once the pipeline settled."""

    enriched: int = 0
    joined: int = 0
    unmatched: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)


def _reader(bootstrap: str, *topics: str) -> KafkaConsumer:
    """A group-less consumer that reads these topics from their start, as any downstream reader would."""
    return KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )


def observe(bootstrap: str, topics: Topics, traffic: Traffic, timeout: float) -> Observed:
    """Read the output topics until every expected record arrived, or ``timeout`` passes."""
    consumer = _reader(bootstrap, topics.deadletter, topics.enriched, topics.joined, topics.unmatched)
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


@dataclass
class Loop:
    """What the detect and decide stages published, with when each record reached its topic."""

    detections: list[Detection] = field(default_factory=list)
    alerts: list[tuple[float, Alert]] = field(default_factory=list)
    actions: list[tuple[float, CloudEvent]] = field(default_factory=list)

    def settled(self) -> bool:
        """The incident ran its course: rollback checked, and no alert left firing."""
        outcome = any(event.type in (ROLLBACK_VERIFIED, ROLLBACK_FAILED) for _, event in self.actions)
        status = {alert.fingerprint: alert.status for _, alert in sorted(self.alerts, key=lambda a: a[0])}
        return outcome and bool(status) and all(s == "resolved" for s in status.values())

    def rolled_back(self) -> bool:
        """A rollback request is out."""
        return any(event.type == ROLLBACK_REQUESTED for _, event in self.actions)


def observe_loop(
    bootstrap: str, topics: Topics, *, quiet: float, timeout: float, until: Callable[[Loop], bool]
) -> Loop:
    """Read detections, alerts and actions until ``until`` holds, or nothing came for ``quiet`` s."""
    consumer = _reader(
        bootstrap, topics.detections, topics.alerts, topics.rollback_requests, topics.retrain_requests
    )
    loop = Loop()
    deadline = time.monotonic() + timeout
    last_news = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last_news < quiet and not until(loop):
            for records in consumer.poll(timeout_ms=500).values():
                last_news = time.monotonic()
                for r in records:
                    at = r.timestamp / 1000
                    if r.topic == topics.detections:
                        loop.detections.append(Detection.model_validate_json(r.value))
                    elif r.topic == topics.alerts:
                        loop.alerts.append((at, Alert.model_validate_json(r.value)))
                    else:
                        loop.actions.append((at, from_kafka(r.value)))
    finally:
        consumer.close()
    loop.detections.sort(key=lambda d: (d.window_start, d.segment.key(), d.detector_id))
    return loop


def _send(bootstrap: str, messages: list[tuple[str, bytes]]) -> None:
    replayer = Replayer(bootstrap)
    for topic, value in messages:
        replayer.send(topic, value)
    replayer.close()


# Demo only: a canary whose replies people rejected also asks for a retrain on
# the curated feedback (its preference pairs), once its rollback is out.
_DEMO_RULE = {
    "name": "retrain-on-rejected-replies",
    "match": {"detectors": ["quality.canary.v1"], "verdicts": ["drift"]},
    "action": "retrain",
    "severity": "warning",
    "gates": {"min_samples": 30, "for_windows": 1},
}


def _demo_policy(path: Path) -> Path:
    """The default policy, with alerts resolving 15 s after their last evidence (not 30 min),
    and one more rule, so that the demo's incident also leads to a retrain request."""
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    policy["resolve_timeout"] = "15s"
    policy["rules"].append(_DEMO_RULE)
    # A firing rollback normally holds retrain requests for its model; the demo shows both.
    policy["inhibit"] = [rule for rule in policy["inhibit"] if rule["target"] != {"action": "retrain"}]
    text = yaml.safe_dump(policy, sort_keys=False)
    parse_policy(text, str(path))  # a mistake here fails the demo now, not in the worker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_demo(
    settings: Settings,
    *,
    bootstrap: str | None = None,
    pairs: int = 240,
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
        "LOOPWATCH_POLICY_FILE": str(_demo_policy(settings.data_dir / f"demo-{run_id}-policy.yaml")),
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
        worker = spawn_worker(env, stdout=log_file, stderr=log_file)
    try:
        traffic = build_traffic(settings.sample_data, topics, pairs=pairs, oasst=oasst)
        wait_until_healthy(f"http://127.0.0.1:{web_port}/health", worker)
        print(
            f"replaying {len(traffic.messages)} real events (a stable phase, then a canary serving the "
            f"rejected replies); {len(traffic.after_rollback)} more once the rollback is requested ...",
            file=out,
            flush=True,
        )
        replayed_at = time.time()
        _send(bootstrap, traffic.messages)
        # Windows close a few seconds after their last event; the decide stage follows.
        observe_loop(bootstrap, topics, quiet=30, timeout=timeout, until=Loop.rolled_back)
        print(
            f"rollback requested; replaying the other {len(traffic.after_rollback)} events, "
            "the stable version serving again ...",
            file=out,
            flush=True,
        )
        _send(bootstrap, traffic.after_rollback)
        seen = observe(bootstrap, topics, traffic, timeout)
        loop = observe_loop(bootstrap, topics, quiet=30, timeout=timeout, until=Loop.settled)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as response:
            metrics_text = response.read().decode()
    finally:
        stop_process(worker, timeout=30)
        if broker is not None:
            stop_process(broker)

    summary = _summary(traffic, seen, topics, metrics_text, where, time.monotonic() - started)
    summary["detections"] = _detections_summary(loop.detections)
    summary["alerts"] = [
        {
            "fingerprint": alert.fingerprint,
            "status": alert.status,
            "severity": alert.severity,
            "summary": alert.summary,
            "labels": alert.labels,
            "starts_at": alert.starts_at.isoformat(),
            "ends_at": alert.ends_at.isoformat() if alert.ends_at else None,
            "published_at": _iso(at),
        }
        for at, alert in sorted(loop.alerts, key=lambda item: item[0])
    ]
    summary["actions"] = [
        {
            "id": event.id,
            "type": event.type,
            "subject": event.subject,
            "time": event.time.isoformat(),
            "published_at": _iso(at),
            **{
                k: event.data[k]
                for k in ("from_version", "target_version", "verified", "reason", "dataset")
                if event.data.get(k) is not None
            },
        }
        for at, event in sorted(loop.actions, key=lambda item: item[0])
    ]
    summary["timeline"] = _timeline(loop, replayed_at)
    summary["datasets"], summary["export"] = _datasets(
        settings.data_dir / f"demo-{run_id}" / "datasets",
        loop,
        settings.data_dir / f"demo-{run_id}-export.jsonl",
    )
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
        "events_in": {
            **events_in,
            "total": total_in,
            "before_rollback": len(traffic.messages),
            "after_rollback": len(traffic.after_rollback),
        },
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
        "timeline": [],
        "datasets": [],
        "export": None,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _datasets(root: Path, loop: Loop, output: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The curated tables the traffic grew, and an export of the version the retrain request named."""
    from curation.export import export
    from curation.store import DatasetStore, table_kind

    if not root.exists():
        return [], None
    store = DatasetStore(root)
    tables = [
        {"table": kind, "version": version, "rows": store.read(kind).num_rows, "uri": store.uri(kind)}
        for kind, version in store.latest_versions().items()
    ]
    named = [
        e.data["dataset"] for _, e in loop.actions if e.type == RETRAIN_REQUESTED and e.data.get("dataset")
    ]
    target = named[0] if named else store.training_ref()
    if target is None:
        return tables, None
    result = export(store, table_kind(str(target["table"])), output, version=int(target["version"]))
    return tables, {
        "table": result.table,
        "version": result.version,
        "rows": result.rows,
        "path": str(output),
    }


def _timeline(loop: Loop, replayed_at: float) -> list[str]:
    """The incident as it unfolded: seconds after the replay began, and what was published."""
    lines = []
    for at, alert in loop.alerts:
        labels = alert.labels
        what = f"alert {alert.status:<8} {alert.severity:<8} {labels.get('rule', '')} "
        what += f"{labels.get('model', '')}@{labels.get('model_version', '')}: {alert.summary}"
        lines.append((at, what))
    for at, event in loop.actions:
        extra = ""
        if "target_version" in event.data:
            extra = f" {event.data.get('from_version')} -> {event.data['target_version']}"
        if "reason" in event.data:
            extra += f" ({event.data['reason']})"
        if event.data.get("dataset"):
            dataset = event.data["dataset"]
            extra += f" train on {dataset['table']}@v{dataset['version']}"
        lines.append((at, f"{event.type} {event.subject}{extra} id={event.id}"))
    return [f"+{at - replayed_at:5.1f}s  {what}" for at, what in sorted(lines)]


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


# Why a table can stay empty in the demo: its traffic holds no such feedback.
_EMPTY_DATASETS = {
    "sft": "it takes negative feedback that carries a correction; HH-RLHF and OASST1 give thumbs "
    "and ratings only",
    "preference": "it takes a correction, or two versions with opposite feedback on one prompt",
    "golden": "it takes positive feedback",
    "safety_review": "the cheap toxicity scorer flagged no prompt or reply",
}


def render(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    s = summary
    lines = [
        "",
        f"loopwatch demo: real HH-RLHF and OASST1 traffic through the {s['broker']}",
        f"  in:        {s['events_in']['inference']} inference logs, "
        f"{s['events_in']['feedback']} feedback events ({s['events_in']['before_rollback']} replayed "
        f"before the rollback request, {s['events_in']['after_rollback']} after it)",
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
    for table in s["datasets"]:
        lines.append(
            f"  dataset:   {table['table']:<14} version {table['version']:>3}, "
            f"{table['rows']} rows  {table['uri']}"
        )
    written = {table["table"] for table in s["datasets"]}
    if written:
        lines += [
            f"  dataset:   {kind:<14} none: {why}"
            for kind, why in _EMPTY_DATASETS.items()
            if kind not in written
        ]
    if s["export"]:
        e = s["export"]
        lines.append(
            f"  exported:  {e['table']}@v{e['version']} ({e['rows']} rows, chat JSONL) to {e['path']}"
        )
    if s["timeline"]:
        lines.append("  timeline (seconds after the replay began):")
        lines += [f"     {line}" for line in s["timeline"]]
    lines.append(f"  took {s['elapsed_seconds']}s")
    return "\n".join(lines)
