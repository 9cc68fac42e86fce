"""The OTLP bridge stage: OpenTelemetry GenAI spans from the Collector in; inference logs and feedback out.

The OpenTelemetry Collector's Kafka exporter writes each batch of traces as
one ``ExportTraceServiceRequest`` to ``otlp_spans`` (protobuf by default, or
OTLP/JSON). The runtime decodes each message with :func:`schemas.otlp.decode_traces`
and dead-letters the undecodable ones with their reason; :meth:`OtlpStage.handle`
maps the rest (:func:`schemas.otlp.map_traces`) and writes each LLM call to the
inference topic and each evaluation result to the feedback topic, keyed by its
request id so the feedback join finds it. Ingest then validates them like any
producer's events, so validation and its dead letters stay in one place.

The stage holds no state: a crash replays the unacked messages, and their
events come out again with the same ids (the join keeps a request's first
inference and drops feedback it has seen by event id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from aiokafka.partitioner import murmur2
from faust.exceptions import NotReady
from pydantic_core import to_json

from core.settings import Settings
from schemas.events import DeadLetterReason
from schemas.otlp import Mapping, OtlpDecodeError, decode_traces, map_traces
from streams.ingest import Accepted, Rejected
from streams.metrics import Metrics
from streams.runtime import Batch, Decoder, Effects, Runtime, Stage

#: The header naming the OTLP message an event was mapped from (topic/partition/offset as JSON).
SOURCE_HEADER = "loopwatch-otlp-source"


class OtlpStage(Stage):
    """Maps each batch of OTLP trace messages to inference logs and feedback, keyed by request id."""

    name = "otlp"
    #: The broker's round trip for one batch overlaps the mapping of the next ones.
    max_in_flight = 4

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        super().__init__(runtime)
        self.topics = settings.topics
        self.metrics = metrics
        self.mapping = Mapping(
            version_attribute=settings.otlp_version_attribute,
            tenant_attribute=settings.otlp_tenant_attribute,
            route_attribute=settings.otlp_route_attribute,
        )
        encoding = settings.otlp_encoding
        # A Collector batch holds many spans: the record limit, not the one of a single event.
        max_bytes = settings.max_record_bytes

        def decode_message(message: Any, now: float) -> Accepted[Any] | Rejected:
            raw = message.value
            if raw is not None and len(raw) > max_bytes:
                return Rejected(
                    DeadLetterReason.OVERSIZE,
                    f"the message is {len(raw):,} bytes; the limit is {max_bytes:,} (max_record_bytes)",
                )
            try:
                # Accepted holds events; the decoded request is one for this stage (typed Any).
                return Accepted(cast(Any, decode_traces(raw, encoding)), "")
            except OtlpDecodeError as exc:
                return Rejected(exc.reason, exc.error)

        self.inputs: dict[str, Decoder] = {settings.topics.otlp_spans: decode_message}
        #: Partitions of a topic as the producer's metadata knows them (None: not known yet).
        self.partition_count: Callable[[str], int | None] = self._producer_partitions
        self._inference = metrics.otlp_mapped.labels("inference")
        self._feedback = metrics.otlp_mapped.labels("feedback")

    async def handle(self, batch: Batch, now: float) -> Effects:
        """Map every decoded message; queue its events for the inference and feedback topics."""
        effects = self.effects()
        records = effects.records
        inference_topic, feedback_topic = self.topics.inference, self.topics.feedback
        inference_partitions = self.partition_count(inference_topic)
        feedback_partitions = self.partition_count(feedback_topic)
        spans = inferences = feedback = 0
        for message, accepted in batch.accepted:
            request = accepted.event
            mapped = map_traces(request, self.mapping)
            headers = [(SOURCE_HEADER, _source(message))]
            for request_id, event in mapped.inferences:
                key = request_id.encode()
                partition = _partition(key, inference_partitions)
                records.add(inference_topic, key, to_json(event), partition=partition, headers=headers)
            for request_id, event in mapped.feedback:
                key = request_id.encode()
                partition = _partition(key, feedback_partitions)
                records.add(feedback_topic, key, to_json(event), partition=partition, headers=headers)
            spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            inferences += len(mapped.inferences)
            feedback += len(mapped.feedback)
            for reason, count in mapped.skipped.items():
                self.metrics.otlp_skipped.labels(reason.value).inc(count)
        self.metrics.otlp_spans.inc(spans)
        self._inference.inc(inferences)
        self._feedback.inc(feedback)
        return effects

    def _producer_partitions(self, topic: str) -> int | None:
        try:
            partitions = self.runtime.app.kafka_producer().client.cluster.partitions_for_topic(topic)
        except NotReady:  # the producer is not up yet: it partitions these records itself
            return None
        return len(partitions) if partitions else None


def _partition(key: bytes, partitions: int | None) -> int | None:
    """The partition the Java client's default partitioner (murmur2) picks for ``key``.

    The same one the producer would pick, computed here so that each partition's
    records go out as one record batch instead of one send per record (a third of
    the bridge's time). None (the producer picks) while the topic's partitions are unknown.
    """
    return None if partitions is None else (murmur2(key) & 0x7FFFFFFF) % partitions


def _source(message: Any) -> bytes:
    return b'{"topic":%s,"partition":%d,"offset":%d}' % (
        to_json(message.topic),
        message.partition,
        message.offset,
    )
