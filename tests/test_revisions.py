"""Revisions: a corrected Detection of a window already judged updates that window, never counts as another.

The detect stage publishes a revision when events come late: same segment,
detector, config and window bounds, a new detection id, ``revision`` n. The
Decider (``retrain_trigger/revisions.py`` says what a detection is) must count
it in place of the window's earlier verdict wherever windows are counted.
"""

from __future__ import annotations

from pathlib import Path

from retrain_trigger import promote, watch
from retrain_trigger.actions import RETRAIN_REQUESTED, ROLLBACK_REQUESTED, from_kafka
from retrain_trigger.pipeline import Decider
from retrain_trigger.policy import Promote
from retrain_trigger.publish import Decision
from retrain_trigger.revisions import WindowLedger
from retrain_trigger.stable import StableVersionMarked
from schemas.events import Alert, Detection
from tests.test_decide_pipeline import T0, detection, policy
from tests.test_decide_stage import handle, make_stage, records
from tests.test_rollback_verify import NEG, VERIFY, next_window, watching
from tests.test_rollback_verify import detection as rated


def revised(original: Detection, revision: int = 1, **update: object) -> Detection:
    """The detect stage's correction of ``original``'s window: a new id and revision, new numbers."""
    fields = {"detection_id": f"{original.detection_id}-r{revision}", "revision": revision, **update}
    return original.model_copy(update=fields)


def decider() -> Decider:
    """The pipeline tests' policy with v1 marked stable."""
    d = Decider(policy())
    d.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    return d


def run(d: Decider, detections: list[Detection]) -> Decision:
    """Every detection decided at its own time, the decisions added up."""
    total = Decision()
    for one in detections:
        total.extend(d.decide(one, one.detected_at))
    return total


def firing(decision: Decision) -> list[str]:
    return [a.labels["alertname"] for a in decision.alerts if a.status == "firing"]


def types(decision: Decision) -> list[str]:
    return [e.type for e in decision.actions]


def test_the_revision_of_a_drift_window_is_one_alert_one_rollback_with_its_numbers() -> None:
    d = decider()
    first = detection(0, n=60)
    fix = revised(first, current_size=180)
    decision = run(d, [first, fix])
    assert firing(decision) == ["bad-replies"] and types(decision) == [ROLLBACK_REQUESTED]
    [record] = d.model_state("chat").book.alerts.values()
    # The corrected window replaces the first verdict in the alert's values; it is not a second window.
    assert [x.detection_id for x in record.detections] == [fix.detection_id]
    assert record.breaches == 1


def test_an_ok_window_revised_to_drift_fires_once_and_completes_its_streak() -> None:
    # input-drift fires after 3 consecutive breaching windows (and retrains).
    d = decider()
    ok = detection(2, "ks", verdict="ok", n=200)
    decision = run(d, [detection(0, "ks", n=200), detection(1, "ks", n=200), ok])
    assert firing(decision) == [] and types(decision) == []
    # Late events show window 2 drifted after all: windows 0, 1, 2 are three breaches.
    fix = revised(ok, verdict="drift", p_value=0.001)
    decision = run(d, [fix, revised(ok, 2, verdict="drift", p_value=0.001)])
    assert firing(decision) == ["input-drift"] and types(decision) == [RETRAIN_REQUESTED]


def test_revisions_do_not_advance_a_for_n_windows_streak() -> None:
    d = decider()
    first = detection(0, "ks", n=200)
    decision = run(d, [first, revised(first), revised(first, 2)])
    assert firing(decision) == [] and types(decision) == []
    [record] = d.model_state("chat").book.alerts.values()
    assert (record.status, record.breaches) == ("pending", 1)
    # The third new window fires it, not the third verdict on window 0.
    assert firing(run(d, [detection(1, "ks", n=200)])) == []
    assert firing(run(d, [detection(2, "ks", n=200)])) == ["input-drift"]


