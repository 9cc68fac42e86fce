"""What to curate and how long to keep it: one frozen, validated config object."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.redact import BUILTIN_KINDS
from curation.rows import DATASET_KINDS, DatasetKind

_KIND_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")


class CurationConfig(BaseModel):
    """Thresholds, enabled dataset kinds, retention and extra redaction patterns.

    Frozen and ``extra='forbid'``, so a misspelt field fails loudly; its hash is
    stored on every row, so each row can be traced to the rules that made it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: frozenset[DatasetKind] = Field(
        default=frozenset(DATASET_KINDS), description="Dataset kinds to produce"
    )
    golden_min_rating: float = Field(4.0, description="A rating at or above this counts as positive")
    negative_max_rating: float = Field(2.0, description="A rating at or below this counts as negative")
    max_pairs_per_prompt: Annotated[int, Field(ge=1, le=100)] = Field(
        4, description="Cap on preference pairs built from one prompt's opposite-feedback replies"
    )
    retention_days: Annotated[int, Field(ge=1)] | None = Field(
        365, description="Rows whose inference is older than this are not stored, and are expired"
    )
    extra_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="More redactions: placeholder kind (e.g. EMPLOYEE_ID) -> regular expression",
    )
    user_hash_salt: str = Field(
        "loopwatch-user", min_length=1, description="Salt of the second hash applied to user ids"
    )

    @field_validator("extra_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        for kind, pattern in patterns.items():
            if not _KIND_NAME.match(kind):
                raise ValueError(f"redaction kind {kind!r} must be UPPER_SNAKE_CASE, e.g. EMPLOYEE_ID")
            if kind in BUILTIN_KINDS:
                raise ValueError(f"redaction kind {kind} is built in; give the extra pattern its own name")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redaction pattern for {kind} does not compile: {exc}") from exc
        return patterns

    def fingerprint(self) -> str:
        """A short stable hash of this config, stored with every row it produced."""
        # Sets serialise in hash order, which changes between processes: sort them.
        fields = {**self.model_dump(mode="json"), "enabled": sorted(self.enabled)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
