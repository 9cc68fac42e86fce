"""Each decide stage alone: a context in, what the stage changed, stopped and logged out.

The whole pipeline, stage against stage, is tests/test_decide_pipeline.py; here
every stage gets a hand-built :class:`DecideContext` and nothing else runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from retrain_trigger import watch as rollback_watch
from retrain_trigger.alerts import AlertRecord, GroupState, alert_labels, fingerprint, group_key
from retrain_trigger.announce import AnnounceStage
from retrain_trigger.context import Candidate, DecideContext, PolicyIndex
from retrain_trigger.cooldown import CooldownStage
from retrain_trigger.dedup import DedupStage, Incident
from retrain_trigger.followup import WatchDeadlineStage, WatchStage
from retrain_trigger.gates import GatesStage
from retrain_trigger.inhibit import InhibitStage
from retrain_trigger.page import PageStage
from retrain_trigger.pipeline import SETTLE_EVERY, EachFiringAlert, ModelState, decide_stages
from retrain_trigger.policy import Policy
from retrain_trigger.publish import Decision, PublishStage
from retrain_trigger.resolve import ResolveStage, SettleStage
from retrain_trigger.route import RouteStage
from retrain_trigger.silence import Silence, Silences, SilenceStage, parse_matcher
from retrain_trigger.stable import StableVersionMarked, StableVersions
from schemas.events import Detection
from tests.test_decide_pipeline import T0, detection, policy

ROLLBACK_RULE, RETRAIN_RULE, ALERT_RULE = "bad-replies", "input-drift", "broken-input"
DETECTOR_OF = {
    ROLLBACK_RULE: "quality.negative_feedback.v1",
    RETRAIN_RULE: "drift.ks.v1",
    ALERT_RULE: "schema.violations.v1",
}


def context(
    p: Policy | None = None,
    d: Detection | None = None,
    now: datetime = T0,
    state: ModelState | None = None,
    stable: str | None = "v1",
    silences: Silences | None = None,
) -> DecideContext:
    """A context for one step of model ``chat`` (a tick when ``d`` is None); chat ``stable`` marked stable."""
    marks = StableVersions()
    if stable is not None:
        marks.apply(StableVersionMarked(model="chat", version=stable, marked_at=T0 - timedelta(days=1)))
    return DecideContext(
        index=PolicyIndex(p or policy()),
        state=state or ModelState(),
        silences=silences or Silences(),
        stable=marks,
        now=now,
        decision=Decision(),
        explain=True,
        detection=d,
    )


def logged(ctx: DecideContext) -> list[tuple[str, bool, str]]:
    """The context's log as (stage, passed, reason)."""
    return [(e.stage, e.passed, e.reason) for e in ctx.decision.log]


def record(
    ctx: DecideContext,
    rule: str = ROLLBACK_RULE,
    version: str = "v2",
    status: str = "firing",
    announced: bool = False,
    last_seen: datetime = T0,
    **fields: Any,
) -> AlertRecord:
    """An alert of ``rule`` on chat/``version``, put in the context's model state."""
    d = detection(0, DETECTOR_OF[rule], version)
    labels = alert_labels(ctx.index.rules[rule], d.detector_id, d.segment)
    alert = AlertRecord(
        fingerprint=fingerprint(labels),
        rule=rule,
        labels=labels,
        status=status,
        starts_at=d.window_start,
        last_seen=last_seen,
        announced=announced,
        detections=[d],
        **fields,
    )
    ctx.state.book.alerts[alert.fingerprint] = alert
    return alert


def candidate(ctx: DecideContext, alert: AlertRecord) -> Candidate:
    """The per-alert view of a firing alert, as EachFiringAlert builds it."""
    labels = alert.labels
    return Candidate(
        record=alert,
        subject=f"{alert.rule} {labels['detector']} chat/{labels['model_version']}",
        page_group=group_key(labels, ctx.policy.group_by),
        rule=ctx.index.rules.get(alert.rule),
    )


# ---------------------------------------------------------------- the list


def test_the_pipeline_runs_the_stages_in_the_documented_order() -> None:
    stages = decide_stages()
    names = [type(s).__name__ for s in stages]
    assert names == [
        "WatchStage",
        "RouteStage",
        "GatesStage",
        "PromoteStage",
        "SettleStage",
        "ResolveStage",
        "WatchDeadlineStage",
        "EachFiringAlert",
        "PageStage",
    ]
    per_alert = next(s for s in stages if isinstance(s, EachFiringAlert))
    assert [type(s).__name__ for s in per_alert.stages] == [
        "InhibitStage",
        "SilenceStage",
        "AnnounceStage",
        "DedupStage",
        "CooldownStage",
        "PublishStage",
    ]


