"""The errors the curation package raises on purpose."""

from __future__ import annotations

from schemas.errors import LoopwatchError


class DatasetError(LoopwatchError):
    """A dataset table, version or tag is missing, or a stored row breaks the export format."""
