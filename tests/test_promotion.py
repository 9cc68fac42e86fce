"""Promotion of a challenger, pure: the non-inferiority judgement, the promote stage, the gate's evidence.

A challenger v2 against stable v1 of model ``chat``; negative feedback is the
measure (rates over feedback events, as the real detector writes them).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from detectors.quality_checks import compare_proportions
from retrain_trigger import promote
from retrain_trigger.actions import PROMOTION_REQUESTED, PromotionRequest
from retrain_trigger.pipeline import Decider
from retrain_trigger.policy import DEFAULT_POLICY, PolicyError, Promote, load_policy, parse_policy
from retrain_trigger.promote import PromotionState, Trial, assess, judge_candidate
from retrain_trigger.publish import action_topic
from retrain_trigger.stable import StableVersionMarked
from retrain_trigger.watch import Tally
from schemas.events import Alert, CloudEvent, Detection
from services.commands.gate import EXIT_CODES, evidence_lines
from tests.test_rollback_verify import NEG, PROF, T0, detection

PROMOTE = Promote()


def trial(candidate: tuple[int, int], stable: tuple[int, int], windows: int = 3) -> Trial:
    """A trial of v2 against v1 on negative feedback with these (hits, samples)."""
    return Trial(
        model="chat",
        candidate_version="v2",
        stable_version="v1",
        started=T0,
        windows=windows,
        candidate={NEG: Tally(hits=candidate[0], samples=candidate[1])},
        stable={NEG: Tally(hits=stable[0], samples=stable[1])},
    )


# ------------------------------------------------------------- the judgement, table-driven

CASES = [
    ("same rate, enough data: non-inferior", trial((40, 400), (48, 400)), "non_inferior", "non_inferior"),
    ("two windows of three", trial((40, 400), (48, 400), windows=2), "not_enough_data", "non_inferior"),
    ("90 samples of 100", trial((9, 90), (10, 100)), "not_enough_data", "not_enough_data"),
    ("0.30 vs 0.12: worse", trial((120, 400), (48, 400)), "worse", "worse"),
    # 0.15 vs 0.12: the interval reaches past the 0.05 margin and Fisher is not sure it is higher.
    ("0.15 vs 0.12: inconclusive", trial((60, 400), (48, 400)), "not_enough_data", "inconclusive"),
]


@pytest.mark.parametrize(("case", "the_trial", "status", "judgement"), CASES, ids=[c[0] for c in CASES])
def test_a_challenger_is_judged_against_its_margin(
    case: str, the_trial: Trial, status: str, judgement: str
) -> None:
    evidence = assess(the_trial, PROMOTE)
    assert evidence.status == status, evidence.reason
    [measure] = evidence.comparisons
    assert measure.judgement == judgement
    assert measure.margin == 0.05 and measure.detector_id == NEG


def test_the_interval_and_test_are_those_of_the_rollback_follow_up() -> None:
    [measure] = assess(trial((40, 400), (48, 400)), PROMOTE).comparisons
    # Reference = stable, current = challenger: the interval is challenger minus stable.
    same = compare_proportions(48, 400, 40, 400, confidence=0.95)
    assert (measure.difference, measure.ci_low, measure.ci_high, measure.p_value) == (
        same.difference,
        same.ci_low,
        same.ci_high,
        same.p_value,
    )
    assert (
        round(measure.difference or 0, 3) == -0.02 and measure.ci_high is not None and measure.ci_high < 0.05
    )


def test_an_alert_fired_for_the_challenger_means_worse_whatever_the_rates() -> None:
    the_trial = trial((40, 400), (48, 400))
    promote.note_alert(the_trial, "serving-errors")
    evidence = assess(the_trial, PROMOTE)
    assert evidence.status == "worse" and "serving-errors" in evidence.reason


def test_the_promote_policy_section_is_read_and_checked() -> None:
    policy = load_policy(DEFAULT_POLICY)
    assert policy.promote == Promote()
    assert policy.promote.margins[NEG].margin == 0.05
    text = DEFAULT_POLICY.read_text().replace("{measurement: current_rate, margin: 0.05}", "{margin: 2}")
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    message = str(err.value)
    assert "p.yaml:" in message and "margins" in message and "measurement" in message


# ------------------------------------------------------------- the stage in the pipeline


def window(minute: int, version: str, hits: int, samples: int = 150, *, verdict: str = "ok") -> Detection:
    """One minute's negative-feedback detection of ``version``."""
    return detection(minute, NEG, version, verdict, hits, samples)


def decider(policy_text: str | None = None, **kwargs: object) -> Decider:
    policy = parse_policy(policy_text) if policy_text else load_policy(DEFAULT_POLICY)
    d = Decider(policy, **kwargs)  # type: ignore[arg-type]
    d.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0 - timedelta(days=1)))
    return d


