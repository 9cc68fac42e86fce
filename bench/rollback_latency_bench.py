"""Incident to rollback: how long from a bad window's first event to the rollback request, live.

Usage: ``python bench/rollback_latency_bench.py [--small] [--runs 15] [--window 5] [--rules watermark timer]``

One embedded broker, one loopwatch worker with ``--window``-second windows.
Each run uses its own model (marked stable at version ``stable``):

1. one window of the stable version serving real HH-RLHF replies people
   chose, with thumbs-up (its reference);
2. one window in which a canary version serves the replies people rejected,
   with thumbs-down, beside the stable version; the clock starts at the first
   canary event sent to ``llm.inference.v1``;
3. traffic goes on into the next window until the rollback request is
   readable on ``loopwatch.rollback-requests.v1``.

Latency = rollback readable (its record timestamp) - first bad event sent -
window length (the part of the wait the window itself imposes). Baseline, same run: the time for one
message to go from a producer to a consumer through the broker. Prints
p50 and p99 (with few runs, p99 is the maximum) and the ratio to the baseline,
for each window close rule (``LOOPWATCH_WINDOW_CLOSE``: a worker of its own
each), and what the watermark rule costs against the timer rule.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaConsumer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.processes import spawn_worker, stop_process, wait_until_healthy  # noqa: E402
from core.settings import Settings, Topics  # noqa: E402
from services import sample_data  # noqa: E402
from services.broker import free_port, start_broker  # noqa: E402
from services.replay import Replayer  # noqa: E402

PER_WINDOW = 60  # requests per version and window: above the policy's min_samples of 30


def _events(
    exchange: sample_data.Exchange, model: str, version: str, thumbs_up: bool
) -> list[tuple[str, bytes]]:
    """An inference log served now and its thumbs feedback, as (topic kind, value)."""
    request_id = f"{model}-{uuid.uuid4().hex[:12]}"
    at = datetime.now(UTC)
    event = sample_data.inference_event(exchange, at, random.Random(0), version=version)
    event.update(
        request_id=request_id, event_id=f"inf-{request_id}", model={"name": model, "version": version}
    )
    thumbs = {
        "schema_version": "1",
        "event_id": f"fb-{request_id}",
        "request_id": request_id,
        "timestamp": at.isoformat(),
        "kind": "thumbs",
        "value": thumbs_up,
    }
    return [("inference", json.dumps(event).encode()), ("feedback", json.dumps(thumbs).encode())]


def _serve(replayer: Replayer, topics: Topics, batch: list[tuple[str, bytes]]) -> None:
    for kind, value in batch:
        replayer.send(topics.inference if kind == "inference" else topics.feedback, value)
    replayer.flush()


def _paced(seconds: float, count: int, make: object) -> None:
    """Call ``make(i)`` ``count`` times spread over ``seconds``."""
    start = time.monotonic()
    for i in range(count):
        make(i)  # type: ignore[operator]
        time.sleep(max(0.0, start + (i + 1) * seconds / count - time.monotonic()))


def _sleep_to_boundary(window: float) -> None:
    time.sleep(window - time.time() % window + 0.05)


def transit(bootstrap: str, topic: str, samples: int = 20) -> float:
    """Median seconds from a producer's send to a consumer's read (the baseline)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=[bootstrap], auto_offset_reset="latest", group_id=None)
    consumer.poll(timeout_ms=1000)
    replayer = Replayer(Settings(kafka_bootstrap=bootstrap))
    times = []
    for _ in range(samples):
        sent = time.monotonic()
        replayer.send(topic, b"ping", b"k")
        replayer.flush()
        while not any(consumer.poll(timeout_ms=50).values()):
            pass
        times.append(time.monotonic() - sent)
    consumer.close()
    replayer.close()
    return statistics.median(times)


@dataclass
class Run:
    """One incident's times, in seconds after the bad window's end (its wall-clock end)."""

    latency: float  # the rollback readable, minus the window, from the first bad event
    closed: float | None  # the canary's bad window closed (its WindowClosed's closed_at)
    closed_by: str | None
    waited_for: str | None
    detected: float | None  # its first Detection readable (record timestamp)
    rollback: float  # the rollback request readable

    def line(self) -> str:
        def at(value: float | None) -> str:
            return "?" if value is None else f"{value:+.2f} s"

        waited = f", waited for {self.waited_for}" if self.waited_for else ""
        return (
            f"{self.latency:.2f} s after the window (window end -> closed {at(self.closed)}"
            f" by {self.closed_by}{waited}; detection readable {at(self.detected)};"
            f" rollback readable {at(self.rollback)})"
        )


