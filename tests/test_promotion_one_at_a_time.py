"""One promotion per model at a time (trial 17c: two healthy challengers were both requested), pure.

Model ``chat``, stable v1, two healthy challengers v2 and v3, no registry:
the decide pipeline requests one, holds the other with a logged reason, and
lets it go once the stable version moved and the policy's cooldown passed.
"""

from __future__ import annotations

from datetime import timedelta

from retrain_trigger.actions import PROMOTION_REQUESTED, CandidateEvidence, MarginComparison, PromotionRequest
from retrain_trigger.pipeline import Decider, ModelState
from retrain_trigger.policy import Promote
from retrain_trigger.promote_hold import PendingPromotion, choose, hold
from retrain_trigger.publish import Decision
from retrain_trigger.stable import StableVersionMarked, StableVersions
from schemas.events import CloudEvent, Detection
from tests.test_promotion import decider, window
from tests.test_rollback_verify import NEG, PROF, T0


def minute(m: int, stable: str = "v1", stable_samples: int = 40) -> list[Detection]:
    """One minute: v2 and v3 (v3 rejected less often), then the stable version on fewer feedback events."""
    rates = {"v2": 15, "v3": 12, stable: round(0.15 * stable_samples)}
    samples = {"v2": 150, "v3": 150, stable: stable_samples}
    order = [v for v in ("v2", "v3") if v != stable] + [stable]
    return [window(m, v, rates[v], samples[v]) for v in order]


def step(d: Decider, detections: list[Detection]) -> tuple[list[CloudEvent], list[tuple[str, str]]]:
    """The promotion requests the detections led to, and the promote stage's (subject, reason) log lines."""
    events: list[CloudEvent] = []
    log: list[tuple[str, str]] = []
    for det in detections:
        decision = d.decide(det, det.detected_at)
        events += [e for e in decision.actions if e.type == PROMOTION_REQUESTED]
        log += promote_log(decision)
    return events, log


def promote_log(decision: Decision) -> list[tuple[str, str]]:
    return [(e.subject, e.reason) for e in decision.log if e.stage == "promote"]


def test_two_challengers_qualifying_in_one_step_give_one_request_and_the_other_is_held() -> None:
    d = decider()
    # The stable version reaches promote.min_samples (100) only with its third window (3 x 40):
    # that one detection makes both challengers promotable in the same step.
    detections = [det for m in range(3) for det in minute(m)]
    events, log = step(d, detections)
    # Then more healthy windows of both while v3's promotion has not taken effect.
    later, later_log = step(d, [det for m in range(3, 6) for det in minute(m)])
    [event] = events + later
    data = PromotionRequest.model_validate(event.data)
    # v3's interval of the difference reaches less high on negative feedback: it goes first.
    assert (data.from_version, data.target_version, data.chosen_over) == ("v1", "v3", ["v2"])
    assert event.time == detections[-1].window_end  # decided on the stable version's detection
    highs = {c.detector_id: c.ci_high for c in data.evidence.comparisons}
    assert "chosen over v2" in data.reason and "lowest upper end" in data.reason
    assert f"v3 {highs['quality.negative_feedback.v1']:+.3g}" in data.reason
    held = f"held: promotion of v3 requested at {event.time.isoformat()}, waiting for it to take effect"
    assert ("promote chat/v2", f"{held} (v1 is still stable)") in log
    assert ("promote chat/v2", f"{held} (v1 is still stable)") in later_log
    assert d.tick(T0 + timedelta(hours=3)).actions == []
    state = d.model_state("chat")
    assert state.promotion.trials["v2"].ready
    # The hold is decision state: a restarted worker restores it from the changelog and still holds v2.
    restored = ModelState.from_json(state.to_json()).promotion.pending
    assert restored == state.promotion.pending and restored is not None and restored.version == "v3"