def run(d: Decider, detections: list[Detection]) -> list[tuple[int, CloudEvent, bool]]:
    """(index of the detection, event, dry run?) of every action the detections led to."""
    out = []
    for i, det in enumerate(detections):
        decision = d.decide(det, det.detected_at)
        out += [(i, e, False) for e in decision.actions]
        out += [(i, e, True) for e in decision.dry_run_actions]
    return out


def healthy(minutes: range) -> list[Detection]:
    """Both versions serve each minute; the challenger's rejection rate is the stable one's or lower."""
    return [d for m in minutes for d in (window(m, "v1", 18), window(m, "v2", 15))]


def test_a_healthy_challenger_is_proposed_once_after_its_windows_and_never_before() -> None:
    d = decider()
    published = run(d, healthy(range(6)))
    [(at, event, dry_run)] = published
    assert not dry_run
    # 150 samples a window: 100 per version are there after one window, three windows after minute 2.
    assert at == 5  # the challenger's detection of minute 2 (detections go v1, v2, v1, v2, ...)
    assert event.type == PROMOTION_REQUESTED and action_topic(event) == "promotion"
    data = PromotionRequest.model_validate(event.data)
    assert (data.model, data.from_version, data.target_version, data.mode) == ("chat", "v1", "v2", "auto")
    assert data.evidence.status == "non_inferior" and data.evidence.windows == 3
    [measure] = data.evidence.comparisons
    assert (measure.candidate_samples, measure.stable_samples) == (450, 450)
    assert measure.ci_high is not None and measure.ci_high < measure.margin
    assert event.id == promote.promotion_id("default", "chat", "v2")
    assert (
        event.time == healthy(range(6))[5].window_end
    )  # the evidence's time: a replay builds the same event
    assert d.model_state("chat").promotion.requested == {"v2": event.id}


def test_a_redelivered_window_is_not_counted_twice() -> None:
    d = decider()
    first = healthy(range(2))
    assert run(d, first + first + first) == []
    state = d.model_state("chat").promotion.trials["v2"]
    assert state.windows == 2 and state.candidate[NEG].samples == 300


def test_dry_run_reports_the_promotion_and_publishes_nothing() -> None:
    text = DEFAULT_POLICY.read_text().replace("mode: auto", "mode: dry-run")
    [(_, event, dry_run)] = run(decider(text), healthy(range(6)))
    assert dry_run and event.type == PROMOTION_REQUESTED
    assert PromotionRequest.model_validate(event.data).mode == "dry-run"


def test_a_challenger_an_alert_fired_for_is_never_proposed() -> None:
    d = decider()
    # One bad window: users reject 100 of 150 replies of v2, and bad-replies fires (a rollback).
    bad = [window(0, "v1", 18), window(0, "v2", 100, verdict="drift")]
    # v2 is taken out (v1 alone verifies the rollback), and comes back healthy after the watch's hour.
    alone = [window(m, "v1", 18) for m in (1, 2)]
    published = run(d, bad + alone + healthy(range(70, 78)))
    types = [e.type for _, e, _ in published]
    assert types == ["io.loopwatch.rollback.requested", "io.loopwatch.rollback.verified"]
    assert "bad-replies" in d.model_state("chat").promotion.trials["v2"].alerts


def test_with_a_registry_only_its_challenger_is_on_trial() -> None:
    d = decider(canary=lambda model: "v3")
    three = [d for m in range(6) for d in (window(m, "v1", 18), window(m, "v2", 15), window(m, "v3", 15))]
    published = run(d, three)
    assert [PromotionRequest.model_validate(e.data).target_version for _, e, _ in published] == ["v3"]
    assert d.model_state("chat").promotion.trials["v2"].ready  # as good, but not the challenger


def test_a_challenger_named_after_its_windows_is_requested_on_the_next_tick() -> None:
    challengers: dict[str, str] = {}
    d = decider(canary=lambda model: challengers.get(model))
    detections = healthy(range(4))
    assert run(d, detections) == []
    assert d.tick(detections[-1].window_end).actions == []
    challengers["chat"] = "v2"  # the registry's refresh reads the alias
    [event] = d.tick(detections[-1].window_end + timedelta(seconds=5)).actions
    assert PromotionRequest.model_validate(event.data).target_version == "v2"
    assert event.time == detections[-1].window_end  # the evidence's time, not the tick's
    assert d.tick(detections[-1].window_end + timedelta(seconds=10)).actions == []


