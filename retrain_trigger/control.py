"""Control events: silences and stable-version marks, on a compacted topic every worker reads whole.

``loopwatch silence add|expire`` and ``loopwatch model mark-stable`` publish
them; each worker replays the topic from the start and keeps following it,
so every worker mutes and rolls back the same way. The Kafka key is the
silence id or the model, so compaction keeps the latest of each.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from retrain_trigger.silence import Silence
from retrain_trigger.stable import StableVersionMarked


class ControlEvent(BaseModel):
    """One control event: a silence (added or expired early) or a version marked stable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["1"] = "1"
    silence: Silence | None = None
    stable: StableVersionMarked | None = None

    def key(self) -> bytes:
        """The compaction key: the silence id, or the model."""
        if self.silence is not None:
            return f"silence:{self.silence.id}".encode()
        if self.stable is not None:
            return f"stable:{self.stable.model}".encode()
        raise ValueError("a control event carries a silence or a stable mark")
