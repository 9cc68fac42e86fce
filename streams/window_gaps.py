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
    """When each stream's closing passed its window ids, for ``horizon`` seconds of wall time."""

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        #: Per stream: (the highest window id closed, the wall time it closed), oldest first.
        self.closings: dict[Stream, list[tuple[int, float]]] = {}
        #: Per stream: windows up to this id were passed longer ago than the horizon.
        self.settled: dict[Stream, int] = {}
        #: Per stream: the windows that closed within the horizon, and when.
        self.shut: dict[Stream, dict[int, float]] = {}

    def closed(self, stream: Stream, window_id: int, now: float) -> None:
        """A window of the stream closed at ``now``: it and every earlier one are passed."""
        if self.horizon <= 0:
            return
        self.shut.setdefault(stream, {})[window_id] = now
        closings = self.closings.setdefault(stream, [])
        if not closings or window_id > closings[-1][0]:
            closings.append((window_id, now))

    def opens(self, stream: Stream, window_id: int) -> bool:
        """Whether a late partial for ``window_id`` (not open, not kept closed) opens it."""
        settled = self.settled.get(stream)
        if (settled is not None and window_id <= settled) or window_id in self.shut.get(stream, {}):
            return False  # a window that closed is revised while it is kept, else late: never reopened
        return any(upto >= window_id for upto, _ in self.closings.get(stream, ()))

    def expire(self, now: float) -> None:
        """Forget closings older than the horizon: the windows they passed are late for good."""
        for stream, closings in self.closings.items():
            while closings and now - closings[0][1] >= self.horizon:
                self.settled[stream] = closings.pop(0)[0]
        for shut in self.shut.values():
            # Each expires after the closing that passed it: by then it is settled.
            for window_id in [w for w, at in shut.items() if now - at >= self.horizon]:
                del shut[window_id]

    def forget(self, stream: Stream) -> None:
        """The stream is judged by another worker now."""
        self.closings.pop(stream, None)
        self.settled.pop(stream, None)
        self.shut.pop(stream, None)

    def to_json(self, stream: Stream) -> dict[str, Any]:
        """What to keep in the windows table for ``stream`` (see :meth:`restore`)."""
        shut = [[window_id, at] for window_id, at in self.shut.get(stream, {}).items()]
        return {"closings": self.closings.get(stream, []), "settled": self.settled.get(stream), "shut": shut}

    def restore(self, stream: Stream, data: dict[str, Any]) -> None:
        """Inverse of :meth:`to_json` (after a restart or on a new owner)."""
        self.closings[stream] = [(int(upto), float(at)) for upto, at in data.get("closings", [])]
        if data.get("settled") is not None:
            self.settled[stream] = int(data["settled"])
        self.shut[stream] = {int(window_id): float(at) for window_id, at in data.get("shut", [])}
