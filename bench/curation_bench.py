"""Curation throughput: joined events -> curated rows -> Delta, against a plain append, one run.

Usage: ``python bench/curation_bench.py [--events 20000] [--batch 500]``

Joined feedback is built from real HH-RLHF and OASST1 exchanges and their
human feedback (``services/sample_data.py``), every fourth rejected HH-RLHF
reply corrected with the reply the human preferred; past the ~6k real records the
exchanges repeat with a ``(#n)`` marker on the last user turn, so content stays
unique and the de-duplication does not shrink the workload.

It measures, in batches of ``--batch`` events as the stream would hand them over:

(a) curation alone (rules + redaction + hashing): joined events/s;
(b) the idempotent write (content hashes looked up, new rows appended): curated rows/s;
(c) baseline: the same rows appended with ``write_deltalake(mode="append")``;
(d) a replay of every batch (the crash-recovery path): rows/s, rows inserted (must be 0);

and prints the ratio b/c, the end-to-end joined events/s of a+b against the
1,000 events/s goal, and the size on disk per 10k rows.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.processes import spawn_worker, stop_process  # noqa: E402
from core.settings import Settings  # noqa: E402
from curation.rows import CuratedRow, DatasetKind  # noqa: E402
from curation.rules import curate  # noqa: E402
from curation.store import PARTITION_BY, DatasetStore, to_arrow  # noqa: E402
from schemas.events import Feedback, InferenceLog, JoinedFeedback, SourceRef  # noqa: E402
from services import sample_data  # noqa: E402
from services.broker import free_port, start_broker  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402
from streams.metrics import metric_total  # noqa: E402

GOAL_EVENTS_PER_SECOND = 1_000


def joined_events(n: int, data_dir: Path) -> list[JoinedFeedback]:
    """n joined feedback records from real exchanges (thumbs and ratings), two model versions."""
    pairs = list(sample_data.hh_rlhf(data_dir))
    exchanges = [e for pair in pairs for e in pair] + list(sample_data.oasst1(data_dir))
    # Every fourth HH-RLHF rejected reply gets the reply the human preferred as its correction.
    corrections = {
        rejected.request_id: chosen.response for n, (chosen, rejected) in enumerate(pairs) if n % 4 == 0
    }
    rng = random.Random(7)
    start = sample_data.now() - timedelta(hours=1)
    records: list[JoinedFeedback] = []
    offset = 0
    cycle = 0
    while len(records) < n:
        for i, exchange in enumerate(exchanges):
            if len(records) >= n:
                break
            prompt = [dict(turn) for turn in exchange.prompt]
            if cycle:
                prompt[-1]["content"] += f" (#{cycle})"
            request_id = f"{exchange.request_id}-c{cycle}"
            version = "2026-10-02" if exchange.request_id.endswith("rejected") else sample_data.STABLE_VERSION
            at = start + timedelta(milliseconds=i)
            event = sample_data.inference_event(exchange, at, rng, version=version)
            event.update(request_id=request_id, event_id=f"inf-{request_id}", prompt=prompt)
            inference = InferenceLog.model_validate(event)
            feedback_events = sample_data.feedback_events(exchange, at)
            if exchange.request_id in corrections:
                correction = {**feedback_events[0], "kind": "correction", "value": None}
                correction.update(event_id=f"fb-correction-{exchange.request_id}")
                feedback_events.append({**correction, "correction": corrections[exchange.request_id]})
            for feedback_event in feedback_events:
                feedback_event.update(
                    request_id=request_id, event_id=f"{feedback_event['event_id']}-c{cycle}"
                )
                records.append(
                    JoinedFeedback(
                        request_id=request_id,
                        inference=inference,
                        feedback=Feedback.model_validate(feedback_event),
                        inference_source=SourceRef(topic="llm.inference.v1", partition=0, offset=offset),
                        feedback_source=SourceRef(topic="llm.feedback.v1", partition=0, offset=offset),
                        joined_at=at,
                    )
                )
                offset += 1
        cycle += 1
    return records[:n]


def du(path: Path) -> int:
    """Bytes of the data files under path (the Delta log included)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def from_the_stream(records: list[JoinedFeedback]) -> float:
    """Joined events/s the worker's curate stage turns into Delta rows, on the embedded broker.

    The joined records are put on ``loopwatch.feedback-joined.v1`` first; the
    clock runs from the first curated row the worker reports to the last.
    """
    from kafka import KafkaProducer

    port, web_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = start_broker(port)
    try:
        settings = Settings(kafka_bootstrap=bootstrap)
        ensure_topics(settings)
        producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=20)
        for record in records:
            producer.send(
                settings.topics.joined, record.model_dump_json().encode(), key=record.request_id.encode()
            )
        producer.flush()
        producer.close()
        with tempfile.TemporaryDirectory() as data_dir:
            env = {
                **os.environ,
                "LOOPWATCH_KAFKA_BOOTSTRAP": bootstrap,
                "LOOPWATCH_WEB_PORT": str(web_port),
                "LOOPWATCH_DATA_DIR": data_dir,
                "LOOPWATCH_LOG_LEVEL": "warning",
                "LOOPWATCH_DETECTION": "false",
                "LOOPWATCH_DECIDE": "false",
            }
            worker = spawn_worker(env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{web_port}/metrics"
                started = 0.0
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(url, timeout=5) as response:
                            done = metric_total(response.read().decode(), "loopwatch_curated_events_total")
                    except OSError:
                        done = 0
                    if done and not started:
                        started, first = time.monotonic(), done
                    if done >= len(records):
                        # Only the events curated after the clock started are timed.
                        return (done - first) / (time.monotonic() - started)
                    time.sleep(0.05)
                raise RuntimeError("the worker did not curate every row within 600 s")
            finally:
                stop_process(worker)
    finally:
        stop_process(broker)


def main() -> None:
    """Run the benchmark once and print the numbers."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="Joined feedback events to curate")
    parser.add_argument(
        "--batch", type=int, default=500, help="Events per batch, as the stream hands them over"
    )
    args = parser.parse_args()
    settings = Settings()
    records = joined_events(args.events, settings.sample_data)
    with tempfile.TemporaryDirectory() as warm:
        # Pay the one-time imports (pandas, datafusion) outside the timed sections.
        DatasetStore(warm).write(curate(records[:50]).rows)
    batches = [records[i : i + args.batch] for i in range(0, len(records), args.batch)]

    started = time.perf_counter()
    curated: list[list[CuratedRow]] = [curate(batch).rows for batch in batches]
    curate_seconds = time.perf_counter() - started
    rows = sum(len(b) for b in curated)

    with tempfile.TemporaryDirectory() as tmp:
        merge_root, append_root = Path(tmp) / "merge", Path(tmp) / "append"
        store = DatasetStore(merge_root)
        started = time.perf_counter()
        inserted = 0
        for batch_rows in curated:
            inserted += sum(store.write(batch_rows).inserted.values())
        merge_seconds = time.perf_counter() - started

        started = time.perf_counter()
        replayed = 0
        for batch_rows in curated:
            replayed += sum(store.write(batch_rows).inserted.values())
        replay_seconds = time.perf_counter() - started

        from deltalake import write_deltalake

        started = time.perf_counter()
        for batch_rows in curated:
            for kind in {r.kind for r in batch_rows}:
                table: DatasetKind = kind
                write_deltalake(
                    str(append_root / table),
                    to_arrow([r for r in batch_rows if r.kind == table], sample_data.now()),
                    mode="append",
                    partition_by=PARTITION_BY,
                )
        append_seconds = time.perf_counter() - started
        stored = sum(int(store.read(k).num_rows) for k in store.latest_versions())
        size = du(merge_root)

    per_kind = {
        k: sum(r.kind == k for b in curated for r in b)
        for k in ("sft", "preference", "golden", "safety_review")
    }
    end_to_end = len(records) / (curate_seconds + merge_seconds)
    print(f"joined events: {len(records)} in {len(batches)} batches of {args.batch}; cores: {os.cpu_count()}")
    print(f"curated rows: {rows} {per_kind}")
    print(f"(a) curate:            {len(records) / curate_seconds:10.0f} events/s  ({curate_seconds:.2f} s)")
    print(
        f"(b) idempotent merge:  {rows / merge_seconds:10.0f} rows/s  ({merge_seconds:.2f} s, {inserted} new)"
    )
    print(f"(c) plain append:      {rows / append_seconds:10.0f} rows/s ({append_seconds:.2f} s)")
    replay = f"({replay_seconds:.2f} s, {replayed} new)"
    print(f"(d) replay (merge):    {rows / replay_seconds:10.0f} rows/s {replay}")
    print(f"merge / append speed:  {append_seconds / merge_seconds:10.2f}")
    verdict = "keeps up" if end_to_end >= GOAL_EVENTS_PER_SECOND else "LAGS"
    print(f"end to end (a+b):      {end_to_end:10.0f} events/s -> {verdict} at {GOAL_EVENTS_PER_SECOND}/s")
    per_10k = size / stored * 10_000 / 1e6
    print(f"stored rows: {stored}; on disk: {size / 1e6:.1f} MB = {per_10k:.2f} MB per 10k rows")
    stream = from_the_stream(records)
    verdict = "keeps up" if stream >= GOAL_EVENTS_PER_SECOND else "LAGS"
    print("(e) from the stream (worker's curate stage, toxicity flags included):")
    print(f"                       {stream:10.0f} joined events/s -> {verdict} at {GOAL_EVENTS_PER_SECOND}/s")


if __name__ == "__main__":
    main()
