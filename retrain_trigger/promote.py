"""Promotion: a challenger that served enough traffic, surely no worse than stable, is proposed as stable.

A *trial* follows one challenger version against the model's stable version
from the challenger's first window on: the rates named in the policy's
``promote.margins`` add up per version (hits and samples, as a rollback watch
adds up its target's windows), and the challenger's windows are counted.
:func:`assess` judges a trial with the statistics of the rollback follow-up
(:func:`~detectors.quality_checks.compare_proportions`: Fisher's exact test
and Newcombe's interval of the difference):

- a measure is *non-inferior* when the upper end of the ``confidence``
  interval of challenger minus stable is below its margin;
- *worse* when Fisher's test says the challenger's rate is higher at
  ``1 - confidence`` (and it is not non-inferior);
- otherwise *inconclusive*, or *not enough data* below ``min_samples`` on
  either version.

The challenger is promotable when every measure seen on it is non-inferior,
it served ``windows`` windows and no alert fired for it. :class:`PromoteStage`
then publishes ``io.loopwatch.promotion.requested``, once per challenger
version (dry-run: logged only) and, without a registry, one per model at a
time (:mod:`retrain_trigger.promote_hold`); ``loopwatch gate`` runs the same
trial over the detections topic.

>>> from retrain_trigger.policy import Promote
>>> trial = Trial(model="chat", candidate_version="v3", stable_version="v1",
...     started=datetime(2026, 1, 1), windows=3,
...     candidate={"quality.negative_feedback.v1": Tally(hits=40, samples=400)},
...     stable={"quality.negative_feedback.v1": Tally(hits=48, samples=400)})
>>> evidence = assess(trial, Promote())
>>> evidence.status, evidence.comparisons[0].judgement
('non_inferior', 'non_inferior')
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from detectors.quality_checks import compare_proportions
from retrain_trigger.actions import (
    PROMOTION_REQUESTED,
    CandidateEvidence,
    MarginComparison,
    PromotionRequest,
    cloud_event,
)
from retrain_trigger.policy import Margin, Promote
from retrain_trigger.promote_hold import PendingPromotion, choose, hold
from retrain_trigger.revisions import window_key
from retrain_trigger.state import State
from retrain_trigger.watch import Tally, measured_rate
from schemas.events import Alert, CloudEvent, Detection

if TYPE_CHECKING:
    from retrain_trigger.context import DecideContext

#: The version a model's registry names its challenger (canary alias); None or "": none known (yet).
CanaryLookup = Callable[[str], str | None]

#: Trials kept per model (the oldest is dropped), detection ids and window keys each trial remembers.
_MAX_TRIALS = 8
_MAX_COUNTED = 64
_MAX_WINDOW_KEYS = 64
#: Recent stable windows kept, so a trial opened by a later challenger detection still counts them.
_MAX_RECENT = 16
#: Challenger versions whose request is remembered, so none is requested twice.
_MAX_REQUESTED = 64


class Observation(BaseModel):
    """One detection's rate of a promote measure: what a trial adds up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector_id: str
    detection_id: str
    window: str = Field(description="segment|window start: detections of one window share it")
    window_start: datetime
    window_end: datetime
    tally: Tally
    key: str = Field("", description="The window's key (revisions.window_key): a revision shares it")

    @classmethod
    def of(cls, detection: Detection, margin: Margin) -> Observation | None:
        """The detection's rate of ``margin``'s measurement, or None when it carries none."""
        measured = measured_rate(margin.measurement, detection)
        if measured is None:
            return None
        return cls(
            detector_id=detection.detector_id,
            detection_id=detection.detection_id,
            window=f"{detection.segment.key()}|{detection.window_start.isoformat()}",
            window_start=detection.window_start,
            window_end=detection.window_end,
            tally=Tally.of(*measured),
            key=window_key(detection),
        )


