"""What the policy's rules did in the range the Incidents page shows, and why not.

For each rule of the policy that asks for a retrain or a rollback, and each
alert-only rule that saw drift (or looked at a segment that drifted where no
rule watches): whether it fired and what it requested or, if not, why, as far
as the history's detections and alerts show it (the gates as
:mod:`services.console.policy_gates` judges and counts them, column-wise). Muted
alerts are not written to the history: an inhibit or silence is named only as
what the policy says of gates that were met while its source fired.

Trial 12o: v2 drifted on latency and empty replies, which only the alert rule
serving-errors watches, held back by its min_samples; the page listed only the
retrain and rollback rules, so nothing said why no alert fired.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from retrain_trigger.actions import EVENT_TYPES
from retrain_trigger.alerts import alert_labels
from retrain_trigger.inhibit import labels_match
from retrain_trigger.policy import SEGMENT_FIELDS, Policy, Rule
from retrain_trigger.silence import parse_matcher
from services.console.incidents import breached_by, count_of, hms
from services.console.overview_judged import judged_none_said
from services.console.policy_gaps import (
    detectors_said,
    no_retrain,
    ran_by,
    unwatched_drift,
    unwatched_said,
)
from services.console.policy_gates import (
    breach_runs,
    gate_outcomes,
    parsed_p,
    segment_mask,
    segment_of,
    unmet_gates,
)

if TYPE_CHECKING:
    from services.console.reader import HistoryReader
    from services.console.views import ActionRow, AlertRow, DayRange, SilenceRow

_DETECTION_COLUMNS = [
    *SEGMENT_FIELDS,
    "segment",
    "window_start",
    "window_end",
    "detector_id",
    "config_id",
    "verdict",
    "current_size",
    "effect_size",
    "p_value",
    "measurements",
    "revision",
    "p_value_adjusted",
    "judged",
    "samples",
]
#: Says the detectors of segments that judged none of their windows, with their pooled numbers:
#: :func:`services.console.overview_judged.judged_none_said` on the range's days.
NoneJudgedSaid = Callable[[Mapping[str, set[str]], Mapping[str, str]], list[str]]


RuleState = Literal["fired", "fired, no request", "not fired"]


class RuleReport(BaseModel):
    """One rule of the policy: did it fire in the range, and if not, why."""

    rule: str
    action: Literal["retrain", "rollback", "alert"]
    detectors: list[str] = Field(description="The detector patterns it matches")
    ran: list[str] = Field(
        default_factory=list, description="The detectors its patterns matched in the range's detections"
    )
    unmatched: list[str] = Field(
        default_factory=list,
        description="Its patterns that matched no detection in the range (the detector did not run)",
    )
    state: RuleState
    models: list[str] = Field(default_factory=list, description="Models it fired for")
    requests: list[str] = Field(
        default_factory=list, description="CloudEvent ids of its requests in the range"
    )
    why: str = Field(description="What the history shows, in one line")


class PolicyReport(BaseModel):
    """Which policy the explanation is about, and its retrain and rollback rules over the range."""

    name: str
    file: str | None = Field(None, description="The policy file (None: the built-in default policy)")
    mode: str
    decided_under: list[str] = Field(
        default_factory=list, description="Policy names the range's actions were published under"
    )
    rules: list[RuleReport] = Field(
        default_factory=list,
        description="Its retrain and rollback rules, then the alert rules that saw drift or looked at a"
        " segment that drifted where no rule watches",
    )
    no_retrain: str | None = Field(
        None,
        description="Detectors its rollback rules act on that drifted in the range and that no retrain"
        " rule matches: no retrain is asked for on them, in one line (null: none)",
    )
    unwatched: str | None = Field(
        None,
        description="Detectors that drifted in the range where no rule of the policy watches them (no"
        " alert can follow), and the rules that looked at those segments, in one line (null: none)",
    )


def policy_report(
    history: HistoryReader,
    span: DayRange,
    policy: Policy,
    policy_file: str | None,
    alerts: Sequence[AlertRow],
    actions: Sequence[ActionRow],
    silences: Sequence[SilenceRow],
) -> PolicyReport:
    """Each retrain and rollback rule of ``policy``, and each alert rule that saw drift: fired in the
    range (with its requests), or why not; and the drift no rule watches."""
    report = PolicyReport(
        name=policy.name,
        file=policy_file,
        mode=policy.mode,
        decided_under=sorted({a.policy for a in actions if a.policy}),
    )
    if not policy.rules:
        return report
    detections, others = _matching_days(history, span, policy.rules)
    unwatched = unwatched_drift(policy, detections, others)
    looked = {s for s in pc.unique(unwatched["segment"]).to_pylist()} if unwatched is not None else set()
    said = functools.partial(judged_none_said, history, span.days())
    for rule in policy.rules:
        if rule.action == "alert" and not _saw(rule, detections, alerts, looked):
            continue
        report.rules.append(_rule_report(rule, policy, detections, alerts, actions, silences, said))
    report.rules.sort(key=lambda r: r.action == "alert")  # as before: retrain and rollback rules first
    report.no_retrain = no_retrain(policy, detections)
    if unwatched is not None:
        states = {r.rule: r.state for r in report.rules}
        report.unwatched = unwatched_said(policy, unwatched, detections, states, _names)
    return report


def _saw(rule: Rule, days: Sequence[pa.Table], alerts: Sequence[AlertRow], looked: set[str]) -> bool:
    """Did an alert-only rule fire, see a verdict it counts, or look at a segment with unwatched drift?"""
    if any(a.labels.get("alertname") == rule.name for a in alerts):
        return True
    verdicts, segments = pa.array(list(rule.match.verdicts)), pa.array(sorted(looked), pa.string())
    for day in (d for d in (_rule_rows(rule, d) for d in days) if d.num_rows):
        if pc.any(pc.is_in(day["verdict"], verdicts)).as_py():
            return True
        if looked and pc.any(pc.is_in(pc.cast(day["segment"], pa.string()), segments)).as_py():
            return True
    return False


def _matching_days(
    history: HistoryReader, span: DayRange, rules: Sequence[Rule]
) -> tuple[list[pa.Table], list[pa.Table]]:
    """Per day of the range, oldest first, its detections of the detectors any of ``rules`` matches,
    and its drift of the detectors none matches (:func:`_unmatched_drift`).

    Each day's tables are read once per set of files (a past day's files do not change, so a page
    load reads only the days written since), keeping the latest revision of each window's verdict
    per detector config, sorted by alert (segment, detector) and window start: what
    :func:`~services.console.policy_gates.breach_runs` walks.
    """
    patterns = tuple(sorted({p for r in rules for p in (*r.match.detectors, *r.match.verdicts)}))
    days, others = [], []
    for day in span.days():
        key = (history.root, day, history.day_files("detections", day), patterns)
        with _KEPT_LOCK:
            kept = _KEPT.get(key)
        if kept is None:
            read = history.read("detections", [day], columns=_DETECTION_COLUMNS)
            kept = (_day_rows(read, rules), _unmatched_drift(read, rules))
            with _KEPT_LOCK:
                _KEPT[key] = kept
                while len(_KEPT) > _DAYS_KEPT:
                    _KEPT.popitem(last=False)
        days.append(kept[0])
        others.append(kept[1])
    return days, others


#: Days of matching detections kept: two weeks of one history (about 5 MB a day of 50 segments).
_DAYS_KEPT = 14
#: What a kept day holds (its p-values parsed, the measurements dropped).
_KEPT_COLUMNS = [
    *SEGMENT_FIELDS,
    "segment",
    "window_start",
    "window_end",
    "detector_id",
    "verdict",
    "current_size",
    "effect_size",
    "p",
    "alert",
    "judged",
    "samples",
]
_KEPT: OrderedDict[tuple[Any, ...], tuple[pa.Table, pa.Table]] = OrderedDict()
_KEPT_LOCK = threading.Lock()  # pages are served from a thread pool
#: The name tests/test_console_incidents.py imports the column-wise gates by (they live in policy_gates).
_outcomes = gate_outcomes


def _matched(table: pa.Table, rules: Sequence[Rule]) -> pa.Array:
    """Which rows' detectors a detector pattern of ``rules`` matches (asked once per distinct id)."""
    ids = pc.unique(table["detector_id"]).to_pylist()
    wanted = [d for d in ids if d and any(r.match.matches_detector(d) for r in rules)]
    return pc.is_in(table["detector_id"], pa.array(wanted, pa.string()))


