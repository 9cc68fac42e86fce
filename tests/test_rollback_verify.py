"""Rollback verification, table-driven: judged on the measures that triggered it, with confidence.

The numbers of issue 14: v2 was rolled back to v1 for negative feedback at
0.871; v1 then showed 0.185 on that measure and one profane reply in 474
(0.00211) where v2 had none. That rollback helped and must be verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from retrain_trigger import watch as rollback_watch
from retrain_trigger.pipeline import Decider
from retrain_trigger.policy import DEFAULT_POLICY, PolicyError, Verify, load_policy, parse_policy
from retrain_trigger.stable import StableVersionMarked
from retrain_trigger.watch import Watch, WatchState
from schemas.events import Detection, Segment
from services.cli import main

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NEG = "quality.negative_feedback.v1"
PROF = "toxicity.profanity.v1"
VERIFY = Verify()


def detection(minute: float, detector: str, version: str, verdict: str, hits: int, samples: int) -> Detection:
    """A detection with the measurements its real detector writes (rates and what they were taken on)."""
    start = T0 + timedelta(minutes=minute)
    rate = hits / samples
    if detector == NEG:
        # A feedback window: the rate is over current_samples feedback events, not the window's rows.
        measurements = {"current_rate": rate, "current_samples": float(samples), "reference_rate": 0.2}
        size = samples + 40
    else:
        measurements = {"rate.profanity": rate, "baseline_rate.profanity": 0.0}
        size = samples
    return Detection(
        detection_id=f"{detector}-{version}-{minute}",
        detector_id=detector,
        detector_version="v1",
        # The configs of the real detectors: their gates are the ones another measure must pass.
        config={"alpha": 0.01, "min_effect_size": 0.05}
        if detector == NEG
        else {"alpha": 0.01, "min_rate_increase": 0.02},
        segment=Segment(model="chat", model_version=version),
        window_start=start,
        window_end=start + timedelta(minutes=1),
        reference_size=400,
        current_size=size,
        p_value=1e-9 if verdict == "drift" else 0.6,
        effect_size=0.6 if verdict == "drift" else 0.0,
        verdict=verdict,
        measurements=measurements,
        reference="stable:chat",
        detected_at=start + timedelta(minutes=1),
    )


def next_window(after: Sequence[Detection]) -> Detection:
    """A later window of the model: it shows the rolled-back version did not serve beside ``after``."""
    minute = (max(d.window_end for d in after) - T0) / timedelta(minutes=1)
    later = detection(minute, "drift.text_length.v1", "v1", "ok", 0, 100)
    return later.model_copy(update={"measurements": {}, "detection_id": f"later-{minute}"})


def watching(triggers: list[Detection], before: Sequence[Detection] = ()) -> WatchState:
    """A watch of the rollback v2 -> v1, opened after ``before`` were observed, triggered by ``triggers``."""
    state = WatchState()
    for d in [*before, *triggers]:
        rollback_watch.observe(state, VERIFY, d)
    at = max(d.window_end for d in triggers)
    rollback_watch.start(state, VERIFY, "rb-1", "chat", "v2", "v1", at, triggers)
    return state


# v2, the version rolled back: most replies rejected, no profanity.
V2_FEEDBACK = detection(0, NEG, "v2", "drift", 54, 62)
V2_PROFANITY = detection(0, PROF, "v2", "ok", 0, 402)

CASES = [
    (
        "issue 14: feedback recovered 0.871 -> 0.185, one profane reply in 474 does not fail it",
        [detection(2, PROF, "v1", "warning", 1, 474), detection(2, NEG, "v1", "ok", 10, 54)],
        "verified",
        [
            "target v1 is better on quality.negative_feedback.v1 with 95% confidence",
            "quality.negative_feedback.v1 0.185 (n=54) vs 0.871 (n=62)",
            "no other measure significantly worse (toxicity.profanity.v1 0.00211 (n=474) vs 0 (n=402)",
        ],
    ),
    (
        "not enough data yet: 12 feedback events on the target -> keep watching",
        [detection(2, NEG, "v1", "ok", 2, 12)],
        None,
        [],
    ),
    (
        "windows of the target add up until there are enough samples",
        [
            detection(2, NEG, "v1", "ok", 2, 12),
            detection(2, PROF, "v1", "ok", 0, 300),
            detection(3, NEG, "v1", "ok", 4, 20),
        ],
        "verified",
        ["quality.negative_feedback.v1 0.188 (n=32) vs 0.871 (n=62)"],
    ),
    (
        "the trigger is better, but the target's profanity window is not in yet -> keep watching",
        [detection(2, NEG, "v1", "ok", 10, 54)],
        None,
        [],
    ),
    (
        "the triggering measure did not improve -> failed, with the numbers",
        [detection(2, NEG, "v1", "ok", 54, 60)],
        "failed",
        ["target v1 is not better: quality.negative_feedback.v1 0.9 (n=60) vs 0.871 (n=62)"],
    ),
    (
        "lower but not yet with 95% confidence -> keep watching",
        [detection(2, NEG, "v1", "ok", 25, 30)],
        None,
        [],
    ),
    (
        "another measure significantly and materially worse -> failed",
        [detection(2, NEG, "v1", "ok", 10, 54), detection(2, PROF, "v1", "drift", 60, 474)],
        "failed",
        [
            "target v1 is significantly and materially worse on"
            " toxicity.profanity.v1 0.127 (n=474) vs 0 (n=402)"
        ],
    ),
    (
        "another measure significantly but not materially worse (1.75% < 2% minimum) -> verified",
        [detection(2, NEG, "v1", "ok", 10, 54), detection(2, PROF, "v1", "warning", 70, 4000)],
        "verified",
        ["toxicity.profanity.v1 0.0175 (n=4000) vs 0 (n=402), adjusted p=0.0"],
    ),
]


@pytest.mark.parametrize("name,target_windows,expected,reason_parts", CASES, ids=[c[0] for c in CASES])
def test_verification_table(
    name: str, target_windows: list[Detection], expected: str | None, reason_parts: list[str]
) -> None:
    state = watching([V2_FEEDBACK], before=[V2_PROFANITY])
    # The model's next window says v2 did not serve beside them: only then are they evidence.
    steps = [*target_windows, next_window(target_windows)]
    outcomes = [o for d in steps for o in rollback_watch.observe(state, VERIFY, d)]
    if expected is None:
        assert outcomes == [] and len(state.watches) == 1, outcomes
        return
    [outcome] = outcomes
    assert outcome.verified == (expected == "verified"), outcome.reason
    for part in reason_parts:
        assert part in outcome.reason, outcome.reason
    assert state.watches == []
    assert outcome.triggers == [NEG] and outcome.confidence == 0.95
    [trigger] = [c for c in outcome.comparisons if c.triggered]
    assert (trigger.detector_id, trigger.rolled_back, trigger.rolled_back_samples) == (NEG, 54 / 62, 62)


def test_the_issue_numbers_in_the_published_comparisons() -> None:
    state = watching([V2_FEEDBACK], before=[V2_PROFANITY])
    rollback_watch.observe(state, VERIFY, detection(2, PROF, "v1", "warning", 1, 474))
    rollback_watch.observe(state, VERIFY, detection(2, NEG, "v1", "ok", 10, 54))
    [outcome] = rollback_watch.observe(state, VERIFY, next_window([detection(2, NEG, "v1", "ok", 10, 54)]))
    by_id = {c.detector_id: c for c in outcome.comparisons}
    feedback, profanity = by_id[NEG], by_id[PROF]
    assert feedback.judgement == "better" and feedback.p_value is not None and feedback.p_value < 1e-9
    assert feedback.ci_high is not None and feedback.ci_high < 0  # target minus rolled back: all below 0
    assert profanity.judgement == "not_worse" and not profanity.triggered
    assert profanity.p_value_adjusted is not None and profanity.p_value_adjusted > 0.5


def test_not_enough_data_until_the_deadline_fails_saying_so() -> None:
    state = watching([V2_FEEDBACK])
    assert rollback_watch.observe(state, VERIFY, detection(2, NEG, "v1", "ok", 2, 12)) == []
    assert rollback_watch.observe(state, VERIFY, next_window([detection(2, NEG, "v1", "ok", 2, 12)])) == []
    assert rollback_watch.expire(state, VERIFY, T0 + timedelta(minutes=30)) == []
    [outcome] = rollback_watch.expire(state, VERIFY, T0 + timedelta(minutes=62))
    assert not outcome.verified
    assert outcome.reason == (
        "not enough data within 1:00:00: quality.negative_feedback.v1 has 12 (target) and 62 (rolled back)"
        " of 30 samples"
    )


def test_not_shown_better_by_the_deadline_fails_with_the_numbers() -> None:
    state = watching([V2_FEEDBACK])
    rollback_watch.observe(state, VERIFY, detection(2, NEG, "v1", "ok", 25, 30))
    rollback_watch.observe(state, VERIFY, next_window([detection(2, NEG, "v1", "ok", 25, 30)]))
    [outcome] = rollback_watch.expire(state, VERIFY, T0 + timedelta(hours=2))
    assert not outcome.verified
    assert outcome.reason.startswith(
        "target v1 not shown better with 95% confidence within 1:00:00: quality.negative_feedback.v1 0.833"
    ), outcome.reason


def test_a_redelivered_window_is_not_counted_twice() -> None:
    state = watching([V2_FEEDBACK])
    window = detection(2, NEG, "v1", "ok", 4, 20)
    assert rollback_watch.observe(state, VERIFY, window) == []
    assert rollback_watch.observe(state, VERIFY, window) == []  # 40 samples if counted twice: verified
    assert rollback_watch.observe(state, VERIFY, next_window([window])) == []
    assert state.watches[0].target[NEG].samples == 20


def test_a_watch_from_before_the_triggers_were_recorded_judges_every_measure() -> None:
    # State written by an older worker: no triggers, no sample counts (taken as min_samples).
    state = WatchState(
        watches=[
            Watch(
                rollback_id="rb-old",
                model="chat",
                from_version="v2",
                target_version="v1",
                requested_at=T0,
                baseline={NEG: 0.871},
            )
        ]
    )
    restored = WatchState.from_json(state.to_json())
    rollback_watch.observe(restored, VERIFY, detection(2, NEG, "v1", "ok", 10, 54))
    [outcome] = rollback_watch.observe(restored, VERIFY, next_window([detection(2, NEG, "v1", "ok", 10, 54)]))
    assert outcome.verified, outcome.reason


def test_the_decider_verifies_the_issue_rollback_and_publishes_the_numbers() -> None:
    decider = Decider(load_policy())
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    steps = [
        V2_PROFANITY,
        V2_FEEDBACK,
        detection(2, PROF, "v1", "warning", 1, 474),
        detection(2, NEG, "v1", "ok", 10, 54),
        next_window([detection(2, NEG, "v1", "ok", 10, 54)]),
    ]
    events = [e for d in steps for e in decider.decide(d, d.detected_at).actions]
    assert [e.type for e in events] == ["io.loopwatch.rollback.requested", "io.loopwatch.rollback.verified"]
    data = events[1].data
    assert data["verified"] is True and data["triggers"] == [NEG]
    assert "0.185 (n=54) vs 0.871 (n=62)" in data["reason"]
    # Kept for consumers of the old shape: detector, measurement, both rates, target verdict.
    first = data["comparisons"][0]
    assert {"detector_id", "measurement", "rolled_back", "target", "target_verdict"} <= first.keys()


def test_policy_check_says_how_rollbacks_are_verified_and_links_the_runbooks() -> None:
    result = CliRunner().invoke(main, ["policy", "check", str(DEFAULT_POLICY)])
    assert result.exit_code == 0, result.output
    assert (
        "after a rollback: verified when every measure that triggered it is lower on the target with 95%"
        " confidence (>= 30 samples on each version); another measure fails it only when worse at its"
        " detector's alpha after Benjamini-Hochberg and by at least its detector's minimum effect;"
        " undecided after 1:00:00: failed"
    ) in result.output
    assert "runbook https://runbooks.example.com/loopwatch/bad-replies" in result.output


def test_a_verify_confidence_out_of_range_is_refused_with_its_line() -> None:
    text = "name: p\nverify:\n  confidence: 1.5\nrules:\n  - {name: r, match: {detectors: [x]}}\n"
    with pytest.raises(PolicyError, match=r"<policy>:3: verify.confidence: Input should be less than 1"):
        parse_policy(text)
