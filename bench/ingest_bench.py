"""Ingest throughput: raw aiokafka, plain faust, quixstreams and loopwatch ingest, one broker, one run.

Usage: ``python bench/ingest_bench.py [--events 200000] [--workers 2] [--only c,e]``

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
    pydantic model, from the JSON bytes) and written to an output topic;
(f) raw aiokafka reading, ``json.loads`` and writing each event to another
    topic: the ceiling for a worker on aiokafka (faust's client) in one process.

It prints events/s and MB/s for each, the worker CPU time per event for c and
d (and the broker's over the same span: it shares the cores), and the ratios
c/a, c/b, d/c, c/e, d/e, c/f and e/f.
With ``--workers N`` (N > 1) it also runs N loopwatch workers (detection off,
as in (c)) in one consumer group and prints their combined rate against (c).
With ``--baseline DIR`` (another checkout, e.g. ``git archive HEAD | tar -x -C DIR``)
it runs (c) and (d) from there too, each just before this checkout's, and prints
this checkout's rates and CPU per event against that baseline's: an A/B in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
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


async def aiokafka_forward(bootstrap: str, topic: str, n: int) -> float:
    """(f): seconds for raw aiokafka to read n events, ``json.loads`` each and write each to another topic.

    The ceiling of any worker built on aiokafka in one Python process: no
    validation, no state, one output record per event (loopwatch writes two: the
    enriched event and its join state's changelog record), sent as one record
    batch per partition and fetch, acknowledged before the next fetch is read.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"forward-{time.time()}",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 20, max_request_size=4 << 20)
    await consumer.start()
    await producer.start()
    got, started, out = 0, 0.0, topic + ".forward"
    try:
        while got < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2_000)
            sent = []
            for tp, records in batches.items():
                if not started:
                    started = time.perf_counter()
                batch = producer.create_batch()
                for record in records:
                    json.loads(record.value)
                    if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                        sent.append(
                            await producer.send_batch(batch, topic + ".forward", partition=tp.partition)
                        )
                        batch = producer.create_batch()
                        batch.append(key=record.key, value=record.value, timestamp=None)
                    got += 1
                sent.append(await producer.send_batch(batch, out, partition=tp.partition))
            await asyncio.gather(*sent)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()


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


