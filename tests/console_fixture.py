"""A small monitoring history and dataset tables, written once per session, and a console serving them.

The history is what a demo-like incident leaves: a stable and a canary
version of one model, the canary's negative-feedback rate drifting, its alert
firing then resolving, a rollback requested and verified, a silence, and dead
letters of two reasons (one payload carrying bad UTF-8, a terminal escape and
markup, which the pages must show escaped).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from curation.history import PARTITION_BY, SCHEMAS
from curation.store import PARTITION_BY as DATASET_PARTITION_BY
from curation.store import SCHEMA as DATASET_SCHEMA
from curation.store import DatasetStore
from tests.helpers import wait_until

MODEL = "support-assistant"
STABLE, CANARY = "2026-10-01", "2026-11-20"
DAY = date(2026, 12, 1)
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=20)
ROLLBACK_ID = "incident-support-assistant-rollback-7f3a"
HOSTILE_PAYLOAD = b'{"response": "\xff\x1b[31m<script>alert(1)</script>'


def segment_key(version: str) -> str:
    """The segment key of a version of the fixture's model (app support, route chat)."""
    return f"{MODEL}|{version}|support|chat|"


def _segment(version: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "model_version": version,
        "app": "support",
        "route": "chat",
        "tenant": None,
        "segment": segment_key(version),
    }


def _detections() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    windows, detections = [], []
    for version in (STABLE, CANARY):
        for n in range(6):
            start = START + n * WINDOW
            drifting = version == CANARY and n >= 3
            windows.append(
                {
                    "day": DAY,
                    **_segment(version),
                    "window_start": start,
                    "window_end": start + WINDOW,
                    "events": 40 + n,
                    "sample_size": 40 + n,
                    "first_detected_at": start + WINDOW + timedelta(seconds=2),
                }
            )
            for detector, statistic, threshold in (
                ("quality.negative_feedback.v1", 0.62 if drifting else 0.18, 0.3),
                ("drift.text_length.v1", 0.4 if drifting else 0.05, 0.2),
            ):
                detections.append(
                    {
                        "day": DAY,
                        **_segment(version),
                        "window_start": start,
                        "window_end": start + WINDOW,
                        "detection_id": f"det-{version}-{detector}-{n}",
                        "detector_id": detector,
                        "detector_version": "1",
                        "config_id": "c0ffee",
                        "verdict": "drift" if drifting else ("warning" if n == 2 else "ok"),
                        "statistic": statistic,
                        "p_value": 0.001 if drifting else 0.4,
                        "score": None,
                        "threshold": threshold,
                        "effect_size": 0.5 if drifting else 0.01,
                        "reference_size": 40,
                        "current_size": 40 + n,
                        "measurements": json.dumps(
                            {"negative_feedback_rate": statistic, "window_events": 40 + n}
                        ),
                        "reference": "pinned",
                        "report_path": None,
                        "detected_at": start + WINDOW + timedelta(seconds=2),
                    }
                )
    return windows, detections


def _alerts() -> list[dict[str, Any]]:
    fired, resolved = START + 4 * WINDOW, START + 8 * WINDOW
    common = {
        "day": DAY,
        "model": MODEL,
        "model_version": CANARY,
        "fingerprint": "fp-negative-feedback",
        "severity": "critical",
        "summary": "negative feedback of support-assistant 2026-11-20 is 0.62 (stable 0.18)",
        "labels": json.dumps({"alertname": "canary_worse", "model": MODEL, "model_version": CANARY}),
        "detections": json.dumps([f"det-{CANARY}-quality.negative_feedback.v1-3"]),
        "starts_at": fired,
        "runbook_url": "https://runbooks.example/canary",
    }
    silence_labels = {"alertname": "silence", "silence_id": "s-maint", "matchers": "model=other-bot"}
    return [
        {**common, "status": "firing", "ends_at": None, "changed_at": fired},
        {**common, "status": "resolved", "ends_at": resolved, "changed_at": resolved},
        {
            **common,
            "model": "other-bot",
            "model_version": None,
            "fingerprint": "fp-silence",
            "severity": "info",
            "summary": "silence s-maint by ops mutes model=other-bot: maintenance",
            "labels": json.dumps(silence_labels),
            "detections": "[]",
            "status": "firing",
            "starts_at": START,
            "ends_at": START + timedelta(hours=2),
            "changed_at": START,
            "runbook_url": None,
        },
    ]


