"""Each Incidents row names the clock of its time (issue 12's second trial: one column held two clocks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.console.views import _clock_of

WINDOW_END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_a_resolve_by_timeout_is_on_the_wall_clock_and_a_resolve_by_a_window_on_window_time() -> None:
    replayed = WINDOW_END + timedelta(minutes=10)  # backdated traffic: decided long after the window
    by_window = {"status": "resolved", "ends_at": WINDOW_END, "decided_at": replayed}
    by_timeout = {"status": "resolved", "ends_at": replayed, "decided_at": replayed + timedelta(seconds=0.3)}
    firing = {"status": "firing", "ends_at": None, "decided_at": replayed}
    clocks = [_clock_of(r) for r in (by_window, by_timeout, firing)]
    assert clocks == ["window time", "wall clock", "window time"]
