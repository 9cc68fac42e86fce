"""What the demo reads back: the output topics, the worker's metrics and the curated datasets.

It reads them as any downstream consumer would: group-less consumers from the
start of each topic, the Prometheus endpoint, the Delta tables.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from core.settings import Settings, Topics
from retrain_trigger.actions import (
    RETRAIN_REQUESTED,
    ROLLBACK_FAILED,
    ROLLBACK_REQUESTED,
    ROLLBACK_VERIFIED,
    from_kafka,
)
from schemas.events import Alert, CloudEvent, Detection
from services.demo.scenario import Traffic
from services.topic_reader import connected_consumer


@dataclass
class Observed:
    """What the output topics held once the pipeline settled."""

    enriched: int = 0
    joined: int = 0
    unmatched: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)


def _reader(settings: Settings, *topics: str) -> KafkaConsumer:
    """A group-less consumer that reads these topics from their start, as any downstream reader would."""
    return connected_consumer(
        settings, *topics, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )


def observe(settings: Settings, topics: Topics, traffic: Traffic, timeout: float) -> Observed:
    """Read the output topics until every expected record arrived, or ``timeout`` passes."""
    consumer = _reader(settings, topics.deadletter, topics.enriched, topics.joined, topics.unmatched)
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

    def promoted(self) -> bool:
        """A promotion request was applied or rejected by the act stage."""
        done = ("io.loopwatch.promotion.applied", "io.loopwatch.promotion.rejected")
        return any(event.type in done for _, event in self.actions)


def observe_loop(
    settings: Settings, topics: Topics, *, quiet: float, timeout: float, until: Callable[[Loop], bool]
) -> Loop:
    """Read detections, alerts and actions until ``until`` holds, or nothing came for ``quiet`` s."""
    consumer = _reader(
        settings,
        topics.detections,
        topics.alerts,
        topics.rollback_requests,
        topics.retrain_requests,
        topics.promotion_requests,
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


def history_behind(root: str, loop: Loop, dead_letters: int) -> dict[str, tuple[int, int]]:
    """The history tables at ``root`` that hold less than the run saw: table -> (rows there, rows seen).

    What the run saw counts once per table key (a record read twice from its
    topic is one row), dead letters by their sum, as the console counts them.
    """
    from curation.history import UNIQUE_BY, action_row, alert_row, detection_row
    from curation.history_store import HistoryStore

    rows = {
        "detections": [detection_row(d) for d in loop.detections],
        "alerts": [alert_row(alert) for _, alert in loop.alerts],
        "actions": [action_row(event, "") for _, event in loop.actions],
    }
    seen = {table: {tuple(row[c] for c in UNIQUE_BY[table]) for row in rows[table]} for table in rows}
    store = HistoryStore(root)
    there = {table: store.read(table).num_rows if store.exists(table) else 0 for table in seen}
    expected = {table: len(keys) for table, keys in seen.items()}
    if dead_letters:
        there["deadletters"] = (
            sum(store.read("deadletters").column("count").to_pylist()) if store.exists("deadletters") else 0
        )
        expected["deadletters"] = dead_letters
    return {table: (there[table], want) for table, want in expected.items() if there[table] < want}


def wait_for_history(
    root: str, loop: Loop, dead_letters: int, *, timeout: float = 20, interval: float = 0.5
) -> dict[str, tuple[int, int]]:
    """Wait until the history holds what the run saw; what it still lacks after ``timeout`` s (or nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        behind = history_behind(root, loop, dead_letters)
        if not behind or time.monotonic() >= deadline:
            return behind
        time.sleep(interval)  # the history stage writes its batches in its own time


def scrape_metrics(web_port: int) -> str:
    """The worker's Prometheus metrics, as text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def read_datasets(root: Path, loop: Loop, output: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
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
