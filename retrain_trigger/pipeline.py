"""The Decider: detections in, alerts, pages and CloudEvent actions out, through the stages in order.

route -> gates -> inhibit -> silence -> dedup -> cooldown -> publish, plus the
follow-up watch of every published rollback. State is kept per model
(:class:`ModelState`, one changelog-table key per model); silences and stable
versions are shared (:class:`Silences`, :class:`StableVersions`, each a
compacted topic). Every public method takes ``now``: pass the detection's time
when replaying, so a replay decides exactly as the first run did.

>>> from retrain_trigger.policy import load_policy
>>> decider = Decider(load_policy())
>>> decider.policy.name
'default'
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger import watch as rollback_watch
from retrain_trigger.actions import (
    EVENT_TYPES,
    ROLLBACK_FAILED,
    ROLLBACK_VERIFIED,
    RetrainRequest,
    RollbackOutcome,
    RollbackRequest,
    cloud_event,
)
from retrain_trigger.alerts import (
    AlertBook,
    AlertRecord,
    GroupState,
    Notification,
    alert_labels,
    describe_value,
    fingerprint,
    group_key,
    worst_severity,
)
from retrain_trigger.cooldown import CooldownState
from retrain_trigger.dedup import DedupState, idempotency_key
from retrain_trigger.gates import judge, step
from retrain_trigger.inhibit import inhibited_by
from retrain_trigger.policy import Policy, Rule
from retrain_trigger.publish import Decision, LogEntry, Stage
from retrain_trigger.route import Router
from retrain_trigger.silence import Silence, Silences
from retrain_trigger.stable import StableVersionMarked, StableVersions
from retrain_trigger.state import State
from retrain_trigger.watch import WatchState
from schemas.events import Alert, CloudEvent, Detection

#: Time-based work (stale alerts, silences ending, cooldowns, repeat pages) runs at most this often per model.
SETTLE_EVERY = timedelta(seconds=10)
#: Published idempotency keys are kept this long (a replay older than that is not expected).
DEDUP_RETENTION = timedelta(days=7)
_MAX_EVIDENCE = 10


class Incident(BaseModel):
    """One incident of one action kind for one group: it gets at most one action, with one key."""

    model_config = ConfigDict(extra="forbid")

    key: str
    action: str
    rule: str
    group: dict[str, str]
    opened_at: datetime
    alerts: list[str] = Field(default_factory=list)
    published: bool = False


class ModelState(State):
    """All decision state of one model: alerts, incidents, published keys, cooldowns, rollback watches."""

    book: AlertBook = Field(default_factory=AlertBook)
    incidents: dict[str, Incident] = Field(default_factory=dict)
    dedup: DedupState = Field(default_factory=DedupState)
    cooldown: CooldownState = Field(default_factory=CooldownState)
    watch: WatchState = Field(default_factory=WatchState)
    settled_at: datetime | None = None


class DeciderState(State):
    """The whole Decider state (per-model states plus the shared silences and stable versions)."""

    models: dict[str, ModelState] = Field(default_factory=dict)
    silences: Silences = Field(default_factory=Silences)
    stable: StableVersions = Field(default_factory=StableVersions)


class Decider:
    """Runs the decision pipeline over detections; holds its state but never sends anything."""

    def __init__(self, policy: Policy, state: DeciderState | None = None, *, explain: bool = True) -> None:
        self.state = state if state is not None else DeciderState()
        self.explain = explain
        self.use_policy(policy)

    def use_policy(self, policy: Policy) -> None:
        """Switch to a new (already validated) policy, keeping all state."""
        self.policy = policy
        self._router = Router(policy)
        self._rules = {rule.name: rule for rule in policy.rules}
        self._labels: dict[tuple[str | None, ...], tuple[str, dict[str, str]]] = {}

    # ---------------------------------------------------------------- state

    def model_state(self, model: str) -> ModelState:
        """The state of one model (created empty on first use)."""
        state = self.state.models.get(model)
        if state is None:
            state = self.state.models[model] = ModelState()
        return state

    def restore_model(self, model: str, state: ModelState) -> None:
        """Put back the state of one model (e.g. read from the changelog table after a restart)."""
        self.state.models[model] = state

    def add_silence(self, silence: Silence) -> None:
        """Add or replace a silence; it applies from the next step (or :meth:`tick`)."""
        self.state.silences.add(silence)

    def mark_stable(self, event: StableVersionMarked) -> None:
        """Record a version marked stable: the target of later rollbacks of that model."""
        self.state.stable.apply(event)

    # ---------------------------------------------------------------- steps

    def decide(self, detection: Detection, now: datetime) -> Decision:
        """One detection through every stage."""
        decision = Decision()
        segment = detection.segment
        ms = self.model_state(segment.model)
        for outcome in rollback_watch.observe(ms.watch, self.policy.verify, detection):
            self._outcome(outcome, detection.window_end, decision)
        rules = self._router.route(detection.detector_id, segment)
        if not rules:
            self._log(decision, "route", f"{detection.detector_id} {segment.key()}", False, "no rule matches")
            if ms.settled_at is None or now - ms.settled_at >= SETTLE_EVERY:
                self._settle(ms, now, [], decision)
            return decision
        changed = False
        resolved: list[tuple[AlertRecord, datetime]] = []
        alerts = ms.book.alerts
        for rule in rules:
            evidence = judge(rule, detection)
            fp, labels = self._alert_id(rule, detection)
            subject = f"{rule.name} {detection.detector_id} {segment.model}/{segment.model_version}"
            record = alerts.get(fp)
            if record is None and evidence.outcome != "breach":
                self._log(decision, "gates", subject, False, f"{evidence.reason}: nothing to do")
                continue
            firing = record is not None and record.status == "firing"
            counters = step(
                rule,
                firing,
                record.breaches if record else 0,
                record.clears if record else 0,
                evidence.outcome,
            )
            if record is None:
                record = AlertRecord(
                    fingerprint=fp,
                    rule=rule.name,
                    labels=labels,
                    starts_at=detection.window_start,
                    last_seen=now,
                )
                alerts[fp] = record
            record.breaches, record.clears, record.last_seen = counters.breaches, counters.clears, now
            if evidence.outcome == "breach":
                record.remember(detection)
            if counters.fires:
                record.status = "firing"
                changed = True
                self._log(
                    decision,
                    "gates",
                    subject,
                    True,
                    f"{evidence.reason}: fires after {counters.breaches} window(s)",
                )
            elif counters.resolves:
                del alerts[fp]
                resolved.append((record, detection.window_end))
                changed = True
                self._log(
                    decision,
                    "gates",
                    subject,
                    True,
                    f"{evidence.reason}: resolves after {counters.clears} clear window(s)",
                )
            elif evidence.outcome == "clear" and record.status == "pending":
                del alerts[fp]
                self._log(decision, "gates", subject, False, f"{evidence.reason}: pending alert reset")
            else:
                need = rule.gates.for_windows if evidence.outcome == "breach" else rule.gates.resolve_windows
                have = counters.breaches if evidence.outcome == "breach" else counters.clears
                if firing and evidence.outcome == "breach":
                    progress = f"still firing ({have} breaching windows)"
                else:
                    progress = f"{record.status}, {have} of {need} window(s)"
                self._log(decision, "gates", subject, False, f"{evidence.reason}: {progress}")
        if changed or ms.settled_at is None or now - ms.settled_at >= SETTLE_EVERY:
            self._settle(ms, now, resolved, decision)
        return decision

    def tick(self, now: datetime) -> Decision:
        """Time-based work for every model: stale alerts, ended silences, repeat pages, watch deadlines."""
        decision = Decision()
        for ms in self.state.models.values():
            self._settle(ms, now, [], decision)
        return decision

    # ---------------------------------------------------------------- internals

    def _log(self, decision: Decision, stage: Stage, subject: str, passed: bool, reason: str) -> None:
        if self.explain:
            decision.log.append(LogEntry(stage, subject, passed, reason))

    def _alert_id(self, rule: Rule, detection: Detection) -> tuple[str, dict[str, str]]:
        s = detection.segment
        cache_key = (rule.name, detection.detector_id, s.model, s.model_version, s.app, s.route, s.tenant)
        found = self._labels.get(cache_key)
        if found is None:
            labels = alert_labels(rule, detection.detector_id, s)
            found = self._labels[cache_key] = (fingerprint(labels), labels)
        return found

    def _summary(self, record: AlertRecord) -> str:
        rule = self._rules.get(record.rule)
        labels = record.labels
        base = f"{labels['detector']} on {labels['model']}/{labels['model_version']}"
        return f"{rule.summary} ({base})" if rule and rule.summary else f"{record.rule}: {base}"

    def _alert(
        self, record: AlertRecord, status: Literal["firing", "resolved"], ends_at: datetime | None
    ) -> Alert:
        rule = self._rules.get(record.rule)
        return record.to_alert(status, self._summary(record), ends_at, rule.runbook_url if rule else None)

    def _mute(
        self, record: AlertRecord, firing: list[tuple[str, dict[str, str]]], now: datetime
    ) -> tuple[Stage, str] | None:
        source = inhibited_by((record.fingerprint, record.labels), firing, self.policy.inhibit)
        if source is not None:
            return "inhibit", f"muted by firing alert {source}"
        silence = self.state.silences.muting(record.labels, now)
        if silence is not None:
            return (
                "silence",
                f"silenced by {silence.id} until {silence.ends_at.isoformat()} ({silence.comment})",
            )
        return None

    def _settle(
        self, ms: ModelState, now: datetime, resolved: list[tuple[AlertRecord, datetime]], decision: Decision
    ) -> None:
        """Apply the mute stages to every firing alert, act, and page: re-run whenever anything changed."""
        ms.settled_at = now
        policy = self.policy
        alerts = ms.book.alerts
        for fp in [fp for fp, r in alerts.items() if now - r.last_seen >= policy.resolve_timeout]:
            record = alerts.pop(fp)
            resolved.append((record, now))
            self._log(
                decision, "gates", record.rule, True, f"no detection for {policy.resolve_timeout}: resolved"
            )
        for outcome in rollback_watch.expire(ms.watch, policy.verify, now):
            self._outcome(outcome, now, decision)
        ms.dedup.prune(now, DEDUP_RETENTION)

        resolved_by_group: dict[str, list[Alert]] = {}
        for record, ends_at in resolved:
            for incident_id in [i for i, inc in ms.incidents.items() if record.fingerprint in inc.alerts]:
                incident = ms.incidents[incident_id]
                incident.alerts.remove(record.fingerprint)
                if not incident.alerts:
                    del ms.incidents[incident_id]
            if record.announced:
                alert = self._alert(record, "resolved", ends_at)
                decision.alerts.append(alert)
                resolved_by_group.setdefault(group_key(record.labels, policy.group_by), []).append(alert)

        firing = [(fp, r.labels) for fp, r in alerts.items() if r.status == "firing"]
        firing_groups: set[str] = set()
        active: dict[str, list[AlertRecord]] = {}
        for fp, _ in firing:
            record = alerts[fp]
            labels = record.labels
            subject = f"{record.rule} {labels['detector']} {labels['model']}/{labels['model_version']}"
            key = group_key(record.labels, policy.group_by)
            firing_groups.add(key)
            muted = self._mute(record, firing, now)
            if muted is not None:
                self._log(decision, muted[0], subject, False, muted[1])
                continue
            if not record.announced:
                record.announced = True
                decision.alerts.append(self._alert(record, "firing", None))
                self._log(decision, "alerts", subject, True, "firing")
            active.setdefault(key, []).append(record)
            rule = self._rules.get(record.rule)
            if rule is not None and rule.action != "alert":
                self._act(ms, rule, record, now, decision, subject)
        self._page(ms, now, active, firing_groups, resolved_by_group, decision)

    def _page(
        self,
        ms: ModelState,
        now: datetime,
        active: dict[str, list[AlertRecord]],
        firing_groups: set[str],
        resolved: dict[str, list[Alert]],
        decision: Decision,
    ) -> None:
        """A page when a group starts firing, again after the repeat interval, and one when it resolves."""
        groups = ms.book.groups
        for key in set(groups) | set(active):
            group = groups.setdefault(key, GroupState())
            records = active.get(key, [])
            if records and (
                not group.active or now - (group.last_notified or now) >= self.policy.repeat_interval
            ):
                repeat = group.active
                group.active, group.last_notified = True, now
                alerts = [self._alert(r, "firing", None) for r in records]
                decision.notifications.append(self._notification(key, "firing", alerts, records, now, repeat))
                self._log(decision, "alerts", key, True, "repeat page" if repeat else "page")
            elif not records and key not in firing_groups:
                if group.active and resolved.get(key):
                    decision.notifications.append(
                        self._notification(key, "resolved", resolved[key], [], now, False)
                    )
                    self._log(decision, "alerts", key, True, "resolved page")
                del groups[key]

    def _notification(
        self,
        key: str,
        status: Literal["firing", "resolved"],
        alerts: list[Alert],
        records: list[AlertRecord],
        now: datetime,
        repeat: bool,
    ) -> Notification:
        annotations: dict[str, dict[str, str]] = {}
        for alert in alerts:
            notes = {"summary": alert.summary}
            if alert.values:
                notes["description"] = "; ".join(describe_value(v) for v in alert.values)
            if alert.runbook_url:
                notes["runbook_url"] = alert.runbook_url
            annotations[alert.fingerprint] = notes
        first = alerts[0].labels
        return Notification(
            group_key=key,
            group_labels={name: first.get(name, "") for name in self.policy.group_by},
            status=status,
            severity=worst_severity(alerts),
            alerts=alerts,
            annotations=annotations,
            repeat=repeat,
            sent_at=now,
        )

    def _act(
        self, ms: ModelState, rule: Rule, record: AlertRecord, now: datetime, decision: Decision, subject: str
    ) -> None:
        """Dedup, cooldown and publish the action of a firing, unmuted alert (once per incident)."""
        policy = self.policy
        group = {name: record.labels.get(name, "") for name in policy.group_by}
        if rule.action == "rollback":
            # A rollback is about one bad version: another version going bad is another incident.
            group["model_version"] = record.labels["model_version"]
        incident_id = f"{rule.action}|{group_key(group, sorted(group))}"
        incident = ms.incidents.get(incident_id)
        if incident is None:
            key = idempotency_key(policy.name, rule.action, group, record.starts_at)
            incident = Incident(
                key=key, action=rule.action, rule=rule.name, group=group, opened_at=record.starts_at
            )
            ms.incidents[incident_id] = incident
        if record.fingerprint not in incident.alerts:
            incident.alerts.append(record.fingerprint)
        if incident.published:
            return
        if ms.dedup.seen(incident.key):
            incident.published = True
            self._log(decision, "dedup", subject, False, f"{incident.key} already published")
            return
        self._log(decision, "dedup", subject, True, f"new key {incident.key}")
        cooldown_key = group_key(group, sorted(group))
        reason = ms.cooldown.check(
            rule.action, cooldown_key, now, policy.cooldown_for(rule), policy.rate_limit
        )
        if reason is not None:
            self._log(decision, "cooldown", subject, False, reason)
            return
        event = self._action_event(ms, rule, record, incident)
        if isinstance(event, str):
            self._log(decision, "publish", subject, False, event)
            return
        ms.dedup.record(incident.key, now)
        ms.cooldown.record(rule.action, cooldown_key, now, policy.rate_limit)
        incident.published = True
        if policy.mode == "dry-run":
            decision.dry_run_actions.append(event)
            self._log(decision, "publish", subject, False, f"dry-run: would publish {event.type} {event.id}")
            return
        decision.actions.append(event)
        self._log(decision, "publish", subject, True, f"{event.type} {event.id}")
        if isinstance(event.data.get("target_version"), str):
            rollback_watch.start(
                ms.watch,
                policy.verify,
                event.id,
                record.labels["model"],
                record.labels["model_version"],
                event.data["target_version"],
                record.detections[-1].window_end if record.detections else now,
                # What triggered it is what the target must be better on.
                [d for fp in incident.alerts if fp in ms.book.alerts for d in ms.book.alerts[fp].detections],
            )

    def _action_event(
        self, ms: ModelState, rule: Rule, record: AlertRecord, incident: Incident
    ) -> CloudEvent | str:
        """The CloudEvent of an incident's action, or why it cannot be built."""
        records = [ms.book.alerts[fp] for fp in incident.alerts if fp in ms.book.alerts] or [record]
        detections = sorted((d for r in records for d in r.detections), key=lambda d: d.window_end)[
            -_MAX_EVIDENCE:
        ]
        model = record.labels["model"]
        common = {
            "reason": "; ".join(sorted({self._summary(r) for r in records})),
            "policy": self.policy.name,
            "rule": rule.name,
            "mode": self.policy.mode,
            "model": model,
            "incident_start": incident.opened_at,
            "window_start": min(d.window_start for d in detections),
            "window_end": max(d.window_end for d in detections),
            "detections": detections,
            "sources": [s for d in detections for s in d.evidence.sources],
        }
        data: RetrainRequest | RollbackRequest
        if rule.action == "rollback":
            bad = record.labels["model_version"]
            target = self.state.stable.target(model)
            if target is None:
                return f"no stable version of {model} to roll back to (mark one: loopwatch model mark-stable)"
            if target == bad:
                return f"the failing version {bad} is the one marked stable: nothing to roll back to"
            data = RollbackRequest(**common, from_version=bad, target_version=target)
        else:
            data = RetrainRequest(**common)
        return cloud_event(
            event_id=incident.key,
            source=self.policy.source,
            event_type=EVENT_TYPES[rule.action],
            subject=model,
            # The latest evidence's window end, not the clock: a replay rebuilds the same event.
            time=data.window_end,
            data=data,
        )

    def _outcome(self, outcome: RollbackOutcome, at: datetime, decision: Decision) -> None:
        suffix, event_type = (
            ("verified", ROLLBACK_VERIFIED) if outcome.verified else ("failed", ROLLBACK_FAILED)
        )
        event = cloud_event(
            event_id=f"{outcome.rollback_id}.{suffix}",
            source=self.policy.source,
            event_type=event_type,
            subject=outcome.model,
            time=at,
            data=outcome,
        )
        decision.actions.append(event)
        self._log(decision, "watch", outcome.model, outcome.verified, outcome.reason)
