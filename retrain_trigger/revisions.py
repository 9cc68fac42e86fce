"""Revisions: is a detection a new window of its series, or a correction of a window already counted?

Events that come late make the detect stage publish a corrected Detection
for a window it already judged: same segment, detector, config and window
bounds, a new ``detection_id``, ``revision`` n. A *series* is one detector
with one config on one segment; :class:`WindowLedger` keeps the latest window
counted per series, and :meth:`WindowLedger.classify` is the one place that
says what a detection is:

- ``new``: a window not counted yet; every stage counts it as before;
- ``latest``: the series' latest window again (a revision, or a redelivered
  copy): it *replaces* that window's earlier verdict wherever windows are
  counted (alert streaks, resolve counts, rollback watches, promotion trials);
- ``older``: a revision of a window older than the latest one counted: its
  numbers replace the old ones, but it resolves and fires nothing by itself.

The gates keep, per alert, the counters from before the window they counted
last (:class:`GateMark`), so a correction of that window is undone and
counted again instead of counted twice.

>>> from datetime import UTC, datetime, timedelta
>>> from schemas.events import Segment
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> def window(revision=0):
...     return Detection(detection_id=f"d{revision}", detector_id="drift.ks.v1", detector_version="v1",
...         config={}, segment=Segment(model="chat", model_version="v2"), window_start=t,
...         window_end=t + timedelta(minutes=1), reference_size=100, current_size=100, verdict="ok",
...         reference="pinned", detected_at=t, revision=revision)
>>> ledger = WindowLedger()
>>> ledger.classify(window()).kind, ledger.classify(window(1)).kind
('new', 'latest')
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.state import State
from schemas.events import Detection

Kind = Literal["new", "latest", "older"]

#: Series and alerts whose latest window a model's ledger remembers (the least recently seen go first).
MAX_SERIES = 512
MAX_GATE_MARKS = 512


class WindowUpdate:
    """What a detection is to its series (``kind``), and the key of its window (built when first read)."""

    # Built for every detection; the key is read only by the stages that count this window.
    __slots__ = ("_key", "detection", "kind", "series")

    def __init__(self, kind: Kind, detection: Detection, series: str | None = None) -> None:
        self.kind: Kind = kind
        self.detection = detection
        self.series = series
        self._key: str | None = None

    @property
    def key(self) -> str:
        """The window's key (:func:`window_key`)."""
        if self._key is None:
            self._key = window_key(self.detection, self.series)
        return self._key


#: Config digests by the config's repr: one detector's configs repeat in every window.
_DIGESTS: dict[str, str] = {}
_MAX_DIGESTS = 4096


def series_key(detection: Detection) -> str:
    """One detector with one config on one segment: ``segment|detector|config digest``."""
    config = detection.config
    seen = repr(config)
    digest = _DIGESTS.get(seen)
    if digest is None:
        # Sorted: the same config with its keys in another order is the same series.
        canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
        digest = hashlib.blake2b(canonical.encode(), digest_size=6).hexdigest()
        if len(_DIGESTS) >= _MAX_DIGESTS:
            _DIGESTS.clear()
        _DIGESTS[seen] = digest
    return f"{detection.segment.key()}|{detection.detector_id}|{digest}"


def window_key(detection: Detection, series: str | None = None) -> str:
    """The identity of a detection's window: its series and bounds (every revision shares it)."""
    return (
        f"{series or series_key(detection)}|{detection.window_start.isoformat()}"
        f"|{detection.window_end.isoformat()}"
    )


def same_window(a: Detection, b: Detection) -> bool:
    """Are two detections verdicts on the same window of the same series?"""
    return (
        a.window_start == b.window_start
        and a.window_end == b.window_end
        and a.detector_id == b.detector_id
        and a.segment == b.segment
        and a.config == b.config
    )


class GateMark(BaseModel):
    """An alert's counters from before the window it counted last, to undo that window on a revision."""

    model_config = ConfigDict(extra="forbid")

    window: str = Field(description="The window key counted last")
    breaches: int = 0
    clears: int = 0
    firing: bool = Field(False, description="Was the alert firing before that window?")
    starts_at: datetime | None = Field(None, description="The alert's start before that window (None: none)")


class WindowLedger(State):
    """The latest window counted per series (start, end), and per alert the counters before its last."""

    series: dict[str, tuple[datetime, datetime]] = Field(default_factory=dict)
    gates: dict[str, GateMark] = Field(default_factory=dict)

    def classify(self, detection: Detection) -> WindowUpdate:
        """New window, the latest one again, or an older one; a new latest window is remembered."""
        series = series_key(detection)
        latest = self.series.get(series)
        start, end = detection.window_start, detection.window_end
        if latest is not None and latest[0] == start and latest[1] == end:
            return WindowUpdate("latest", detection, series)
        if latest is not None and detection.revision > 0 and start <= latest[0]:
            return WindowUpdate("older", detection, series)
        if latest is None or start >= latest[0]:
            # Least recently seen first: re-inserting moves a series to the end.
            self.series.pop(series, None)
            self.series[series] = (start, end)
            if len(self.series) > MAX_SERIES:
                del self.series[next(iter(self.series))]
        return WindowUpdate("new", detection, series)

    def mark_gate(self, fingerprint: str, mark: GateMark) -> None:
        """Remember an alert's counters before the window it is counting now."""
        self.gates.pop(fingerprint, None)
        self.gates[fingerprint] = mark
        if len(self.gates) > MAX_GATE_MARKS:
            del self.gates[next(iter(self.gates))]
