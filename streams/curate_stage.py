"""The curate stage: joined feedback in, rows in the Delta dataset tables, on the stage runtime.

Each batch of ``loopwatch.feedback-joined.v1`` is decoded by the runtime (a
record that is not a valid JoinedFeedback is dead-lettered with its reason,
and the stage carries on), scored for toxicity with the cheap scorer (flagged
requests go to safety review, never to SFT) and curated by the pure rules in
:mod:`curation.rules`. The merge into the Delta tables is the unit's blocking
call (``Effects.calls``): the runtime runs it in a thread after the unit's
records (its dead letters) are acknowledged and *before* its offsets are
acked. A crash between the write and the commit replays the batch; the
look-up of each row's content hash makes that replay insert nothing, so rows
are neither lost nor duplicated. Each commit's metadata names the batch's last
offsets (``loopwatch.offsets``). Workers sharing the datasets root may race
for a commit: the loser writes again on the new snapshot, as often as it takes
(counted in ``loopwatch_delta_write_conflicts_total{store="datasets"}``). A
write that fails otherwise after its retries crashes the worker, whose restart
processes the batch again.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from core.settings import Settings
from curation import CurationConfig, ToxicityFlag, ToxicityVerdict
from curation.rows import CuratedRow
from curation.rules import CurationResult, curate
from curation.store import ConflictLog, DatasetStore, WriteResult, with_retries
from detectors.scorers import ProfanityScorer
from schemas.events import JoinedFeedback
from streams.ingest import Accepted, Rejected, decode
from streams.metrics import Metrics
from streams.runtime import Batch, Decoder, Effects, Runtime, Stage


def toxicity_verdicts(
    records: list[JoinedFeedback], scorer: ProfanityScorer, threshold: float
) -> dict[str, ToxicityVerdict]:
    """Prompts and replies the cheap toxicity scorer flags, by request id."""
    texts = [(r.request_id, "prompt", r.inference.prompt_text()) for r in records] + [
        (r.request_id, "response", r.inference.response or "") for r in records
    ]
    scores = scorer.score([text for _, _, text in texts]).column("profanity")
    flags: dict[str, list[ToxicityFlag]] = {}
    for (request_id, target, _), score in zip(texts, scores, strict=True):
        if score >= threshold:
            flag = ToxicityFlag(target=target, label="profanity", score=float(score))
            flags.setdefault(request_id, []).append(flag)
    return {
        request_id: ToxicityVerdict(
            request_id=request_id, detector_id="toxicity.profanity.v1", flags=tuple(found)
        )
        for request_id, found in flags.items()
    }


class CurateStage(Stage):
    """Curates each batch of joined feedback into the dataset tables."""

    name = "curate"

    def __init__(self, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        super().__init__(runtime)
        self.metrics = metrics
        max_bytes = settings.max_record_bytes  # a joined record holds an inference and its feedback

        def decode_joined(message: Any, now: float) -> Accepted[Any] | Rejected:
            return decode(message.value, JoinedFeedback, max_bytes=max_bytes)

        self.inputs: dict[str, Decoder] = {settings.topics.joined: decode_joined}
        self.config = CurationConfig(retention_days=settings.dataset_retention_days)
        self.store = DatasetStore(settings.datasets_uri(), retention_days=settings.dataset_retention_days)
        self.scorer = ProfanityScorer()
        self.flag_threshold = settings.toxicity_flag_threshold
        self.conflicts = ConflictLog("dataset write", metrics.delta_conflicts.labels("datasets").inc)

    async def handle(self, batch: Batch, now: float) -> Effects:
        """Curate a batch; its Delta write is a call the runtime makes before the offsets are acked."""
        effects = self.effects()
        records: list[JoinedFeedback] = [accepted.event for _, accepted in batch.accepted]
        if not records:
            return effects  # only dead letters, which the runtime sends
        result = curate(records, self.config, toxicity_verdicts(records, self.scorer, self.flag_threshold))
        # The batch's last offsets (dead-lettered messages included: they are acked with it).
        last = {f"{m.topic}/{m.partition}": str(m.offset) for m in batch.messages}
        metadata = {"loopwatch.offsets": ",".join(f"{tp}@{offset}" for tp, offset in sorted(last.items()))}
        effects.calls.append(partial(self._write, result, metadata, len(records)))
        return effects

    def _write(self, result: CurationResult, metadata: dict[str, str], events: int) -> None:
        """Merge the rows into Delta (in a thread), retrying conflicts; then count what was written."""
        written = self._write_rows(result.rows, metadata)
        self.metrics.curated_events.inc(events)
        for kind, count in written.inserted.items():
            self.metrics.curated_rows.labels(kind).inc(count)
        for kind, version in written.versions.items():
            self.metrics.dataset_version.labels(kind).set(version)
        for pii, count in result.redactions.items():
            self.metrics.redactions.labels(pii).inc(count)

    def _write_rows(self, rows: list[CuratedRow], metadata: dict[str, str]) -> WriteResult:
        # A write that still fails raises: the worker restarts and replays the batch, losing nothing.
        return with_retries(
            lambda: self.store.write(rows, commit_metadata=metadata, conflicts=self.conflicts),
            "dataset write",
            conflicts=self.conflicts,
        )