def _actions() -> list[dict[str, Any]]:
    cause = {
        "detection_id": f"det-{CANARY}-quality.negative_feedback.v1-3",
        "detector_id": "quality.negative_feedback.v1",
        "verdict": "drift",
        "segment": {"model": MODEL, "model_version": CANARY, "app": "support", "route": "chat"},
        "window_start": (START + 3 * WINDOW).isoformat(),
        "window_end": (START + 4 * WINDOW).isoformat(),
    }
    at = START + 4 * WINDOW
    return [
        {
            "day": DAY,
            "model": MODEL,
            "id": ROLLBACK_ID,
            "type": "io.loopwatch.rollback.requested",
            "source": "loopwatch/policy/demo",
            "subject": MODEL,
            "time": at,
            "topic": "loopwatch.rollback-requests.v1",
            "data": json.dumps(
                {
                    "reason": "canary worse on negative feedback",
                    "from_version": CANARY,
                    "target_version": STABLE,
                    "detections": [cause],
                }
            ),
        },
        {
            "day": DAY,
            "model": MODEL,
            "id": f"{ROLLBACK_ID}-verified",
            "type": "io.loopwatch.rollback.verified",
            "source": "loopwatch/policy/demo",
            "subject": MODEL,
            "time": at + 3 * WINDOW,
            "topic": "loopwatch.rollback-requests.v1",
            "data": json.dumps({"verified": True, "from_version": CANARY, "target_version": STABLE}),
        },
    ]


def _deadletters() -> list[dict[str, Any]]:
    import base64

    def letter(reason: str, payload: bytes, value_bytes: int) -> dict[str, Any]:
        return {
            "reason": reason,
            "error": f"{reason}: the message could not be read",
            "source": {"topic": "llm.inference.v1", "partition": 0, "offset": 17},
            "value_b64": base64.b64encode(payload).decode(),
            "value_bytes": value_bytes,
        }

    rows = []
    for n, (reason, count, payload) in enumerate(
        [
            ("malformed_json", 3, b'{"request_id": "r-1", "respo'),
            ("invalid_utf8", 2, HOSTILE_PAYLOAD),
            ("malformed_json", 1, b"{"),
        ]
    ):
        rows.append(
            {
                "day": DAY,
                "minute": START + timedelta(minutes=n),
                "reason": reason,
                "source_topic": "llm.inference.v1",
                "count": count,
                "samples": json.dumps([letter(reason, payload, len(payload) + 100 * (n == 1))]),
                "batch_id": f"batch-{n}",
            }
        )
    return rows


def _dataset_rows(n: int, first: int) -> list[dict[str, Any]]:
    return [
        {
            "row_id": f"row-{i}",
            "content_hash": f"hash-{i}",
            "kind": "golden",
            "model": MODEL,
            "model_version": STABLE,
            "date": DAY.isoformat(),
            "event_time": START,
            "written_at": START,
            "request_id": f"r-{i}",
            "label": "positive",
            "prompt": [{"role": "user", "content": f"How do I reset my password? ({i})"}],
            "response": "Open Settings, then Security.",
            "config_hash": "cfg",
        }
        for i in range(first, first + n)
    ]


@dataclass(frozen=True)
class ConsoleData:
    """Where the session's history and dataset tables are."""

    history: Path
    datasets: Path


def write_history(root: Path) -> None:
    """Write the fixture's history tables under ``root``."""
    windows, detections = _detections()
    for name, rows in (
        ("windows", windows),
        ("detections", detections),
        ("alerts", _alerts()),
        ("actions", _actions()),
        ("deadletters", _deadletters()),
    ):
        table = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
        write_deltalake(str(root / name), table, partition_by=PARTITION_BY[name])


def write_datasets(root: Path) -> None:
    """Two versions of the golden table (3 rows, then 2 more), the first tagged ``v-first``."""
    store = DatasetStore(root)
    for n, first in ((3, 0), (2, 3)):
        table = pa.Table.from_pylist(_dataset_rows(n, first), schema=DATASET_SCHEMA)
        write_deltalake(store.uri("golden"), table, partition_by=DATASET_PARTITION_BY, mode="append")
    store.snapshot("golden", "v-first", version=0)


