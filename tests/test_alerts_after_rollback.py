"""Issue 12, trial 12e problems 1 and 2: what a verified rollback says, and what it ends.

In the trial the canary v2 kept serving four windows after the rollback
request; the verification waited for them but did not say so, and both
critical alerts of v2 stayed firing until ``resolve_timeout`` (30m), although
v2 was gone and the rollback verified. Here every step goes through the real
Decider with the default policy: v1 is stable, v2 is rolled back at minute 1.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from curation.history import ALERTS, alert_row
from curation.history_store import HistoryStore
from curation.store import create_table
from retrain_trigger import evidence
from retrain_trigger.actions import (
    RETRAIN_REQUESTED,
    ROLLBACK_FAILED,
    ROLLBACK_REQUESTED,
    ROLLBACK_VERIFIED,
    RollbackOutcome,
)
from retrain_trigger.evidence import Tally
from retrain_trigger.pipeline import Decider
from retrain_trigger.policy import Verify, load_policy
from retrain_trigger.stable import StableVersionMarked
from retrain_trigger.watch import Watch
from schemas.events import Alert, Detection
from services.console.reader import HistoryReader
from tests.test_history import T0 as HISTORY_DAY
from tests.test_history import alert, batch
from tests.test_rollback_evidence import _canary, _decider, _stable
from tests.test_rollback_verify import NEG, T0, V2_FEEDBACK, V2_PROFANITY, detection


def _latency(minute: int, version: str) -> Detection:
    """A serving-errors breach (an alert-only rule): not part of any rollback incident."""
    slow = detection(minute, "quality.latency.v1", version, "drift", 0, 400)
    return slow.model_copy(update={"measurements": {"observed_ms": 900.0, "slo_ms": 300.0}})


def _steps(decider: Decider, stream: list[Detection]) -> list[tuple[list[Alert], list[str]]]:
    """Each step's alerts and action types."""
    out = []
    for d in stream:
        decision = decider.decide(d, d.detected_at)
        out.append((decision.alerts, [e.type for e in decision.actions]))
    return out


def _firing(decider: Decider) -> dict[str, str]:
    """Firing alerts of the model: fingerprint -> ``rule detector version``."""
    alerts = decider.model_state("chat").book.alerts
    return {
        fp: f"{r.rule} {r.labels['detector']} {r.labels['model_version']}"
        for fp, r in alerts.items()
        if r.status == "firing"
    }


def _incident_stream() -> list[Detection]:
    """v2 rolled back at minute 1 (a latency alert of its own, one of v1 too), still serving in 1 and 2."""
    stream = [_latency(-1, "v1"), _latency(-1, "v2"), _latency(0, "v1"), _latency(0, "v2")]
    stream += [V2_PROFANITY, V2_FEEDBACK]
    for minute in (1, 2):
        stream += _stable(minute) + _canary(minute)
    return stream + _stable(3) + _stable(4)


def test_a_verified_rollback_resolves_the_rolled_back_versions_alerts_at_once_saying_why() -> None:
    decider = _decider()
    stream = _incident_stream()
    steps = _steps(decider, stream)
    types = [t for _, step in steps for t in step]
    assert types == [ROLLBACK_REQUESTED, ROLLBACK_VERIFIED]
    [verifying] = [n for n, (_, step) in enumerate(steps) if ROLLBACK_VERIFIED in step]
    assert verifying == stream.index(_stable(4)[0])  # v1's minute 3, known once minute 4 came
    resolved, latency = sorted(steps[verifying][0], key=lambda a: a.labels["alertname"])
    assert latency.labels["alertname"] == "serving-errors" and latency.labels["model_version"] == "v2"
    assert resolved.status == "resolved" and resolved.labels["alertname"] == "bad-replies"
    assert resolved.labels["model_version"] == "v2" and resolved.severity == "critical"
    assert resolved.ends_at == T0 + timedelta(minutes=5)  # the end of the window that verified it
    [rollback_id] = decider.model_state("chat").dedup.published
    assert resolved.resolved_by == f"rollback {rollback_id} verified: v1 serves and is better"
    # Every alert of v2 is gone (it no longer serves), its latency alert outside the incident too; v1's stays.
    assert sorted(_firing(decider).values()) == ["serving-errors quality.latency.v1 v1"]
    assert decider.model_state("chat").incidents == {}
    # Announced once: later ticks, even past resolve_timeout, resolve only v1's latency alert.
    later = decider.tick(T0 + timedelta(hours=2))
    assert [(a.labels["model_version"], a.resolved_by) for a in later.alerts] == [
        ("v1", "no detection for 0:30:00")
    ]


