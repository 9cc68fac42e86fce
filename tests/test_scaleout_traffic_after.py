"""A second replay on the same topics starts after the first one's events (windows bench: hog 0.909)."""

from __future__ import annotations

from pathlib import Path

from tests.scaleout_traffic import WINDOW_SECONDS, build


def test_traffic_built_after_an_earlier_replay_starts_a_window_past_its_last_event(data_dir: Path) -> None:
    first = build(data_dir, inference=400, feedback=100, windows=2, seed=3)
    last = max(message.at for message in first.messages)
    second = build(data_dir, inference=400, feedback=100, windows=2, seed=4, model="other", after=last)
    # Every input partition's watermark is at the first replay's last event: any event of the
    # second one before it (plus the lateness) was late on arrival and its window closed early.
    assert min(message.at for message in second.messages) >= last + WINDOW_SECONDS
    assert second.start % WINDOW_SECONDS == 0 and second.truth.first_window == second.start // WINDOW_SECONDS
