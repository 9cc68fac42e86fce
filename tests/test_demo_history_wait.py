"""The demo stops its worker only once the history holds what its summary reports (a real Delta root)."""

from __future__ import annotations

from pathlib import Path

from curation.history import action_row, alert_row, detection_row
from curation.history_store import HistoryStore
from services.demo.observe import Loop, history_behind, wait_for_history
from tests.test_history import T0, action, alert, batch, detection, letter


def test_the_history_is_behind_until_it_holds_every_row_the_run_saw_once(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    firing, resolved = alert(), alert("resolved")
    # A record read twice from its topic is one row of the history.
    loop = Loop(
        detections=[detection(1), detection(1)],
        alerts=[(1.0, firing), (2.0, resolved), (3.0, resolved)],
        actions=[(1.0, action())],
    )
    root = str(tmp_path)
    assert history_behind(root, loop, 0) == {"detections": (0, 1), "alerts": (0, 2), "actions": (0, 1)}
    store.write(
        batch(
            detections=[detection_row(detection(1))],
            alerts=[alert_row(firing)],
            actions=[action_row(action(), "rb")],
        ),
        now=T0,
    )
    # The resolve the demo saw last is not written yet: stopping the worker now would lose it.
    assert wait_for_history(root, loop, 0, timeout=0) == {"alerts": (1, 2)}
    store.write(batch(alerts=[alert_row(resolved)]), now=T0)
    assert wait_for_history(root, loop, 0, timeout=0) == {}
    # Dead letters are counted, as the console sums them.
    assert history_behind(root, loop, 2) == {"deadletters": (0, 2)}
    letters = batch()
    letters.letters["dead"] = [letter(0), letter(1)]
    store.write(letters, now=T0)
    assert history_behind(root, loop, 2) == {}