# ---------------------------------------------------------------- step stages


def test_route_sets_the_matched_rules_and_logs_a_detection_no_rule_matches() -> None:
    ctx = context(d=detection(0, "tox"))
    assert RouteStage().run(ctx) and [r.name for r in ctx.matched] == [ROLLBACK_RULE] and not ctx.decision.log

    ctx = context(d=detection(0, "other.detector.v1"))
    assert RouteStage().run(ctx) and list(ctx.matched) == []
    assert logged(ctx) == [("route", False, "no rule matches")]
    assert ctx.decision.log[0].subject == "other.detector.v1 chat|v2|||"  # Segment.key()

    tick = context()
    assert RouteStage().run(tick) and list(tick.matched) == [] and not tick.decision.log


def _gates(ctx: DecideContext) -> DecideContext:
    RouteStage().run(ctx)
    assert GatesStage().run(ctx)
    return ctx


def test_gates_fire_an_alert_on_its_first_breach_when_one_window_is_enough() -> None:
    ctx = _gates(context(d=detection(0)))
    (alert,) = ctx.state.book.alerts.values()
    assert alert.status == "firing" and alert.breaches == 1 and ctx.changed
    assert [d.detection_id for d in alert.detections] == [ctx.detection.detection_id]  # type: ignore[union-attr]
    assert logged(ctx) == [("gates", True, "verdict drift: fires after 1 window(s)")]


def test_gates_count_windows_and_reset_a_pending_alert_on_a_clear_one() -> None:
    ctx = _gates(context(d=detection(0, "ks", n=500)))
    (alert,) = ctx.state.book.alerts.values()
    assert alert.status == "pending" and not ctx.changed
    assert logged(ctx) == [("gates", False, "verdict drift: pending, 1 of 3 window(s)")]

    clear = _gates(context(d=detection(1, "ks", verdict="ok", n=500), state=ctx.state))
    assert clear.state.book.alerts == {} and not clear.changed
    assert logged(clear) == [("gates", False, "verdict ok: pending alert reset")]


def test_gates_do_nothing_without_an_alert_and_skip_small_windows() -> None:
    quiet = _gates(context(d=detection(0, verdict="ok")))
    assert quiet.state.book.alerts == {} and logged(quiet) == [("gates", False, "verdict ok: nothing to do")]

    ctx = context()
    alert = record(ctx)
    small = _gates(context(d=detection(1, n=5), state=ctx.state))
    assert (alert.breaches, alert.clears, alert.status) == (0, 0, "firing")
    assert logged(small) == [("gates", False, "5 samples < min_samples 30: firing, 0 of 2 window(s)")]


def test_gates_resolve_a_firing_alert_after_its_clear_windows() -> None:
    ctx = context()
    alert = record(ctx, clears=1)
    d = detection(3, verdict="ok")
    step = _gates(context(d=d, state=ctx.state))
    assert step.state.book.alerts == {} and step.resolved == [(alert, d.window_end)] and step.changed
    assert logged(step) == [("gates", True, "verdict ok: resolves after 2 clear window(s)")]


def test_settle_stops_a_quiet_detection_step_until_settle_every_has_passed() -> None:
    state = ModelState(settled_at=T0)
    quiet = context(d=detection(0), now=T0 + SETTLE_EVERY / 2, state=state)
    assert not SettleStage().run(quiet) and state.settled_at == T0

    quiet.changed = True
    assert SettleStage().run(quiet) and state.settled_at == quiet.now

    later = context(d=detection(0), now=T0 + SETTLE_EVERY * 2, state=ModelState(settled_at=T0))
    assert SettleStage().run(later)
    tick = context(now=T0 + timedelta(seconds=1), state=ModelState(settled_at=T0))
    assert SettleStage().run(tick)  # a tick always settles


def test_settle_forgets_published_keys_past_their_retention() -> None:
    state = ModelState()
    state.dedup.record("old", T0 - timedelta(days=8))
    state.dedup.record("recent", T0 - timedelta(days=1))
    assert SettleStage().run(context(state=state))
    assert list(state.dedup.published) == ["recent"]