class Trial(BaseModel):
    """One challenger version against one stable version, since the challenger's first window."""

    model_config = ConfigDict(extra="forbid")

    model: str
    candidate_version: str
    stable_version: str
    started: datetime = Field(description="Start of the challenger's first window")
    candidate: dict[str, Tally] = Field(default_factory=dict, description="Detector id -> challenger's rate")
    stable: dict[str, Tally] = Field(default_factory=dict, description="Detector id -> stable's rate")
    windows: int = Field(0, description="Challenger windows with a measured rate")
    stable_windows: int = 0
    window_keys: list[str] = Field(default_factory=list, description="Recent windows counted (segment|start)")
    window_start: datetime | None = None
    window_end: datetime | None = None
    counted: list[str] = Field(default_factory=list, description="Detection ids added up (both versions)")
    observed: dict[str, Tally] = Field(
        default_factory=dict, description="Window key -> what it added (a revision replaces it)"
    )
    alerts: list[str] = Field(default_factory=list, description="Alerts that fired for the challenger")
    unmeasured: list[str] = Field(
        default_factory=list, description="Margin detectors that judged none of its windows: too few samples"
    )
    ready: bool = Field(False, description="Promotable when last judged (rechecked on ticks)")

    def add(self, seen: Observation, *, stable: bool) -> None:
        """Add an observation to one side, once per detection; windows are counted once each.

        A revision of a window already added replaces what that window added.
        """
        if seen.detection_id in self.counted or (stable and seen.window_start < self.started):
            return
        self.counted.append(seen.detection_id)
        del self.counted[:-_MAX_COUNTED]
        side = self.stable if stable else self.candidate
        tally = side.get(seen.detector_id, Tally(hits=0, samples=0))
        replaced = self.observed.get(seen.key) if seen.key else None
        if seen.key:
            self.observed[seen.key] = seen.tally
            for old in list(self.observed)[:-_MAX_COUNTED]:
                del self.observed[old]
        side[seen.detector_id] = (tally - replaced if replaced is not None else tally) + seen.tally
        if replaced is not None:
            return  # the window was counted already
        new_window = seen.window not in self.window_keys
        if new_window:
            self.window_keys.append(seen.window)
            del self.window_keys[:-_MAX_WINDOW_KEYS]
        if stable:
            self.stable_windows += new_window
            return
        self.windows += new_window
        self.window_start = min(self.window_start or seen.window_start, seen.window_start)
        self.window_end = max(self.window_end or seen.window_end, seen.window_end)


class PromotionState(State):
    """The open trials of one model, its latest stable windows, and the challengers already requested."""

    trials: dict[str, Trial] = Field(default_factory=dict, description="Challenger version -> its trial")
    recent: list[Observation] = Field(default_factory=list, description="The stable version's latest")
    recent_of: str | None = Field(None, description="The stable version ``recent`` is of")
    requested: dict[str, str] = Field(default_factory=dict, description="Challenger version -> CloudEvent id")
    pending: PendingPromotion | None = Field(
        None, description="The request holding the others until it settles"
    )