def _latest(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows holding each window's latest revision per detector config, in (segment, detector,
    window) order, with their segment and detector codes."""
    seg, det, cfg = (_codes(table[c]) for c in ("segment", "detector_id", "config_id"))
    start = np.asarray(pc.cast(table["window_start"], pa.int64()).combine_chunks())
    revision = np.asarray(pc.fill_null(table["revision"], 0).combine_chunks())
    order = np.lexsort((revision, cfg, start, det, seg))
    keys = [k[order] for k in (seg, det, start, cfg)]
    last = np.ones(len(order), dtype=bool)  # the highest revision is the last of its window's rows
    last[:-1] = np.any([k[1:] != k[:-1] for k in keys], axis=0)
    kept = order[last]
    return kept, seg[kept], det[kept]


def _unmatched_drift(table: pa.Table, rules: Sequence[Rule]) -> pa.Table:
    """One day's drift (latest revisions) of the detectors no rule's patterns match, in plain strings."""
    table = table.filter(pc.invert(_matched(table, rules)))
    columns = ["segment", "detector_id", "window_start", "model", "model_version"]
    if table.num_rows:
        table = table.take(pa.array(_latest(table)[0]))
        table = table.filter(pc.fill_null(pc.equal(table["verdict"], "drift"), False))
    return table.select(columns)


def _day_rows(table: pa.Table, rules: Sequence[Rule]) -> pa.Table:
    """One day's detections of the rules' detectors: latest revisions only, in alert and window order."""
    table = table.filter(_matched(table, rules))
    if table.num_rows == 0:
        return table
    kept, seg, det = _latest(table)
    # Each alert's number (segment, detector) within the day, so its runs need no string comparisons.
    new_alert = np.ones(len(kept), dtype=bool)
    new_alert[1:] = (seg[1:] != seg[:-1]) | (det[1:] != det[:-1])
    alert = pa.array(np.cumsum(new_alert) - 1)
    table = table.take(pa.array(kept)).combine_chunks().append_column("alert", alert)
    # The p-value of the rows that may breach (the rules' verdicts), parsed once a day, not on every page.
    verdicts = pa.array(sorted({v for r in rules for v in r.match.verdicts}))
    judged = np.flatnonzero(np.asarray(pc.is_in(table["verdict"], verdicts)))
    p = np.full(table.num_rows, np.nan)
    p[judged] = parsed_p(table.take(pa.array(judged, pa.int64())))
    table = table.append_column("p", pa.array(p))
    table = table.set_column(
        table.schema.get_field_index("judged"), "judged", pc.fill_null(table["judged"], True)
    )
    table = table.select(_KEPT_COLUMNS)
    # Dictionary-encoded (a few distinct values each): small to keep, and a rule picks its rows by lookup.
    for name in ("segment", "detector_id", "verdict", *SEGMENT_FIELDS):
        table = table.set_column(table.schema.get_field_index(name), name, pc.dictionary_encode(table[name]))
    return table


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Integer codes of a string column (equal strings, equal codes), for sorting and grouping in numpy."""
    encoded = pc.dictionary_encode(pc.fill_null(column, "")).combine_chunks()
    return np.asarray(encoded.indices)


