"""The typed inputs of curation (toxicity verdicts) and the row every dataset table stores."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

DatasetKind = Literal["sft", "preference", "golden", "safety_review"]
#: One Delta table per kind, in this order.
DATASET_KINDS: tuple[DatasetKind, ...] = get_args(DatasetKind)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToxicityFlag(_Frozen):
    """One label a toxicity detector flagged on a prompt or a reply, with its score."""

    target: Literal["prompt", "response"]
    label: str
    score: float = Field(ge=0.0, le=1.0)


class ToxicityVerdict(_Frozen):
    """What the toxicity detectors said about one request: only the flagged labels."""

    request_id: str
    detector_id: str = "toxicity.detoxify.v1"
    flags: tuple[ToxicityFlag, ...] = ()

    @property
    def flagged(self) -> bool:
        """True when any label was flagged."""
        return bool(self.flags)


class Message(_Frozen):
    """One chat turn as stored and exported."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class SourceLineage(_Frozen):
    """One event a row was derived from, and where in Kafka it was read."""

    role: Literal["inference", "feedback"]
    event_id: str
    request_id: str
    topic: str
    partition: int
    offset: int


class ToxicityLineage(_Frozen):
    """A detector verdict carried on a row, with the request it was about."""

    request_id: str
    detector_id: str
    target: Literal["prompt", "response"]
    label: str
    score: float


class CuratedRow(_Frozen):
    """One curated example, already redacted, with its full lineage.

    ``prompt`` holds the turns before the reply. ``response`` is the assistant
    reply to train or evaluate on (the correction for SFT); preference rows use
    ``chosen`` and ``rejected`` instead.
    """

    row_id: str = Field(description="Deterministic: kind + the event or request ids it came from")
    content_hash: str = Field(description="Hash of the normalised content; the de-duplication key")
    kind: DatasetKind
    model: str
    model_version: str
    rejected_model_version: str | None = None
    event_time: datetime = Field(description="Inference time (the oldest one for pairs); drives retention")
    request_id: str
    label: str = Field(description="Why the row was curated, e.g. correction, thumbs_up, toxicity")
    prompt: tuple[Message, ...]
    response: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    feedback_event_ids: tuple[str, ...]
    sources: tuple[SourceLineage, ...]
    toxicity: tuple[ToxicityLineage, ...] = ()
    user_hashes: tuple[str, ...] = ()
    redactions: dict[str, int] = Field(default_factory=dict, description="Placeholders inserted, per kind")
    config_hash: str
