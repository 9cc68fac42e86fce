"""What the policy does not ask for: detections its rollback rules act on that no retrain rule matches.

Trial 12h: a canary's bad replies drifted on five windows and were rolled back, no retrain was
requested, and the Incidents page listed only the rules the policy has: that the built-in policy asks
for no retrain on bad replies (the demo's does) was in the README only. The row is derived from the
policy's rules and the range's detections, for any policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from retrain_trigger.policy import Policy
from services.console.incidents import count_of

#: The rule `loopwatch demo` adds to the built-in policy (services/demo/scenario.py) to retrain.
DEMO_RETRAIN_RULE = "retrain-on-rejected-replies"
_DRIFT = "drift"


def no_retrain(policy: Policy, days: Sequence[pa.Table]) -> str | None:
    """One line when the range's detections that the policy's rollback rules act on drifted while no
    retrain rule of it matches their detectors; None when there is none (or every one is matched).

    ``days``: the range's detections of the rules' detectors (latest revisions), as the report reads them.
    """
    retrain = [r for r in policy.rules if r.action == "retrain"]
    rollback = [r for r in policy.rules if r.action == "rollback"]
    drifted = [t for t in (_drifted(day) for day in days if day.num_rows) if t.num_rows]
    if not rollback or not drifted:
        return None
    rows = pa.concat_tables(drifted)
    ids = sorted(str(d) for d in pc.unique(rows["detector_id"]).to_pylist())
    left = [
        d
        for d in ids
        if not any(r.match.matches_detector(d) for r in retrain)
        and any(r.match.matches_detector(d) for r in rollback)
    ]
    if not left:
        return None
    mine = rows.filter(pc.is_in(rows["detector_id"], pa.array(left, pa.string())))
    windows = mine.group_by(["segment", "window_start"], use_threads=False).aggregate([]).num_rows
    versions = sorted(
        {f"{r['model']}/{r['model_version']}" for r in mine.select(["model", "model_version"]).to_pylist()}
    )
    acting = sorted({r.name for r in rollback if any(r.match.matches_detector(d) for d in left)})
    said = (
        f"no rule of policy {policy.name} asks for a retrain on {', '.join(left)}, though they drifted on"
        f" {count_of(windows, 'window')} of {', '.join(versions)} in this range: only"
        f" {', '.join(acting)} (rollback) acts on them. To retrain on them too, add a rule with"
        " action: retrain that matches them"
    )
    if not any(r.name == DEMO_RETRAIN_RULE for r in policy.rules):
        said += f", as the demo's policy does ({DEMO_RETRAIN_RULE}; see the README's Decide and act)"
    return said


def _drifted(day: pa.Table) -> pa.Table:
    """A day's drift rows, with plain string columns (a kept day's are dictionary-encoded)."""
    columns = ["detector_id", "verdict", "segment", "window_start", "model", "model_version"]
    plain = pa.table({c: pc.cast(day[c], pa.string()) if c != "window_start" else day[c] for c in columns})
    return plain.filter(pc.fill_null(pc.equal(plain["verdict"], _DRIFT), False))