def test_the_verified_event_names_the_windows_counted_and_the_canarys_last_window() -> None:
    decider = _decider()
    events = [
        e
        for d in _incident_stream()
        for e in decider.decide(d, d.detected_at).actions
        if e.type == ROLLBACK_VERIFIED
    ]
    outcome = RollbackOutcome.model_validate(events[0].data)
    [counted] = outcome.counted_windows
    assert (counted.window_start, counted.window_end) == (
        T0 + timedelta(minutes=3),
        T0 + timedelta(minutes=4),
    )
    assert counted.samples == {NEG: 54, "toxicity.profanity.v1": 400}
    assert outcome.counted_window_count == 1 and outcome.counted_until == counted.window_end
    assert outcome.rolled_back_last_window is not None
    last = outcome.rolled_back_last_window
    assert (last.window_start, last.window_end) == (T0 + timedelta(minutes=2), T0 + timedelta(minutes=3))
    assert outcome.rolled_back_windows_after_request == 2
    assert outcome.reason.endswith(
        "; on v1's windows 12:03:00-12:04:00 (1 window),"
        " after v2's last window 12:02:00-12:03:00 (2 windows after the request)"
    )
    # Events written before these fields still parse, with nothing counted said.
    old = {k: v for k, v in events[0].data.items() if not k.startswith(("counted_", "rolled_back_"))}
    assert RollbackOutcome.model_validate(old).counted_windows == []


def test_an_outcome_lists_at_most_twelve_windows_and_counts_them_all() -> None:
    watch = Watch(
        rollback_id="r",
        model="chat",
        from_version="v2",
        target_version="v1",
        requested_at=T0,
        baseline={NEG: 0.8},
    )
    for minute in range(20):
        start = T0 + timedelta(minutes=minute)
        key = f"chat|v1|||{NEG}|cfg|{start.isoformat()}|{(start + timedelta(minutes=1)).isoformat()}"
        watch.windows[key] = Tally(hits=1, samples=10)
    outcome = evidence.outcome(watch, Verify(), True, "better", [])
    assert len(outcome.counted_windows) == 12 and outcome.counted_window_count == 20
    assert outcome.counted_windows[0].window_start == T0 and outcome.rolled_back_last_window is None
    assert (
        outcome.reason
        == "better; on v1's windows 12:00:00-12:20:00 (20 windows), v2 served no window after the request"
    )


def test_a_withdrawn_verification_resolves_nothing_again_and_the_next_breach_fires() -> None:
    decider = _decider()
    stream = [V2_PROFANITY, V2_FEEDBACK, *_stable(1), *_stable(2)]
    steps = _steps(decider, stream)
    assert [t for _, step in steps for t in step] == [ROLLBACK_REQUESTED, ROLLBACK_VERIFIED]
    assert [a.status for alerts, _ in steps for a in alerts] == ["firing", "resolved"]
    # v2 serves again: the verification is withdrawn, and its bad window is a breach as any other.
    again = _steps(decider, _canary(3))
    assert [t for _, step in again for t in step] == [ROLLBACK_FAILED]
    failed_alerts = [a for alerts, _ in again for a in alerts]
    assert [(a.status, a.labels["alertname"]) for a in failed_alerts] == [("firing", "bad-replies")]
    assert failed_alerts[0].starts_at == T0 + timedelta(minutes=3)  # a new alert, from that window