def test_a_revision_of_an_older_window_neither_refires_nor_resolves() -> None:
    d = decider()
    bad = detection(0)
    decision = run(d, [bad, detection(1, verdict="ok"), detection(2, verdict="ok")])
    assert [a.status for a in decision.alerts] == ["firing", "resolved"]
    # Window 0 corrected after the alert resolved on window 2: nothing fires again.
    later = run(d, [revised(bad, current_size=300)])
    assert later.alerts == [] and later.actions == []
    # The window it resolved on, corrected to drift: nothing either (a revision changes values only).
    later = run(d, [revised(detection(2, verdict="ok"), verdict="drift")])
    assert later.alerts == [] and later.actions == []


def test_a_revision_of_a_firing_alerts_window_resolves_nothing_by_itself() -> None:
    # bad-replies resolves after 2 clear windows.
    d = decider()
    ok1 = detection(1, verdict="ok")
    run(d, [detection(0), ok1])
    # A correction of the clear window 1 is not a second clear window.
    assert run(d, [revised(ok1, current_size=150)]).alerts == []
    bad2 = detection(2)
    run(d, [bad2])
    # Window 2 corrected to ok would make two clear windows with window 1: still no resolution by itself.
    decision = run(d, [revised(bad2, verdict="ok", p_value=0.5)])
    assert decision.alerts == [] and decision.actions == []
    [record] = d.model_state("chat").book.alerts.values()
    assert (record.status, record.clears) == ("firing", 2)
    # The next clear window resolves it.
    assert [a.status for a in run(d, [detection(3, verdict="ok")]).alerts] == ["resolved"]


def test_a_rollback_watch_counts_a_revised_target_window_once() -> None:
    state = watching([rated(0, NEG, "v2", "drift", 54, 62)])
    short = rated(2, NEG, "v1", "ok", 2, 12)
    assert watch.observe(state, VERIFY, short) == []
    assert watch.observe(state, VERIFY, next_window([short])) == []  # v2 did not serve beside it
    # Late feedback: the same window now has 20 samples, 4 rejected (not 32 and 6).
    more = {**short.measurements, "current_rate": 0.2, "current_samples": 20.0}
    watch.observe(state, VERIFY, revised(short, measurements=more))
    [open_watch] = state.watches
    counted = open_watch.target[NEG]
    assert (counted.samples, counted.hits) == (20, 4)


def test_a_promotion_trial_counts_a_revised_window_once() -> None:
    state = promote.PromotionState()
    rules = Promote()
    window = rated(1, NEG, "v2", "ok", 10, 100)
    promote.observe(state, rules, window, "v1")
    more = {**window.measurements, "current_rate": 0.1, "current_samples": 150.0}
    trial = promote.observe(state, rules, revised(window, measurements=more), "v1")
    assert trial is not None
    assert (trial.windows, trial.candidate[NEG].samples, trial.candidate[NEG].hits) == (1, 150, 15)


def test_the_ledger_tells_new_latest_and_older_windows_apart() -> None:
    ledger = WindowLedger()
    w0, w1 = detection(0, "ks"), detection(1, "ks")
    other_config = w1.model_copy(update={"config": {"alpha": 0.01}})
    kinds = [ledger.classify(d).kind for d in (w0, w1, revised(w1), revised(w0), other_config)]
    assert kinds == ["new", "new", "latest", "older", "new"]


def test_the_decide_stage_publishes_one_rollback_and_one_alert_for_a_window_and_its_revision(
    tmp_path: Path,
) -> None:
    stage = make_stage(tmp_path)
    first = detection(0, n=60)
    fix = revised(first, current_size=180)
    out = [records(handle(stage, [first])), records(handle(stage, [fix]))]
    rollbacks = [from_kafka(v) for o in out for _, v, _ in o.get(stage.topics.rollback_requests, [])]
    alerts = [Alert.model_validate_json(v) for o in out for _, v, _ in o.get(stage.topics.alerts, [])]
    assert [e.type for e in rollbacks] == [ROLLBACK_REQUESTED]
    assert [a.status for a in alerts] == ["firing"]
    [record] = stage.decider.model_state("chat").book.alerts.values()
    assert [x.detection_id for x in record.detections] == [fix.detection_id]