def test_a_new_stable_version_starts_the_trial_over() -> None:
    state, policy = PromotionState(), Promote()
    for det in healthy(range(2)):
        promote.observe(state, policy, det, "v1")
    assert state.trials["v2"].windows == 2
    promote.observe(state, policy, window(2, "v2", 15), "v0")
    assert state.trials["v2"].windows == 1 and state.trials["v2"].stable_version == "v0"


def test_stable_windows_count_from_the_challengers_first_window_whatever_the_arrival_order() -> None:
    state = PromotionState()
    promote.observe(state, PROMOTE, window(0, "v1", 18), "v1")  # before v2 served: not counted
    promote.observe(state, PROMOTE, window(1, "v1", 18), "v1")  # v2's first window, seen before v2's
    for det in healthy(range(1, 3))[1:]:
        promote.observe(state, PROMOTE, det, "v1")
    trial_ = state.trials["v2"]
    assert trial_.stable[NEG].samples == 300 and trial_.stable_windows == 2 and trial_.windows == 2


# ------------------------------------------------------------- the gate's evidence


def firing(version: str) -> Alert:
    return Alert(
        fingerprint="f-1",
        status="firing",
        severity="critical",
        summary="bad",
        labels={"alertname": "bad-replies", "model": "chat", "model_version": version},
        starts_at=T0,
    )


def test_the_gate_judges_recorded_detections_as_the_stage_does() -> None:
    detections = healthy(range(3))
    [(_, event, _)] = run(decider(), detections)
    gate = judge_candidate(detections, [], PROMOTE, model="chat", candidate="v2", stable="v1")
    assert gate == PromotionRequest.model_validate(event.data).evidence
    assert EXIT_CODES[gate.status] == 0
    lines = evidence_lines(gate)
    assert lines[0] == "gate chat v2 vs stable v1: non_inferior (exit 0)"
    assert "windows: 3 of 3 (stable 3)" in lines[2]
    measure = "  quality.negative_feedback.v1 current_rate: candidate 0.1 (n=450), stable 0.12 (n=450)"
    assert lines[3].startswith(measure)
    assert lines[3].endswith("margin 0.05 -> non_inferior")


def test_the_gate_says_worse_for_an_alert_and_not_enough_data_for_too_little() -> None:
    detections = healthy(range(3))
    alerted = judge_candidate(detections, [firing("v2")], PROMOTE, model="chat", candidate="v2", stable="v1")
    assert (alerted.status, EXIT_CODES[alerted.status], alerted.alerts) == ("worse", 1, ["bad-replies"])
    other = judge_candidate(detections, [firing("v9")], PROMOTE, model="chat", candidate="v2", stable="v1")
    assert other.status == "non_inferior"
    short = judge_candidate(detections[:2], [], PROMOTE, model="chat", candidate="v2", stable="v1")
    assert (short.status, EXIT_CODES[short.status]) == ("not_enough_data", 2)
    unseen = judge_candidate(detections, [], PROMOTE, model="chat", candidate="v7", stable="v1")
    assert unseen.status == "not_enough_data" and unseen.reason == "no measure of v7 yet"


def test_a_profanity_measure_counts_too() -> None:
    detections = healthy(range(3)) + [
        detection(m, PROF, v, "ok", hits, 400) for m in range(3) for v, hits in (("v1", 1), ("v2", 40))
    ]
    evidence = judge_candidate(detections, [], PROMOTE, model="chat", candidate="v2", stable="v1")
    assert evidence.status == "worse"
    assert [c.judgement for c in evidence.comparisons] == ["non_inferior", "worse"]


def too_few(minute: int, version: str, samples: int = 25) -> Detection:
    """A negative-feedback detection of a window with too few thumbs to judge, as the detector writes it."""
    measured = detection(minute, NEG, version, "ok", 0, samples)
    counts = {"reference_samples": 150.0, "current_samples": float(samples)}
    return measured.model_copy(
        update={"p_value": None, "measurements": {"too_few_samples": 1.0, "min_samples": 30.0, **counts}}
    )


def test_a_challenger_whose_feedback_windows_were_all_too_small_is_not_promoted_on_profanity_alone() -> None:
    """Trial 12j: a canary at 100% thumbs-down, 23-29 thumbs a window, got a promotion on profanity alone."""
    detections = [
        d
        for m in range(6)
        for d in (
            window(m, "v1", 18),
            detection(m, PROF, "v1", "ok", 0, 400),
            detection(m, PROF, "v2", "ok", 0, 400),
            too_few(m, "v2"),
        )
    ]
    assert run(decider(), detections) == []
    evidence = judge_candidate(detections, [], PROMOTE, model="chat", candidate="v2", stable="v1")
    assert evidence.status == "not_enough_data"
    assert f"{NEG}: judged none of v2's windows (too few samples in each)" in evidence.reason
