"""Trial 12c problem 1: a rollback is verified only on target windows known to run without the bad version.

In the trial the stable version's window of 23:19:30 verified the rollback the
moment it was judged; the canary's own window of the same time (still serving)
came right after it in the same detect unit, and three more canary windows
followed; nothing took the verification back. Here: v1 is stable, v2 the
canary rolled back at minute 1, and every step goes through the real Decider
with the default policy.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from retrain_trigger import watch as rollback_watch
from retrain_trigger.act import MoveResult
from retrain_trigger.actions import ROLLBACK_FAILED, ROLLBACK_REQUESTED, ROLLBACK_VERIFIED
from retrain_trigger.pipeline import Decider
from retrain_trigger.policy import Verify, load_policy
from retrain_trigger.stable import StableVersionMarked
from schemas.events import CloudEvent, Detection
from streams.window_batch import BatchSummaries
from streams.windows import Windows, WindowSpec
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


def _decider(*, await_applied: bool = False) -> Decider:
    decider = Decider(load_policy(), await_applied=await_applied)
    decider.mark_stable(StableVersionMarked(model="chat", version="v1", marked_at=T0))
    return decider


def _stable(minute: int) -> list[Detection]:
    """v1's windows of one minute: clean, and feedback far better than v2's 0.871."""
    return [detection(minute, PROF, "v1", "ok", 1, 400), detection(minute, NEG, "v1", "ok", 10, 54)]


def _canary(minute: int) -> list[Detection]:
    """v2's windows of one minute: it still serves, as badly as before."""
    return [detection(minute, NEG, "v2", "drift", 50, 60), detection(minute, PROF, "v2", "ok", 0, 400)]


def _run(decider: Decider, stream: list[Detection]) -> list[list[CloudEvent]]:
    """The actions of every step."""
    return [decider.decide(d, d.detected_at).actions for d in stream]


def test_the_stable_window_before_the_canarys_own_of_the_same_time_verifies_nothing() -> None:
    decider = _decider()
    # One detect unit per minute, sorted by segment key: v1's windows first, then v2's.
    stream = [V2_PROFANITY, V2_FEEDBACK]
    for minute in (1, 2, 3, 4):
        stream += _stable(minute) + _canary(minute)
    actions = _run(decider, stream)
    assert [e.type for step in actions for e in step] == [ROLLBACK_REQUESTED]
    log = [str(e) for e in decider.decide(_stable(5)[0], T0).log if e.stage == "watch"]
    assert any("held until a later window of chat shows whether v2 served beside it" in line for line in log)


def test_once_the_canary_is_gone_the_verification_comes_one_window_later() -> None:
    decider = _decider()
    stream = [V2_PROFANITY, V2_FEEDBACK, *_stable(1), *_canary(1), *_stable(2), *_stable(3)]
    types = [[e.type for e in step] for step in _run(decider, stream)]
    verified = [n for n, step in enumerate(types) if ROLLBACK_VERIFIED in step]
    # Minute 2 is v1's first window without v2; its verification waits for minute 3's first window.
    assert verified == [stream.index(_stable(3)[0])], types
    assert [t for step in types for t in step] == [ROLLBACK_REQUESTED, ROLLBACK_VERIFIED]


def test_the_rolled_back_version_seen_serving_after_a_verification_withdraws_it() -> None:
    decider = _decider()
    stream = [V2_PROFANITY, V2_FEEDBACK, *_stable(1), *_stable(2)]
    assert [e.type for step in _run(decider, stream) for e in step] == [ROLLBACK_REQUESTED, ROLLBACK_VERIFIED]
    # v2 serves again in minute 3 (nobody took it out; the detect stage had only not seen it for a while).
    [failed] = [e for step in _run(decider, _canary(3)) for e in step]
    assert failed.type == ROLLBACK_FAILED and failed.id.endswith(".failed")
    assert failed.data["verified"] is False
    assert failed.data["reason"].startswith(
        "verification withdrawn: v2 served in the window 2026-03-01T12:03:00"
    )
    assert failed.data["reason"].endswith("the rollback is not in effect")
    assert [e.type for step in _run(decider, _canary(4)) for e in step] == []  # said once


