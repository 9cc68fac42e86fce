"""The follow-up watch after a rollback: does the target version serve, and is it better?

After a rollback request from version B to version T, the watch keeps B's last
measurements (negative-feedback rate, toxic share, ... as the policy's
``verify.metrics`` name them). Once detections show T serving (windows of T
with enough rows after the request), every measurement of T is compared with
B's: all lower and no drift verdict -> ``rollback.verified``; anything else ->
``rollback.failed``; nothing seen of T within ``verify.within`` -> failed too.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.actions import MetricComparison, RollbackOutcome
from retrain_trigger.policy import Verify
from retrain_trigger.state import State
from schemas.events import Detection


class Watch(BaseModel):
    """One rollback under watch."""

    model_config = ConfigDict(extra="forbid")

    rollback_id: str
    model: str
    from_version: str
    target_version: str
    requested_at: datetime
    baseline: dict[str, float] = Field(description="Detector id -> the rolled-back version's measurement")
    seen: dict[str, MetricComparison] = Field(default_factory=dict)


class WatchState(State):
    """Open watches, and the last verify measurement of every (version, detector) of one model."""

    watches: list[Watch] = Field(default_factory=list)
    last: dict[str, float] = Field(default_factory=dict)


def _measure(verify: Verify, detection: Detection) -> float | None:
    name = verify.metrics.get(detection.detector_id)
    return None if name is None else detection.measurements.get(name)


def observe(state: WatchState, verify: Verify, detection: Detection) -> list[RollbackOutcome]:
    """Record a detection's verify measurement; return the outcomes of watches it completes."""
    value = _measure(verify, detection)
    if value is None or detection.current_size < verify.min_samples:
        return []
    segment = detection.segment
    state.last[f"{segment.model_version}|{detection.detector_id}"] = value
    done: list[RollbackOutcome] = []
    for watch in list(state.watches):
        if segment.model_version != watch.target_version or detection.window_start < watch.requested_at:
            continue
        baseline = watch.baseline.get(detection.detector_id)
        if baseline is None:
            continue
        watch.seen[detection.detector_id] = MetricComparison(
            detector_id=detection.detector_id,
            measurement=verify.metrics[detection.detector_id],
            rolled_back=baseline,
            target=value,
            target_verdict=detection.verdict,
        )
        if set(watch.seen) >= set(watch.baseline):
            state.watches.remove(watch)
            done.append(conclude(watch))
    return done


def start(
    state: WatchState, verify: Verify, rollback_id: str, model: str, bad: str, target: str, at: datetime
) -> None:
    """Open a watch for a published rollback, with the bad version's last measurements as baseline."""
    baseline = {
        detector: state.last[f"{bad}|{detector}"]
        for detector in verify.metrics
        if f"{bad}|{detector}" in state.last
    }
    state.watches.append(
        Watch(
            rollback_id=rollback_id,
            model=model,
            from_version=bad,
            target_version=target,
            requested_at=at,
            baseline=baseline,
        )
    )


def conclude(watch: Watch) -> RollbackOutcome:
    """Verified when every compared measurement of the target is lower and none of its windows drifted."""
    comparisons = list(watch.seen.values())
    worse = [c for c in comparisons if c.target >= c.rolled_back or c.target_verdict == "drift"]
    if not watch.baseline:
        verified, reason = False, "no measurement of the rolled-back version to compare with"
    elif worse:
        names = ", ".join(f"{c.detector_id} {c.target:.3g} vs {c.rolled_back:.3g}" for c in worse)
        verified, reason = False, f"target {watch.target_version} is not better: {names}"
    else:
        verified, reason = (
            True,
            f"target {watch.target_version} serves and is better on {len(comparisons)} measure(s)",
        )
    return RollbackOutcome(
        rollback_id=watch.rollback_id,
        model=watch.model,
        from_version=watch.from_version,
        target_version=watch.target_version,
        verified=verified,
        reason=reason,
        comparisons=comparisons,
    )


def expire(state: WatchState, verify: Verify, now: datetime) -> list[RollbackOutcome]:
    """Conclude watches older than ``verify.within``: failed unless every compared measurement improved."""
    done = []
    for watch in [w for w in state.watches if now - w.requested_at >= verify.within]:
        state.watches.remove(watch)
        if not watch.seen:
            done.append(
                RollbackOutcome(
                    rollback_id=watch.rollback_id,
                    model=watch.model,
                    from_version=watch.from_version,
                    target_version=watch.target_version,
                    verified=False,
                    reason=f"target {watch.target_version} not seen serving within {verify.within}",
                )
            )
        else:
            done.append(conclude(watch))
    return done