@pytest.fixture(scope="session")
def console_data(tmp_path_factory: pytest.TempPathFactory) -> ConsoleData:
    """The fixture's history and dataset tables, written once per session."""
    root = tmp_path_factory.mktemp("console")
    write_history(root / "history")
    write_datasets(root / "datasets")
    return ConsoleData(history=root / "history", datasets=root / "datasets")


@contextlib.contextmanager
def serving(console: Any) -> Iterator[str]:
    """``console`` served on a free loopback port, in a thread, for as long as the block runs."""
    import uvicorn

    from services.console import create_app
    from services.console.server import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(console), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "the console did not start", interval=0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
def console_url(console_data: ConsoleData) -> Iterator[str]:
    """A console serving the fixture's tables on a free loopback port, in a thread."""
    from services.console import Console
    from services.console.reader import HistoryReader

    console = Console(HistoryReader(str(console_data.history)), DatasetStore(console_data.datasets))
    with serving(console) as url:
        yield url


#: A segment whose drift.text_length.v1 runs on the prompt and on the response (the default detectors),
#: and a segment seen in one window only.
TWO_CONFIGS = "rag-bot|v1|||"
ONE_WINDOW = "rag-bot|v1|one|window|"
FEEDBACK_ONLY = "rag-bot|v1|late|feedback|"  # its one window held feedback only: no inference count
TEXT_LENGTH = "drift.text_length.v1"


def text_length_config_ids() -> dict[str, str]:
    """The history's config_id of drift.text_length.v1 per column of the default detectors."""
    from curation.history import config_id
    from detectors.registry import create

    return {
        column: config_id(create(TEXT_LENGTH, {"column": column}).config.model_dump(mode="json"))
        for column in ("prompt_chars", "response_chars")
    }


def write_two_config_history(root: Path) -> None:
    """Two windows of TWO_CONFIGS (prompt: ok above the minimum effect, then drift), one of ONE_WINDOW."""
    ids = text_length_config_ids()
    windows, detections = [], []
    points = [
        (TWO_CONFIGS, 0, "prompt_chars", "ok", 0.3, 0.4),  # above the minimum effect, p not significant
        (TWO_CONFIGS, 0, "response_chars", "ok", 0.05, 0.5),
        (TWO_CONFIGS, 1, "prompt_chars", "drift", 0.5, 0.001),
        (TWO_CONFIGS, 1, "response_chars", "ok", 0.04, 0.6),
        (ONE_WINDOW, 0, "prompt_chars", "ok", 0.02, 0.7),
    ]
    for key, n, column, verdict, effect, p in points:
        model, version, app, route, tenant = key.split("|")
        segment = {"model": model, "model_version": version, "app": app or None, "route": route or None}
        segment |= {"tenant": tenant or None, "segment": key}
        start = START + n * WINDOW
        bounds = {"day": DAY, **segment, "window_start": start, "window_end": start + WINDOW}
        if column == "prompt_chars":
            windows.append({**bounds, "events": 50, "sample_size": 50, "first_detected_at": start + WINDOW})
        detections.append(
            {
                **bounds,
                "detection_id": f"det-{key}-{n}-{column}",
                "detector_id": TEXT_LENGTH,
                "detector_version": "1",
                "config_id": ids[column],
                "verdict": verdict,
                "statistic": effect,  # a KS distance: the statistic is the effect size
                "p_value": p,
                "threshold": 0.1,  # the minimum effect size
                "effect_size": effect,
                "reference_size": 50,
                "current_size": 50,
                "measurements": json.dumps({"window_events": 50}),
                "reference": "pinned",
                "detected_at": start + WINDOW,
            }
        )
    late = {"day": DAY, "model": "rag-bot", "model_version": "v1", "app": "late", "route": "feedback"}
    late |= {"tenant": None, "segment": FEEDBACK_ONLY, "window_start": START, "window_end": START + WINDOW}
    windows.append({**late, "events": None, "feedback_events": 30, "sample_size": 30})
    for name, rows in (("windows", windows), ("detections", detections)):
        table = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
        write_deltalake(str(root / name), table, partition_by=PARTITION_BY[name])