def test_ratings_of_the_rolled_back_versions_old_replies_are_not_it_serving() -> None:
    decider = _decider()
    stream = [V2_PROFANITY, V2_FEEDBACK, *_stable(1), *_stable(2)]
    assert [e.type for step in _run(decider, stream) for e in step] == [ROLLBACK_REQUESTED, ROLLBACK_VERIFIED]
    # Thumbs given in minute 3 on replies v2 served before the rollback: a feedback window of v2.
    thumbs = detection(3, NEG, "v2", "drift", 50, 60).model_copy(update={"window_kind": "feedback"})
    assert [e.type for e in decider.decide(thumbs, thumbs.detected_at).actions] == []
    # Its requests' windows are what says it serves.
    served = [d.model_copy(update={"window_kind": "inference"}) for d in _canary(4)[1:]]
    assert [e.type for step in _run(decider, served) for e in step] == [ROLLBACK_FAILED]


def test_a_rollback_applied_before_the_window_counts_it_at_once() -> None:
    decider = _decider(await_applied=True)
    [[], [requested]] = _run(decider, [V2_PROFANITY, V2_FEEDBACK])
    applied = MoveResult(
        request_id=requested.id,
        kind="rollback",
        model="chat",
        alias="canary",
        from_version="v2",
        target_version="v1",
        applied=True,
        reason="moved",
    )
    opened = V2_FEEDBACK.detected_at
    assert decider.rollback_result(applied, opened, opened).actions == []
    types = [[e.type for e in step] for step in _run(decider, _stable(1))]
    assert types == [[], [ROLLBACK_VERIFIED]]


def test_windows_closing_in_one_unit_go_out_in_order_of_time_then_segment() -> None:
    # The watch's rule needs it: v1's minute-1 window must not come before v2's minute-0 one.
    spec = WindowSpec(seconds=60, sample_size=10, grace_seconds=5, idle_seconds=30)
    windows = Windows(spec)
    batch = BatchSummaries(spec, rows_per_partial=10, rng=random.Random(0))
    for version in ("v1", "v2"):
        segment = {"model": "chat", "model_version": version, "app": None, "route": None, "tenant": None}
        for at in (0.0, 60.0):
            wanted = batch.wants(segment, "inference", at)
            assert wanted is not None
            partial, key = wanted
            partial.sample.keep({"at": at}, key)
    for partial in batch.all():
        assert windows.add(partial, now=0.0) == []
    closed = windows.tick(now=31.0)  # every segment went quiet: all four close in one unit
    minute = [datetime.fromtimestamp(0, UTC), datetime.fromtimestamp(60, UTC)]
    assert [(w.start, w.segment["model_version"]) for w in closed] == [
        (minute[0], "v1"),
        (minute[0], "v2"),
        (minute[1], "v1"),
        (minute[1], "v2"),
    ]


def test_a_watch_whose_target_windows_were_never_known_fails_saying_so() -> None:
    decider = _decider()
    _run(decider, [V2_PROFANITY, V2_FEEDBACK, *_stable(1)])  # the model's traffic ends there
    [failed] = decider.tick(T0 + timedelta(hours=2)).actions
    assert failed.type == ROLLBACK_FAILED
    assert failed.data["reason"] == (
        "target v1 served from 2026-03-01T12:01:00+00:00, but no later window of chat came within 1:00:00"
        " to show that v2 did not serve beside it"
    )


def test_a_revision_of_a_held_window_replaces_it() -> None:
    state = watching([V2_FEEDBACK])
    short = detection(2, NEG, "v1", "ok", 2, 12)
    assert rollback_watch.observe(state, Verify(), short) == []
    more = {**short.measurements, "current_rate": 0.2, "current_samples": 20.0}
    late = short.model_copy(update={"detection_id": "late", "revision": 1, "measurements": more})
    assert rollback_watch.observe(state, Verify(), late) == []
    [watch] = state.watches
    assert NEG not in watch.target and len(watch.held) == 1  # held, not counted
    assert rollback_watch.observe(state, Verify(), next_window([short])) == []
    assert (watch.target[NEG].samples, watch.target[NEG].hits) == (20, 4) and not watch.held