def test_resolve_ends_stale_alerts_and_takes_resolved_alerts_out_of_their_incidents() -> None:
    ctx = context(now=T0 + timedelta(minutes=31))
    stale = record(ctx, announced=True)
    fresh = record(ctx, ALERT_RULE, last_seen=T0 + timedelta(minutes=30))
    ctx.state.incidents["rollback|x"] = Incident(
        key="k", action="rollback", rule=ROLLBACK_RULE, group={}, opened_at=T0, alerts=[stale.fingerprint]
    )
    assert ResolveStage().run(ctx)
    assert list(ctx.state.book.alerts) == [fresh.fingerprint] and ctx.state.incidents == {}
    assert ctx.resolved == [(stale, ctx.now)]
    (event,) = ctx.decision.alerts
    assert (event.status, event.fingerprint, event.ends_at) == ("resolved", stale.fingerprint, ctx.now)
    assert ctx.resolved_by_group == {'{model="chat"}': [event]}
    assert logged(ctx) == [("gates", True, "no detection for 0:30:00: resolved")]


def test_resolve_announces_no_end_of_an_alert_never_announced() -> None:
    ctx = context()
    unannounced = record(ctx)
    del ctx.state.book.alerts[unannounced.fingerprint]
    ctx.resolved.append((unannounced, T0))
    assert ResolveStage().run(ctx)
    assert ctx.decision.alerts == [] and ctx.resolved_by_group == {}


def _watched(state: ModelState, p: Policy) -> None:
    """Open a rollback watch chat v2 -> v1 whose trigger had a negative-feedback rate of 0.4."""
    trigger = detection(0, rate=0.4)
    rollback_watch.observe(state.watch, p.verify, trigger)
    rollback_watch.start(state.watch, p.verify, "lw-r", "chat", "v2", "v1", trigger.window_end, [trigger])


def test_watch_turns_a_better_target_window_into_rollback_verified() -> None:
    p, state = policy(), ModelState()
    _watched(state, p)
    # Minute 2's latency window came first: v2 did not serve beside v1's minute 1, which counts at once.
    later = detection(2, "lat", version="v1", verdict="ok")
    assert WatchStage().run(context(p, later, later.detected_at, state))
    d = detection(1, version="v1", verdict="ok", rate=0.1)
    ctx = context(p, d, d.detected_at, state)
    assert WatchStage().run(ctx)
    (event,) = ctx.decision.actions
    assert (event.type, event.id, event.time) == (
        "io.loopwatch.rollback.verified",
        "lw-r.verified",
        d.window_end,
    )
    assert [(e.stage, e.passed) for e in ctx.decision.log] == [("watch", True)]
    assert state.watch.watches == []

    tick = context(p, None, T0 + timedelta(hours=2), state)
    assert WatchStage().run(tick) and not tick.decision.actions


def test_watch_deadline_fails_a_rollback_not_shown_better_in_time() -> None:
    p, state = policy(), ModelState()
    _watched(state, p)
    early = context(p, None, T0 + timedelta(minutes=30), state)
    assert WatchDeadlineStage().run(early) and not early.decision.actions and state.watch.watches

    late = context(p, None, T0 + timedelta(minutes=62), state)
    assert WatchDeadlineStage().run(late)
    (event,) = late.decision.actions
    assert (event.type, event.id, event.time) == ("io.loopwatch.rollback.failed", "lw-r.failed", late.now)
    assert [(e.stage, e.passed) for e in late.decision.log] == [("watch", False)]


class _Spy:
    """A per-alert stage that records what it saw and answers ``verdict``."""

    def __init__(self, seen: list[tuple[str, str]], name: str, verdict: bool) -> None:
        self.seen, self.name, self.verdict = seen, name, verdict

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        self.seen.append((self.name, candidate.record.rule))
        return self.verdict


def test_each_firing_alert_runs_its_stages_per_firing_alert_until_one_says_stop() -> None:
    ctx = context()
    rollback = record(ctx)
    record(ctx, RETRAIN_RULE)
    record(ctx, ALERT_RULE, status="pending")
    seen: list[tuple[str, str]] = []
    stage = EachFiringAlert([_Spy(seen, "a", True), _Spy(seen, "b", False), _Spy(seen, "c", True)])
    assert stage.run(ctx)
    assert seen == [("a", ROLLBACK_RULE), ("b", ROLLBACK_RULE), ("a", RETRAIN_RULE), ("b", RETRAIN_RULE)]
    assert [fp for fp, _ in ctx.firing] == [rollback.fingerprint, fingerprint(ctx.firing[1][1])]
    assert ctx.firing_groups == {'{model="chat"}'} and ctx.active == {}