def observe(
    state: PromotionState, promote: Promote, detection: Detection, stable: str, candidate: str | None = None
) -> Trial | None:
    """Add a detection to the trials; the challenger's trial it added to, or None.

    A detection of ``stable`` counts for every trial against it whose
    challenger had started serving by its window (also when the challenger's
    first detection comes after it); one of another version (only
    ``candidate`` when given) opens or extends that version's trial.
    """
    margin = promote.margins.get(detection.detector_id)
    seen = None if margin is None else Observation.of(detection, margin)
    # Too few samples in its window to measure (trial 12j: a canary at 100% thumbs-down had 23-29 thumbs a
    # window, under the detectors' 30): the measure is still owed, or the promotion went by profanity alone.
    unmeasured = margin is not None and seen is None and bool(detection.measurements.get("too_few_samples"))
    if seen is None and not unmeasured:
        return None
    version = detection.segment.model_version
    if version == stable:
        if seen is None:
            return None
        if state.recent_of != stable:
            state.recent, state.recent_of = [], stable
        # A revision takes its window's place among the latest.
        kept = [o for o in state.recent if not (seen.key and o.key == seen.key)]
        state.recent = [*kept, seen][-_MAX_RECENT:]
        for trial in state.trials.values():
            if trial.stable_version == stable:
                trial.add(seen, stable=True)
        return None
    if (candidate is not None and version != candidate) or version in state.requested:
        return None
    found = state.trials.get(version)
    if found is not None and found.stable_version == stable:
        trial = found
    else:
        # A new stable version (a rollback, a mark) starts the comparison over.
        trial = Trial(
            model=detection.segment.model,
            candidate_version=version,
            stable_version=stable,
            started=detection.window_start,
        )
        state.trials[version] = trial
        for old in sorted(state.trials.values(), key=lambda t: t.started)[:-_MAX_TRIALS]:
            del state.trials[old.candidate_version]
        if state.recent_of == stable:
            for earlier in state.recent:
                trial.add(earlier, stable=True)
    if seen is None:
        if detection.detector_id not in trial.unmeasured:
            trial.unmeasured.append(detection.detector_id)
    else:
        trial.add(seen, stable=False)
    return trial


def compare(
    detector: str, margin: Margin, candidate: Tally, stable: Tally, promote: Promote
) -> MarginComparison:
    """One measure of the challenger against stable, judged against its margin."""
    fields = {
        "detector_id": detector,
        "measurement": margin.measurement,
        "stable": stable.rate,
        "candidate": candidate.rate,
        "stable_samples": stable.samples,
        "candidate_samples": candidate.samples,
        "margin": margin.margin,
    }
    if min(stable.samples, candidate.samples) < promote.min_samples:
        return MarginComparison(**fields, judgement="not_enough_data")
    # Reference = stable, current = challenger: the difference is challenger minus stable.
    c = compare_proportions(
        stable.hits, stable.samples, candidate.hits, candidate.samples, confidence=promote.confidence
    )
    if c.ci_high < margin.margin:
        judgement = "non_inferior"
    elif c.p_value < 1 - promote.confidence:
        judgement = "worse"
    else:
        judgement = "inconclusive"
    return MarginComparison(
        **fields,
        difference=c.difference,
        ci_low=c.ci_low,
        ci_high=c.ci_high,
        p_value=c.p_value,
        judgement=judgement,
    )


def describe(c: MarginComparison) -> str:
    """``quality.negative_feedback.v1 0.1 (n=400) vs 0.12 (n=400), interval [-0.06, 0.02], margin 0.05``."""
    text = (
        f"{c.detector_id} {c.candidate:.3g} (n={c.candidate_samples})"
        f" vs {c.stable:.3g} (n={c.stable_samples})"
    )
    if c.ci_low is not None and c.ci_high is not None:
        text += f", interval [{c.ci_low:.3g}, {c.ci_high:.3g}]"
    if c.p_value is not None:
        text += f", p={c.p_value:.2g}"
    return f"{text}, margin {c.margin:g}"


def why_pending(c: MarginComparison, promote: Promote, name: str, stable: str) -> str:
    """Why one measure is not judged yet: too few samples on a version, or an interval past its margin."""
    measure = f"{c.detector_id} {c.measurement}"
    if c.judgement == "not_enough_data":
        counts = ((name, c.candidate_samples), (stable, c.stable_samples))
        few = ", ".join(f"{v} has {n}" for v, n in counts if n < promote.min_samples)
        return f"{measure}: not enough data ({few} of {promote.min_samples} samples needed)"
    conf = f"{promote.confidence:.0%}"
    return (
        f"{measure}: inconclusive, {c.candidate:.3g} (n={c.candidate_samples}) vs {c.stable:.3g}"
        f" (n={c.stable_samples}): the {conf} interval of the difference reaches {c.ci_high:+.3g},"
        f" not below the margin {c.margin:g}, and it is not surely worse (p={c.p_value:.2g});"
        " more samples narrow the interval"
    )


