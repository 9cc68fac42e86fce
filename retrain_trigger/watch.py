"""The follow-up watch after a rollback: does the target serve, and did it fix what triggered the rollback?

After a rollback request from version B back to version T, the watch holds
B's rates (as the policy's ``verify.metrics`` names them): those of the
detections that triggered the rollback, and B's latest of every other measure.
The windows of T after the request add up per measure (hits and samples), and
each time one arrives the watch judges, with Fisher's exact test:

- every *triggering* measure lower on T with ``verify.confidence``, both
  versions with ``verify.min_samples`` samples, and no other measure
  significantly and materially worse -> ``rollback.verified``;
- a triggering measure no lower on T (on enough samples), or another measure
  worse at ``alpha`` after Benjamini-Hochberg *and* by at least the minimum
  effect (the gates a detection passes) -> ``rollback.failed``;
- otherwise the watch keeps watching (also until every other measure was
  seen once on the target); once ``verify.within`` has passed it fails, with
  "not enough data" or "not shown better" and the numbers.

A trigger that ``verify.metrics`` does not name is judged on its stand-in
(``verify.stand_ins``: ``quality.canary.v1`` on the thumbs-down rate of
``quality.negative_feedback.v1``, since the stable version gets no canary
verdict). Without a verify rate of any triggering detector or stand-in (an
older watch), every measure with a baseline is judged as a triggering one,
and the reason says so.

Only target windows that start once the rollback took effect count
(:meth:`Watch.counts_after`): after the request's window end, after
``rollback.applied`` with an act stage, and after the last window of the
rolled-back version that still served after the request (what the target's
windows beside it added is taken back); each only once a later window of the
model shows whether the rolled-back version served beside it, and a window
of the rolled-back version after a verification withdraws it
(:mod:`retrain_trigger.evidence`).

One profane reply on T therefore cannot outweigh a negative-feedback rate that
fell from 0.871 to 0.185: a rise of 0.002 is neither significant nor material.

>>> from retrain_trigger.policy import Verify
>>> watch = Watch(rollback_id="r", model="chat", from_version="v2", target_version="v1",
...     requested_at=datetime(2026, 1, 1), baseline={"quality.negative_feedback.v1": 0.871},
...     baseline_samples={"quality.negative_feedback.v1": 62}, triggers=["quality.negative_feedback.v1"],
...     target={"quality.negative_feedback.v1": Tally(hits=10, samples=54)})
>>> outcome = judge(watch, Verify())
>>> outcome.verified, outcome.reason.split(":")[0]
(True, 'target v1 is better on quality.negative_feedback.v1 with 95% confidence')
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from detectors.base import verdict
from detectors.correction import adjust
from detectors.quality_checks import compare_proportions
from retrain_trigger import evidence
from retrain_trigger.actions import Judgement, MetricComparison, RollbackOutcome
from retrain_trigger.evidence import Held, Tally, Verified
from retrain_trigger.policy import Verify
from retrain_trigger.revisions import WindowUpdate, window_key
from retrain_trigger.state import State
from schemas.events import Detection

if TYPE_CHECKING:
    from retrain_trigger.act import MoveResult

#: Gates of another measure when neither the policy nor the detector's config sets them.
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.02
#: Detection ids a watch remembers, so a redelivered window is not counted twice.
_MAX_COUNTED = 256
_EFFECT_KEYS = ("min_effect_size", "min_rate_increase")


class Gate(BaseModel):
    """When another measure counts against a rollback: significance level and minimum worsening."""

    model_config = ConfigDict(extra="forbid")

    alpha: float
    min_effect_size: float


class Watch(BaseModel):
    """One rollback under watch."""

    model_config = ConfigDict(extra="forbid")

    rollback_id: str
    model: str
    from_version: str
    target_version: str
    requested_at: datetime
    baseline: dict[str, float] = Field(description="Detector id -> the rolled-back version's rate")
    baseline_samples: dict[str, int] = Field(default_factory=dict, description="... and its samples")
    triggers: list[str] = Field(default_factory=list, description="Detectors whose detections rolled back")
    target: dict[str, Tally] = Field(default_factory=dict, description="The target's windows, added up")
    verdicts: dict[str, str] = Field(default_factory=dict, description="The target's latest verdicts")
    gates: dict[str, Gate] = Field(default_factory=dict, description="From the target detections' configs")
    counted: list[str] = Field(default_factory=list, description="Detection ids already added up")
    windows: dict[str, Tally] = Field(
        default_factory=dict, description="Window key -> what it added (a revision replaces it)"
    )
    seen: dict[str, MetricComparison] = Field(default_factory=dict, description="The latest judgement")
    opened_at: datetime | None = Field(None, description="The decision's time when the watch opened")
    awaiting_apply: bool = Field(False, description="Waiting for the act stage's rollback.applied")
    counts_from: datetime | None = Field(
        None, description="Target windows starting before this are not counted [default: requested_at]"
    )
    seen_until: datetime | None = Field(None, description="The latest window end of the model since")
    rolled_back_until: datetime | None = Field(
        None,
        description="The rolled-back version still served until this window end after the request:"
        " the rollback had not taken effect, the target's windows before it are not evidence",
    )
    rolled_back_since: datetime | None = Field(None, description="... and that window's start")
    rolled_back_windows: int = Field(0, description="Windows the rolled-back version served since")
    stand_ins: dict[str, str] = Field(
        default_factory=dict, description="Measure -> the trigger it is judged for (verify.stand_ins)"
    )
    held: dict[str, Held] = Field(
        default_factory=dict, description="Window key -> a target window not counted until it is known"
    )
    known_until: datetime | None = Field(
        None, description="The latest window start of the model since: windows ending by then are known"
    )

    def counts_after(self) -> datetime:
        """Target windows starting before this ran before the rollback took effect: they do not count."""
        start = self.counts_from or self.requested_at
        return max(start, self.rolled_back_until) if self.rolled_back_until else start

    def elapsed(self, now: datetime) -> timedelta:
        """How long the watch has run: in event time (its windows) or on the clock, whichever is longer.

        A replay of backdated traffic has windows far older than the clock: its
        deadline runs on the windows' times, and on the clock only from when
        the watch opened, so the replayed incident does not fail at once.
        """
        by_windows = (self.seen_until - self.requested_at) if self.seen_until else timedelta(0)
        return max(by_windows, now - (self.opened_at or self.requested_at))


class WatchState(State):
    """Open watches, and the last verify measurement of every (version, detector) of one model."""

    watches: list[Watch] = Field(default_factory=list)
    verified: list[Verified] = Field(
        default_factory=list, description="Verifications a later window withdraws"
    )
    last: dict[str, float] = Field(default_factory=dict)
    last_samples: dict[str, int] = Field(default_factory=dict)


def _rate(verify: Verify, detection: Detection) -> tuple[float, int] | None:
    """The detection's verify rate and the samples it was measured on, or None (not a rate we compare)."""
    name = verify.metrics.get(detection.detector_id)
    return None if name is None else measured_rate(name, detection)


