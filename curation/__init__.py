"""Curated feedback datasets: joined traffic in, versioned Delta tables out.

The modules read in the order the data flows:

``config``   what to curate and how long to keep it (a frozen, validated config);
``rows``     the typed inputs (toxicity verdicts) and the curated row every table stores;
``rules``    pure rules: joined feedback -> SFT candidates, preference pairs, golden
             examples, safety-review rows (redacted, de-duplicated, user ids hashed);
``redact``   PII and secret redaction with typed placeholders and counts per kind;
``store``    idempotent, batched writes to one Delta table per kind, versions and tags;
``export``   chat fine-tuning JSONL / Parquet export, the strict format validators, stats.

Nothing here talks to Kafka: the stream layer calls :func:`curation.rules.curate`
on a batch of :class:`schemas.events.JoinedFeedback` and hands the rows to
:meth:`curation.store.DatasetStore.write` before it commits the offsets.
"""

from __future__ import annotations

from curation.config import CurationConfig
from curation.rows import DATASET_KINDS, CuratedRow, DatasetKind, ToxicityFlag, ToxicityVerdict

__all__ = [
    "DATASET_KINDS",
    "CuratedRow",
    "CurationConfig",
    "DatasetKind",
    "ToxicityFlag",
    "ToxicityVerdict",
]
