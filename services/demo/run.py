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
from services import sample_data
from services.broker import free_port, start_broker
from services.demo import mlflow as mlflow_demo
from services.demo.observe import Loop, observe, observe_loop, read_datasets, scrape_metrics, wait_for_history
from services.demo.render import render, summarize
from services.demo.scenario import MLFLOW_VERSIONS, build_traffic, worker_env
from services.replay import Replayer

#: How long the demo waits, before it stops the worker, for the history to hold what the summary reports.
HISTORY_WAIT_SECONDS = 20.0


def _send(settings: Settings, messages: list[tuple[str, bytes]]) -> None:
    replayer = Replayer(settings)
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
    otlp: bool = False,
    mlflow: bool = False,
    out: Any = sys.stdout,
) -> dict[str, Any]:
    """Run the whole demo and return (and print) its summary (``mlflow``: with a registry, actuator on)."""
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
    # The demo's own clients connect as its worker does: these settings, this broker.
    kafka = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    web_port = free_port()
    env = worker_env(settings, bootstrap, topics, run_id=run_id, web_port=web_port)
    worker_log = settings.data_dir / f"demo-{run_id}.log"
    # Where this run's worker writes, absolute: scripts open it with `loopwatch console` from anywhere.
    ran = settings.model_copy(update={"data_dir": (settings.data_dir / f"demo-{run_id}").resolve()})
    worker_log.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"loopwatch demo: starting a worker against the {where} (log: {worker_log}) ...",
        file=out,
        flush=True,
    )
    registry = None
    if mlflow:
        try:
            registry = mlflow_demo.start_server(settings.data_dir / f"demo-{run_id}" / "mlflow")
            mlflow_demo.register(registry.uri, sample_data.MODEL)
        except BaseException:
            if registry is not None:
                mlflow_demo.stop_server(registry.process)
            if broker is not None:
                stop_process(broker)
            raise
        print(
            f"MLflow registry at {registry.uri}: {sample_data.MODEL} versions 1 (champion), 2 (challenger)",
            file=out,
        )
        env |= {
            "LOOPWATCH_REGISTRY": "mlflow",
            "LOOPWATCH_ACTUATOR": "mlflow",
            "LOOPWATCH_MLFLOW_TRACKING_URI": registry.uri,
            "LOOPWATCH_STABLE_VERSIONS": json.dumps({sample_data.MODEL: mlflow_demo.STABLE}),
        }
    with worker_log.open("wb") as log_file:
        worker = spawn_worker(env, stdout=log_file, stderr=log_file)
    try:
        versions = MLFLOW_VERSIONS if mlflow else None
        traffic = build_traffic(settings.sample_data, topics, pairs=pairs, oasst=oasst, versions=versions)
        if otlp:  # the same incident, its inference logs as Collector-shaped OTLP spans
            traffic.as_otlp(topics)
        wait_until_healthy(f"http://127.0.0.1:{web_port}/health", worker)
        print(
            f"replaying {len(traffic.messages)} real events (a stable phase, then a canary serving the "
            f"rejected replies); {len(traffic.after_rollback)} more once the rollback is requested ...",
            file=out,
            flush=True,
        )
        replayed_at = time.time()
        _send(kafka, traffic.messages)
        # Windows close a few seconds after their last event; the decide stage follows.
        observe_loop(kafka, topics, quiet=30, timeout=timeout, until=Loop.rolled_back)
        print(
            f"rollback requested; replaying the other {len(traffic.after_rollback)} events, "
            "the stable version serving again ...",
            file=out,
            flush=True,
        )
        _send(kafka, traffic.after_rollback)
        seen = observe(kafka, topics, traffic, timeout)
        loop = observe_loop(kafka, topics, quiet=30, timeout=timeout, until=Loop.settled)
        metrics_text = scrape_metrics(web_port)
        registry_summary = None
        if registry is not None:
            # A second canary goes live: the counts above are the incident's, this is the promotion.
            mlflow_demo.set_challenger(registry.uri, sample_data.MODEL, mlflow_demo.GOOD_CANARY)
            print(
                f"challenger -> {mlflow_demo.GOOD_CANARY}; replaying {len(traffic.second_canary)} events of a"
                " second canary serving as well as the stable version ...",
                file=out,
                flush=True,
            )
            _send(kafka, traffic.second_canary)
            loop = observe_loop(kafka, topics, quiet=30, timeout=timeout, until=Loop.promoted)
            registry_summary = mlflow_demo.summary(registry, sample_data.MODEL, loop.actions)
        # The worker writes its history in batches of its own: stopping it now could lose the last one.
        dead_letters = sum(seen.rejections.values())
        behind = wait_for_history(ran.history_uri(), loop, dead_letters, timeout=HISTORY_WAIT_SECONDS)
        if behind:
            lacking = ", ".join(f"{table} {rows} of {want} rows" for table, (rows, want) in behind.items())
            print(
                f"the history has not caught up after {HISTORY_WAIT_SECONDS:.0f} s ({lacking});"
                " the console may not show the end of this run",
                file=out,
                flush=True,
            )
    finally:
        stop_process(worker, timeout=30)
        if broker is not None:
            stop_process(broker)
        if registry is not None:
            mlflow_demo.stop_server(registry.process)

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
    # Where this run's worker wrote, so `loopwatch console --history ... --datasets ...` can open it.
    summary["history_uri"], summary["datasets_uri"] = ran.history_uri(), ran.datasets_uri()
    # What the demo's worker decided with; absolute, as history_uri and datasets_uri are.
    summary["policy_file"] = str(Path(env["LOOPWATCH_POLICY_FILE"]).resolve())
    if registry_summary is not None:
        summary["mlflow"] = registry_summary
    print(render(summary), file=out, flush=True)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {summary_json}", file=out)
    return summary
