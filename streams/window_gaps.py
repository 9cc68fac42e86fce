"""Windows that closed without ever opening: a late partial for one is judged, not lost.

A time window of a stream (segment, kind) is closed once a later window of
the stream has closed: its partials are late from then on. A window that had
no partial by then never opened (its feedback all came late, say), so there is
no closed window for a late partial to revise. :class:`Gaps` remembers when
the stream's closing passed each window id, for the revision horizon: within
it a late partial for a window that never opened opens it, and it is judged
as any window is (its first verdict, revision 0); beyond it the partial is
only counted late, as for a window that closed and expired. A window that
did close never opens again (:meth:`Gaps.opens`), whatever else was lost.

>>> gaps = Gaps(horizon=300.0)
>>> gaps.closed(("chat", "feedback"), 5, now=0.0)  # window 5 closed: 4 and earlier are passed too
>>> [gaps.opens(("chat", "feedback"), w) for w in (4, 5, 6)]
[True, False, False]
>>> gaps.expire(now=300.0)
>>> gaps.opens(("chat", "feedback"), 4)
False
"""

from __future__ import annotations

from typing import Any

#: A stream of windows: (segment key, kind).
Stream = tuple[str, str]


class Gaps:
    """The windows each stream closed within ``horizon`` seconds of wall time: what its closing passed."""

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        #: Per stream: the windows that closed within the horizon, and when. Every window
        #: before one of them is passed (a window never opened is passed when a later one closes).
        self.shut: dict[Stream, dict[int, float]] = {}
        #: Per stream: windows up to this id were passed longer ago than the horizon.
        self.settled: dict[Stream, int] = {}

    def closed(self, stream: Stream, window_id: int, now: float) -> None:
        """A window of the stream closed at ``now``: it and every earlier one are passed."""
        if self.horizon > 0:
            self.shut.setdefault(stream, {})[window_id] = now

    def opens(self, stream: Stream, window_id: int) -> bool:
        """Whether a late partial for ``window_id`` (not open, not kept closed) opens it."""
        settled = self.settled.get(stream)
        shut = self.shut.get(stream, {})
        if (settled is not None and window_id <= settled) or window_id in shut:
            return False  # a window that closed is revised while it is kept, else late: never reopened
        return any(closed >= window_id for closed in shut)

    def expire(self, now: float) -> None:
        """Forget closings older than the horizon: the windows they passed are late for good."""
        for stream, shut in self.shut.items():
            old = [window_id for window_id, at in shut.items() if now - at >= self.horizon]
            for window_id in old:
                del shut[window_id]
            if old:
                self.settled[stream] = max(self.settled.get(stream, max(old)), max(old))

    def forget(self, stream: Stream) -> None:
        """The stream is judged by another worker now."""
        self.shut.pop(stream, None)
        self.settled.pop(stream, None)

    def to_json(self, stream: Stream) -> dict[str, Any]:
        """What to keep in the windows table for ``stream`` (see :meth:`restore`)."""
        shut = [[window_id, at] for window_id, at in self.shut.get(stream, {}).items()]
        return {"settled": self.settled.get(stream), "shut": shut}

    def restore(self, stream: Stream, data: dict[str, Any]) -> None:
        """Inverse of :meth:`to_json` (after a restart or on a new owner)."""
        if data.get("settled") is not None:
            self.settled[stream] = int(data["settled"])
        self.shut[stream] = {int(window_id): float(at) for window_id, at in data.get("shut", [])}