def _rule_report(
    rule: Rule,
    policy: Policy,
    detections: Sequence[pa.Table],
    alerts: Sequence[AlertRow],
    actions: Sequence[ActionRow],
    silences: Sequence[SilenceRow],
    said: NoneJudgedSaid,
) -> RuleReport:
    action = rule.action
    ran, unmatched = ran_by(rule, detections)
    common = {
        "rule": rule.name,
        "action": action,
        "detectors": list(rule.match.detectors),
        "ran": ran,
        "unmatched": unmatched,
    }
    mine = [a for a in alerts if a.labels.get("alertname") == rule.name]
    fired = [a for a in mine if a.status == "firing"]
    if fired:
        models = sorted({a.model for a in fired if a.model})
        first = min((a.changed_at for a in fired if a.changed_at), default=None)
        since = f"firing since {hms(first)} (window time)" if first else "fired"
        if action == "alert":
            return RuleReport(
                **common, state="fired", models=models, why=f"{since}; it pages, asks no action"
            )
        requests = [a for a in actions if a.type == EVENT_TYPES[action] and a.rule == rule.name]
        # A request answers the alerts firing when it was made (one per incident, whatever its detectors).
        bare = [a for a in fired if not any(_while_firing(a, mine, r) for r in requests)]
        ids = [r.id for r in requests if any(_while_firing(a, mine, r) for a in fired)]
        if not bare:
            why = f"{since}; {action} requested: {', '.join(ids)}"
            return RuleReport(**common, state="fired", models=models, requests=ids, why=why)
        why = f"{since}, but no {action} request answers it: {_no_request(rule, policy, bare, actions)}"
        if ids:
            why += f" ({action} requested for its other alerts: {', '.join(ids)})"
        return RuleReport(**common, state="fired, no request", models=models, requests=ids, why=why)
    why = _not_fired(rule, policy, detections, alerts, silences, said)
    return RuleReport(**common, state="not fired", why=why)


