"""Ingest throughput: raw aiokafka, plain faust, quixstreams and loopwatch ingest, one broker, one run.

Usage: ``python bench/ingest_bench.py [--events 200000] [--workers 2]``

All of them consume the same pre-filled topic of ~1 KB InferenceLog events
built from real HH-RLHF exchanges, each in its own process (one worker
process each, as in production), on the same embedded broker:

(a) a raw aiokafka consumer that only ``json.loads`` each value;
(b) a plain faust agent (stock faust consumer) that only ``json.loads`` each value;
(c) the loopwatch worker with detection off: validate, describe, forward to
    the enriched topic, update the join table, dead-letter the bad ones;
(d) the same worker with detection on (the default): every batch also
    summarises its windows, and the detect stage merges the summaries and
    runs the built-in cheap detectors on each closed window;
(e) a quixstreams application (confluent-kafka underneath), the framework a
    user would pick instead: each value validated as an InferenceLog (the same
    pydantic model, from the JSON bytes) and written to an output topic.

It prints events/s and MB/s for each and the ratios c/a, c/b, d/c, c/e and d/e.
With ``--workers N`` (N > 1) it also runs N loopwatch workers (detection off,
as in (c)) in one consumer group and prints their combined rate against (c).
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
    """(b): seconds for a stock faust agent to json.loads n events."""
    return _subprocess_seconds("the plain faust agent", PLAIN_FAUST, [bootstrap, topic, str(n)])


QUIXSTREAMS = """
import sys, time
from quixstreams import Application
sys.path.insert(0, sys.argv[5])
from schemas.events import InferenceLog
bootstrap, topic, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
app = Application(broker_address=bootstrap, consumer_group="quix-" + str(time.time()),
                  auto_offset_reset="earliest", loglevel="WARNING")
source = app.topic(topic, value_deserializer="bytes")
sink = app.topic(topic + ".quix-out", value_serializer="bytes")
state = {"n": 0, "t": 0.0}

def validate(value):
    event = InferenceLog.model_validate_json(value)
    if not state["t"]:
        state["t"] = time.perf_counter()
    state["n"] += 1
    if state["n"] >= n:
        open(out, "w").write(str(time.perf_counter() - state["t"]))
        app.stop()
    return event.model_dump_json().encode()

app.dataframe(source).apply(validate).to_topic(sink)
app.run()
"""


def _subprocess_seconds(name: str, script_text: str, args: list[str]) -> float:
    """Run a benchmark script in its own process; the seconds it writes to the file named by its 4th arg."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds"
        script = Path(tmp) / "app.py"
        script.write_text(script_text)
        process = spawn(
            [sys.executable, str(script), *args[:3], str(out), *args[3:]],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 600
            while not out.exists() and time.monotonic() < deadline:
                if process.poll() is not None and not out.exists():
                    raise RuntimeError(f"{name} exited with {process.returncode}")
                time.sleep(0.2)
            # The file is written, then closed: wait for its content.
            while not out.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            return float(out.read_text())
        finally:
            stop_process(process)


def quixstreams_app(bootstrap: str, topic: str, n: int) -> float:
    """(e): seconds for a quixstreams app to validate and forward n events."""
    return _subprocess_seconds("the quixstreams app", QUIXSTREAMS, [bootstrap, topic, str(n), str(ROOT)])


def _events_in(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("loopwatch_events_in_total")
    )


def loopwatch_ingest(
    bootstrap: str, settings: Settings, n: int, *, detection: bool, workers: int = 1
) -> float:
    """Seconds per n events, from the workers' counters (which move once per batch).

    With several workers (one consumer group), the clock starts once every one of
    them has counted a batch, so start-up and the first rebalances are not timed.
    """
    group = f"bench-{time.time()}"
    ports = [free_port() for _ in range(workers)]
    processes = []
    for web_port in ports:
        env = {
            **os.environ,
            "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
            "LOOPWATCH_WEB_PORT": str(web_port),
            "LOOPWATCH_APP_ID": group,
            "LOOPWATCH_LOG_LEVEL": "warning",
            "LOOPWATCH_TOPIC_INFERENCE": settings.topics.inference,
            "LOOPWATCH_DATA_DIR": tempfile.mkdtemp(),
            "LOOPWATCH_DETECTION": str(detection).lower(),
            # Each run reads the pre-filled topic from the start, into its own summaries topic.
            "LOOPWATCH_TOPIC_SUMMARIES": f"{group}-summaries",
        }
        processes.append(spawn_worker(env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    urls = [f"http://127.0.0.1:{web_port}/metrics" for web_port in ports]
    try:
        started, counted_at_start = 0.0, 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            seen = []
            for url in urls:
                try:
                    seen.append(_events_in(url))
                except OSError:
                    seen.append(0)
            total = sum(seen)
            if all(seen) and not started:
                # The clock starts once every worker has counted a batch, so only the
                # events counted after that moment are timed; scale them up to n.
                started, counted_at_start = time.perf_counter(), total
            if total >= n and not started:
                # A worker that joined the group late found nothing left to read.
                raise RuntimeError(f"the workers counted {seen} events: one had none, use more --events")
            if started and total >= n:
                if counted_at_start >= n:
                    raise RuntimeError("all events were ingested before the first poll: use more --events")
                return (time.perf_counter() - started) * n / (n - counted_at_start)
            time.sleep(0.02)
        raise RuntimeError("loopwatch did not ingest every event within 600 s")
    finally:
        for process in processes:
            stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1, help="also run this many workers in one group")
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
            "e_quixstreams": quixstreams_app(bootstrap, topic, n),
        }
        if args.workers > 1:
            results[f"c_{args.workers}_workers"] = loopwatch_ingest(
                bootstrap, settings, n, detection=False, workers=args.workers
            )
    finally:
        stop_process(broker)
    rate = {name: n / seconds for name, seconds in results.items()}
    for name, seconds in results.items():
        print(f"{name:<20} {rate[name]:>10,.0f} events/s {megabytes / seconds:>8.1f} MB/s ({seconds:.2f} s)")
    print(f"ratio c/a = {rate['c_loopwatch_ingest'] / rate['a_raw_aiokafka']:.3f}")
    print(f"ratio c/b = {rate['c_loopwatch_ingest'] / rate['b_plain_faust']:.2f}")
    print(f"ratio d/c = {rate['d_with_detection'] / rate['c_loopwatch_ingest']:.2f}  (goal >= 0.85)")
    print(f"ratio c/e = {rate['c_loopwatch_ingest'] / rate['e_quixstreams']:.2f}  (goal >= 1.5)")
    print(f"ratio d/e = {rate['d_with_detection'] / rate['e_quixstreams']:.2f}")
    if args.workers > 1:
        scaled = rate[f"c_{args.workers}_workers"] / rate["c_loopwatch_ingest"]
        print(f"ratio {args.workers} workers / 1 worker = {scaled:.2f}  (goal for 2 on 2 cores >= 1.6)")


if __name__ == "__main__":
    main()