# ---------------------------------------------------------------- per-alert stages


def test_inhibit_stops_a_retrain_while_the_models_rollback_fires() -> None:
    ctx = context()
    rollback, retrain = record(ctx), record(ctx, RETRAIN_RULE)
    ctx.firing = [(rollback.fingerprint, rollback.labels), (retrain.fingerprint, retrain.labels)]
    assert InhibitStage().run(ctx, candidate(ctx, rollback))
    assert not InhibitStage().run(ctx, candidate(ctx, retrain))
    assert logged(ctx) == [("inhibit", False, f"muted by firing alert {rollback.fingerprint}")]

    ctx.firing = [(retrain.fingerprint, retrain.labels)]
    assert InhibitStage().run(ctx, candidate(ctx, retrain))


def test_silence_stops_a_matching_alert_while_the_silence_lasts() -> None:
    silences = Silences()
    silences.add(
        Silence(
            id="s1",
            matchers=[parse_matcher("model=chat")],
            starts_at=T0,
            ends_at=T0 + timedelta(minutes=30),
            comment="upgrade",
        )
    )
    ctx = context(now=T0 + timedelta(minutes=5), silences=silences)
    alert = record(ctx)
    assert not SilenceStage().run(ctx, candidate(ctx, alert))
    assert logged(ctx) == [("silence", False, "silenced by s1 until 2026-03-01T12:30:00+00:00 (upgrade)")]

    after = context(now=T0 + timedelta(minutes=30), silences=silences, state=ctx.state)
    assert SilenceStage().run(after, candidate(after, alert)) and not after.decision.log


def test_announce_emits_the_firing_event_once_and_puts_the_alert_on_its_page() -> None:
    ctx = context()
    alert = record(ctx)
    assert AnnounceStage().run(ctx, candidate(ctx, alert))
    (event,) = ctx.decision.alerts
    assert (event.status, event.fingerprint, event.runbook_url) == (
        "firing",
        alert.fingerprint,
        "https://runbooks.example.com/bad-replies",
    )
    assert alert.announced and ctx.active == {'{model="chat"}': [alert]}
    assert logged(ctx) == [("alerts", True, "firing")]

    again = context(state=ctx.state)
    assert AnnounceStage().run(again, candidate(again, alert))
    assert again.decision.alerts == [] and again.active == {'{model="chat"}': [alert]}


def test_dedup_opens_one_incident_per_bad_version_and_lets_its_first_alert_through() -> None:
    ctx = context()
    alert = record(ctx)
    c = candidate(ctx, alert)
    assert DedupStage().run(ctx, c)
    (incident_id,) = ctx.state.incidents
    incident = ctx.state.incidents[incident_id]
    assert incident_id == 'rollback|{model="chat",model_version="v2"}' and incident is c.incident
    assert incident.alerts == [alert.fingerprint] and incident.key.startswith("lw-rollback-")
    assert c.action_key == '{model="chat",model_version="v2"}'
    assert logged(ctx) == [("dedup", True, f"new key {incident.key}")]


def test_dedup_stops_alert_only_rules_published_incidents_and_keys_already_published() -> None:
    ctx = context()
    assert not DedupStage().run(ctx, candidate(ctx, record(ctx, ALERT_RULE)))
    assert ctx.state.incidents == {} and not ctx.decision.log

    alert = record(ctx)
    DedupStage().run(context(state=ctx.state), candidate(ctx, alert))
    (incident,) = ctx.state.incidents.values()
    incident.published = True
    quiet = context(state=ctx.state)
    assert not DedupStage().run(quiet, candidate(quiet, alert)) and not quiet.decision.log

    # A restored state that lost the incident but kept the published key: the same key, not sent again.
    ctx.state.incidents.clear()
    ctx.state.dedup.record(incident.key, T0)
    replay = context(state=ctx.state)
    assert not DedupStage().run(replay, candidate(replay, alert))
    assert next(iter(ctx.state.incidents.values())).published
    assert logged(replay) == [("dedup", False, f"{incident.key} already published")]