def _while_firing(alert: AlertRow, mine: Sequence[AlertRow], request: ActionRow) -> bool:
    """Was ``request`` (same model) made while ``alert`` fired: at or after it fired, before it resolved?"""
    if request.model != alert.model or request.time is None or alert.changed_at is None:
        return False
    ended = [
        a.changed_at
        for a in mine
        if a.fingerprint == alert.fingerprint
        and a.status == "resolved"
        and a.changed_at is not None
        and a.changed_at >= alert.changed_at
    ]
    return alert.changed_at <= request.time and (not ended or request.time <= min(ended))


def _no_request(rule: Rule, policy: Policy, fired: Sequence[AlertRow], actions: Sequence[ActionRow]) -> str:
    """Why a fired alert published nothing, as far as the history shows it."""
    if policy.mode == "dry-run":
        return "the policy's mode is dry-run (decisions are logged, not published)"
    skipped = [
        a for a in actions if a.type.endswith(".rollback.skipped") and a.model in {f.model for f in fired}
    ]
    if rule.action == "rollback" and skipped:
        return f"rollback.skipped {skipped[0].id}: {skipped[0].reason or 'no version to go back to'}"
    cooldown = policy.cooldown_for(rule)
    for alert in fired:
        earlier = [
            a
            for a in actions
            if a.type == EVENT_TYPES[rule.action]
            and a.model == alert.model
            and a.time is not None
            and alert.changed_at is not None
            and a.time <= alert.changed_at < a.time + cooldown
        ]
        if earlier:
            return f"in cooldown ({cooldown}) after {rule.action} {earlier[-1].id} at {hms(earlier[-1].time)}"
    return "the history records no cooldown, dry-run or skip for it (the worker's log says why)"


