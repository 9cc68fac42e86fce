"""Prometheus metrics of one worker, served on ``/metrics``.

Label sets stay bounded: the per-model metrics keep series for at most
:data:`MAX_MODELS` models and :data:`MAX_DETECTORS` detector ids (later ones
are counted under ``other``), and for each model the :data:`MAX_VERSIONS`
most recently seen versions; when another version of a model appears, the
series of its least recently seen version are dropped (counters restart if
it comes back, which ``rate()`` handles as a reset).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import DeadLetterReason

MAX_MODELS = 50
MAX_VERSIONS = 5
MAX_DETECTORS = 64
OTHER = "other"


class LabelBudget:
    """Bounded label values: the first models and detector ids, the latest versions of each model.

    >>> budget = LabelBudget(max_models=1, max_versions=2, max_detectors=8)
    >>> budget.model("chat"), budget.model("search")
    ('chat', 'other')
    >>> [budget.version("chat", v) for v in ("v1", "v2", "v1", "v3")]
    [('v1', None), ('v2', None), ('v1', None), ('v3', 'v2')]
    """

    def __init__(
        self,
        max_models: int = MAX_MODELS,
        max_versions: int = MAX_VERSIONS,
        max_detectors: int = MAX_DETECTORS,
    ) -> None:
        self.max_models, self.max_versions, self.max_detectors = max_models, max_versions, max_detectors
        self._models: set[str] = set()
        self._detectors: set[str] = set()
        self._versions: dict[str, OrderedDict[str, None]] = {}

    @staticmethod
    def _admit(seen: set[str], value: str, limit: int) -> str:
        if value in seen:
            return value
        if len(seen) >= limit:
            return OTHER
        seen.add(value)
        return value

    def model(self, name: str) -> str:
        """The model's label value (``other`` once MAX_MODELS models have one)."""
        return self._admit(self._models, name, self.max_models)

    def detector(self, detector_id: str) -> str:
        """The detector's label value (``other`` once MAX_DETECTORS detectors have one)."""
        return self._admit(self._detectors, detector_id, self.max_detectors)

    def version(self, model: str, version: str) -> tuple[str, str | None]:
        """The version's label value, and the version whose series must be dropped to make room (or None)."""
        versions = self._versions.setdefault(model, OrderedDict())
        if version in versions:
            versions.move_to_end(version)
            return version, None
        versions[version] = None
        evicted = versions.popitem(last=False)[0] if len(versions) > self.max_versions else None
        return version, evicted


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
        self.rekeyed = Counter(
            "loopwatch_rekeyed",
            "Messages re-sent keyed by their request_id to the repartition topic, so that they join",
            ["topic"],
            registry=r,
        )
        self.output_dropped = Counter(
            "loopwatch_output_dropped",
            "Output records not written: too_large (over max_record_bytes, dead-lettered when possible)"
            " or failed (refused by the broker)",
            ["topic", "reason"],
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
        self.stage_seconds = Histogram(
            "loopwatch_stage_seconds",
            "Time from a stage taking up a batch to acking it (handler, outputs acknowledged, state written)",
            ["stage"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
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
        self.window_duplicate_events = Counter(
            "loopwatch_window_duplicate_events",
            "Events whose summary a window had counted already (input read twice after a crash): not counted",
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
        self.detector_not_ready = Counter(
            "loopwatch_detector_not_ready",
            "Windows a detector could not judge yet (e.g. a reference too small); logged once per detector",
            ["detector"],
            registry=r,
        )
        self.broker_ok = Gauge(
            "loopwatch_broker_ok",
            "1 while the broker answers and every topic the worker uses exists, else 0",
            registry=r,
        )
        self.topics_recreated = Counter(
            "loopwatch_topics_recreated", "Topics the worker recreated after they vanished", registry=r
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
        self.history_rows = Counter(
            "loopwatch_history_rows",
            "Rows inserted into the history tables, by table (replays insert none)",
            ["table"],
            registry=r,
        )
        self.delta_conflicts = Counter(
            "loopwatch_delta_write_conflicts",
            "Delta commits that lost a race with another writer of the same table, retried on a new snapshot",
            ["store"],
            registry=r,
        )

        self.detections_decided = Counter(
            "loopwatch_detections_decided", "Detections run through the decide pipeline", registry=r
        )
        self.model_detections = Counter(
            "loopwatch_model_detections",
            "Detections decided, by model, model version, detector and verdict (label values bounded)",
            ["model", "model_version", "detector", "verdict"],
            registry=r,
        )
        self.alerts_firing = Gauge(
            "loopwatch_alerts_firing",
            "Alerts announced as firing and not resolved yet, on this worker's models",
            ["severity", "model", "alertname"],
            registry=r,
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
        self.control_rejected = Counter(
            "loopwatch_control_rejected",
            "Control-topic records refused, by reason (unsigned, bad_signature, invalid, too_broad, ...)",
            ["reason"],
            registry=r,
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
        self.otlp_spans = Counter(
            "loopwatch_otlp_spans", "Spans read by the OTLP bridge (in decodable messages)", registry=r
        )
        self.otlp_mapped = Counter(
            "loopwatch_otlp_mapped",
            "Events the OTLP bridge wrote: kind inference (LLM spans) or feedback (evaluation events)",
            ["kind"],
            registry=r,
        )
        self.otlp_skipped = Counter(
            "loopwatch_otlp_skipped",
            "Spans and evaluation events the OTLP bridge skipped, by reason (not_genai, not_an_llm_call...)",
            ["reason"],
            registry=r,
        )
        self._budget = LabelBudget()
        self._series: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._firing: set[tuple[str, str, str]] = set()

    def rejected(self, topic: str, reason: DeadLetterReason) -> None:
        """Count one dead-lettered message."""
        self.events_rejected.labels(topic, reason.value).inc()

    def decided(self, model: str, version: str, detector: str, verdict: str) -> None:
        """Count one decided detection, in total and per model version (within the label budget)."""
        self.detections_decided.inc()
        model_label = self._budget.model(model)
        version_label, evicted = (
            (OTHER, None) if model_label == OTHER else self._budget.version(model, version)
        )
        for labels in self._series.pop((model_label, evicted), set()) if evicted else ():
            self.model_detections.remove(model_label, evicted, *labels)
        detector_label = self._budget.detector(detector)
        self._series.setdefault((model_label, version_label), set()).add((detector_label, verdict))
        self.model_detections.labels(model_label, version_label, detector_label, verdict).inc()

    def set_alerts_firing(self, counts: Tally[tuple[str, str, str]]) -> None:
        """Set the firing-alerts gauge from (severity, model, alertname) counts; finished series stay at 0."""
        values: Tally[tuple[str, str, str]] = Tally()
        for (severity, model, alertname), count in counts.items():
            values[(severity, self._budget.model(model), alertname)] += count
        for key in self._firing - values.keys():
            self.alerts_firing.labels(*key).set(0)
        for key, count in values.items():
            self.alerts_firing.labels(*key).set(count)
        self._firing |= values.keys()

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