def measured_rate(name: str, detection: Detection) -> tuple[float, int] | None:
    """The detection's rate ``name`` and the samples it was measured on, or None (not a rate here)."""
    value = detection.measurements.get(name)
    if value is None or not 0.0 <= value <= 1.0:
        return None
    samples = detection.current_size
    head, _, last = name.rpartition(".")
    if last.endswith("_rate"):
        # current_rate is measured on current_samples (feedback events, not window rows).
        key = f"{head}.{last[:-5]}_samples" if head else f"{last[:-5]}_samples"
        samples = int(detection.measurements.get(key, samples))
    return (value, samples) if samples > 0 else None


def _gate(verify: Verify, config: dict[str, Any]) -> Gate:
    """The policy's gates, else the detector's own (its config travels with every detection)."""

    def number(*keys: str) -> float | None:
        found = [config[k] for k in keys if isinstance(config.get(k), int | float)]
        return float(found[0]) if found else None

    alpha = verify.alpha if verify.alpha is not None else number("alpha")
    effect = verify.min_effect_size if verify.min_effect_size is not None else number(*_EFFECT_KEYS)
    return Gate(
        alpha=alpha if alpha is not None else DEFAULT_ALPHA,
        min_effect_size=effect if effect is not None else DEFAULT_MIN_EFFECT,
    )