def _not_fired(
    rule: Rule,
    policy: Policy,
    detections: Sequence[pa.Table],
    alerts: Sequence[AlertRow],
    silences: Sequence[SilenceRow],
    said: NoneJudgedSaid,
) -> str:
    """Why a rule raised no alert in the range: no detection, none past its gates, too few in a row, muted."""
    days = [d for d in (_rule_rows(rule, day) for day in detections) if d.num_rows]
    if not days:
        return f"no detection of {', '.join(rule.match.detectors)} in the range"
    patterns = detectors_said(rule, days)
    gates, verdicts = rule.gates, "/".join(rule.match.verdicts)
    wanted = pa.array(list(rule.match.verdicts))
    matching = pa.concat_tables([d.filter(pc.is_in(d["verdict"], wanted)) for d in days])
    if matching.num_rows == 0:
        largest = max(pc.max(d["current_size"]).as_py() or 0 for d in days)
        short = f"; and min_samples {gates.min_samples}: the largest window had {largest}"
        short = short if largest < gates.min_samples else ""
        none = _judged_none(days)
        unjudged = said(none, _names(none)) if none else []
        if unjudged:
            # Trial 12m: a canary's thumbs too few in every window read "16 windows judged, none drift".
            return "; ".join(unjudged) + f"; in all {_windows(days)} of {patterns}, none {verdicts}" + short
        return f"{_windows(days)} judged by {patterns}, none {verdicts}" + short
    outcomes = [gate_outcomes(rule, d) for d in days]
    breaches = sum(int((o > 0).sum()) for o in outcomes)
    if breaches == 0:
        head = f"{_distinct_windows([matching], verdicts + ' window')} of {patterns}, none met the gates: "
        return head + "; ".join(unmet_gates(rule, matching))
    longest, met = breach_runs(rule, days, outcomes)
    breaching = [d.filter(pa.array(o > 0)) for d, o in zip(days, outcomes, strict=True)]
    if met is None:
        none = _judged_none(days)
        unjudged = said(none, _names(none)) if none else []
        # Trial 12n: "1 breaching window of <four ids>" read as if all four breached; the canary's
        # feedback, judged in no window, was the real reason nothing rolled back: said after it.
        return (
            f"{_distinct_windows(breaching, 'breaching window')} ({breached_by(breaching, _names)}),"
            f" at most {longest} in a row: for_windows {gates.for_windows}"
            + (
                f" (none with p < immediate_p_value {gates.immediate_p_value:g})"
                if gates.immediate_p_value
                else ""
            )
            + _skipped(rule, days, outcomes)
            + "".join(f"; {clause}" for clause in unjudged)
        )
    return _muted(rule, policy, met, alerts, silences)


def _skipped(rule: Rule, days: Sequence[pa.Table], outcomes: Sequence[np.ndarray]) -> str:
    """``; min_samples 50 skipped 4 drift windows (at most 39 samples)``: windows of the rule's
    verdicts too small to count, which the run of breaches then lacked (empty when none)."""
    wanted = pa.array(list(rule.match.verdicts))
    small = [
        d.filter(pa.array((o == -1) & np.asarray(pc.is_in(d["verdict"], wanted))))
        for d, o in zip(days, outcomes, strict=True)
    ]
    small = [d for d in small if d.num_rows]
    if not small:
        return ""
    most = max(pc.max(d["current_size"]).as_py() or 0 for d in small)
    what = "/".join(rule.match.verdicts) + " window"
    skipped = _distinct_windows(small, what)
    return f"; min_samples {rule.gates.min_samples} skipped {skipped} (at most {most} samples)"


def _judged_none(days: Sequence[pa.Table]) -> dict[str, set[str]]:
    """Per segment: the rule's detectors that judged none of its windows though fed (samples in some).

    A window's verdict counts here as the history's ``judged`` says; a detector never fed (0 samples
    everywhere) is left out, as the Overview leaves it out.
    """
    rows = pa.concat_tables([d.select(["segment", "detector_id", "judged", "samples"]) for d in days])
    for name in ("segment", "detector_id"):
        rows = rows.set_column(rows.schema.get_field_index(name), name, pc.cast(rows[name], pa.string()))
    rows = rows.set_column(2, "judged", pc.cast(rows["judged"], pa.int8()))
    per = rows.group_by(["segment", "detector_id"], use_threads=False).aggregate(
        [("judged", "max"), ("samples", "max")]
    )
    out: dict[str, set[str]] = {}
    for row in per.to_pylist():
        if not row["judged_max"] and row["samples_max"]:
            out.setdefault(row["segment"], set()).add(row["detector_id"])
    return out


def _names(segments: Mapping[str, set[str]]) -> dict[str, str]:
    """How the page calls each segment: its version (``r3``), with its model and labels when needed."""
    parts = {key: key.split("|") for key in segments}  # model|version|app|route|tenant
    models = {p[0] for p in parts.values()}
    names = {}
    for key, (model, version, *labels) in parts.items():
        name = version if len(models) == 1 else f"{model}/{version}"
        twins = [k for k, p in parts.items() if p[:2] == [model, version]]
        shown = " · ".join(v for v in labels if v)
        names[key] = f"{name} ({shown})" if len(twins) > 1 and shown else name
    return names


