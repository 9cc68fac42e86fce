"""A tiny base for stage states: pydantic models that round-trip through JSON bytes."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict


class State(BaseModel):
    """Mutable, serialisable state of one stage (kept in a changelog-backed table by the stream layer)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    def to_json(self) -> bytes:
        """The state as JSON bytes."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """The state back from :meth:`to_json` output."""
        return cls.model_validate_json(data)
