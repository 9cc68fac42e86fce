"""What each console page shows, as typed models built from the history tables (no web code here).

Each ``*_view`` function reads only the days (and model) its page shows and
returns one pydantic model; the JSON API returns it as it is, the HTML page
renders it, and the page's charts fetch it again from the API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from retrain_trigger.policy import Policy
from services.console.incidents import (
    CountedWindows,
    RollbackAfter,
    RollbackState,
    after_rollback,
    counted_windows,
    rollback_states,
)
from services.console.overview_judged import (
    BUILT_IN_KINDS,
    DETAIL_COLUMNS,
    JudgedScope,
    judged_per_segment,
    judged_scope,
    unjudged_rows,
)
from services.console.overview_verdicts import WindowShown as WindowShown  # re-exported: the Segment page's
from services.console.overview_verdicts import (
    last_judged,
    last_outcomes,
    segment_verdicts,
    worst_named,
)
from services.console.overview_verdicts import latest_revision_rows as latest_revision_rows  # re-exported
from services.console.policy_explain import PolicyReport, policy_report
from services.console.reader import ConsoleError, HistoryReader, day_range
from services.console.series import MEASURED, SLOW_SKIPPED, Verdict, slow_never_judged
from services.console.series import is_rate as is_rate  # re-exported: the Segment page and tests use it
from services.console.slow_reach import slow_reach
from services.console.stable_refs import stable_from_references

_RANK = {"ok": 0, "warning": 1, "drift": 2}
ROLLBACK_REQUESTED = "io.loopwatch.rollback.requested"
_SEGMENT_COLUMNS = ["segment", "model", "model_version", "app", "route", "tenant"]
_OVERVIEW_WINDOW_COLUMNS = [*_SEGMENT_COLUMNS, "window_start", "window_end", "events", "outcome", "reference"]
_OVERVIEW_WINDOW_COLUMNS += ["kind"]  # the slow detectors' windows skipped, per the kind each reads
_OVERVIEW_DETECTION_COLUMNS = ["segment", "window_start", "verdict", "judged", "samples", "min_samples"]
_OVERVIEW_DETECTION_COLUMNS += [*MEASURED, "detection_id"]
# With the columns the not-judged detectors' numbers and the pooled rates read: one scan for both.
_OVERVIEW_DETECTION_COLUMNS += [c for c in DETAIL_COLUMNS if c not in _OVERVIEW_DETECTION_COLUMNS]


class DayRange(BaseModel):
    """The days a page shows, and the days the history holds."""

    start: date
    end: date
    first_day: date | None = Field(None, description="The oldest day in the history")
    last_day: date | None = Field(None, description="The newest day in the history")

    def days(self) -> list[date]:
        """Every day of the range, oldest first."""
        return day_range(self.end, (self.end - self.start).days + 1)


class SegmentRow(JudgedScope):
    """One segment (model version and labels) on the Overview (what judged its verdicts: JudgedScope)."""

    segment: str
    model: str
    model_version: str
    app: str | None = None
    route: str | None = None
    tenant: str | None = None
    labels: str = Field(description="app · route · tenant, the traffic the segment is")
    role: Literal["stable", "canary"] | None = Field(None, description="Stable (rollback target) or not")
    windows: int
    events: int
    last_window_start: datetime | None = None
    last_window_end: datetime | None = None
    last_verdict: WindowShown | None = Field(
        None, description="Worst verdict of the last window, or why it has none (not judged, reference)"
    )
    last_note: str | None = Field(None, description="What the page says of it: not judged (24 < 30 samples)")
    last_judged_verdict: Verdict | None = Field(
        None, description="When the last window has no verdict: the worst verdict of the newest judged window"
    )
    last_judged_start: datetime | None = Field(None, description="That judged window's start")
    worst_verdict: Verdict | None = Field(None, description="Worst verdict over the range (judged windows)")
    drift_windows: int = 0
    warning_windows: int = 0
    not_judged_windows: int = Field(0, description="Windows no detector judged (each had too few samples)")
    never_judged: list[str] = Field(default_factory=list, description="Slow detectors that judged no window")
    open_alerts: int = 0
    rollback: RollbackState | None = Field(None, description="Its latest rollback request and how it went")


class ModelRow(BaseModel):
    """A model and its versions side by side (stable first)."""

    model: str
    versions: list[SegmentRow]


class AlertRow(BaseModel):
    """One alert transition (firing or resolved)."""

    fingerprint: str
    status: str
    severity: str | None = None
    summary: str | None = None
    model: str | None = None
    model_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    detections: list[str] = Field(default_factory=list)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    changed_at: datetime | None = Field(
        None, description="starts_at (firing) or ends_at (resolved): see changed_at_is"
    )
    changed_at_is: str = Field(
        "window start",
        description="What changed_at is: the start of the first breaching window (firing); for a resolved"
        " alert its ends_at, the end of the window that cleared it or the decision time after the"
        " resolve timeout",
    )
    window_start: datetime | None = Field(None, description="Start of the first window behind the alert")
    window_end: datetime | None = Field(None, description="End of the last window behind the alert")
    decided_at: datetime | None = Field(None, description="When loopwatch published this transition")
    #: The clock of changed_at: wall clock for a resolve decided within 2 s of its ends_at (the timeout).
    changed_clock: Literal["window time", "wall clock"] = "window time"
    runbook_url: str | None = None
    resolved_by: str | None = Field(None, description="Why it resolved (histories written before: null)")


class Overview(BaseModel):
    """The Overview page: every segment with traffic, and the open alerts."""

    range: DayRange
    models: list[ModelRow]
    open_alerts: list[AlertRow]
    history_root: str = ""
    missing_tables: list[str] = Field(default_factory=list, description="History tables not under the root")


class DetectionRef(BaseModel):
    """A detection an action was taken on."""

    detection_id: str
    detector_id: str | None = None
    verdict: str | None = None
    segment: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None


class ActionRow(BaseModel):
    """A CloudEvent loopwatch published: retrain, rollback, verification, ..."""

    id: str
    type: str
    subject: str | None = None
    model: str | None = None
    time: datetime | None = None
    topic: str | None = None
    reason: str | None = None
    from_version: str | None = None
    target_version: str | None = None
    verified: bool | None = None
    dataset: dict[str, Any] | None = None
    detections: list[DetectionRef] = Field(default_factory=list)
    #: A rollback request's state: verified, failed, or still waiting for evidence (never silent).
    followup: str | None = None
    rule: str | None = Field(None, description="The policy rule that asked for it")
    policy: str | None = Field(None, description="The name of the policy it was decided under")
    window_end: datetime | None = Field(None, description="End of the window it was decided on")
    counted: CountedWindows | None = Field(None, description="A verification: the target windows it counted")
    after: RollbackAfter | None = Field(None, description="A rollback request: what followed it")


class SilenceRow(BaseModel):
    """A silence in force, as its announcement on the alerts topic says."""

    silence_id: str
    matchers: str
    summary: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class Incidents(BaseModel):
    """The Incidents page: the alert timeline, the actions and the silences in force."""

    range: DayRange
    alerts: list[AlertRow]
    actions: list[ActionRow]
    silences: list[SilenceRow]
    policy: PolicyReport | None = Field(None, description="What the policy's retrain and rollback rules did")
    resolved_by_known: bool = Field(False, description="Some alert says why it resolved (a newer history)")


def resolve_range(
    history: HistoryReader, end: date | None, days: int, shown: Sequence[str] = ("windows",)
) -> DayRange:
    """``days`` days ending on ``end`` (default: the newest day of the ``shown`` tables, else of any).

    By the page's own tables: a demo's backdated traffic is on the day before the
    wall-clock rows (alerts resolved, letters refused) written after midnight.
    """
    first = [found[0] for found in (history.days(n) for n in ("windows", "alerts", "deadletters")) if found]
    last = history.latest_day()
    end = end or history.latest_day(shown) or last or datetime.now(UTC).date()
    return DayRange(
        start=day_range(end, days)[0],
        end=end,
        first_day=min(first) if first else None,
        last_day=last,
    )


def overview_view(
    history: HistoryReader,
    span: DayRange,
    stable_versions: Mapping[str, str] | None = None,
    slow: frozenset[str] = frozenset(),
    kinds: Mapping[str, str] | None = None,
) -> Overview:
    """Every segment with traffic on the range, its last window and worst verdict; the open alerts.

    ``slow`` names the slow detectors: a segment with skipped windows says which of them judged none.
    ``kinds``: the window kind each detector reads (default: the built-in detectors'), to say which
    kinds judged none of a segment's windows.
    """
    days = span.days()
    windows = history.read("windows", days, columns=_OVERVIEW_WINDOW_COLUMNS)
    detections = history.read("detections", days, columns=_OVERVIEW_DETECTION_COLUMNS)
    alerts = _alert_rows(history.read("alerts", days))
    open_alerts = [a for a in _latest_per_fingerprint(alerts) if a.status == "firing" and not _silence(a)]
    # The settings, then what the workers compared canaries with last (it follows marks on the control topic).
    stable = {**(stable_versions or {}), **stable_from_references(windows)}
    actions = action_rows(history.read("actions", days))
    rolled_back = rollback_states(actions)
    for action in actions:
        if action.type == ROLLBACK_REQUESTED and action.model and action.target_version:
            stable[action.model] = action.target_version  # the latest rollback says what is stable now
    # Arrow's hash aggregations: a day of 50 segments is 72,000 windows, too many for Python loops.
    per_segment = windows.group_by("segment", use_threads=False).aggregate(
        [(c, "first") for c in ("model", "model_version", "app", "route", "tenant")]
        + [("events", "sum"), ("window_start", "count_distinct"), ("window_start", "max")]
        + [("window_end", "max")]
    )
    latest = detections  # the latest revision of each window's verdict
    if detections.num_rows and pc.max(detections["revision"]).as_py():
        latest = latest_revision_rows(detections)
    verdicts = segment_verdicts(latest, per_segment)
    named = worst_named(latest, {key: v[0] for key, v in verdicts.items()})
    judged_at = last_judged(latest)
    outcomes = last_outcomes(windows, per_segment)
    counted = judged_per_segment(latest, kinds or BUILT_IN_KINDS)
    unjudged_numbers = unjudged_rows(history, days, counted, detections)
    unjudged_by = slow_never_judged(windows, detections, slow)
    rows: list[SegmentRow] = []
    for seg in per_segment.to_pylist():
        key = seg["segment"]
        worst, last, drift, warning, unjudged, note = verdicts.get(key, (None, None, 0, 0, 0, None))
        judged_last = judged_at.get(key) if last not in ("ok", "warning", "drift") else None
        if last is None and outcomes.get(key):
            last = outcomes[key]  # a reference (or waiting, skipped) window: no detection says more
        model, version = seg["model_first"], seg["model_version_first"]
        known = stable.get(model)
        # Only a segment whose counts name a slow detector alone reads how far it got (50 segments a page).
        said_slow = any(set(r.detectors) <= slow for r in getattr(counted.get(key), "counts", []))
        reach = slow_reach(windows, detections, key, slow, kinds or BUILT_IN_KINDS) if said_slow else None
        scope = judged_scope(counted.get(key), named.get(key, worst), unjudged_numbers.get(key), slow, reach)
        rows.append(
            SegmentRow(
                segment=key,
                model=model,
                model_version=version,
                app=seg["app_first"],
                route=seg["route_first"],
                tenant=seg["tenant_first"],
                labels=" · ".join(v for v in (seg["app_first"], seg["route_first"], seg["tenant_first"]) if v)
                or "all traffic",
                role=None if known is None else ("stable" if known == version else "canary"),
                windows=seg["window_start_count_distinct"],
                events=seg["events_sum"] or 0,  # null when its windows held feedback only
                last_window_start=seg["window_start_max"],
                last_window_end=seg["window_end_max"],
                last_verdict=last,
                last_note=note if last == "not judged" else SLOW_SKIPPED if last == "skipped" else last,
                last_judged_verdict=judged_last[1] if judged_last else None,
                last_judged_start=judged_last[0] if judged_last else None,
                worst_verdict=worst,
                drift_windows=drift,
                warning_windows=warning,
                not_judged_windows=unjudged,
                never_judged=unjudged_by.get(key, []),
                open_alerts=sum(1 for a in open_alerts if (a.model, a.model_version) == (model, version)),
                rollback=rolled_back.get((model, version)),
                **dict(scope),
            )
        )
    models: dict[str, list[SegmentRow]] = {}
    for row in rows:
        models.setdefault(row.model, []).append(row)
    return Overview(
        range=span,
        models=[
            ModelRow(model=m, versions=sorted(v, key=lambda r: (r.role != "stable", r.model_version)))
            for m, v in sorted(models.items())
        ],
        open_alerts=open_alerts,
        history_root=history.root,
        missing_tables=history.missing(),
    )


def parse_segment(segment: str) -> tuple[str, str]:
    """The model and version a segment key names (``model|version|app|route|tenant``), or a 400."""
    parts = segment.split("|")
    if len(parts) != 5 or not parts[0] or not parts[1]:
        raise ConsoleError(
            f"segment {segment!r} is not model|version|app|route|tenant (empty labels allowed: m|v|||)"
        )
    return parts[0], parts[1]


def report_path(history: HistoryReader, segment: str, day: date, detection_id: str) -> str:
    """The Evidently report file a detection names (404 when there is none)."""
    model, _ = parse_segment(segment)
    found = history.read(
        "detections",
        [day],
        model=model,
        columns=["report_path"],
        match={"detection_id": detection_id, "segment": segment},
    ).column("report_path")
    paths = [p for p in found.to_pylist() if p]
    if not paths:
        raise ConsoleError(f"detection {detection_id!r} of {day} has no report", 404)
    return str(paths[0])


def incidents_view(
    history: HistoryReader, span: DayRange, policy: Policy | None = None, policy_file: str | None = None
) -> Incidents:
    """The alert timeline, the actions with their CloudEvent ids and causes, and the silences in force.

    With ``policy``, also what its retrain and rollback rules did in the range, and why not.
    """
    days = span.days()
    alerts = sorted(_alert_rows(history.read("alerts", days)), key=lambda a: a.changed_at or _EPOCH)
    actions = sorted(action_rows(history.read("actions", days)), key=lambda a: a.time or _EPOCH)
    _follow_up(actions)
    silences = [
        SilenceRow(
            silence_id=a.labels.get("silence_id", a.fingerprint),
            matchers=a.labels.get("matchers", ""),
            summary=a.summary,
            starts_at=a.starts_at,
            ends_at=a.ends_at,
        )
        for a in _latest_per_fingerprint(alerts)
        if _silence(a) and a.status == "firing"
    ]
    after_rollback(history, span, actions)
    shown = [a for a in alerts if not _silence(a)]
    report = None
    if policy is not None:
        report = policy_report(history, span, policy, policy_file, shown, actions, silences)
    return Incidents(
        range=span,
        alerts=shown,
        actions=actions,
        silences=silences,
        policy=report,
        resolved_by_known=any(a.resolved_by for a in shown),
    )


_EPOCH = datetime(1970, 1, 1).astimezone()


def _follow_up(actions: list[ActionRow]) -> None:
    """Say of each rollback request what came of it: a request with no outcome yet says it waits."""
    outcomes = {a.id.rsplit(".", 1)[0]: a for a in actions if a.verified is not None}  # <id>.verified/.failed
    for action in actions:
        if action.type != ROLLBACK_REQUESTED:
            continue
        outcome = outcomes.get(action.id)
        if outcome is None:
            action.followup = (
                f"not verified yet: waiting for windows of {action.target_version} known to run without"
                f" {action.from_version} (it may still be serving)"
            )
        else:
            action.followup = "verified" if outcome.verified else f"not verified: {outcome.reason}"


def _alert_rows(table: pa.Table) -> list[AlertRow]:
    return [
        AlertRow(
            fingerprint=r["fingerprint"],
            status=r["status"],
            severity=r["severity"],
            summary=r["summary"],
            model=r["model"],
            model_version=r["model_version"],
            labels=json.loads(r["labels"] or "{}"),
            detections=json.loads(r["detections"] or "[]"),
            starts_at=r["starts_at"],
            ends_at=r["ends_at"],
            changed_at=r["changed_at"],
            changed_at_is="resolved at" if r["status"] == "resolved" else "window start",
            window_start=r.get("window_start"),
            window_end=r.get("window_end"),
            decided_at=r.get("decided_at"),
            changed_clock=_clock_of(r),
            runbook_url=r["runbook_url"],
            resolved_by=r.get("resolved_by"),
        )
        for r in table.to_pylist()
    ]


def _clock_of(row: dict[str, Any]) -> Literal["window time", "wall clock"]:
    """Which clock a row's changed_at is on (see AlertRow.changed_clock)."""
    why = row.get("resolved_by")
    if why is not None:  # the resolve timeout and a silence's end take the decision time; the rest a window's
        return "wall clock" if why.startswith(("no detection for", "silence")) else "window time"
    ends, decided = row["ends_at"], row.get("decided_at")
    timeout = row["status"] == "resolved" and ends and decided and abs((decided - ends).total_seconds()) < 2
    return "wall clock" if timeout else "window time"


def _latest_per_fingerprint(alerts: list[AlertRow]) -> list[AlertRow]:
    latest: dict[str, AlertRow] = {}
    for alert in sorted(alerts, key=lambda a: (a.changed_at or _EPOCH, a.status == "resolved")):
        latest[alert.fingerprint] = alert
    return sorted(latest.values(), key=lambda a: a.changed_at or _EPOCH, reverse=True)


def _silence(alert: AlertRow) -> bool:
    return alert.labels.get("alertname") == "silence"


def action_rows(table: pa.Table) -> list[ActionRow]:
    """The actions table's rows (one CloudEvent each), their data parsed."""
    rows = []
    for r in table.to_pylist():
        data = json.loads(r["data"] or "{}")
        rows.append(
            ActionRow(
                id=r["id"],
                type=r["type"],
                subject=r["subject"],
                model=r["model"],
                time=r["time"],
                topic=r["topic"],
                reason=data.get("reason"),
                from_version=data.get("from_version"),
                target_version=data.get("target_version"),
                verified=data.get("verified"),
                dataset=data.get("dataset"),
                rule=data.get("rule"),
                policy=data.get("policy"),
                window_end=data.get("window_end"),
                counted=counted_windows(data) if data.get("verified") is not None else None,
                detections=[_detection_ref(d) for d in data.get("detections") or [] if isinstance(d, dict)],
            )
        )
    return rows


def _detection_ref(d: dict[str, Any]) -> DetectionRef:
    segment = d.get("segment")
    key = None
    if isinstance(segment, dict):
        parts = (segment.get(k) for k in ("model", "model_version", "app", "route", "tenant"))
        key = "|".join(p or "" for p in parts)
    return DetectionRef(
        detection_id=str(d.get("detection_id", "")),
        detector_id=d.get("detector_id"),
        verdict=d.get("verdict"),
        segment=key,
        window_start=d.get("window_start"),
        window_end=d.get("window_end"),
    )
