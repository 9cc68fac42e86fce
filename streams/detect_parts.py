"""The detect stage's small parts (:mod:`streams.detect_stage`): what comes back to it, what it publishes.

- :func:`load_specs`: the detectors to run, from the detectors file;
- :class:`RegistryStable` and :class:`SlowResult`: the results of its background
  work, back to :meth:`~streams.detect_stage.DetectStage.receive`;
- :class:`ReferenceStore`: the references table as a unit reads it (its own writes first);
- :func:`window_closed`: the ``WindowClosed`` of one closing or revision of a window;
- :func:`stable_slot`: where the stable version's window of a canary window's time is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from core.config_files import load_yaml_list
from schemas.events import Segment, WindowClosed
from streams.detect import DEFAULT_SPECS, DetectorSpec, Judged, Reference
from streams.runtime import ChangelogTable
from streams.windows import ClosedWindow, Slot, segment_key


def load_specs(path: Path | None) -> list[DetectorSpec]:
    """Detectors to run, from a YAML list of ``{detector_id, kind, config, slow}`` (or the defaults)."""
    return list(DEFAULT_SPECS) if path is None else load_yaml_list(path, DetectorSpec, "detectors")


@dataclass(frozen=True)
class RegistryStable:
    """The registry's stable (champion) version of each model read, back to the stage (None: not set)."""

    versions: dict[str, str | None]


@dataclass(frozen=True)
class SlowResult:
    """What the slow detectors found on one window, back to the stage (``crashed``: they raised)."""

    window: ClosedWindow
    reference: Reference
    judged: list[Judged]
    failed: list[str]
    crashed: bool = False
    #: The window's entry in the windows table, deleted once these Detections are out.
    pending: str | None = None


class ReferenceStore:
    """The references table read with str keys: this unit's own writes first, then the table."""

    def __init__(self, table: ChangelogTable) -> None:
        self.table = table
        self.written: dict[str, bytes] = {}

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key`` as this unit left it, or None."""
        written = self.written.get(key)
        return written if written is not None else self.table.get(key.encode())


def window_closed(window: ClosedWindow, outcome: str, reference: Reference | None) -> WindowClosed:
    """The ``WindowClosed`` of this closing (or revision) of ``window``: what it came to, what closed it."""
    return WindowClosed(
        segment=Segment.model_validate(window.segment),
        kind=window.kind,
        window_start=window.start,
        window_end=window.end,
        events=window.seen,
        sample_size=len(window.rows),
        revision=window.revision,
        outcome=cast(Any, outcome),
        reference=None if reference is None else reference.name,
        closed_at=datetime.now(UTC),
        closed_by=cast(Any, window.closed_by),
        waited_for=window.waited_for,
    )


def stable_slot(window: ClosedWindow, stable_versions: Mapping[str, str]) -> Slot | None:
    """The stable version's window of the same time as ``window``, a canary's (None: no such window).

    Trial 12k: a canary window that closed while the stable window of its time was still open (its
    own segment went quiet: the idle timeout) was judged against the stable version's previous window,
    then judged again when that one closed: a revision of a window whose events all came on time.
    """
    stable = stable_versions.get(window.segment.get("model") or "")
    if not stable or stable == window.segment.get("model_version") or window.window_id is None:
        return None
    return (segment_key(dict(window.segment, model_version=stable)), window.kind, window.window_id)
