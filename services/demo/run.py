"""The demo's orchestration: start a broker and a worker, replay the scenario, observe, summarize."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from core.processes import spawn_worker, stop_process, wait_until_healthy
from core.settings import Settings
from services.broker import free_port, start_broker
from services.demo.observe import Loop, observe, observe_loop, read_datasets, scrape_metrics
from services.demo.render import render, summarize
from services.demo.scenario import build_traffic, worker_env
from services.replay import Replayer


def _send(bootstrap: str, messages: list[tuple[str, bytes]]) -> None:
    replayer = Replayer(bootstrap)
    for topic, value in messages:
        replayer.send(topic, value)
    replayer.close()


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
    env = worker_env(settings, bootstrap, topics, run_id=run_id, web_port=web_port)
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
        metrics_text = scrape_metrics(web_port)
    finally:
        stop_process(worker, timeout=30)
        if broker is not None:
            stop_process(broker)

    summary = summarize(
        traffic,
        seen,
        loop,
        topics,
        metrics_text,
        where=where,
        elapsed=time.monotonic() - started,
        replayed_at=replayed_at,
    )
    summary["datasets"], summary["export"] = read_datasets(
        settings.data_dir / f"demo-{run_id}" / "datasets",
        loop,
        settings.data_dir / f"demo-{run_id}-export.jsonl",
    )
    print(render(summary), file=out, flush=True)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {summary_json}", file=out)
    return summary
