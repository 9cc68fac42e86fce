"""Ingest throughput: raw aiokafka vs a plain faust agent vs loopwatch ingest, one broker, one run.

Usage: ``python bench/ingest_bench.py [--events 200000]``

All three consume the same pre-filled topic of ~1 KB InferenceLog events
built from real HH-RLHF exchanges, each in its own process (one worker
process each, as in production), on the same embedded broker:

(a) a raw aiokafka consumer that only ``json.loads`` each value;
(b) a plain faust agent (stock faust consumer) that only ``json.loads`` each value;
(c) the loopwatch worker with detection off: validate, describe, forward to
    the enriched topic, update the join table, dead-letter the bad ones;
(d) the same worker with detection on (the default): every batch also
    summarises its windows, and the detect stage merges the summaries and
    runs the built-in cheap detectors on each closed window.

It prints events/s and MB/s for each and the ratios c/a, c/b and d/c (the
goal for d/c: at least 0.75, detection costs ingest at most 25%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.processes import spawn, spawn_worker, stop_process  # noqa: E402
from core.settings import Settings  # noqa: E402
from services import sample_data  # noqa: E402
from services.broker import free_port, start_broker  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402

TARGET_BYTES = 1024


def one_kb_events(n: int, data_dir: Path) -> list[bytes]:
    """n InferenceLog events of about 1 KB, cycling through real HH-RLHF exchanges."""
    rng = random.Random(1)
    exchanges = [e for pair in sample_data.hh_rlhf(data_dir) for e in pair][:2000]
    events = []
    start = sample_data.now()
    for i in range(n):
        exchange = exchanges[i % len(exchanges)]
        event = sample_data.inference_event(exchange, start, rng)
        event["request_id"] = event["event_id"] = f"bench-{i}"
        event["prompt"] = exchange.prompt[-1]["content"][:300]
        event["response"] = ""
        room = max(TARGET_BYTES - len(json.dumps(event).encode()), 0)
        filler = exchange.response or exchange.prompt[-1]["content"]
        event["response"] = (filler * (room // len(filler) + 1))[:room]
        excess = len(json.dumps(event).encode()) - TARGET_BYTES  # escaped non-ASCII takes more bytes
        if excess > 0:
            event["response"] = event["response"][:-excess]
        events.append(json.dumps(event).encode())
    return events


async def fill(bootstrap: str, topic: str, events: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for i, value in enumerate(events):
            await producer.send(topic, value, key=f"bench-{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def raw_aiokafka(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{time.time()}",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    got, started = 0, 0.0
    try:
        while got < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                if not started:
                    started = time.perf_counter()
                for record in records:
                    json.loads(record.value)
                    got += 1
        return time.perf_counter() - started
    finally:
        await consumer.stop()


PLAIN_FAUST = """
import json, sys, time, faust
bootstrap, topic, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
app = faust.App("plain-" + str(time.time()), broker="kafka://" + bootstrap, value_serializer="raw",
                store="memory://", web_enabled=False, consumer_auto_offset_reset="earliest")
state = {"n": 0, "t": 0.0}
@app.agent(app.topic(topic, value_serializer="raw"))
async def plain(stream):
    async for value in stream:
        json.loads(value)
        if not state["t"]:
            state["t"] = time.perf_counter()
        state["n"] += 1
        if state["n"] >= n:
            open(out, "w").write(str(time.perf_counter() - state["t"]))
            app._crash(SystemExit(0))
sys.argv = [sys.argv[0], "worker", "-l", "warn"]
app.main()
"""


def plain_faust(bootstrap: str, topic: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds"
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN_FAUST)
        process = spawn(
            [sys.executable, str(script), bootstrap, topic, str(n), str(out)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 600
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        stop_process(process)
        return float(out.read_text())


def _events_in(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("loopwatch_events_in_total")
    )


def loopwatch_ingest(bootstrap: str, settings: Settings, n: int, *, detection: bool) -> float:
    """Seconds per n events, from the worker's counter (which moves once per batch)."""
    web_port = free_port()
    env = {
        **os.environ,
        "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
        "LOOPWATCH_WEB_PORT": str(web_port),
        "LOOPWATCH_APP_ID": f"bench-{time.time()}",
        "LOOPWATCH_LOG_LEVEL": "warning",
        "LOOPWATCH_TOPIC_INFERENCE": settings.topics.inference,
        "LOOPWATCH_DATA_DIR": tempfile.mkdtemp(),
        "LOOPWATCH_DETECTION": str(detection).lower(),
        # Each worker reads the pre-filled topic from the start, into its own summaries topic.
        "LOOPWATCH_TOPIC_SUMMARIES": f"bench-summaries-{time.time()}",
    }
    process = spawn_worker(env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{web_port}/metrics"
    try:
        started, counted_at_start = 0.0, 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                seen = _events_in(url)
            except OSError:
                seen = 0
            if seen and not started:
                # The clock starts once the first batch is counted, so only the
                # events counted after that moment are timed; scale them up to n.
                started, counted_at_start = time.perf_counter(), seen
            if seen >= n:
                if counted_at_start >= n:
                    raise RuntimeError("all events were ingested before the first poll: use more --events")
                return (time.perf_counter() - started) * n / (n - counted_at_start)
            time.sleep(0.02)
        raise RuntimeError("loopwatch did not ingest every event within 600 s")
    finally:
        stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    n = args.events
    port = free_port()
    broker = start_broker(port)
    bootstrap = f"127.0.0.1:{port}"
    try:
        settings = Settings(kafka_bootstrap=bootstrap)
        ensure_topics(settings)
        topic = settings.topics.inference
        events = one_kb_events(n, settings.sample_data)
        megabytes = sum(len(e) for e in events) / 1e6
        print(
            f"filling {topic} with {n:,} events ({megabytes / n * 1e6:.0f} bytes each) ...",
            flush=True,
        )
        asyncio.run(fill(bootstrap, topic, events))
        results = {
            "a_raw_aiokafka": asyncio.run(raw_aiokafka(bootstrap, topic, n)),
            "b_plain_faust": plain_faust(bootstrap, topic, n),
            "c_loopwatch_ingest": loopwatch_ingest(bootstrap, settings, n, detection=False),
            "d_with_detection": loopwatch_ingest(bootstrap, settings, n, detection=True),
        }
    finally:
        stop_process(broker)
    rate = {name: n / seconds for name, seconds in results.items()}
    for name, seconds in results.items():
        print(f"{name:<20} {rate[name]:>10,.0f} events/s {megabytes / seconds:>8.1f} MB/s ({seconds:.2f} s)")
    print(f"ratio c/a = {rate['c_loopwatch_ingest'] / rate['a_raw_aiokafka']:.3f}")
    print(f"ratio c/b = {rate['c_loopwatch_ingest'] / rate['b_plain_faust']:.2f}")
    print(f"ratio d/c = {rate['d_with_detection'] / rate['c_loopwatch_ingest']:.2f}  (goal >= 0.75)")


if __name__ == "__main__":
    main()
