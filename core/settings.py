"""The one settings object: keyword argument, then ``LOOPWATCH_*`` variable, then default.

Settings are resolved once at start-up (``Settings()``) and passed down
explicitly; nothing below this module reads the environment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# services/ sits at the repository root; the shared sample data sits beside it.
_REPO_ROOT = Path(__file__).resolve().parent.parent

# What a record needs beyond the input bytes it carries: an enriched record's
# descriptors and source offsets, or a dead letter's error, detail and key.
RECORD_HEADROOM = 64 * 1024


# What a SASL_* protocol cannot work without.
_SASL_NEEDS = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")


def _env(field: str) -> str:
    """The environment variable of a settings field (what a person sets)."""
    return "LOOPWATCH_" + field.upper()


class Topics(BaseSettings):
    """Kafka topic names (``LOOPWATCH_TOPIC_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="LOOPWATCH_TOPIC_", frozen=True, extra="forbid", env_ignore_empty=True
    )

    inference: str = "llm.inference.v1"
    feedback: str = "llm.feedback.v1"
    deadletter: str = "loopwatch.deadletter.v1"
    enriched: str = "loopwatch.inference-enriched.v1"
    joined: str = "loopwatch.feedback-joined.v1"
    unmatched: str = "loopwatch.feedback-unmatched.v1"
    summaries: str = "loopwatch.window-summaries.v1"
    detections: str = "loopwatch.detections.v1"
    # One WindowClosed per closed window (judged, pinned as reference, or not judged): the history's windows.
    windows: str = "loopwatch.windows.v1"
    alerts: str = "loopwatch.alerts.v1"
    retrain_requests: str = "loopwatch.retrain-requests.v1"
    rollback_requests: str = "loopwatch.rollback-requests.v1"
    promotion_requests: str = "loopwatch.promotion-requests.v1"
    # Pages to deliver (the notify stage reads them); keyed by alert group.
    pages: str = "loopwatch.pages.v1"
    delivery_failures: str = "loopwatch.delivery-failures.v1"
    control: str = "loopwatch.control.v1"
    # Internal: messages not keyed by their request_id, re-sent keyed by it so the join finds them.
    rekey: str = "loopwatch.rekeyed.v1"
    # The OpenTelemetry Collector Kafka exporter's default topic: OTLP traces the bridge stage reads.
    otlp_spans: str = "otlp_spans"

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

    model_config = SettingsConfigDict(
        env_prefix="LOOPWATCH_", frozen=True, extra="forbid", env_ignore_empty=True
    )

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    # The connection settings of every Kafka client loopwatch opens (streams/kafka.py builds them).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to Kafka: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(
        None, description="SASL mechanism (needed with SASL_*); OAUTHBEARER sends the password as the token"
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user name (an API key on Confluent Cloud)"
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (an API secret, or an OAUTHBEARER token); never printed or logged"
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates [default: the system's]",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate for mutual TLS (may hold the key too)"
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM private key of the client certificate")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that each broker's certificate names the host connected to"
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
    session_timeout_seconds: float = Field(
        10.0,
        ge=3.0,
        le=300.0,
        description="A worker that stops answering (kill -9, a blocked event loop) loses its partitions after"
        " this long: lower moves a crashed worker's windows on sooner, and drops a busy worker more readily",
    )

    web_host: str = Field("127.0.0.1", description="Bind address of /metrics and /health")
    web_port: int = Field(6066, ge=0, le=65535, description="Port of /metrics and /health")
    health_settle_seconds: float = Field(
        3.0,
        ge=0,
        description="/health answers 200 only once no rebalance started for this long after the last one"
        " ended (a heartbeat, every 2 s, tells a member of a rebalance pending)",
    )
    console_host: str = Field(
        "127.0.0.1", description="Bind address of `loopwatch console` (any other than loopback needs a token)"
    )
    console_port: int = Field(8050, ge=0, le=65535, description="Port of `loopwatch console`")
    console_token: SecretStr | None = Field(
        None, description="Token the console requires (header, cookie or ?token=); needed off loopback"
    )
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
    window_grace_seconds: float = Field(
        0.5,
        ge=0,
        description="Allowed lateness in event time: a time window closes once every input partition's"
        " watermark is this far past its end (timer rule: how long after its last summary)",
    )
    window_idle_seconds: float = Field(
        30.0, gt=0, description="Close a window of a segment gone quiet; ignore an input that stopped moving"
    )
    window_close: Literal["watermark", "timer"] = Field(
        "watermark",
        description="When a time window is complete: every input partition's watermark passed it, or"
        " (timer) a later window exists and no summary came for window_grace_seconds",
    )
    window_revision_seconds: float = Field(
        300.0,
        ge=0,
        description="A closed time window is kept this long (wall time): late events revise its verdict"
        " (0: late events are only counted)",
    )
    window_revision_quiet_seconds: float = Field(
        # 1 s split a late delivery sent a batch a second (ingest reads those 1-2 s apart) into a
        # revision per gap: 20 s of it read as "revised 5 times". 3 s makes it one.
        3.0,
        ge=0,
        description="A revision waits until no late event came for its window for this long (wall time):"
        " one late delivery read in several batches, or sent a batch a second, is one revision",
    )
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
    reference_min_events: int = Field(
        30,
        ge=0,
        description="...and further windows join it until it holds this many events (a partial first"
        " window is too small to judge against)",
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
    registry: Literal["none", "mlflow"] = Field(
        "none",
        description="Model registry whose stable alias is the rollback target (none: stable_versions and"
        " mark-stable on the control topic)",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="The MLflow tracking server (registry=mlflow or actuator=mlflow)"
    )
    registry_stable_alias: str = Field("champion", min_length=1, description="Alias of the stable version")
    registry_canary_alias: str = Field("challenger", min_length=1, description="Alias of the canary version")
    registry_cache_seconds: float = Field(
        10.0, ge=0, description="How long a model's aliases read from the registry are reused"
    )
    actuator: Literal["none", "mlflow"] = Field(
        "none",
        description="Apply rollback and promotion requests by moving the stable alias in the registry"
        " (the act stage)",
    )
    retrain_trigger: Literal["none", "http", "github", "airflow", "command"] = Field(
        "none", description="Where the act stage dispatches retrain requests"
    )
    retrain_trigger_url: SecretStr | None = Field(
        None,
        description="The job trigger's URL (github: the workflow's dispatches URL, airflow: its dagRuns URL)",
    )
    retrain_trigger_token: SecretStr | None = Field(
        None, description="Bearer token of the job trigger (with retrain_trigger_username: the password)"
    )
    retrain_trigger_username: str | None = Field(
        None, description="User of the job trigger's basic auth (Airflow's basic_auth backend)"
    )
    retrain_trigger_body: str | None = Field(
        None,
        description="JSON body template of the job trigger ($model, $table, $delta_version, ...) [preset's]",
    )
    retrain_trigger_ref: str = Field("main", min_length=1, description="Git ref a GitHub workflow runs on")
    retrain_trigger_command: list[str] = Field(
        default_factory=list, description="Command of the command trigger (JSON list; arguments templated)"
    )
    retrain_trigger_attempts: int = Field(4, ge=1, description="Tries of one dispatch before dispatch_failed")
    retrain_trigger_backoff_seconds: float = Field(
        0.5, ge=0, description="Wait before the second try of a dispatch, doubled after each"
    )
    retrain_trigger_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one dispatch try")
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
    history: bool = Field(
        True, description="Write the monitoring history (windows, detections, alerts, actions, dead letters)"
    )
    history_root: str | None = Field(
        None, description="Where the history tables live: a path or an object-store URI [<data_dir>/history]"
    )
    history_retention_days: int | None = Field(
        90, ge=1, description="History rows of older days are deleted (null: kept forever)"
    )
    history_compact_seconds: float = Field(
        3_600.0, gt=0, description="How often the history tables are compacted, expired and vacuumed"
    )
    # 24: a burst of ~20 windows (a replay, a backlog after a restart) gets its slow verdicts
    # later instead of skipped; each waiting window holds its rows (~6 MB at 2,000 rows of
    # HH-RLHF text) in the worker and an entry in the windows table (bench/slow_verdict_bench.py).
    slow_detector_queue: int = Field(
        24, ge=1, description="Windows waiting for slow detectors; more are skipped and counted"
    )
    otlp: bool = Field(
        True,
        description="Run the OTLP bridge: GenAI spans on topics.otlp_spans become inference logs, feedback",
    )
    otlp_encoding: Literal["auto", "otlp_proto", "otlp_json"] = Field(
        "auto",
        description="How the OTLP spans are encoded (the Collector's Kafka exporter: otlp_proto, otlp_json)",
    )
    otlp_version_attribute: str = Field(
        "service.version",
        min_length=1,
        description="Resource (else span) attribute holding the model version",
    )
    otlp_tenant_attribute: str | None = Field(
        "tenant.id", description="Span (else resource) attribute holding the tenant (null: none)"
    )
    otlp_route_attribute: str | None = Field(
        None,
        description="Span (else resource) attribute holding the route, e.g. gen_ai.operation.name [none]",
    )

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """An empty value is no value: compose files and env files leave variables blank."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> Self:
        """Refuse security settings that the chosen protocol would silently ignore or cannot work without."""
        protocol = self.kafka_security_protocol
        tls = [
            name
            for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
            if getattr(self, name) is not None
        ]
        sasl = [
            name
            for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
            if getattr(self, name) is not None
        ]
        if tls and not protocol.endswith("SSL"):
            raise ValueError(
                f"{_env(tls[0])} is set but LOOPWATCH_KAFKA_SECURITY_PROTOCOL is {protocol}:"
                " set it to SSL or SASL_SSL"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("LOOPWATCH_KAFKA_SSL_KEYFILE needs LOOPWATCH_KAFKA_SSL_CERTFILE")
        if protocol.startswith("SASL"):
            missing = [name for name in _SASL_NEEDS if getattr(self, name) is None]
            if self.kafka_sasl_mechanism == "OAUTHBEARER":
                missing = [name for name in missing if name != "kafka_sasl_username"]
            if missing:
                raise ValueError(
                    f"LOOPWATCH_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                    + ", ".join(_env(name) for name in missing)
                )
        elif sasl:
            raise ValueError(
                f"{_env(sasl[0])} is set but LOOPWATCH_KAFKA_SECURITY_PROTOCOL is {protocol}:"
                " set it to SASL_SSL or SASL_PLAINTEXT"
            )
        return self

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

    @model_validator(mode="after")
    def _act_configured(self) -> Self:
        """Refuse a registry, actuator or retrain trigger without what it needs."""
        if "mlflow" in (self.registry, self.actuator) and not self.mlflow_tracking_uri:
            raise ValueError("registry=mlflow and actuator=mlflow need mlflow_tracking_uri")
        if self.retrain_trigger == "command" and not self.retrain_trigger_command:
            raise ValueError("retrain_trigger=command needs retrain_trigger_command")
        if self.retrain_trigger in ("http", "github", "airflow") and not self.retrain_trigger_url:
            raise ValueError(f"retrain_trigger={self.retrain_trigger} needs retrain_trigger_url")
        return self

    def record_topic_configs(self) -> dict[str, str]:
        """Kafka topic settings that accept every record loopwatch writes (a batch adds its own header)."""
        return {"max.message.bytes": str(self.max_record_bytes + 1024)}

    def datasets_uri(self) -> str:
        """The root of the dataset tables (a local path made absolute: it goes into retrain requests)."""
        return _absolute(self.datasets_root or str(self.data_dir / "datasets"))

    def history_uri(self) -> str:
        """The root of the monitoring history tables (a local path made absolute)."""
        return _absolute(self.history_root or str(self.data_dir / "history"))


def _absolute(root: str) -> str:
    """``root`` as an absolute path when it is a local path; object-store URIs as given.

    >>> _absolute("s3://bucket/datasets")
    's3://bucket/datasets'
    >>> _absolute("/srv/datasets")
    '/srv/datasets'
    """
    return root if "://" in root else str(Path(root).resolve())
