"""Which clock an alert row's time is on follows why it resolved, not how close two times are (trial 12h)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.console.views import _clock_of

ENDS = datetime(2026, 12, 2, 3, 33, 20, tzinfo=UTC)


def _row(resolved_by: str | None, decided_after: float) -> dict[str, object]:
    return {
        "status": "resolved",
        "ends_at": ENDS,
        "decided_at": ENDS + timedelta(seconds=decided_after),
        "resolved_by": resolved_by,
    }


def test_a_rollback_resolve_of_live_traffic_is_on_window_time_though_decided_a_second_later() -> None:
    assert _clock_of(_row("rollback lw-rollback-1 verified: t1 serves and is better", 1.0)) == "window time"


def test_the_resolve_timeout_is_on_the_wall_clock() -> None:
    assert _clock_of(_row("no detection for 0:30:00", 0.0)) == "wall clock"


def test_a_history_without_resolved_by_keeps_the_old_rule() -> None:
    assert _clock_of(_row(None, 1.0)) == "wall clock"
    assert _clock_of(_row(None, 60.0)) == "window time"