def assess(trial: Trial, promote: Promote) -> CandidateEvidence:
    """Non-inferior, worse or not enough data: the trial's evidence with its reason."""
    comparisons = [
        compare(d, promote.margins[d], tally, trial.stable.get(d, Tally(hits=0, samples=0)), promote)
        for d, tally in sorted(trial.candidate.items())
        if d in promote.margins
    ]
    name, stable = trial.candidate_version, trial.stable_version
    worse = [c for c in comparisons if c.judgement == "worse"]
    pending = [c for c in comparisons if c.judgement in ("inconclusive", "not_enough_data")]
    owed = [
        f"{d}: judged none of {trial.candidate_version}'s windows (too few samples in each)"
        for d in _owed(trial)
    ]
    conf = f"{promote.confidence:.0%}"
    if trial.alerts:
        status, reason = "worse", f"alerts fired for {name}: {', '.join(trial.alerts)}"
    elif worse:
        status = "worse"
        reason = f"{name} is worse than {stable} with {conf} confidence: {'; '.join(map(describe, worse))}"
    elif not comparisons and not owed:
        status, reason = "not_enough_data", f"no measure of {name} yet"
    elif pending or owed or trial.windows < promote.windows:
        status = "not_enough_data"
        parts = [f"{trial.windows} of {promote.windows} windows"] if trial.windows < promote.windows else []
        parts += [why_pending(c, promote, name, stable) for c in pending] + owed
        reason = f"{name} is not yet shown non-inferior to {stable}: {'; '.join(parts)}"
    else:
        status = "non_inferior"
        reason = (
            f"{name} is non-inferior to {stable} over {trial.windows} windows with {conf} confidence:"
            f" {'; '.join(map(describe, comparisons))}"
        )
    return CandidateEvidence(
        model=trial.model,
        stable_version=stable,
        candidate_version=name,
        status=status,
        reason=reason,
        confidence=promote.confidence,
        windows=trial.windows,
        windows_required=promote.windows,
        stable_windows=trial.stable_windows,
        window_start=trial.window_start,
        window_end=trial.window_end,
        alerts=trial.alerts,
        comparisons=comparisons,
    )


def judge_candidate(
    detections: Iterable[Detection],
    alerts: Iterable[Alert],
    promote: Promote,
    *,
    model: str,
    candidate: str,
    stable: str,
) -> CandidateEvidence:
    """The evidence on ``candidate`` in recorded detections and alerts, as the promote stage builds it."""
    state = PromotionState()
    for detection in detections:
        if detection.segment.model == model:
            observe(state, promote, detection, stable, candidate)
    trial = state.trials.get(candidate) or Trial(
        model=model,
        candidate_version=candidate,
        stable_version=stable,
        started=datetime.min.replace(tzinfo=UTC),
    )
    about = [
        (a.labels, a.status, a.labels.get("alertname", a.fingerprint))
        for a in alerts
        if a.labels.get("model") == model and a.starts_at >= trial.started
    ]
    for name in firing_alerts(about, candidate):
        note_alert(trial, name)
    return assess(trial, promote)


def note_alert(trial: Trial, alertname: str) -> None:
    """Record that an alert fired for the challenger: it is not promoted (``assess`` says worse)."""
    if alertname not in trial.alerts:
        trial.alerts.append(alertname)


def promotion_id(policy: str, model: str, version: str) -> str:
    """The CloudEvent id of a challenger's promotion: one per (policy, model, version), replays included."""
    digest = hashlib.sha256("\x1f".join((policy, "promotion", model, version)).encode()).hexdigest()[:32]
    return f"lw-promotion-{digest}"