def one_run(bootstrap: str, topics: Topics, model: str, window: float, pairs: list[tuple]) -> Run:
    """The first bad event to the readable rollback, and where the time went."""
    consumer = KafkaConsumer(
        topics.rollback_requests,
        topics.windows,
        topics.detections,
        bootstrap_servers=[bootstrap],
        auto_offset_reset="latest",
        group_id=None,
    )
    consumer.poll(timeout_ms=500)
    replayer = Replayer(Settings(kafka_bootstrap=bootstrap))
    rng = random.Random(model)
    _sleep_to_boundary(window)
    _paced(
        window * 0.9,
        PER_WINDOW,
        lambda i: _serve(replayer, topics, _events(rng.choice(pairs)[0], model, "stable", True)),
    )
    _sleep_to_boundary(window)
    first_bad = time.time()
    bad_end = (first_bad // window + 1) * window  # the bad window's end, event time = wall time here

    def both(i: int) -> None:
        chosen, rejected = rng.choice(pairs)
        _serve(
            replayer,
            topics,
            _events(rejected, model, "canary", False) + _events(chosen, model, "stable", True),
        )

    _paced(window * 0.9, PER_WINDOW, both)
    closes: dict[str, dict] = {}  # the canary's windows ending at bad_end, by kind
    detected: list[float] = []  # when its Detections became readable
    readable: float | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (readable is None or not closes):
        both(0)  # traffic goes on into the next window
        for records in consumer.poll(timeout_ms=100).values():
            for record in records:
                value = json.loads(record.value)
                if record.topic == topics.rollback_requests:
                    if value["subject"] == model and readable is None:
                        # The record's broker-side timestamp: when it became readable, not when
                        # this loop got round to polling (same clock, same machine).
                        readable = record.timestamp / 1000
                    continue
                segment = value.get("segment", {})
                if (segment.get("model"), segment.get("model_version")) != (model, "canary"):
                    continue
                if _seconds(value["window_end"]) != bad_end:
                    continue
                if record.topic == topics.windows:
                    closes.setdefault(value["kind"], value)
                else:
                    detected.append(record.timestamp / 1000)
    consumer.close()
    replayer.close()
    if readable is None:
        raise RuntimeError(f"no rollback for {model} within 60 s")
    first = min(closes.values(), key=lambda c: c["closed_at"], default=None)
    return Run(
        latency=readable - first_bad - window,
        closed=None if first is None else _seconds(first["closed_at"]) - bad_end,
        closed_by=None if first is None else first.get("closed_by"),
        waited_for=None if first is None else first.get("waited_for"),
        detected=min(detected) - bad_end if detected else None,
        rollback=readable - bad_end,
    )


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 (the maximum with fewer than 100 runs)."""
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def one_rule(
    bootstrap: str, rule: str, args: argparse.Namespace, settings: Settings, pairs: list[tuple]
) -> list[float]:
    """Latencies of ``args.runs`` incidents on a worker of its own that closes windows by ``rule``."""
    models = [f"latency-{rule}-{n}" for n in range(args.runs)]
    web_port = free_port()
    env = {
        **os.environ,
        "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
        "LOOPWATCH_WEB_PORT": str(web_port),
        "LOOPWATCH_DATA_DIR": tempfile.mkdtemp(),
        "LOOPWATCH_LOG_LEVEL": "warning",
        "LOOPWATCH_WINDOW_SECONDS": str(args.window),
        "LOOPWATCH_COMMIT_INTERVAL_SECONDS": "0.5",
        "LOOPWATCH_STABLE_VERSIONS": json.dumps(dict.fromkeys(models, "stable")),
        "LOOPWATCH_WINDOW_CLOSE": rule,
    }
    worker = spawn_worker(env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(f"http://127.0.0.1:{web_port}/health", worker, 120)
        latencies = []
        for model in models:
            run = one_run(bootstrap, settings.topics, model, args.window, pairs)
            latencies.append(run.latency)
            print(f"{model}: {run.line()}", flush=True)
    finally:
        stop_process(worker)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="5 runs per rule (about 3 minutes)")
    parser.add_argument("--runs", type=int, default=15, help="incidents per close rule")
    parser.add_argument("--window", type=float, default=5.0, help="window length in seconds")
    parser.add_argument("--rules", nargs="+", choices=["watermark", "timer"], default=["watermark", "timer"])
    args = parser.parse_args()
    if args.small:
        args.runs = 5
    settings = Settings()
    pairs = [pair for _, pair in zip(range(400), sample_data.hh_rlhf(settings.sample_data), strict=False)]
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = start_broker(port)
    try:
        baseline = transit(bootstrap, "latency-bench-ping")
        results = {rule: one_rule(bootstrap, rule, args, settings, pairs) for rule in args.rules}
    finally:
        stop_process(broker)
    print(f"baseline: broker transit {baseline * 1000:.1f} ms (median of 20)")
    for rule, latencies in results.items():
        p50, p99 = percentiles(latencies)
        print(f"{rule} rule: incident -> rollback request, window length subtracted, {len(latencies)} runs:")
        print(f"  p50 {p50:.2f} s  p99 {p99:.2f} s  (goal: p99 < 1 s)  p50 / transit = {p50 / baseline:.0f}x")
    if {"watermark", "timer"} <= results.keys():
        (w50, w99), (t50, t99) = percentiles(results["watermark"]), percentiles(results["timer"])
        print(f"watermark - timer: p50 {w50 - t50:+.2f} s, p99 {w99 - t99:+.2f} s")


if __name__ == "__main__":
    main()