def _rule_rows(rule: Rule, day: pa.Table) -> pa.Table:
    """A day's rows the rule matches (its detectors and segment patterns), in their order."""
    if day.num_rows == 0:
        return day
    ids = day["detector_id"].combine_chunks()
    chosen = np.array([rule.match.matches_detector(d) for d in ids.dictionary.to_pylist()], dtype=bool)
    rows = day if chosen.all() else day.filter(pa.array(chosen[np.asarray(ids.indices)]))
    return rows.filter(segment_mask(rows, rule)) if rule.match.segment and rows.num_rows else rows


def _windows(days: Sequence[pa.Table]) -> str:
    """``21 windows (64 detections)``: a window is judged by each detector that matches."""
    group = ["segment", "window_start"]
    n = sum(d.group_by(group, use_threads=False).aggregate([]).num_rows for d in days)
    return f"{count_of(n, 'window')} ({count_of(sum(d.num_rows for d in days), 'detection')})"


def _distinct_windows(days: Sequence[pa.Table], what: str) -> str:
    """``7 drift windows (11 detections)``: a window counts once however many of its detections match.

    Counting detections as windows said 11 drift windows of a canary with 7 (three configs judged some).
    """
    n = sum(d.group_by(["segment", "window_start"], use_threads=False).aggregate([]).num_rows for d in days)
    rows = sum(d.num_rows for d in days)
    return count_of(n, what) + (f" ({count_of(rows, 'detection')})" if rows != n else "")


def _muted(
    rule: Rule,
    policy: Policy,
    row: dict[str, Any],
    alerts: Sequence[AlertRow],
    silences: Sequence[SilenceRow],
) -> str:
    """Gates met but no alert: an inhibit source firing then, or a silence matching it, else unknown."""
    labels = alert_labels(rule, row["detector_id"], segment_of(row["segment"]))
    at = row["window_start"]
    met = f"its gates were met on {row['detector_id']} of {row['model']}/{row['model_version']} at {hms(at)}"
    for inhibit in policy.inhibit:
        if not labels_match(inhibit.target, labels):
            continue
        for source in _firing_at(alerts, at):
            if labels_match(inhibit.source, source.labels) and all(
                source.labels.get(n, "") == labels.get(n, "") for n in inhibit.equal
            ):
                rule_of = source.labels.get("alertname", source.fingerprint)
                return (
                    f"{met}, while {rule_of} fired for {source.model} (since {hms(source.changed_at)}):"
                    f" the inhibit rule {_inhibit_text(inhibit.source, inhibit.target, inhibit.equal)}"
                    " holds it"
                    " (muted alerts are not written to the history)"
                )
    for silence in silences:
        try:
            matchers = [parse_matcher(m) for m in silence.matchers.split(",") if m]
        except ValueError:
            continue
        if matchers and all(m.matches(labels) for m in matchers):
            return f"{met}; silence {silence.silence_id} ({silence.matchers}) matches it"
    return f"{met}, but no alert of it is in the history (the worker's log says why)"


def _firing_at(alerts: Sequence[AlertRow], at: datetime) -> list[AlertRow]:
    """The alerts firing at window time ``at``: their last transition by then is a firing one."""
    last: dict[str, AlertRow] = {}
    for alert in sorted(alerts, key=lambda a: (a.changed_at or at, a.status == "resolved")):
        if alert.changed_at is not None and alert.changed_at <= at:
            last[alert.fingerprint] = alert
    return [a for a in last.values() if a.status == "firing"]


def _inhibit_text(source: dict[str, str], target: dict[str, str], equal: list[str]) -> str:
    def labels(d: dict[str, str]) -> str:
        return ",".join(f"{k}={v}" for k, v in d.items())

    return f"({labels(source)} mutes {labels(target)}" + (f", equal {','.join(equal)})" if equal else ")")