def test_late_ratings_of_the_rolled_back_versions_old_replies_do_not_fire_its_alert_again() -> None:
    decider = _decider()
    _steps(decider, [V2_PROFANITY, V2_FEEDBACK, *_stable(1), *_stable(2)])
    assert _firing(decider) == {}
    # 50 of 60 thumbs down, given in minute 3 on replies v2 served before the rollback.
    thumbs = detection(3, NEG, "v2", "drift", 50, 60).model_copy(update={"window_kind": "feedback"})
    decision = decider.decide(thumbs, thumbs.detected_at)
    assert (decision.alerts, decision.actions, decision.notifications) == ([], [], [])
    assert _firing(decider) == {} and decider.model_state("chat").book.alerts == {}
    assert any("ratings of v2's old replies are no evidence for its alerts" in str(e) for e in decision.log)


def test_a_retrain_held_by_the_rollback_is_released_by_its_verification() -> None:
    # The default policy's inhibit rule holds retrains of a model "until the rollback alert resolves".
    decider = _decider()
    stream = [V2_PROFANITY, V2_FEEDBACK]
    for minute in (1, 2, 3):
        drift = detection(minute, "drift.ks.v1", "v1", "drift", 0, 400)
        stream += [drift, *_stable(minute)] + (_canary(minute) if minute < 3 else [])
    stream += _stable(4)
    steps = _steps(decider, stream)
    types = [step for _, step in steps]
    [verifying] = [n for n, step in enumerate(types) if ROLLBACK_VERIFIED in step]
    assert [t for step in types[:verifying] for t in step] == [ROLLBACK_REQUESTED]
    assert types[verifying] == [ROLLBACK_VERIFIED, RETRAIN_REQUESTED]
    assert [(a.status, a.labels["alertname"]) for a in steps[verifying][0]] == [
        ("resolved", "bad-replies"),
        ("firing", "input-drift"),
    ]


def test_a_rollback_verified_at_its_deadline_resolves_its_alerts_in_that_tick() -> None:
    # The target never had a profanity window: only the deadline's final judgement verifies it.
    decider = Decider(load_policy().model_copy(update={"resolve_timeout": timedelta(hours=3)}))
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    stream = [V2_PROFANITY, V2_FEEDBACK, _stable(1)[1], _stable(2)[1]]
    assert [t for _, step in _steps(decider, stream) for t in step] == [ROLLBACK_REQUESTED]
    tick = decider.tick(T0 + timedelta(hours=1, minutes=5))
    assert [e.type for e in tick.actions] == [ROLLBACK_VERIFIED]
    [resolved] = tick.alerts
    assert resolved.status == "resolved" and resolved.ends_at == T0 + timedelta(hours=1, minutes=5)
    assert resolved.resolved_by is not None and resolved.resolved_by.endswith(
        "verified: v1 serves and is better"
    )
    assert [n.status for n in tick.notifications] == ["resolved"]


def test_resolved_by_is_an_alerts_column_and_older_tables_stay_readable(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    old = pa.schema([field for field in ALERTS if field.name != "resolved_by"])
    create_table(store.uri("alerts"), old, ["day"], "alerts", "an older worker's", None)
    row = {k: v for k, v in alert_row(alert()).items() if k != "resolved_by"}
    write_deltalake(store.uri("alerts"), pa.Table.from_pylist([row], schema=old), mode="append")
    reader = HistoryReader(str(tmp_path), refresh_seconds=0)
    day = HISTORY_DAY.date()
    assert reader.read("alerts", [day], columns=["status", "resolved_by"]).to_pylist() == [
        {"status": "firing", "resolved_by": None}
    ]
    ended = alert("resolved").model_copy(update={"resolved_by": "6 clear windows"})
    assert store.write(batch(alerts=[alert_row(ended)]), now=HISTORY_DAY) == {"alerts": 1}
    rows = reader.read("alerts", [day], columns=["status", "resolved_by"]).to_pylist()
    assert sorted(rows, key=lambda r: r["status"]) == [
        {"status": "firing", "resolved_by": None},
        {"status": "resolved", "resolved_by": "6 clear windows"},
    ]