def observe(
    state: WatchState,
    verify: Verify,
    detection: Detection,
    update: WindowUpdate | None = None,
    notes: list[str] | None = None,
) -> list[RollbackOutcome]:
    """Record a detection's verify rate; return the outcomes of the watches it settles.

    A revision of a window already counted replaces what that window added;
    one of an older window (``update.kind == "older"``) is counted but settles
    nothing by itself. Only target windows that start once the rollback took
    effect count (:meth:`Watch.counts_after`), each once it is known whether
    the rolled-back version served beside it (:mod:`retrain_trigger.evidence`);
    ``notes`` gets why one did not. A window of a rolled-back version after
    its verification withdraws it (:func:`~retrain_trigger.evidence.withdrawn`).
    """
    # A version serves in the windows of its requests; ratings of its old replies come later.
    serves = detection.window_kind != "feedback"
    done = evidence.withdrawn(state.verified, detection, verify.within) if serves else []
    for watch in state.watches:
        if watch.seen_until is None or detection.window_end > watch.seen_until:
            watch.seen_until = detection.window_end
        if watch.known_until is None or detection.window_start > watch.known_until:
            watch.known_until = detection.window_start
        if serves and detection.segment.model_version == watch.from_version:
            evidence.still_served(watch, detection)
    measured = _rate(verify, detection)
    segment, detector = detection.segment, detection.detector_id
    older = update is not None and update.kind == "older"
    if measured is not None and not older:
        key = f"{segment.model_version}|{detector}"
        state.last[key], state.last_samples[key] = measured
    for watch in list(state.watches):
        released = evidence.release(watch)
        for window, held in released:
            _count(watch, verify, window, held)
        counted = None
        if measured is not None and segment.model_version == watch.target_version:
            counted = _target_window(watch, verify, detection, update, measured, notes)
        if not released and (counted is None or older):
            continue  # no new evidence (a revision of an older window settles nothing by itself)
        outcome = judge(watch, verify)
        if outcome is not None:
            _settled(state, watch, outcome, detection.window_end)
            done.append(outcome)
    return done


def _target_window(
    watch: Watch,
    verify: Verify,
    detection: Detection,
    update: WindowUpdate | None,
    measured: tuple[float, int],
    notes: list[str] | None,
) -> Held | None:
    """A target window: counted (returned), held until it is known, or not counted at all (None)."""
    older = update is not None and update.kind == "older"
    if watch.awaiting_apply or detection.window_start < watch.counts_after():
        if notes is not None and not older:
            notes.append(
                f"{watch.rollback_id}: waiting for the act stage's rollback.applied"
                if watch.awaiting_apply
                else evidence.waiting(watch, detection)
            )
        return None
    window = update.key if update is not None else window_key(detection)
    if window not in watch.windows and detection.detection_id in watch.counted:
        return None  # counted by a watch opened before windows were keyed
    held = Held(
        detector=detection.detector_id,
        window_start=detection.window_start,
        window_end=detection.window_end,
        tally=Tally.of(*measured),
        verdict=detection.verdict,
        config=detection.config,
    )
    if window in watch.windows or evidence.known(watch, held):
        _count(watch, verify, window, held)
        return held
    watch.held[window] = held  # a revision of a held window replaces it
    if notes is not None and not older:
        notes.append(evidence.holding(watch, detection))
    return None


def _count(watch: Watch, verify: Verify, window: str, held: Held) -> None:
    """Add a target window to the watch's tallies (a revision replaces what the window added before)."""
    detector = held.detector
    tally = watch.target.get(detector, Tally(hits=0, samples=0))
    counted = watch.windows.get(window)
    if counted is not None:
        tally = tally - counted
    watch.windows[window] = held.tally
    for old in list(watch.windows)[:-_MAX_COUNTED]:
        del watch.windows[old]
    watch.target[detector] = tally + held.tally
    watch.verdicts[detector] = held.verdict
    watch.gates[detector] = _gate(verify, held.config)


