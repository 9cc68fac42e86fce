"""Soak: RSS of a worker and of its slow-detector child over time, under steady real-text traffic.

Usage: ``python bench/soak_bench.py [--minutes 5] [--rate 200] [--window-events 1000]``

One embedded broker, one worker with the built-in detectors (the two
sentence-embedding MMD detectors run in the slow-detector child), count
windows of ``--window-events`` events, and a producer that sends real
HH-RLHF and OASST1 exchanges at ``--rate`` events/s, switching dataset every
few windows so that some windows drift (and get an Evidently report). Every
few seconds it samples the resident memory (VmRSS) of the worker and of the
child, and how many windows the slow detectors have judged.

Baseline, in the same run: each process's RSS right after the slow detectors
finished their first window (model loaded, reference fitted). It prints the
samples, each process's growth over its baseline and the least-squares slope
in MB/min over the samples after the baseline; the goal is a flat slope (the
child used to grow by hundreds of MB per window, see
``streams/slow_detectors.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.processes import spawn_worker, stop_process, wait_until_healthy  # noqa: E402
from core.settings import Settings  # noqa: E402
from services import sample_data  # noqa: E402
from services.broker import free_port, start_broker  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402
from streams.metrics import metric_total  # noqa: E402

SLOW_DETECTOR = "drift.embedding_mmd.v1"
SAMPLE_SECONDS = 5.0


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slow_child(worker: int) -> int | None:
    """The pid of the worker's slow-detector child (a multiprocessing ``spawn`` child), if running."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            if ppid != worker:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if b"spawn_main" in command:
            return int(entry)
    return None


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MB) points, in MB/min (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var


def judged_windows(url: str) -> float:
    """Detections the slow detectors have published (two per judged window by default)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return metric_total(text, "loopwatch_detections_total", detector=SLOW_DETECTOR)


async def produce(bootstrap: str, topic: str, rate: int, window_events: int, stop: asyncio.Event) -> int:
    """Send real exchanges at ``rate`` events/s until ``stop``; switch dataset every 3 windows."""
    data = Settings().sample_data
    pools = [
        [e for pair in sample_data.hh_rlhf(data) for e in pair],
        list(sample_data.oasst1(data)),
    ]
    rng = random.Random(11)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    sent = 0
    start = sample_data.now()
    try:
        while not stop.is_set():
            tick = time.monotonic()
            for _ in range(max(rate // 10, 1)):
                pool = pools[(sent // (3 * window_events)) % 2]
                event = sample_data.inference_event(
                    rng.choice(pool), start + timedelta(seconds=sent / rate), rng
                )
                event["request_id"] = event["event_id"] = f"soak-{sent}"
                await producer.send(topic, json.dumps(event).encode(), key=event["request_id"].encode())
                sent += 1
            await asyncio.sleep(max(0.1 - (time.monotonic() - tick), 0))
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def soak(args: argparse.Namespace, bootstrap: str, settings: Settings) -> None:
    web_port = free_port()
    env = {
        **os.environ,
        "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
        "LOOPWATCH_WEB_PORT": str(web_port),
        "LOOPWATCH_APP_ID": f"soak-{time.time()}",
        "LOOPWATCH_LOG_LEVEL": "warning",
        "LOOPWATCH_DATA_DIR": tempfile.mkdtemp(prefix="loopwatch-soak-"),
        "LOOPWATCH_WINDOW_EVENTS": str(args.window_events),
        "LOOPWATCH_DECIDE": "false",
        "LOOPWATCH_CURATION": "false",
    }
    log = open(Path(env["LOOPWATCH_DATA_DIR"]) / "worker.log", "ab")  # noqa: SIM115 (open for the whole run)
    worker = spawn_worker(env, cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{web_port}"
    stop = asyncio.Event()
    producing: asyncio.Task[int] | None = None
    samples: list[tuple[float, float, float | None, float]] = []  # minutes, worker MB, child MB, judged
    try:
        await asyncio.to_thread(wait_until_healthy, f"{url}/health", worker, 120)
        producing = asyncio.create_task(
            produce(bootstrap, settings.topics.inference, args.rate, args.window_events, stop)
        )
        started = time.monotonic()
        print(f"{'min':>6} {'worker MB':>10} {'child MB':>9} {'judged':>7}", flush=True)
        while time.monotonic() - started < args.minutes * 60:
            await asyncio.sleep(SAMPLE_SECONDS)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            child = slow_child(worker.pid)
            judged = await asyncio.to_thread(judged_windows, f"{url}/metrics")
            point = (
                (time.monotonic() - started) / 60,
                rss_mb(worker.pid) or 0.0,
                rss_mb(child) if child else None,
                judged / 2,  # two slow detectors per window
            )
            samples.append(point)
            child_mb = f"{point[2]:9.0f}" if point[2] is not None else f"{'-':>9}"
            print(f"{point[0]:6.2f} {point[1]:10.0f} {child_mb} {point[3]:7.0f}", flush=True)
    finally:
        stop.set()
        if producing is not None:
            sent = await producing
            print(f"sent {sent:,} events")
        stop_process(worker)
    report(samples)


def report(samples: list[tuple[float, float, float | None, float]]) -> None:
    """Baseline (after the first judged window), growth and slope per process."""
    after = [s for s in samples if s[3] >= 1 and s[2] is not None]
    if len(after) < 2:
        print("the slow detectors judged fewer than one window: run longer (--minutes) or faster (--rate)")
        return
    print(f"windows judged by the slow detectors: {after[-1][3]:.0f}")
    for name, column in (("worker", 1), ("child", 2)):
        points = [(s[0], float(s[column] or 0.0)) for s in after]
        base, last = points[0][1], points[-1][1]
        peak = max(y for _, y in points)
        print(
            f"{name:<7} baseline {base:7.0f} MB (after window 1)  last {last:7.0f} MB  peak {peak:7.0f} MB"
            f"  growth {last - base:+7.0f} MB ({(last - base) / base:+.0%})"
            f"  slope {slope(points):+7.1f} MB/min"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=200, help="events/s sent to the worker")
    parser.add_argument("--window-events", type=int, default=1000, help="events per detection window")
    args = parser.parse_args()
    port = free_port()
    broker = start_broker(port)
    bootstrap = f"127.0.0.1:{port}"
    try:
        settings = Settings(kafka_bootstrap=bootstrap)
        ensure_topics(settings)
        asyncio.run(soak(args, bootstrap, settings))
    finally:
        stop_process(broker)


if __name__ == "__main__":
    main()