def test_after_the_stable_version_moves_the_held_one_is_judged_again_against_it() -> None:
    d = decider()
    [first], _ = step(d, [det for m in range(3) for det in minute(m)])
    # The promotion of v3 took effect: v3 is stable now. v2's trial starts over against v3.
    marked = T0 + timedelta(minutes=4)
    d.mark_stable(StableVersionMarked(model="chat", version="v3", marked_at=marked))
    # v3 now serves at v2's rate on as many feedback events: v2 qualifies against it after 3 windows.
    against_v3 = [det for m in range(4, 8) for det in minute(m, stable="v3", stable_samples=150)]
    events, log = step(d, against_v3)
    assert events == []  # within the policy's cooldown (1h) of v3's request
    trial = d.model_state("chat").promotion.trials["v2"]
    assert trial.stable_version == "v3" and trial.ready and trial.windows == 4
    cooling = "settled; the policy's cooldown lasts until " + (first.time + timedelta(hours=1)).isoformat()
    assert any(subject == "promote chat/v2" and cooling in reason for subject, reason in log)
    # Once the cooldown has passed, the next tick requests v2, from the new stable version v3.
    [second] = d.tick(first.time + timedelta(hours=1, seconds=5)).actions
    data = PromotionRequest.model_validate(second.data)
    assert (data.from_version, data.target_version, data.chosen_over) == ("v3", "v2", [])
    assert "chosen over" not in data.reason and data.evidence.status == "non_inferior"
    assert d.tick(first.time + timedelta(hours=2)).actions == []


def test_a_request_holds_until_the_stable_version_moves_or_is_marked_again_then_for_the_cooldown() -> None:
    stable = StableVersions()
    stable.apply(StableVersionMarked(model="chat", version="v1", marked_at=T0 - timedelta(days=1)))
    at = T0 + timedelta(minutes=3)
    pending = PendingPromotion(version="v3", from_version="v1", event_id="e", at=at, requested_at=at)
    hour = timedelta(hours=1)
    assert hold(None, stable, "chat", at, hour) is None
    assert "waiting for it to take effect" in (hold(pending, stable, "chat", at + 2 * hour, hour) or "")
    # A person marks v1 stable again after the request: it is settled (declined), the cooldown still runs.
    stable.apply(StableVersionMarked(model="chat", version="v1", marked_at=at + timedelta(minutes=1)))
    assert "cooldown lasts until" in (hold(pending, stable, "chat", at + timedelta(minutes=2), hour) or "")
    assert hold(pending, stable, "chat", at + hour, hour) is None


def evidence(version: str, neg_high: float, prof_high: float | None) -> CandidateEvidence:
    """A non-inferior challenger with these upper ends on negative feedback and (if measured) profanity."""
    highs = {NEG: neg_high} if prof_high is None else {NEG: neg_high, PROF: prof_high}
    measures = [
        MarginComparison(
            detector_id=d,
            measurement="m",
            stable=0.1,
            candidate=0.1,
            stable_samples=400,
            candidate_samples=400,
            margin=0.05,
            ci_high=high,
            judgement="non_inferior",
        )
        for d, high in highs.items()
    ]
    return CandidateEvidence(
        model="chat",
        stable_version="v1",
        candidate_version=version,
        status="non_inferior",
        reason="",
        confidence=0.95,
        windows=3,
        windows_required=3,
        stable_windows=3,
        comparisons=measures,
    )


def test_ties_on_the_first_measure_go_to_the_next_measure_then_to_the_version_name() -> None:
    promote = Promote()  # margins: negative feedback, detoxify, profanity
    tied = [evidence("v4", 0.01, 0.004), evidence("v2", 0.01, None), evidence("v3", 0.01, 0.002)]
    best, why = choose(tied, promote)
    assert best.candidate_version == "v3" and why.startswith("chosen over v4, v2:")
    same = [evidence("v5", 0.01, 0.002), evidence("v3", 0.01, 0.002)]
    assert choose(same, promote)[0].candidate_version == "v3"
    alone = evidence("v9", 0.04, None)
    assert choose([alone], promote) == (alone, "")
