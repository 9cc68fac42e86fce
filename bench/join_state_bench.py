"""Join state under a large backlog: worker RSS at 100k and 1M pending requests, disk, recovery time.

Usage: ``python bench/join_state_bench.py [--small 100000] [--large 1000000]``

Every event is an inference whose feedback never comes (the TTL is a day),
so each one stays in the join table: the backlog a slow or missing feedback
producer leaves behind. Events are real HH-RLHF exchanges cut to ~200
characters of prompt and reply (about 0.6 KB each), to keep the in-memory
embedded broker within a few GB for a million of them plus their changelog.

(a) the default store (RocksDB on disk): worker RSS empty, at ``--small``
    and at ``--large`` entries; bytes per entry on disk and in the changelog;
    then a restart and the time until the new worker is healthy
    with every entry recovered from the changelog, against the start-up time
    of the same worker with an empty table;
(b) baseline, same run: the memory store at ``--small`` entries; its RSS
    at ``--large`` is *extrapolated* linearly from empty and ``--small`` (a
    measured million would take several GB of RAM here).

The goal: RSS of (a) flat within 20% from ``--small`` to ``--large``.
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
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.processes import spawn_worker, stop_process, wait_until_healthy  # noqa: E402
from core.settings import Settings  # noqa: E402
from services import sample_data  # noqa: E402
from services.broker import free_port, start_broker  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402
from streams.metrics import metric_total  # noqa: E402

TEXT_CHARS = 200


def events(start: int, stop: int, data: Path) -> list[tuple[bytes, bytes]]:
    """(key, value) of inference events ``start`` to ``stop``, cycling through real exchanges."""
    rng = random.Random(start)
    exchanges = [e for pair in sample_data.hh_rlhf(data) for e in pair][:2000]
    at = sample_data.now()
    out = []
    for i in range(start, stop):
        exchange = exchanges[i % len(exchanges)]
        event = sample_data.inference_event(exchange, at, rng)
        event["request_id"] = event["event_id"] = f"backlog-{i}"
        event["prompt"] = exchange.prompt[-1]["content"][:TEXT_CHARS]
        event["response"] = exchange.response[:TEXT_CHARS]
        out.append((event["request_id"].encode(), json.dumps(event).encode()))
    return out


async def fill(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], partitions: int) -> None:
    """Send ``records`` as whole record batches, spread over the partitions."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    try:
        pending = []
        for partition in range(partitions):
            batch = producer.create_batch()
            for key, value in records[partition::partitions]:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def average_value_bytes(bootstrap: str, topic: str, n: int = 2000) -> float:
    """Mean value size of the first ``n`` records of ``topic`` (the stored join states)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    sizes: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(sizes) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                sizes.extend(len(r.value) for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return sum(sizes) / max(len(sizes), 1)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def du(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Worker:
    """One worker process, its metrics and its data directory."""

    def __init__(self, bootstrap: str, app_id: str, topic: str, store: str, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
            "LOOPWATCH_WEB_PORT": str(self.port),
            "LOOPWATCH_APP_ID": app_id,
            "LOOPWATCH_LOG_LEVEL": "warning",
            "LOOPWATCH_TOPIC_INFERENCE": topic,
            "LOOPWATCH_DATA_DIR": str(data_dir),
            "LOOPWATCH_JOIN_STORE": store,
            "LOOPWATCH_JOIN_TTL_SECONDS": "86400",
            "LOOPWATCH_JOIN_SWEEP_SECONDS": "1",
            "LOOPWATCH_DETECTION": "false",
            "LOOPWATCH_CURATION": "false",
            "LOOPWATCH_DECIDE": "false",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the worker; seconds until /health answers 200."""
        started = time.perf_counter()
        self.process = spawn_worker(self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_healthy(f"http://127.0.0.1:{self.port}/health", self.process, timeout=900)
        return time.perf_counter() - started

    def metric(self, name: str) -> float:
        """A metric's total, or 0 while the page does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
                return metric_total(response.read().decode(), name)
        except OSError:
            return 0.0

    def wait_for(self, name: str, at_least: float, timeout: float = 900) -> float:
        """Poll ``name`` until it reaches ``at_least``; the seconds it took."""
        started = time.perf_counter()
        while self.metric(name) < at_least:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with code {self.process.returncode}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"{name} did not reach {at_least:,.0f} within {timeout:.0f} s")
            time.sleep(0.2)
        return time.perf_counter() - started

    def rss(self) -> float:
        """The worker's RSS in MB, the highest of a few samples over 2 s (allocations settle)."""
        assert self.process is not None
        samples = []
        for _ in range(5):
            samples.append(rss_mb(self.process.pid))
            time.sleep(0.4)
        return max(samples)

    def stop(self) -> None:
        """Stop gracefully (then SIGKILL)."""
        if self.process is not None:
            stop_process(self.process, timeout=30)


def run(args: argparse.Namespace, bootstrap: str, settings: Settings) -> dict[str, Any]:
    partitions = settings.partitions
    small, large = args.small, args.large
    data = settings.sample_data
    work = Path(tempfile.mkdtemp(prefix="loopwatch-join-bench-"))
    results: dict[str, Any] = {}

    # (a) RocksDB
    topic = settings.topics.inference
    app_id = f"joinbench-{int(time.time())}"
    rocks = Worker(bootstrap, app_id, topic, "rocksdb", work / "rocks")
    results["start_empty_s"] = rocks.start()
    results["rocks_rss_empty"] = rocks.rss()
    try:
        print(f"filling {topic} with {small:,} events ...", flush=True)
        first = events(0, small, data)
        results["event_bytes"] = sum(len(v) for _, v in first) / len(first)
        asyncio.run(fill(bootstrap, topic, first, partitions))
        del first
        rocks.wait_for("loopwatch_events_in_total", small)
        rocks.wait_for("loopwatch_join_entries", small)
        results["rocks_rss_small"] = rocks.rss()
        print(
            f"rocksdb at {small:,}: {results['rocks_rss_small']:.0f} MB; filling to {large:,} ...", flush=True
        )
        # In steps of `small`, each caught up before the next: every point sees the
        # same backlog in the topic, so the fetch buffers are alike and only the
        # join state differs.
        curve = [(small, results["rocks_rss_small"])]
        for start in range(small, large, small):
            stop = min(start + small, large)
            asyncio.run(fill(bootstrap, topic, events(start, stop, data), partitions))
            rocks.wait_for("loopwatch_events_in_total", stop)
            rocks.wait_for("loopwatch_join_entries", stop)
            curve.append((stop, rocks.rss()))
            print(f"  {stop:>9,} entries: {curve[-1][1]:.0f} MB", flush=True)
        results["rocks_rss_large"] = curve[-1][1]
        results["rocks_rss_peak"] = max(mb for _, mb in curve)
        results["disk_bytes"] = du(work / "rocks" / "joins")
        results["changelog_value_bytes"] = asyncio.run(
            average_value_bytes(bootstrap, f"{app_id}-joins-changelog")
        )
        print(f"rocksdb at {large:,}: {results['rocks_rss_large']:.0f} MB; restarting ...", flush=True)
        # A clean stop: after a kill -9 the group would first wait out the dead
        # member's session (10 s), which is not recovery. The new process takes a
        # fresh store directory either way and recovers every entry from the changelog.
        rocks.stop()
        results["recovery_s"] = rocks.start()
        rocks.wait_for("loopwatch_join_entries", large, timeout=120)
        results["rocks_rss_recovered"] = rocks.rss()
    finally:
        rocks.stop()

    # (b) memory store baseline, on a topic of its own holding the first `small` events
    memory_topic = f"{topic}.memory-baseline"
    memory = Worker(bootstrap, f"{app_id}-memory", memory_topic, "memory", work / "memory")
    try:
        memory.start()
        results["memory_rss_empty"] = memory.rss()
        asyncio.run(fill(bootstrap, memory_topic, events(0, small, data), partitions))
        memory.wait_for("loopwatch_events_in_total", small)
        memory.wait_for("loopwatch_join_entries", small)
        results["memory_rss_small"] = memory.rss()
    finally:
        memory.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    args = parser.parse_args()
    port = free_port()
    broker = start_broker(port)
    bootstrap = f"127.0.0.1:{port}"
    try:
        settings = Settings(kafka_bootstrap=bootstrap)
        ensure_topics(settings)
        r = run(args, bootstrap, settings)
    finally:
        stop_process(broker)
    small, large = args.small, args.large
    per_entry_kb = (r["memory_rss_small"] - r["memory_rss_empty"]) * 1024 / small
    memory_large = r["memory_rss_empty"] + (r["memory_rss_small"] - r["memory_rss_empty"]) * large / small
    growth = r["rocks_rss_large"] / r["rocks_rss_small"] - 1
    print(f"events: {r['event_bytes']:.0f} bytes each, every one pending (no feedback, TTL 24 h)")
    print(f"{'store':<28} {'empty':>9} {f'{small:,}':>11} {f'{large:,}':>11}")
    print(
        f"{'(a) rocksdb (default)':<28} {r['rocks_rss_empty']:>6.0f} MB {r['rocks_rss_small']:>8.0f} MB"
        f" {r['rocks_rss_large']:>8.0f} MB"
    )
    print(
        f"{'(b) memory':<28} {r['memory_rss_empty']:>6.0f} MB {r['memory_rss_small']:>8.0f} MB"
        f" {memory_large:>8.0f} MB (extrapolated)"
    )
    print(
        f"rocksdb RSS {small:,} -> {large:,}: {growth:+.1%} (goal: within 20%);"
        f" peak on the way {r['rocks_rss_peak']:.0f} MB"
    )
    print(f"ratio b/a at {large:,}: {memory_large / r['rocks_rss_large']:.1f}x")
    print(f"memory store: {per_entry_kb:.2f} KB of RAM per entry")
    print(
        f"rocksdb on disk: {r['disk_bytes'] / large:.0f} bytes per entry"
        f" ({r['disk_bytes'] / 1e6:.0f} MB; the last memtables are in RAM, not yet on disk);"
        f" changelog value {r['changelog_value_bytes']:.0f} bytes per entry"
    )
    print(
        f"recovery of {large:,} entries after a restart: {r['recovery_s']:.1f} s to healthy"
        f" (empty start: {r['start_empty_s']:.1f} s); RSS after recovery {r['rocks_rss_recovered']:.0f} MB"
    )


if __name__ == "__main__":
    main()