#: Per loopwatch run, the CPU seconds its worker processes used per event while timed.
CPU_PER_EVENT: dict[str, float] = {}
#: The broker's CPU time per event over the same span: with the workers', it says whether
#: two workers on two cores can scale at all (the broker shares the cores).
BROKER_CPU_PER_EVENT: dict[str, float] = {}


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loopwatch_ingest(
    bootstrap: str,
    settings: Settings,
    n: int,
    *,
    detection: bool,
    workers: int = 1,
    name: str = "",
    root: Path = ROOT,
    broker: int | None = None,
) -> float:
    """Seconds per n events, from the workers' counters (which move once per batch).

    With several workers (one consumer group), the clock starts once every one of
    them has counted a batch, so start-up and the first rebalances are not timed.
    The workers' CPU time over the same span goes to ``CPU_PER_EVENT[name]``: on a
    busy machine it says what the rate alone cannot (how much work an event took).
    ``root`` is the checkout whose code the workers run; ``broker`` the broker's pid, whose CPU
    time goes to ``BROKER_CPU_PER_EVENT[name]``.
    """
    group = f"bench-{time.time()}"
    ports = [free_port() for _ in range(workers)]
    processes = []
    # Each worker's data directory (its join states on disk), removed with the worker.
    data_dirs = [tempfile.mkdtemp(prefix="ingest-bench-") for _ in ports]
    for web_port, data_dir in zip(ports, data_dirs, strict=True):
        env = {
            **os.environ,
            "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
            "LOOPWATCH_WEB_PORT": str(web_port),
            "LOOPWATCH_APP_ID": group,
            "LOOPWATCH_LOG_LEVEL": "warning",
            "LOOPWATCH_TOPIC_INFERENCE": settings.topics.inference,
            "LOOPWATCH_DATA_DIR": data_dir,
            "LOOPWATCH_DETECTION": str(detection).lower(),
            # Each run reads the pre-filled topic from the start, into its own summaries topic.
            "LOOPWATCH_TOPIC_SUMMARIES": f"{group}-summaries",
            # Ahead of the installed (editable) package: the workers import root's code.
            "PYTHONPATH": str(root),
        }
        processes.append(spawn_worker(env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    urls = [f"http://127.0.0.1:{web_port}/metrics" for web_port in ports]
    try:
        started, counted_at_start, cpu_at_start, broker_at_start = 0.0, 0.0, 0.0, 0.0
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
                cpu_at_start = sum(_cpu_seconds(p.pid) for p in processes)
                broker_at_start = 0.0 if broker is None else _cpu_seconds(broker)
            if total >= n and not started:
                # A worker that joined the group late found nothing left to read.
                raise RuntimeError(f"the workers counted {seen} events: one had none, use more --events")
            if started and total >= n:
                if counted_at_start >= n:
                    raise RuntimeError("all events were ingested before the first poll: use more --events")
                timed = total - counted_at_start
                cpu = sum(_cpu_seconds(p.pid) for p in processes) - cpu_at_start
                CPU_PER_EVENT[name] = cpu / timed
                if broker is not None:
                    BROKER_CPU_PER_EVENT[name] = (_cpu_seconds(broker) - broker_at_start) / timed
                return (time.perf_counter() - started) * n / (n - counted_at_start)
            # Each poll renders the workers' /metrics, which costs them CPU: 10 a second is enough.
            time.sleep(0.1)
        raise RuntimeError("loopwatch did not ingest every event within 600 s")
    finally:
        for process in processes:
            stop_process(process)
        for data_dir in data_dirs:
            shutil.rmtree(data_dir, ignore_errors=True)


_RATIOS = [
    ("c_loopwatch_ingest", "a_raw_aiokafka", ""),
    ("c_loopwatch_ingest", "b_plain_faust", ""),
    ("d_with_detection", "c_loopwatch_ingest", "  (goal >= 0.85)"),
    ("c_loopwatch_ingest", "e_quixstreams", "  (goal >= 1.5)"),
    ("d_with_detection", "e_quixstreams", ""),
    ("c_loopwatch_ingest", "f_aiokafka_forward", ""),
    ("e_quixstreams", "f_aiokafka_forward", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1, help="also run this many workers in one group")
    parser.add_argument(
        "--only", default="abcdef", help="run only these of a-f (e.g. c,e); a ratio needs both sides"
    )
    parser.add_argument(
        "--baseline", type=Path, help="also run (c) and (d) from this checkout, for an A/B in one run"
    )
    args = parser.parse_args()
    only = set(args.only.replace(",", ""))
    load_at_start = _load()
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
        ingest = functools.partial(loopwatch_ingest, bootstrap, settings, n, broker=broker.pid)
        runs: dict[str, Callable[[], float]] = {
            "a_raw_aiokafka": lambda: asyncio.run(raw_aiokafka(bootstrap, topic, n)),
            "b_plain_faust": lambda: plain_faust(bootstrap, topic, n),
            "c_loopwatch_ingest": lambda: ingest(detection=False, name="c_loopwatch_ingest"),
            "d_with_detection": lambda: ingest(detection=True, name="d_with_detection"),
            "e_quixstreams": lambda: quixstreams_app(bootstrap, topic, n),
            "f_aiokafka_forward": lambda: asyncio.run(aiokafka_forward(bootstrap, topic, n)),
        }
        if args.baseline is not None:
            root = args.baseline.resolve()
            ordered: dict[str, Callable[[], float]] = {}
            for name, run in runs.items():
                if name in ("c_loopwatch_ingest", "d_with_detection"):  # each right after its baseline
                    baseline, detection = f"{name[0]}_baseline", name[0] == "d"
                    ordered[baseline] = functools.partial(
                        ingest, detection=detection, name=baseline, root=root
                    )
                ordered[name] = run
            runs = ordered
        results = {name: run() for name, run in runs.items() if name[0] in only}
        if args.workers > 1:
            name = f"c_{args.workers}_workers"
            results[name] = ingest(detection=False, workers=args.workers, name=name)
    finally:
        stop_process(broker)
    rate = {name: n / seconds for name, seconds in results.items()}
    for name, seconds in results.items():
        cpu = f"  worker CPU {CPU_PER_EVENT[name] * 1e6:.0f} us/event" if name in CPU_PER_EVENT else ""
        if name in BROKER_CPU_PER_EVENT:
            cpu += f", broker {BROKER_CPU_PER_EVENT[name] * 1e6:.0f}"
        speed = f"{rate[name]:>10,.0f} events/s {megabytes / seconds:>8.1f} MB/s"
        print(f"{name:<20} {speed} ({seconds:.2f} s){cpu}")
    for top, bottom, goal in _RATIOS:
        if f"{top}" in rate and f"{bottom}" in rate:
            print(f"ratio {top[0]}/{bottom[0]} = {rate[top] / rate[bottom]:.3f}{goal}")
    for name in ("c_loopwatch_ingest", "d_with_detection"):
        baseline = f"{name[0]}_baseline"
        if name in rate and baseline in rate:
            cpu_ratio = CPU_PER_EVENT[name] / CPU_PER_EVENT[baseline]
            faster = rate[name] / rate[baseline]
            print(f"ratio {name[0]}/{name[0]}(baseline) = {faster:.3f}, CPU per event x{cpu_ratio:.3f}")
    if "c_baseline" in rate and "d_baseline" in rate:
        print(f"ratio d/c (baseline) = {rate['d_baseline'] / rate['c_baseline']:.3f}")
    if args.workers > 1 and "c_loopwatch_ingest" in rate:
        scaled = rate[f"c_{args.workers}_workers"] / rate["c_loopwatch_ingest"]
        print(f"ratio {args.workers} workers / 1 worker = {scaled:.2f}  (goal for 2 on 2 cores >= 1.6)")
    # Rates on a shared machine say little without it; the CPU time per event says more.
    print(f"load average (1, 5, 15 min) at the start {load_at_start}, at the end {_load()}")


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