def promotion_event(
    evidence: CandidateEvidence,
    trial: Trial,
    *,
    policy: str,
    mode: str,
    source: str,
    at: datetime,
    chosen: str = "",
    chosen_over: Sequence[str] = (),
) -> CloudEvent:
    """The ``io.loopwatch.promotion.requested`` CloudEvent of a promotable trial (``chosen``: why it)."""
    data = PromotionRequest(
        reason=f"{evidence.reason}; {chosen}" if chosen else evidence.reason,
        chosen_over=list(chosen_over),
        policy=policy,
        mode="dry-run" if mode == "dry-run" else "auto",
        model=trial.model,
        from_version=trial.stable_version,
        target_version=trial.candidate_version,
        evidence=evidence,
        detection_ids=trial.counted[-_MAX_COUNTED:],
    )
    return cloud_event(
        event_id=promotion_id(policy, trial.model, trial.candidate_version),
        source=source,
        event_type=PROMOTION_REQUESTED,
        subject=trial.model,
        time=at,
        data=data,
    )


def firing_alerts(labels_and_status: Iterable[tuple[dict[str, str], str, str]], version: str) -> list[str]:
    """Names of the firing alerts (labels, status, name) about ``version``."""
    return [
        name
        for labels, status, name in labels_and_status
        if status == "firing" and labels.get("model_version") == version
    ]


def _too_few(trial: Trial, promote: Promote) -> bool:
    """Does a measure seen on the challenger lack ``min_samples`` on either version, or any measured value?"""
    empty = Tally(hits=0, samples=0)
    return bool(_owed(trial)) or any(
        min(tally.samples, trial.stable.get(d, empty).samples) < promote.min_samples
        for d, tally in trial.candidate.items()
    )


def _owed(trial: Trial) -> list[str]:
    """Margin detectors that saw the challenger's windows but measured none of them (too few samples)."""
    return [d for d in trial.unmeasured if d not in trial.candidate]