def _settled(state: WatchState, watch: Watch, outcome: RollbackOutcome, at: datetime) -> None:
    """A watch's outcome is out: it closes; a verification is kept, as a later window may withdraw it."""
    state.watches.remove(watch)
    if outcome.verified:
        evidence.remember(state.verified, watch, outcome, at)


def applied(state: WatchState, verify: Verify, result: MoveResult, at: datetime) -> RollbackOutcome | None:
    """The act stage's result for a watched rollback: it counts from now on, or fails (rejected).

    ``at`` is when the act stage applied it (its clock); the target's windows
    count from that moment mapped onto the windows' times: the request's
    window end plus the time from the watch's opening to the move.
    """
    watch = next((w for w in state.watches if w.rollback_id == result.request_id), None)
    if watch is None:
        return None
    if not result.applied:
        state.watches.remove(watch)
        return evidence.outcome(watch, verify, False, f"the rollback was not applied: {result.reason}", [])
    if watch.awaiting_apply:
        watch.awaiting_apply = False
        delay = max(at - (watch.opened_at or watch.requested_at), timedelta(0))
        watch.counts_from = watch.requested_at + delay
    return None


def start(
    state: WatchState,
    verify: Verify,
    rollback_id: str,
    model: str,
    bad: str,
    target: str,
    at: datetime,
    triggers: Sequence[Detection] = (),
    *,
    opened_at: datetime | None = None,
    await_applied: bool = False,
) -> None:
    """Open a watch for a published rollback.

    The baseline is the bad version's last rate of every verify measure; the
    measures of ``triggers`` (the detections behind the rollback) take the
    rates of those detections, and are the ones the target must improve.
    ``at`` is the request's window end (event time), ``opened_at`` the
    decision's time; with ``await_applied`` nothing counts before the act
    stage says the rollback was applied (:func:`applied`).
    """
    baseline: dict[str, float] = {}
    samples: dict[str, int] = {}
    for detector in verify.metrics:
        key = f"{bad}|{detector}"
        if key in state.last:
            baseline[detector] = state.last[key]
            samples[detector] = state.last_samples.get(key, verify.min_samples)
    triggered: list[str] = []
    stand_ins: dict[str, str] = {}
    for detection in sorted(triggers, key=lambda d: d.window_end):
        if detection.segment.model_version != bad:
            continue
        detector = detection.detector_id
        if detector not in triggered:
            triggered.append(detector)
        measured = _rate(verify, detection)
        if measured is not None:
            baseline[detector], samples[detector] = measured
        elif detector not in verify.metrics and verify.stand_ins.get(detector) in verify.metrics:
            stand_ins.setdefault(verify.stand_ins[detector], detector)
    state.watches.append(
        Watch(
            rollback_id=rollback_id,
            model=model,
            from_version=bad,
            target_version=target,
            requested_at=at,
            baseline=baseline,
            baseline_samples=samples,
            triggers=triggered,
            stand_ins={m: t for m, t in stand_ins.items() if m not in triggered},
            opened_at=opened_at,
            awaiting_apply=await_applied,
        )
    )


def _number(value: float) -> str:
    return f"{value:.3g}"


def _describe(c: MetricComparison) -> str:
    """``quality.negative_feedback.v1 0.185 (n=54) vs 0.871 (n=62), p=1.2e-12``: target first."""
    text = (
        f"{c.detector_id} {_number(c.target)} (n={c.target_samples or 0})"
        f" vs {_number(c.rolled_back)} (n={c.rolled_back_samples or 0})"
    )
    if c.p_value_adjusted is not None:
        text += f", adjusted p={c.p_value_adjusted:.2g}"
    elif c.p_value is not None:
        text += f", p={c.p_value:.2g}"
    return text


