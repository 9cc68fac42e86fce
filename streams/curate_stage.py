"""The curate stage's Kafka edge: joined feedback in, rows in the Delta dataset tables.

Each batch of ``loopwatch.feedback-joined.v1`` is scored for toxicity with the
cheap scorer (flagged requests go to safety review, never to SFT), curated by
the pure rules in :mod:`curation.rules`, and merged into the Delta tables
*before* its offsets are acknowledged. A crash between the write and the
commit replays the batch; the merge on each row's content hash makes that
replay insert nothing, so rows are neither lost nor duplicated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from core.settings import Settings
from curation import CurationConfig, ToxicityFlag, ToxicityVerdict
from curation.rows import CuratedRow
from curation.rules import curate
from curation.store import DatasetStore, WriteResult
from detectors.scorers import ProfanityScorer
from schemas.events import JoinedFeedback
from streams.metrics import Metrics

if TYPE_CHECKING:
    from streams.app import LoopwatchApp

log = logging.getLogger("loopwatch.curate")

_WRITE_ATTEMPTS = 5  # concurrent writers from other workers can make a Delta commit conflict


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


class CurateStage:
    """Curates each batch of joined feedback into the dataset tables."""

    def __init__(self, app: LoopwatchApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.config = CurationConfig(retention_days=settings.dataset_retention_days)
        self.store = DatasetStore(settings.datasets_uri(), retention_days=settings.dataset_retention_days)
        self.scorer = ProfanityScorer()
        self.flag_threshold = settings.toxicity_flag_threshold

    async def on_joined(self, messages: list[Any]) -> None:
        """Curate a batch and write it; return only once the rows are committed to Delta."""
        records = [JoinedFeedback.model_validate_json(message.value) for message in messages]
        result = curate(records, self.config, toxicity_verdicts(records, self.scorer, self.flag_threshold))
        last = {f"{m.topic}/{m.partition}": str(m.offset) for m in messages}
        metadata = {"loopwatch.offsets": ",".join(f"{tp}@{offset}" for tp, offset in sorted(last.items()))}
        loop = asyncio.get_running_loop()
        written = await loop.run_in_executor(None, self._write, result.rows, metadata)
        self.metrics.curated_events.inc(len(messages))
        for kind, count in written.inserted.items():
            self.metrics.curated_rows.labels(kind).inc(count)
        for kind, version in written.versions.items():
            self.metrics.dataset_version.labels(kind).set(version)
        for pii, count in result.redactions.items():
            self.metrics.redactions.labels(pii).inc(count)

    def _write(self, rows: list[CuratedRow], metadata: dict[str, str]) -> WriteResult:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                return self.store.write(rows, commit_metadata=metadata)
            except Exception:
                if attempt == _WRITE_ATTEMPTS:
                    raise  # the worker restarts and replays the batch: nothing is lost
                log.warning("dataset write failed (attempt %d), retrying", attempt, exc_info=True)
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")