class PromoteStage:
    """Promote: a detection adds to its challenger's trial; a promotable challenger is requested once.

    Trials run for every version that is not stable. With a registry
    (``canary``), only the version its challenger alias names is requested,
    on the detection or the tick after the alias is known. Without one, a
    model has at most one promotion pending (:mod:`retrain_trigger.promote_hold`):
    of the challengers that qualify in one step the best-supported is
    requested, and the others are held until that request settles.
    """

    def __init__(self, canary: CanaryLookup | None = None) -> None:
        self.canary = canary

    def run(self, ctx: DecideContext) -> bool:
        """Observe the detection (a tick: recheck ready trials); request a promotion when one is due."""
        promote, state = ctx.policy.promote, ctx.state.promotion
        if not promote.enabled:
            return True
        detection = ctx.detection
        quiet = False
        if detection is None:
            trials = [t for t in state.trials.values() if t.ready]
        else:
            stable = ctx.stable.target(detection.segment.model)
            short: list[Trial] = []
            version = detection.segment.model_version
            if self.canary is None and version == stable and detection.detector_id in promote.margins:
                # A stable window can complete the samples of several challengers at once.
                short = [
                    t for t in state.trials.values() if t.stable_version == stable and _too_few(t, promote)
                ]
            trial = None if stable is None else observe(state, promote, detection, stable)
            trials = [trial] if trial is not None else [t for t in short if not _too_few(t, promote)]
            quiet = trial is None
        judged = [(t, e) for t in trials if (e := self._judge(ctx, t, quiet=quiet)) is not None]
        if self.canary is not None:
            for trial, evidence in judged:
                self._registry_challenger(ctx, trial, evidence)
        elif judged:
            self._one_at_a_time(ctx, judged)
        return True

    def _judge(self, ctx: DecideContext, trial: Trial, *, quiet: bool = False) -> CandidateEvidence | None:
        """The evidence of a promotable trial (``trial.ready``), else None (why: logged unless quiet)."""
        promote = ctx.policy.promote
        name, model = trial.candidate_version, trial.model
        subject = f"promote {model}/{name}"
        if ctx.stable.target(model) != trial.stable_version:
            trial.ready = False  # the next detection of the challenger starts it over
            return None
        book = ctx.state.book.alerts.values()
        for alertname in firing_alerts(((r.labels, r.status, r.rule) for r in book), name):
            note_alert(trial, alertname)
        if trial.alerts or trial.windows < promote.windows or _too_few(trial, promote):
            # Not promotable whatever the tests say: skip them (this runs on every detection).
            trial.ready = False
            if ctx.explain and not quiet:
                why = f"alerts fired: {', '.join(trial.alerts)}" if trial.alerts else "not enough data yet"
                ctx.log("promote", subject, False, f"{why} ({trial.windows} of {promote.windows} windows)")
            return None
        evidence = assess(trial, promote)
        trial.ready = evidence.status == "non_inferior"
        if not trial.ready:
            if not quiet:
                ctx.log("promote", subject, False, evidence.reason)
            return None
        return evidence

    def _registry_challenger(self, ctx: DecideContext, trial: Trial, evidence: CandidateEvidence) -> None:
        """Request a ready trial only if the registry names it the challenger."""
        name, model = trial.candidate_version, trial.model
        assert self.canary is not None, "only with a registry"
        challenger = self.canary(model)
        if challenger != name:
            ctx.log(
                "promote",
                f"promote {model}/{name}",
                False,
                f"ready, but the registry's challenger is {challenger or 'unknown'}",
            )
            return
        self._request(ctx, trial, evidence)

    def _one_at_a_time(self, ctx: DecideContext, judged: list[tuple[Trial, CandidateEvidence]]) -> None:
        """Request the best-supported ready trial unless the model has a promotion pending; hold the rest."""
        state, model = ctx.state.promotion, judged[0][0].model
        held = hold(state.pending, ctx.stable, model, ctx.now, ctx.policy.cooldown)
        waiting = [t for t, _ in judged]
        if held is None:
            state.pending = None
            # The challengers ready from earlier steps compete with the ones judged now.
            fresh = {t.candidate_version for t in waiting}
            for other in [t for t in state.trials.values() if t.ready and t.candidate_version not in fresh]:
                if (evidence := self._judge(ctx, other)) is not None:
                    judged.append((other, evidence))
            trials = {t.candidate_version: t for t, _ in judged}
            best, why = choose([e for _, e in judged], ctx.policy.promote)
            waiting = [trials[v] for v in sorted(trials) if v != best.candidate_version]
            event = self._request(
                ctx, trials[best.candidate_version], best, why, [t.candidate_version for t in waiting]
            )
            state.pending = PendingPromotion(
                version=best.candidate_version,
                from_version=best.stable_version,
                event_id=event.id,
                at=event.time,
                requested_at=ctx.now,
            )
            held = hold(state.pending, ctx.stable, model, ctx.now, ctx.policy.cooldown)
        for trial in waiting:
            ctx.log("promote", f"promote {model}/{trial.candidate_version}", False, held or "held")

    def _request(
        self,
        ctx: DecideContext,
        trial: Trial,
        evidence: CandidateEvidence,
        chosen: str = "",
        chosen_over: Sequence[str] = (),
    ) -> CloudEvent:
        """Publish (dry-run: log) the promotion request of a ready trial; it is never requested again."""
        state, policy = ctx.state.promotion, ctx.policy
        name, subject = trial.candidate_version, f"promote {trial.model}/{trial.candidate_version}"
        assert trial.window_end is not None, "a promotable trial has windows"
        event = promotion_event(
            evidence,
            trial,
            policy=policy.name,
            mode=policy.mode,
            source=policy.source,
            at=trial.window_end,
            chosen=chosen,
            chosen_over=chosen_over,
        )
        state.requested[name] = event.id
        for old in list(state.requested)[:-_MAX_REQUESTED]:
            del state.requested[old]
        del state.trials[name]
        reason = f"{evidence.reason}; {chosen}" if chosen else evidence.reason
        if policy.mode == "dry-run":
            ctx.decision.dry_run_actions.append(event)
            ctx.log("promote", subject, False, f"dry-run: would publish {event.type} {event.id}")
        else:
            ctx.decision.actions.append(event)
            ctx.log("promote", subject, True, f"{event.type} {event.id}: {reason}")
        return event
