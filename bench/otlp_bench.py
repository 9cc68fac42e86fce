"""OTLP bridge throughput: LLM spans/s through the bridge against decoding the same messages alone, one run.

Usage: ``python bench/otlp_bench.py [--spans 20000] [--spans-per-message 100] [--encoding otlp_proto]
[--batch 20]``

The messages are built once, with the real OpenTelemetry SDK from real
HH-RLHF exchanges (each LLM client span under its HTTP server span, the three
attribute families in turn) and its own OTLP encoder, as the Collector's Kafka
exporter writes them. Then, on the same bytes:

(a) decode alone: ``decode_traces`` of every message (the baseline);
(b) the bridge: the stage's decoder and handler (decode, map every span,
    key each event by its request id) and the produce of its outputs to the
    inference and feedback topics of an embedded broker, acknowledged, in units
    of ``--batch`` messages (one fetch), with the stage's 4 units in flight.

It prints LLM spans/s for each and the ratio b/a; the goal is at least
10,000 LLM spans/s for (b).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.processes import stop_process  # noqa: E402
from core.settings import Settings  # noqa: E402
from schemas.otlp import decode_traces  # noqa: E402
from services import sample_data  # noqa: E402
from services.broker import free_port, start_broker  # noqa: E402
from services.demo.otlp import Family, SpanWriter, collector_message, export_request  # noqa: E402
from streams.app import create_app  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402
from streams.metrics import Metrics  # noqa: E402
from streams.otlp_stage import OtlpStage  # noqa: E402
from streams.runtime import Batch  # noqa: E402


def build_messages(data_dir: Path, spans: int, per_message: int, encoding: str) -> list[bytes]:
    """``spans`` LLM spans from real exchanges, ``per_message`` to a Collector message."""
    rng = random.Random(1)
    exchanges = [e for pair in sample_data.hh_rlhf(data_dir) for e in pair][:2000]
    families = get_args(Family)
    writer = SpanWriter()
    now = sample_data.now()
    messages = []
    for n in range(spans):
        event = sample_data.inference_event(exchanges[n % len(exchanges)], now, rng)
        event["request_id"] = f"bench-{n}"
        writer.record(event, families[n % len(families)])
        if (n + 1) % per_message == 0 or n == spans - 1:
            messages.append(collector_message(export_request(writer.take()), encoding))
    return messages


def decode_alone(messages: list[bytes]) -> tuple[float, float]:
    """Seconds (wall clock, and this process's CPU) to decode every message."""
    started, cpu = time.perf_counter(), time.process_time()
    for raw in messages:
        decode_traces(raw)
    return time.perf_counter() - started, time.process_time() - cpu


async def bridge(settings: Settings, messages: list[bytes], batch_messages: int) -> tuple[float, float]:
    """Seconds (wall clock, and this process's CPU) to decode, map, key and produce (acknowledged)."""
    app = create_app(settings, Metrics())
    stage = app.runtime.stages["otlp"]
    assert isinstance(stage, OtlpStage)
    topic = settings.topics.otlp_spans
    (decode,) = stage.inputs.values()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=0, max_request_size=settings.max_record_bytes
    )
    await producer.start()
    for name in (settings.topics.inference, settings.topics.feedback):
        await producer.partitions_for(name)  # the worker's producer knows them once it has sent
    stage.partition_count = lambda name: len(producer.client.cluster.partitions_for_topic(name) or ()) or None
    try:
        in_flight: list[Any] = []
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(messages), batch_messages):
            chunk = [
                SimpleNamespace(topic=topic, partition=0, offset=first + n, key=None, value=raw)
                for n, raw in enumerate(messages[first : first + batch_messages])
            ]
            accepted = [(m, decode(m, 0.0)) for m in chunk]
            effects = await stage.handle(Batch(topic, chunk, accepted, time.perf_counter()), time.time())
            in_flight.append(asyncio.ensure_future((await effects.records.send(producer)).wait()))
            if len(in_flight) >= stage.max_in_flight:
                await in_flight.pop(0)
        for delivery in in_flight:
            await delivery
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--spans-per-message", type=int, default=100)
    parser.add_argument("--encoding", choices=["otlp_proto", "otlp_json"], default="otlp_proto")
    parser.add_argument("--batch", type=int, default=20, help="messages per unit of the stage (one fetch)")
    args = parser.parse_args()
    settings = Settings()
    print(f"building {args.spans:,} LLM spans ({args.spans_per_message} per message, {args.encoding}) ...")
    messages = build_messages(settings.sample_data, args.spans, args.spans_per_message, args.encoding)
    size = sum(len(m) for m in messages)
    print(f"  {len(messages):,} messages, {size / 1e6:.1f} MB ({size / args.spans:,.0f} bytes per LLM span)")
    port = free_port()
    broker = start_broker(port)
    try:
        with tempfile.TemporaryDirectory() as data:
            settings = Settings(
                kafka_bootstrap=f"127.0.0.1:{port}",
                data_dir=Path(data),
                detection=False,
                decide=False,
                curation=False,
            )
            ensure_topics(settings)
            decoded = decode_alone(messages)
            bridged = asyncio.run(bridge(settings, messages, args.batch))
    finally:
        stop_process(broker)
    a, b = args.spans / decoded[0], args.spans / bridged[0]
    a_cpu, b_cpu = args.spans / decoded[1], args.spans / bridged[1]
    # CPU time of this process says what one worker's core sustains when others share the machine
    # (the broker's own CPU is not in it); wall clock is what this run saw.
    print(f"(a) decode alone:                       {a:>10,.0f} LLM spans/s  ({a_cpu:,.0f} per CPU second)")
    print(
        f"(b) bridge (decode, map, key, produce): {b:>10,.0f} LLM spans/s  ({b_cpu:,.0f} per CPU second)"
        f"   b/a = {b / a:.3f}"
    )
    print(f"goal: (b) >= 10,000 LLM spans/s: {'met' if b >= 10_000 else 'NOT met'} (load average {_load()})")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
