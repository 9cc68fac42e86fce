"""Prometheus metrics of one worker, served on ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import DeadLetterReason


class Metrics:
    """The worker's counters, in their own registry so several apps can share a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "loopwatch_events_in", "Messages read from an input topic", ["topic"], registry=r
        )
        self.events_valid = Counter(
            "loopwatch_events_valid", "Messages that were valid events", ["topic"], registry=r
        )
        self.events_rejected = Counter(
            "loopwatch_events_rejected",
            "Messages sent to the dead-letter topic, by reason",
            ["topic", "reason"],
            registry=r,
        )
        self.feedback_joined = Counter(
            "loopwatch_feedback_joined", "Feedback matched with its inference", registry=r
        )
        self.feedback_duplicate = Counter(
            "loopwatch_feedback_duplicate",
            "Feedback seen again (same event_id), not re-joined",
            registry=r,
        )
        self.feedback_unmatched = Counter(
            "loopwatch_feedback_unmatched",
            "Feedback whose inference never arrived within the join TTL",
            registry=r,
        )
        self.join_key_mismatch = Counter(
            "loopwatch_join_key_mismatch",
            "Messages whose Kafka key is not their request_id (the join needs key = request_id)",
            ["topic"],
            registry=r,
        )
        self.join_entries = Gauge(
            "loopwatch_join_entries",
            "request_ids held by the join table on this worker",
            registry=r,
        )
        self.processing_seconds = Histogram(
            "loopwatch_processing_seconds",
            "Time to process one batch of messages, per message",
            ["topic"],
            buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1),
            registry=r,
        )
        self.consumer_lag = Gauge(
            "loopwatch_consumer_lag",
            "Messages in the partition not yet processed",
            ["topic", "partition"],
            registry=r,
        )

        self.window_events = Counter(
            "loopwatch_window_events",
            "Events counted into detection windows, by window kind",
            ["kind"],
            registry=r,
        )
        self.window_late_events = Counter(
            "loopwatch_window_late_events",
            "Events whose summary reached a window already closed (counted, not judged)",
            registry=r,
        )
        self.window_rows = Counter(
            "loopwatch_window_rows",
            "Rows of closed windows the detectors saw (a uniform sample of the window events)",
            ["kind"],
            registry=r,
        )
        self.windows_skipped = Counter(
            "loopwatch_windows_skipped",
            "Closed windows the slow detectors skipped because they were still busy",
            ["kind"],
            registry=r,
        )
        self.detections = Counter(
            "loopwatch_detections",
            "Detections published, by detector and verdict",
            ["detector", "verdict"],
            registry=r,
        )
        self.detector_errors = Counter(
            "loopwatch_detector_errors",
            "Detector runs or drift reports that failed (logged with a traceback)",
            ["detector"],
            registry=r,
        )

        self.curated_events = Counter(
            "loopwatch_curated_events",
            "Joined feedback events curated (and written, before their ack)",
            registry=r,
        )
        self.curated_rows = Counter(
            "loopwatch_curated_rows",
            "Rows inserted into the dataset tables, by kind (replays insert none)",
            ["kind"],
            registry=r,
        )
        self.dataset_version = Gauge(
            "loopwatch_dataset_version", "Latest Delta version of each dataset table", ["kind"], registry=r
        )
        self.redactions = Counter(
            "loopwatch_redactions", "PII and secrets redacted before storage, by kind", ["kind"], registry=r
        )

        self.detections_decided = Counter(
            "loopwatch_detections_decided", "Detections run through the decide pipeline", registry=r
        )
        self.actions = Counter(
            "loopwatch_actions", "Retrain/rollback CloudEvents published, by type", ["type"], registry=r
        )
        self.actions_dry_run = Counter(
            "loopwatch_actions_dry_run",
            "Actions a dry-run policy decided but did not publish",
            ["type"],
            registry=r,
        )
        self.actions_stopped = Counter(
            "loopwatch_actions_stopped",
            "Candidates stopped by inhibit, silence, dedup or cooldown",
            ["stage"],
            registry=r,
        )
        self.control_events = Counter(
            "loopwatch_control_events", "Silences and stable marks applied from the control topic", registry=r
        )
        self.alerts = Counter("loopwatch_alerts", "Alert events published, by status", ["status"], registry=r)
        self.delivery_failures = Counter(
            "loopwatch_delivery_failures",
            "Pages that could not be delivered (each published on the delivery-failures topic)",
            ["receiver"],
            registry=r,
        )
        self.policy_rejected = Counter(
            "loopwatch_policy_rejected",
            "Edited policy files refused (the previous policy kept running)",
            registry=r,
        )

    def rejected(self, topic: str, reason: DeadLetterReason) -> None:
        """Count one dead-lettered message."""
        self.events_rejected.labels(topic, reason.value).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def metric_total(exposition: str, sample: str, **labels: str) -> float:
    r"""Sum of the samples named ``sample`` (with these labels) in a ``/metrics`` text.

    >>> metric_total('c_total{topic="a"} 2.0\nc_total{topic="b"} 3.0\n', "c_total", topic="b")
    3.0
    """
    return sum(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )
