"""The default rollback rule and the rollback watch after trials 17a and 12b.

- a healthy canary's one unlucky window (p 0.032, adjusted 0.047) rolls nothing back; a weak breach
  needs two windows in a row, an overwhelming one (p < 1e-6) fires at once;
- a bad canary that is not significant on every window keeps one alert firing (no page per flap);
- a verification counts only target windows that ran after the rollback took effect: never the
  ones beside a rolled-back version that still serves;
- a failed verification names what it compared and why.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from retrain_trigger import watch as rollback_watch
from retrain_trigger.actions import ROLLBACK_REQUESTED
from retrain_trigger.gates import judge
from retrain_trigger.pipeline import Decider
from retrain_trigger.policy import Verify, load_policy
from retrain_trigger.stable import StableVersionMarked
from schemas.events import Detection
from tests.test_rollback_verify import (
    NEG,
    PROF,
    T0,
    V2_FEEDBACK,
    V2_PROFANITY,
    detection,
    next_window,
    watching,
)

CANARY = "quality.canary.v1"
POLICY = load_policy()
RULE = next(r for r in POLICY.rules if r.action == "rollback")


def _p(d: Detection, p: float, adjusted: float | None = None) -> Detection:
    """``d`` with p-value ``p`` (and the window's adjusted one)."""
    measurements = dict(d.measurements)
    if adjusted is not None:
        measurements["p_value_adjusted"] = adjusted
    return d.model_copy(update={"p_value": p, "measurements": measurements})


@pytest.mark.parametrize(
    "p,adjusted,outcome,immediate",
    [
        (0.032, 0.047, "clear", False),  # trial 17a's r3: a drift verdict at the detector's alpha
        (0.0004, 0.0008, "breach", False),  # strong, but one window of it could still be luck
        (0.0004, 0.002, "clear", False),  # the adjusted p-value is the one that counts
        (1e-9, 2e-9, "breach", True),  # overwhelming: fires at once
    ],
)
def test_the_rollback_rule_needs_a_p_value_stricter_than_the_detectors_alpha(
    p: float, adjusted: float, outcome: str, immediate: bool
) -> None:
    evidence = judge(RULE, _p(detection(0, NEG, "v2", "drift", 20, 60), p, adjusted))
    assert (evidence.outcome, evidence.immediate) == (outcome, immediate), evidence.reason


def _decide(stream: list[Detection]) -> list[tuple[int, str]]:
    """(index in the stream, event type) of every action the default policy publishes."""
    decider = Decider(POLICY)
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    return [(n, e.type) for n, d in enumerate(stream) for e in decider.decide(d, d.detected_at).actions]


def test_a_weak_breach_rolls_back_on_the_second_window_in_a_row_and_not_on_one() -> None:
    weak = [_p(detection(m, NEG, "v2", "drift", 30, 60), 1e-4) for m in range(3)]
    ok = detection(1, NEG, "v2", "ok", 9, 60)
    assert _decide([weak[0], ok, weak[2]]) == []
    assert _decide(weak[:2]) == [(1, ROLLBACK_REQUESTED)]


def test_an_overwhelming_breach_rolls_back_on_its_first_window() -> None:
    assert _decide([detection(0, NEG, "v2", "drift", 42, 60)]) == [(0, ROLLBACK_REQUESTED)]


def test_a_bad_canary_not_significant_on_every_window_keeps_one_alert_firing() -> None:
    decider = Decider(POLICY)
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    verdicts = ["drift", "ok", "ok", "drift", "ok", "ok", "ok", "drift", "ok", "ok"]
    alerts = [
        a.status
        for m, verdict in enumerate(verdicts)
        for d in [detection(m, PROF, "v2", verdict, 30 if verdict == "drift" else 12, 400)]
        for a in decider.decide(d, d.detected_at).alerts
    ]
    assert alerts == ["firing"]


def test_target_windows_beside_a_rolled_back_version_that_still_serves_are_not_evidence() -> None:
    # Trial 12b: no actuator, backdated traffic replayed at once: the canary v2 kept serving.
    state = watching([V2_FEEDBACK], before=[V2_PROFANITY])
    beside = [detection(m, NEG, "v1", "ok", 10, 54) for m in (1, 2)]
    notes: list[str] = []
    outcomes = []
    for m, target in zip((1, 2), beside, strict=True):
        outcomes += rollback_watch.observe(
            state, Verify(), detection(m, NEG, "v2", "drift", 50, 60), notes=notes
        )
        outcomes += rollback_watch.observe(state, Verify(), target, notes=notes)
        outcomes += rollback_watch.observe(
            state, Verify(), detection(m, PROF, "v1", "ok", 0, 400), notes=notes
        )
    assert outcomes == [] and not state.watches[0].target.get(NEG)
    assert "rb-1: window 2026-03-01T12:02:00+00:00 of v1 not counted (v2 still served until" in notes[-1]
    assert notes[-1].endswith("waiting for a window of v1 after the rollback")
    # v2 is gone: v1's next window is the first one after the rollback took effect.
    after = rollback_watch.observe(state, Verify(), detection(3, PROF, "v1", "ok", 0, 400))
    after += rollback_watch.observe(state, Verify(), detection(3, NEG, "v1", "ok", 10, 54))
    after += rollback_watch.observe(state, Verify(), next_window([detection(3, NEG, "v1", "ok", 10, 54)]))
    assert [o.verified for o in after] == [True]
    assert "quality.negative_feedback.v1 0.185 (n=54) vs 0.871 (n=62)" in after[0].reason


def test_a_target_window_counted_before_the_rolled_back_version_showed_up_again_is_taken_back() -> None:
    state = watching([V2_FEEDBACK])
    # v1's window 1 arrives first (only 20 samples: not judged yet), then v2's window 1: it still served.
    assert rollback_watch.observe(state, Verify(), detection(1, NEG, "v1", "ok", 4, 20)) == []
    # A later window of the model came before v2's window 1 (one that opened late): v1's was counted.
    assert rollback_watch.observe(state, Verify(), next_window([detection(1, NEG, "v1", "ok", 4, 20)])) == []
    assert state.watches[0].target[NEG].samples == 20
    rollback_watch.observe(state, Verify(), detection(1, NEG, "v2", "drift", 50, 60))
    assert NEG not in state.watches[0].target


def test_with_no_window_after_the_rollback_the_watch_fails_saying_the_version_still_served() -> None:
    state = watching([V2_FEEDBACK])
    for m in (1, 2):
        rollback_watch.observe(state, Verify(), detection(m, NEG, "v2", "drift", 50, 60))
        rollback_watch.observe(state, Verify(), detection(m, NEG, "v1", "ok", 10, 54))
    [outcome] = rollback_watch.expire(state, Verify(), T0 + timedelta(hours=2))
    assert not outcome.verified
    assert outcome.reason.startswith(
        "target v1 not seen serving after the rollback took effect within 1:00:00"
    )
    assert "v2 still served until 2026-03-01T12:03:00+00:00" in outcome.reason


def test_the_decider_says_it_waits_and_never_verifies_the_same_instant_on_windows_beside_the_canary() -> None:
    decider = Decider(POLICY)
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    stream = [V2_FEEDBACK]
    for m in (1, 2, 3):
        stream += [detection(m, NEG, "v2", "drift", 50, 60), detection(m, NEG, "v1", "ok", 10, 54)]
    log = []
    types = []
    for d in stream:
        decision = decider.decide(d, T0 + timedelta(minutes=10))  # all at once: a replay
        types += [e.type for e in decision.actions]
        log += [str(entry) for entry in decision.log if entry.stage == "watch"]
    assert types == [ROLLBACK_REQUESTED]
    assert any("v2 still served until" in line for line in log), log


def _canary_detection(minute: float, version: str, verdict: str, hits: int, samples: int) -> Detection:
    """A quality.canary.v1 detection: it has no rate verify compares (its rates are per metric)."""
    d = detection(minute, NEG, version, verdict, hits, samples)
    return d.model_copy(
        update={
            "detector_id": CANARY,
            "detection_id": f"canary-{version}-{minute}",
            "measurements": {"negative_feedback.canary_rate": hits / samples},
        }
    )


def test_a_failed_verification_names_the_trigger_and_what_stood_in_for_it() -> None:
    triggers = [_canary_detection(0, "v2", "drift", 14, 71)]
    state = watching(triggers, before=[V2_PROFANITY, detection(0, NEG, "v2", "ok", 14, 71)])
    assert state.watches[0].stand_ins == {NEG: CANARY}
    outcomes = rollback_watch.observe(state, Verify(), detection(1, PROF, "v1", "ok", 0, 400))
    outcomes += rollback_watch.observe(state, Verify(), detection(1, NEG, "v1", "ok", 40, 70))
    outcomes += rollback_watch.observe(state, Verify(), next_window([detection(1, NEG, "v1", "ok", 40, 70)]))
    [outcome] = outcomes
    assert not outcome.verified
    assert outcome.reason.startswith("target v1 is not better: quality.negative_feedback.v1 0.571 (n=70)")
    assert "the rollback was triggered by quality.canary.v1" in outcome.reason
    assert "judged on quality.negative_feedback.v1 for quality.canary.v1 (verify.stand_ins)" in outcome.reason
    assert "toxicity.profanity.v1" not in outcome.reason
    comparisons = {c.detector_id: c for c in outcome.comparisons}
    assert comparisons[NEG].triggered and not comparisons[PROF].triggered


def test_a_verification_that_failed_on_another_measure_says_it_was_not_a_trigger() -> None:
    state = watching([V2_FEEDBACK], before=[V2_PROFANITY])
    outcomes = rollback_watch.observe(state, Verify(), detection(2, NEG, "v1", "ok", 10, 54))
    outcomes += rollback_watch.observe(state, Verify(), detection(2, PROF, "v1", "drift", 60, 474))
    outcomes += rollback_watch.observe(
        state, Verify(), next_window([detection(2, PROF, "v1", "drift", 60, 474)])
    )
    [outcome] = outcomes
    assert not outcome.verified
    assert "(not a trigger of the rollback, but worse: toxicity.profanity.v1 at alpha 0.01" in outcome.reason


def test_policy_check_says_when_the_default_rollback_rule_fires_and_resolves() -> None:
    from click.testing import CliRunner

    from retrain_trigger.policy import DEFAULT_POLICY
    from services.cli import main

    result = CliRunner().invoke(main, ["policy", "check", str(DEFAULT_POLICY)])
    assert result.exit_code == 0, result.output
    assert (
        "after 1 consecutive window(s), >= 30 samples, p < 1e-06, or 2 consecutive ones with p < 0.001;"
        " resolves after 6 clear window(s)"
    ) in result.output