def _compare(
    watch: Watch, verify: Verify, detector: str, triggered: bool
) -> tuple[MetricComparison, float | None]:
    """One measure of the target against the rolled-back version, and its one-sided p-value (None: no test).

    For a triggering measure the test asks whether the rolled-back rate is higher
    (the target better); for another measure whether the target's is higher.
    """
    base = Tally.of(watch.baseline[detector], watch.baseline_samples.get(detector, verify.min_samples))
    tally = watch.target.get(detector, Tally(hits=0, samples=0))
    fields: dict[str, Any] = {
        "detector_id": detector,
        "measurement": verify.metrics.get(detector, ""),
        "rolled_back": watch.baseline[detector],
        "target": tally.rate,
        "target_verdict": watch.verdicts.get(detector, "ok"),
        "triggered": triggered,
        "rolled_back_samples": base.samples,
        "target_samples": tally.samples,
    }
    if min(base.samples, tally.samples) < verify.min_samples:
        return MetricComparison(**fields, judgement="not_enough_data"), None
    if triggered:
        c = compare_proportions(
            tally.hits, tally.samples, base.hits, base.samples, confidence=verify.confidence
        )
        # The test's difference is rolled-back minus target; report target minus rolled-back.
        ci_low, ci_high = -c.ci_high, -c.ci_low
        if c.p_value < 1 - verify.confidence:
            judgement: Judgement = "better"
        else:
            judgement = "not_better" if tally.rate >= base.rate else "not_yet_better"
    else:
        c = compare_proportions(
            base.hits, base.samples, tally.hits, tally.samples, confidence=verify.confidence
        )
        ci_low, ci_high = c.ci_low, c.ci_high
        judgement = "not_worse"  # decided after the correction over the other measures
    comparison = MetricComparison(
        **fields, p_value=c.p_value, ci_low=ci_low, ci_high=ci_high, judgement=judgement
    )
    return comparison, c.p_value


def _judged_as_triggers(watch: Watch) -> list[str]:
    """The measures the target must be better on: the triggers' own, their stand-ins, else every one."""
    triggers = [d for d in watch.triggers if d in watch.baseline]
    triggers += [m for m in watch.stand_ins if m in watch.baseline and m not in triggers]
    return triggers or sorted(watch.baseline)


def _why_compared(watch: Watch) -> str:
    """Which measures were judged as the rollback's triggers, and why those."""
    own = [d for d in watch.triggers if d in watch.baseline]
    parts = [f"the rollback was triggered by {', '.join(watch.triggers) or 'no recorded detection'}"]
    stood = [f"{m} for {t}" for m, t in watch.stand_ins.items() if m in watch.baseline and m not in own]
    if stood:
        parts.append(f"judged on {'; '.join(stood)} (verify.stand_ins)")
    elif not own:
        parts.append(
            "none of them has a rate in verify.metrics, so every measure the rolled-back version"
            f" had is judged as one: {', '.join(sorted(watch.baseline))}"
        )
    return ", ".join(parts)


def _judge_all(watch: Watch, verify: Verify) -> list[MetricComparison]:
    """Every measure judged: triggering ones first, then the others after their correction."""
    triggers = _judged_as_triggers(watch)
    judged = [_compare(watch, verify, d, True)[0] for d in triggers]
    others = [_compare(watch, verify, d, False) for d in sorted(watch.baseline) if d not in triggers]
    tested = [(c, p) for c, p in others if p is not None]
    for (c, _), p_adjusted in zip(tested, adjust([p for _, p in tested]), strict=True):
        gate = watch.gates.get(c.detector_id) or _gate(verify, {})
        worse = verdict(p_adjusted, gate.alpha, c.target - c.rolled_back, gate.min_effect_size) == "drift"
        update = {"p_value_adjusted": p_adjusted, "judgement": "worse" if worse else "not_worse"}
        judged.append(c.model_copy(update=update))
    judged += [c for c, p in others if p is None]
    watch.seen = {c.detector_id: c for c in judged}
    return judged


