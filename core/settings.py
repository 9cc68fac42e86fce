"""The one settings object: keyword argument, then ``LOOPWATCH_*`` variable, then default.

Settings are resolved once at start-up (``Settings()``) and passed down
explicitly; nothing below this module reads the environment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# services/ sits at the repository root; the shared sample data sits beside it.
_REPO_ROOT = Path(__file__).resolve().parent.parent

# What a record needs beyond the input bytes it carries: an enriched record's
# descriptors and source offsets, or a dead letter's error, detail and key.
RECORD_HEADROOM = 64 * 1024


class Topics(BaseSettings):
    """Kafka topic names (``LOOPWATCH_TOPIC_*``)."""

    model_config = SettingsConfigDict(env_prefix="LOOPWATCH_TOPIC_", frozen=True, extra="forbid")

    inference: str = "llm.inference.v1"
    feedback: str = "llm.feedback.v1"
    deadletter: str = "loopwatch.deadletter.v1"
    enriched: str = "loopwatch.inference-enriched.v1"
    joined: str = "loopwatch.feedback-joined.v1"
    unmatched: str = "loopwatch.feedback-unmatched.v1"
    summaries: str = "loopwatch.window-summaries.v1"
    detections: str = "loopwatch.detections.v1"
    alerts: str = "loopwatch.alerts.v1"
    retrain_requests: str = "loopwatch.retrain-requests.v1"
    rollback_requests: str = "loopwatch.rollback-requests.v1"
    delivery_failures: str = "loopwatch.delivery-failures.v1"
    control: str = "loopwatch.control.v1"
    # Internal: messages not keyed by their request_id, re-sent keyed by it so the join finds them.
    rekey: str = "loopwatch.rekeyed.v1"

    def co_partitioned(self) -> list[str]:
        """Topics keyed by request_id, which must share one partition count for the join."""
        return [self.inference, self.feedback, self.rekey, self.enriched, self.joined, self.unmatched]

    def with_prefix(self, prefix: str) -> Topics:
        """The same topics with ``prefix`` in front of every name (tests, shared clusters)."""
        return Topics.model_validate({k: prefix + v for k, v in self.model_dump().items()})

    def all(self) -> list[str]:
        """Every topic loopwatch reads or writes."""
        return list(self.model_dump().values())


class Settings(BaseSettings):
    """Everything a loopwatch process needs to know, resolved once at start-up."""

    model_config = SettingsConfigDict(env_prefix="LOOPWATCH_", frozen=True, extra="forbid")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    app_id: str = Field("loopwatch", description="Faust app id: consumer group and table prefix")
    partitions: int = Field(4, ge=1, description="Partitions for topics loopwatch creates")
    replication_factor: int = Field(1, ge=1, description="Replication for created topics")
    topics: Topics = Field(default_factory=Topics)

    max_event_bytes: int = Field(
        1_048_576, ge=1024, description="Larger messages are dead-lettered as oversize"
    )
    # Compared with the Kafka message's timestamp, so consumer lag does not count.
    # A week back covers producers that buffer through an outage; backfills of
    # older logs raise it. An hour ahead covers clock skew, not a wrong timezone.
    max_timestamp_past_seconds: float = Field(
        7 * 86_400.0,
        gt=0,
        description="Events timestamped longer than this before their Kafka message are"
        " dead-lettered as timestamp_out_of_range",
    )
    max_timestamp_future_seconds: float = Field(
        3_600.0,
        gt=0,
        description="Events timestamped longer than this after their Kafka message are"
        " dead-lettered as timestamp_out_of_range",
    )
    max_record_bytes: int = Field(
        4_194_304,
        ge=2 * RECORD_HEADROOM,
        description="Largest record loopwatch writes (the producer's max_request_size); larger outputs"
        " are dropped, counted and dead-lettered. Kafka's message.max.bytes must be at least this",
    )
    deadletter_value_bytes: int = Field(
        65_536, ge=0, description="A dead letter keeps this many first bytes of the refused message"
    )
    join_ttl_seconds: float = Field(
        86_400.0, gt=0, description="How long an unmatched request waits for its partner"
    )
    join_sweep_seconds: float = Field(30.0, gt=0, description="How often expired joins are swept")
    join_store: Literal["rocksdb", "memory"] = Field(
        "rocksdb", description="Where join states wait: on disk (RocksDB under data_dir) or in RAM"
    )
    commit_interval_seconds: float = Field(1.0, gt=0, description="Offset commit interval")

    web_host: str = Field("127.0.0.1", description="Bind address of /metrics and /health")
    web_port: int = Field(6066, ge=0, le=65535, description="Port of /metrics and /health")
    data_dir: Path = Field(Path(".loopwatch"), description="Worker state (faust tables)")
    broker_port: int = Field(9092, ge=1, le=65535, description="Port of the embedded broker")
    broker_wait_seconds: float = Field(
        0.0, ge=0, description="Give up waiting for Kafka after this long (0: wait forever)"
    )
    sample_data: Path = Field(
        _REPO_ROOT.parent / "shared" / "data",
        description="Folder with the real sample data the demo and benchmarks replay",
    )
    log_level: str = Field("info", description="Worker log level")
    topic_check_seconds: float = Field(
        5.0, gt=0, description="How often the worker checks that the broker answers and its topics exist"
    )
    on_missing_topics: Literal["recreate", "exit"] = Field(
        "recreate", description="When topics vanish (a broker restarted empty): recreate them, or stop"
    )
    stop_grace_seconds: float = Field(
        15.0, gt=0, description="After SIGTERM the worker exits within this long, whatever the broker does"
    )
    stream_stall_seconds: float = Field(
        300.0, gt=0, description="A partition whose records wait unprocessed this long is logged as stalled"
    )

    detection: bool = Field(True, description="Summarise windows and run the detectors on them")
    window_seconds: float | None = Field(
        60.0, gt=0, description="Tumbling detection windows by event time, in seconds (or use window_events)"
    )
    window_events: int | None = Field(
        None, ge=10, description="Tumbling windows by event count instead (set window_seconds to null)"
    )
    window_sample_size: int = Field(
        2_000, ge=50, description="Rows per window the detectors see (a uniform sample of the window)"
    )
    window_grace_seconds: float = Field(0.5, ge=0, description="How late a partition's summary may arrive")
    window_idle_seconds: float = Field(30.0, gt=0, description="Close a window of a segment gone quiet")
    window_text_chars: int = Field(
        1_000, ge=100, description="Prompts and replies are cut to this length in windows"
    )
    detectors_file: Path | None = Field(
        None, description="YAML list of detectors to run on windows [default: the built-in set]"
    )
    reference_file: Path | None = Field(
        None, description="Compare every window with this file (CSV, Parquet or JSONL) instead"
    )
    reference_windows: int = Field(
        1, ge=1, description="The first N windows of a segment form its pinned reference"
    )
    stable_versions: dict[str, str] = Field(
        default_factory=dict, description='Stable version per model (JSON: {"model": "version"})'
    )
    control_key: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key of control-topic messages: unsigned or badly signed ones are refused"
        " [default: none, messages are not authenticated]",
    )
    silence_max_seconds: float = Field(
        7 * 86_400.0, gt=0, description="Longer silences (and ones matching every alert) need --force"
    )
    drift_alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm rate per window, after correction")
    decide: bool = Field(True, description="Run the decide pipeline over detections")
    policy_file: Path | None = Field(
        None, description="Decision policy YAML, reloaded when it changes [default: the built-in policy]"
    )
    receivers_file: Path | None = Field(
        None, description="YAML list of alert receivers (webhook, slack, pagerduty, alertmanager)"
    )
    curation: bool = Field(True, description="Curate joined feedback into the Delta dataset tables")
    datasets_root: str | None = Field(
        None, description="Where the dataset tables live: a path or an object-store URI [<data_dir>/datasets]"
    )
    dataset_retention_days: int | None = Field(
        365, ge=1, description="Curated rows older than this are dropped (null: kept forever)"
    )
    toxicity_flag_threshold: float = Field(
        0.5, gt=0, lt=1, description="Texts the cheap scorer rates at least this go to safety review"
    )
    slow_detector_queue: int = Field(
        1, ge=1, description="Windows waiting for slow detectors; more are skipped and counted"
    )

    @model_validator(mode="after")
    def _records_fit(self) -> Self:
        """Refuse limits under which a maximal valid event or a dead letter could not be written."""
        if self.max_event_bytes + RECORD_HEADROOM > self.max_record_bytes:
            raise ValueError(
                f"max_record_bytes ({self.max_record_bytes:,}) must exceed max_event_bytes"
                f" ({self.max_event_bytes:,}) by {RECORD_HEADROOM:,}: an enriched event carries the"
                " whole event plus its descriptors"
            )
        if 4 * math.ceil(self.deadletter_value_bytes / 3) + RECORD_HEADROOM > self.max_record_bytes:
            raise ValueError(
                f"deadletter_value_bytes ({self.deadletter_value_bytes:,}) is too large for"
                f" max_record_bytes ({self.max_record_bytes:,}): base64 grows it by a third"
            )
        return self

    def record_topic_configs(self) -> dict[str, str]:
        """Kafka topic settings that accept every record loopwatch writes (a batch adds its own header)."""
        return {"max.message.bytes": str(self.max_record_bytes + 1024)}

    def datasets_uri(self) -> str:
        """The root of the dataset tables."""
        return self.datasets_root or str(self.data_dir / "datasets")
