"""The Overview's stable and canary labels from the windows' references (trial 12j).

A version marked stable with ``loopwatch model mark-stable`` (the control topic) is neither in
``LOOPWATCH_STABLE_VERSIONS`` nor in a rollback, so a model that had no rollback showed no labels.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from services.console.stable_refs import stable_from_references


def _windows(rows: list[tuple[str, str, str | None]]) -> pa.Table:
    """Windows rows (model, window start minute, reference), as the history's windows table has them."""
    return pa.table(
        {
            "model": [m for m, _, _ in rows],
            "window_start": [datetime(2026, 12, 2, 6, int(minute), tzinfo=UTC) for _, minute, _ in rows],
            "reference": [r for _, _, r in rows],
        }
    )


def test_the_newest_canary_reference_names_each_models_stable_version() -> None:
    windows = _windows(
        [
            ("oasst-helper", "1", "stable:feedback|oasst-helper|h1||||@1:2026-12-02T06:01:20+00:00"),
            ("oasst-helper", "2", None),  # the stable version's own window: compared with nothing
            ("oasst-helper", "3", "stable:inference|oasst-helper|h2||||@1:2026-12-02T06:03:20+00:00/r1"),
            ("helper-b", "1", "pinned:inference|helper-b|b1||||"),  # its own first windows: no stable
        ]
    )
    assert stable_from_references(windows) == {"oasst-helper": "h2"}


def test_a_history_without_references_gives_no_labels() -> None:
    assert (
        stable_from_references(
            pa.table({"model": ["m"], "window_start": [datetime(2026, 12, 2, tzinfo=UTC)]})
        )
        == {}
    )