def judge(watch: Watch, verify: Verify, *, final: bool = False) -> RollbackOutcome | None:
    """Verified or failed once the target's windows show it; None to keep watching.

    A verdict waits until every other measure was measured on the target once
    (its window may come a moment later), unless ``final``.
    """
    if not watch.baseline:
        return evidence.outcome(
            watch, verify, False, "no measurement of the rolled-back version to compare with", []
        )
    judged = _judge_all(watch, verify)
    target = watch.target_version
    trig = [c for c in judged if c.triggered]
    not_better = [c for c in trig if c.judgement == "not_better"]
    worse = [c for c in judged if c.judgement == "worse"]
    if not_better or worse:
        parts = []
        if not_better:
            parts.append(
                f"target {target} is not better: {'; '.join(map(_describe, not_better))}"
                f" (its windows since the rollback took effect vs {watch.from_version}'s rate at the"
                f" rollback; {_why_compared(watch)})"
            )
        if worse:
            gates = "; ".join(
                f"{c.detector_id} at alpha {g.alpha:g} after Benjamini-Hochberg, by >= {g.min_effect_size:g}"
                for c in worse
                for g in [watch.gates.get(c.detector_id) or _gate(verify, {})]
            )
            parts.append(
                f"target {target} is significantly and materially worse on {'; '.join(map(_describe, worse))}"
                f" (not a trigger of the rollback, but worse: {gates})"
            )
        return evidence.outcome(watch, verify, False, "; ".join(parts), judged)
    unseen = [c.detector_id for c in judged if not c.triggered and c.detector_id not in watch.target]
    if all(c.judgement == "better" for c in trig) and (final or not unseen):
        names = ", ".join(
            c.detector_id
            + (f" (for {watch.stand_ins[c.detector_id]})" if c.detector_id in watch.stand_ins else "")
            for c in trig
        )
        reason = (
            f"target {target} is better on {names} with {verify.confidence:.0%} confidence:"
            f" {'; '.join(map(_describe, trig))}"
        )
        rest = [c for c in judged if c.judgement == "not_worse"]
        if rest:
            reason += f"; no other measure significantly worse ({'; '.join(map(_describe, rest))})"
        if unseen:
            reason += f"; not measured on the target: {', '.join(unseen)}"
        return evidence.outcome(watch, verify, True, reason, judged)
    return None


def conclude(watch: Watch, verify: Verify) -> RollbackOutcome:
    """The final judgement when ``verify.within`` has passed: failed unless the windows settle it now."""
    settled = judge(watch, verify, final=True)
    if settled is not None:
        return settled
    target = watch.target_version
    if watch.awaiting_apply:
        reason = f"the rollback was not reported applied within {verify.within} (no rollback.applied)"
        return evidence.outcome(watch, verify, False, reason, [])
    if not watch.target and watch.rolled_back_until is not None:
        reason = (
            f"target {target} not seen serving after the rollback took effect within {verify.within}:"
            f" {watch.from_version} still served until {watch.rolled_back_until.isoformat()}, and windows"
            f" of {target} beside it are not evidence of the rollback"
        )
        return evidence.outcome(watch, verify, False, reason, [])
    if not watch.target and watch.held:
        return evidence.outcome(watch, verify, False, evidence.never_known(watch, verify.within), [])
    if not watch.target:
        return evidence.outcome(
            watch, verify, False, f"target {target} not seen serving within {verify.within}", []
        )
    judged = list(watch.seen.values())
    trig = [c for c in judged if c.triggered]
    short = [c for c in trig if c.judgement == "not_enough_data"]
    if short:
        need = "; ".join(
            f"{c.detector_id} has {c.target_samples} (target) and {c.rolled_back_samples} (rolled back)"
            f" of {verify.min_samples} samples"
            for c in short
        )
        return evidence.outcome(
            watch, verify, False, f"not enough data within {verify.within}: {need}", judged
        )
    pending = "; ".join(map(_describe, [c for c in trig if c.judgement == "not_yet_better"]))
    reason = (
        f"target {target} not shown better with {verify.confidence:.0%} confidence within {verify.within}"
    )
    return evidence.outcome(watch, verify, False, f"{reason}: {pending}", judged)


def expire(state: WatchState, verify: Verify, now: datetime) -> list[RollbackOutcome]:
    """Conclude the watches that ran ``verify.within`` (:meth:`Watch.elapsed`): whatever they show by now."""
    done = []
    for watch in [w for w in state.watches if w.elapsed(now) >= verify.within]:
        outcome = conclude(watch, verify)
        _settled(state, watch, outcome, watch.seen_until or now)
        done.append(outcome)
    return done
