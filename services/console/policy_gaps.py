"""What the policy does not ask for, or names without effect, over the range's detections.

Trial 12h: a canary's bad replies drifted on five windows and were rolled back, no retrain was
requested, and the Incidents page listed only the rules the policy has: that the built-in policy asks
for no retrain on bad replies (the demo's does) was in the README only. The row is derived from the
policy's rules and the range's detections, for any policy.

Trial 12o: drift on a detector no rule watches raised no alert and nothing said why; and a rule's
row named a detector pattern that matched no detection (the detector did not run there) as if it had
judged windows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase

import pyarrow as pa
import pyarrow.compute as pc

from retrain_trigger.policy import Policy, Rule
from retrain_trigger.route import segment_matches
from services.console.incidents import breached_by, count_of
from services.console.policy_gates import segment_of

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
    they, them = ("they", "them") if len(left) > 1 else ("it", "it")
    said = (
        f"no rule of policy {policy.name} asks for a retrain on {', '.join(left)}, though {they} drifted on"
        f" {count_of(windows, 'window')} of {', '.join(versions)} in this range: only"
        f" {', '.join(acting)} (rollback) acts on {them}. To retrain on {them} too, add a rule with"
        f" action: retrain that matches {them}"
    )
    if not any(r.name == DEMO_RETRAIN_RULE for r in policy.rules):
        said += f", as the demo's policy does ({DEMO_RETRAIN_RULE}; see the README's Decide and act)"
    return said


def _drifted(day: pa.Table) -> pa.Table:
    """A day's drift rows, with plain string columns (a kept day's are dictionary-encoded)."""
    columns = ["detector_id", "verdict", "segment", "window_start", "model", "model_version"]
    plain = pa.table({c: pc.cast(day[c], pa.string()) if c != "window_start" else day[c] for c in columns})
    return plain.filter(pc.fill_null(pc.equal(plain["verdict"], _DRIFT), False))


def ran_by(rule: Rule, days: Sequence[pa.Table]) -> tuple[list[str], list[str]]:
    """The detectors the rule's patterns matched in ``days``, and its patterns that matched none."""
    ids: set[str] = set()
    for day in days:
        if day.num_rows:
            ids.update(str(d) for d in pc.unique(pc.cast(day["detector_id"], pa.string())).to_pylist())
    ran = sorted(d for d in ids if rule.match.matches_detector(d))
    return ran, [p for p in rule.match.detectors if not any(fnmatchcase(d, p) for d in ran)]


def detectors_said(rule: Rule, days: Sequence[pa.Table]) -> str:
    """The rule's patterns that matched a detection, and those that matched none said apart.

    ``quality.negative_feedback.v1, toxicity.profanity.v1 (toxicity.detoxify.v1: no detection in the
    range)``: a pattern of a detector that does not run is not named as if it had judged windows.
    """
    unmatched = ran_by(rule, days)[1]
    said = ", ".join(p for p in rule.match.detectors if p not in unmatched)
    return said + (f" ({', '.join(unmatched)}: no detection in the range)" if unmatched else "")


def unwatched_drift(
    policy: Policy, matched: Sequence[pa.Table], others: Sequence[pa.Table]
) -> pa.Table | None:
    """The range's drift rows no rule watches: of detectors no rule matches (``others``), or of a
    segment that no rule matching the detector covers; None when every drift is watched.

    ``matched``: the days of the rules' detectors (latest revisions); ``others``: the days' drift of
    the other detectors, both as :mod:`services.console.policy_explain` keeps them.
    """
    columns = ["segment", "detector_id", "window_start", "model", "model_version"]
    parts = [_plain(t.select(columns)) for t in others if t.num_rows]
    for day in (d for d in matched if d.num_rows):
        drift = _plain(day.filter(pc.fill_null(pc.equal(day["verdict"], _DRIFT), False)).select(columns))
        if not drift.num_rows:
            continue
        pairs = drift.group_by(["segment", "detector_id"], use_threads=False).aggregate([]).to_pylist()
        lone = [p for p in pairs if not _watched(policy, p["segment"], p["detector_id"])]
        for pair in lone:
            mask = pc.and_(
                pc.equal(drift["segment"], pair["segment"]),
                pc.equal(drift["detector_id"], pair["detector_id"]),
            )
            parts.append(drift.filter(mask))
    return pa.concat_tables(parts) if parts else None


def _watched(policy: Policy, segment: str, detector_id: str) -> bool:
    where = segment_of(segment)
    return any(r.match.matches_detector(detector_id) and segment_matches(r, where) for r in policy.rules)


def _plain(table: pa.Table) -> pa.Table:
    """String columns (a kept day's are dictionary-encoded), so days concatenate."""
    return pa.table(
        {c: pc.cast(table[c], pa.string()) if c != "window_start" else table[c] for c in table.column_names}
    )


def unwatched_said(
    policy: Policy,
    unwatched: pa.Table,
    matched: Sequence[pa.Table],
    states: Mapping[str, str],
    named: Callable[[Mapping[str, set[str]]], Mapping[str, str]],
) -> str:
    """One line: which detectors drifted where no rule watches them, and which rules looked at those
    segments (``states``: each reported rule's state; its row says why)."""
    segments = set(pc.unique(unwatched["segment"]).to_pylist())
    looked = []
    for rule in policy.rules:
        for day in (d for d in matched if d.num_rows):
            rows = day.filter(pc.is_in(pc.cast(day["segment"], pa.string()), pa.array(sorted(segments))))
            ids = {str(d) for d in pc.unique(pc.cast(rows["detector_id"], pa.string())).to_pylist()}
            keys = {str(k) for k in pc.unique(pc.cast(rows["segment"], pa.string())).to_pylist()}
            if any(rule.match.matches_detector(d) for d in ids) and any(
                segment_matches(rule, segment_of(k)) for k in keys
            ):
                looked.append(f"{rule.name} ({states.get(rule.name, 'not fired')})")
                break
    detectors = sorted(set(pc.unique(unwatched["detector_id"]).to_pylist()))
    it = "it" if len(detectors) == 1 else "them"
    said = (
        f"{breached_by([unwatched], named)} drifted, and no rule of policy {policy.name} watches {it}"
        " there: no alert or action can follow from it."
    )
    if looked:
        where = ", ".join(sorted(named({s: set() for s in segments}).values()))
        said += f" The rules that did look at {where}: {', '.join(looked)}; their rows say why."
    return said + f" To be paged on {', '.join(detectors)}, add a rule whose match names {it}."