def test_cooldown_stops_an_action_too_soon_after_the_last_one() -> None:
    ctx = context(now=T0 + timedelta(minutes=30))
    c = candidate(ctx, record(ctx))
    DedupStage().run(ctx, c)
    assert CooldownStage().run(ctx, c)

    ctx.state.cooldown.record("rollback", c.action_key, T0, ctx.policy.rate_limit)
    assert not CooldownStage().run(ctx, c)
    assert logged(ctx)[-1] == (
        "cooldown",
        False,
        "cooldown: last rollback at 2026-03-01T12:00:00+00:00, quiet until 2026-03-01T14:00:00+00:00",
    )


def _published(ctx: DecideContext) -> tuple[bool, Candidate]:
    c = candidate(ctx, record(ctx))
    assert DedupStage().run(ctx, c)
    return PublishStage().run(ctx, c), c


def test_publish_puts_the_rollback_on_the_decision_remembers_it_and_watches_it() -> None:
    ctx = context()
    passed, c = _published(ctx)
    (event,) = ctx.decision.actions
    assert passed and c.incident is not None and c.incident.published
    assert (event.type, event.id, event.data["target_version"]) == (
        "io.loopwatch.rollback.requested",
        c.incident.key,
        "v1",
    )
    assert ctx.state.dedup.seen(event.id)
    assert ctx.state.cooldown.last == {f"rollback|{c.action_key}": T0}
    (watch,) = ctx.state.watch.watches
    assert (watch.rollback_id, watch.from_version, watch.target_version) == (event.id, "v2", "v1")
    assert logged(ctx)[-1] == ("publish", True, f"io.loopwatch.rollback.requested {event.id}")


def test_publish_without_a_stable_version_records_nothing() -> None:
    ctx = context(stable=None)
    passed, c = _published(ctx)
    assert not passed and ctx.decision.actions == [] and c.incident is not None and not c.incident.published
    assert ctx.state.dedup.published == {} and ctx.state.cooldown.last == {}
    assert logged(ctx)[-1] == (
        "publish",
        False,
        "no stable version of chat to roll back to (mark one: loopwatch model mark-stable)",
    )


def test_publish_in_dry_run_records_the_action_but_only_logs_it() -> None:
    ctx = context(policy(mode="dry-run"))
    passed, _ = _published(ctx)
    (event,) = ctx.decision.dry_run_actions
    assert not passed and ctx.decision.actions == [] and ctx.state.dedup.seen(event.id)
    assert ctx.state.watch.watches == []
    assert logged(ctx)[-1] == ("publish", False, f"dry-run: would publish {event.type} {event.id}")


@pytest.mark.parametrize(
    "group,minutes,expected",
    [
        (None, 0, [("firing", False)]),
        (GroupState(active=True, last_notified=T0), 30, []),
        (GroupState(active=True, last_notified=T0), 60, [("firing", True)]),
    ],
    ids=["first page", "within the repeat interval", "repeat page"],
)
def test_page_pages_a_firing_group_first_and_again_after_the_repeat_interval(
    group: GroupState | None, minutes: int, expected: list[tuple[str, bool]]
) -> None:
    ctx = context(now=T0 + timedelta(minutes=minutes))
    alert = record(ctx)
    key = '{model="chat"}'
    if group is not None:
        ctx.state.book.groups[key] = group
    ctx.active = {key: [alert]}
    ctx.firing_groups = {key}
    assert PageStage().run(ctx)
    assert [(n.status, n.repeat) for n in ctx.decision.notifications] == expected
    assert ctx.state.book.groups[key].active
    for page in ctx.decision.notifications:
        assert page.group_labels == {"model": "chat"} and page.alerts[0].fingerprint == alert.fingerprint
        assert (
            page.annotations[alert.fingerprint]["runbook_url"] == "https://runbooks.example.com/bad-replies"
        )


def test_page_sends_the_resolved_page_and_keeps_a_muted_group() -> None:
    ctx = context()
    alert = record(ctx, announced=True)
    resolved = ctx.index.alert(alert, "resolved", T0)
    ctx.state.book.groups = {'{model="chat"}': GroupState(active=True, last_notified=T0)}
    ctx.resolved_by_group = {'{model="chat"}': [resolved]}
    muted = context(state=ctx.state)
    muted.firing_groups = {'{model="chat"}'}  # still firing, but muted: no page, and not resolved
    assert PageStage().run(muted) and not muted.decision.notifications
    assert '{model="chat"}' in ctx.state.book.groups

    assert PageStage().run(ctx)
    (page,) = ctx.decision.notifications
    assert (page.status, page.alerts) == ("resolved", [resolved]) and ctx.state.book.groups == {}
    assert logged(ctx) == [("alerts", True, "resolved page")]
