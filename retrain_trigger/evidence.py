"""Which target windows are evidence of a rollback, and what takes a verification back.

A target window W says something about a rollback only if the rolled-back
version did not serve in W. The decide stage knows that only once it has
seen a detection of a *later* window of the same model (W's end or after):
every version of a model is judged on one worker, its windows close in
order of time and go out on one detections partition keyed by the model, so
by then the rolled-back version's window for W has come if there was one.
Until then a target window is *held* (:class:`Held`): counted neither for
nor against the rollback. A window that starts after the act stage's
``rollback.applied`` counts at once (unless the rolled-back version was
seen serving after the request, then its word is not enough). This costs
the verification one window of delay, never the rollback itself.

A window of the rolled-back version after the request takes back what the
target's windows before its end added, held or counted
(:func:`still_served`). After a verification, such a window withdraws it:
:func:`withdrawn` returns a failed outcome saying the rollback is not in
effect (:class:`Verified` remembers what a verification rested on).

Every outcome names the target windows it counted and the rolled-back
version's last window after the request (:func:`outcome`), so a person sees
that the verification waited for a canary still serving.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.actions import CountedWindow, MetricComparison, RollbackOutcome, WindowSpan
from schemas.events import Detection

if TYPE_CHECKING:
    from retrain_trigger.policy import Verify
    from retrain_trigger.watch import Watch

#: Verifications a model remembers, so a rolled-back version seen serving afterwards withdraws one.
MAX_VERIFIED = 32
#: Target windows an outcome lists one by one (its count says how many there were in all).
MAX_LISTED = 12


class Tally(BaseModel):
    """Hits and samples of one rate (the target's windows add up)."""

    model_config = ConfigDict(extra="forbid")

    hits: int = Field(ge=0)
    samples: int = Field(ge=0)

    @classmethod
    def of(cls, rate: float, samples: int) -> Tally:
        """The counts behind a rate measured on ``samples`` samples."""
        return cls(hits=round(rate * samples), samples=samples)

    @property
    def rate(self) -> float:
        """Hits per sample (0 without samples)."""
        return self.hits / self.samples if self.samples else 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(hits=self.hits + other.hits, samples=self.samples + other.samples)

    def __sub__(self, other: Tally) -> Tally:
        # Taking back a window counted before (its revision replaces it): never below zero.
        return Tally(hits=max(self.hits - other.hits, 0), samples=max(self.samples - other.samples, 0))


class Held(BaseModel):
    """A target window not counted yet: whether the rolled-back version served beside it is not known."""

    model_config = ConfigDict(extra="forbid")

    detector: str
    window_start: datetime
    window_end: datetime
    tally: Tally
    verdict: str
    config: dict[str, Any] = Field(default_factory=dict, description="The detection's config: its gates")


class Verified(BaseModel):
    """A verification that went out: a window of ``from_version`` from ``counts_after`` on withdraws it."""

    model_config = ConfigDict(extra="forbid")

    outcome: RollbackOutcome = Field(description="The verification's data, as it went out")
    counts_after: datetime
    verified_at: datetime = Field(description="The window end of the detection that verified it")


def known(watch: Watch, held: Held) -> bool:
    """Is it known whether the rolled-back version served beside this target window?"""
    if watch.known_until is not None and held.window_end <= watch.known_until:
        return True  # a later window of the model came: the rolled-back version's one came before it
    applied = watch.counts_from if not watch.awaiting_apply else None
    return applied is not None and watch.rolled_back_until is None and held.window_start >= applied


def release(watch: Watch) -> list[tuple[str, Held]]:
    """The held windows that are evidence now (taken out of ``watch.held``), oldest first."""
    ready = [(key, held) for key, held in watch.held.items() if known(watch, held)]
    for key, _ in ready:
        del watch.held[key]
    return sorted(ready, key=lambda item: item[1].window_start)


def still_served(watch: Watch, detection: Detection) -> None:
    """A window of the rolled-back version after the request: the rollback was not in effect yet.

    Without an act stage nothing says when a rollback took effect but the
    traffic itself; the target's windows that ran beside the rolled-back
    version (a backdated replay, a canary nobody took out yet) say nothing
    about the rollback: what they added is taken back, and held ones dropped.
    """
    if detection.window_start < watch.counts_after():
        return
    # Past counts_after, which moves to this window's end: each window of it passes here once.
    watch.rolled_back_until = detection.window_end
    watch.rolled_back_since = detection.window_start
    watch.rolled_back_windows += 1
    for key in [k for k, held in watch.held.items() if held.window_start < detection.window_end]:
        del watch.held[key]
    for key in list(watch.windows):
        # window_key: segment|detector|config digest|start|end
        _, detector, _, start, _ = key.rsplit("|", 4)
        if datetime.fromisoformat(start) < detection.window_end:
            tally = watch.target.get(detector)
            if tally is not None:
                watch.target[detector] = tally - watch.windows[key]
                if not watch.target[detector].samples:
                    del watch.target[detector]
            del watch.windows[key]


def waiting(watch: Watch, detection: Detection) -> str:
    """Why a target window is not counted: it started before the rollback took effect."""
    since = watch.counts_after().isoformat()
    if watch.rolled_back_until is not None and watch.rolled_back_until >= watch.counts_after():
        why = f"{watch.from_version} still served until {since}"
    elif watch.counts_from is not None:
        why = f"the rollback was applied at {since} (window time)"
    else:
        why = f"the rollback was requested at the window end {since}"
    return (
        f"{watch.rollback_id}: window {detection.window_start.isoformat()} of {watch.target_version}"
        f" not counted ({why}): waiting for a window of {watch.target_version} after the rollback"
    )


def holding(watch: Watch, detection: Detection) -> str:
    """Why a target window is held: the model's next window says whether the rolled-back one served."""
    return (
        f"{watch.rollback_id}: window {detection.window_start.isoformat()} of {watch.target_version} held"
        f" until a later window of {watch.model} shows whether {watch.from_version} served beside it"
    )


def never_known(watch: Watch, within: timedelta) -> str:
    """Why a watch whose target windows were all held fails: no later window of the model came."""
    since = min(held.window_start for held in watch.held.values()).isoformat()
    return (
        f"target {watch.target_version} served from {since}, but no later window of {watch.model} came"
        f" within {within} to show that {watch.from_version} did not serve beside it"
    )


def counted(watch: Watch) -> list[CountedWindow]:
    """The target windows the watch counted, oldest first, with the samples each measure added."""
    spans: dict[tuple[str, str], dict[str, int]] = {}
    for key, tally in watch.windows.items():
        # window_key: segment|detector|config digest|start|end
        _, detector, _, start, end = key.rsplit("|", 4)
        samples = spans.setdefault((start, end), {})
        samples[detector] = samples.get(detector, 0) + tally.samples
    windows = [
        CountedWindow(
            window_start=datetime.fromisoformat(start), window_end=datetime.fromisoformat(end), samples=n
        )
        for (start, end), n in spans.items()
    ]
    return sorted(windows, key=lambda w: (w.window_start, w.window_end))


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S")


def _windows(n: int) -> str:
    return f"{n} window" if n == 1 else f"{n} windows"


def which_windows(outcome: RollbackOutcome) -> str:
    """``on v1's windows 00:45:00-00:45:20 (1 window), after v2's last window 00:44:40-00:45:00 (...)``."""
    parts = []
    windows = outcome.counted_windows
    if windows and outcome.counted_until is not None:
        parts.append(
            f"on {outcome.target_version}'s windows {_clock(windows[0].window_start)}-"
            f"{_clock(outcome.counted_until)} ({_windows(outcome.counted_window_count)})"
        )
    served = outcome.rolled_back_last_window
    if served is not None:
        parts.append(
            f"after {outcome.from_version}'s last window {_clock(served.window_start)}-"
            f"{_clock(served.window_end)} ({_windows(outcome.rolled_back_windows_after_request)}"
            " after the request)"
        )
    elif windows:
        parts.append(f"{outcome.from_version} served no window after the request")
    return ", ".join(parts)


def outcome(
    watch: Watch, verify: Verify, verified: bool, reason: str, comparisons: list[MetricComparison]
) -> RollbackOutcome:
    """The watch's outcome, with the windows it counted; a verification's reason names them."""
    windows = counted(watch)
    served = None
    if watch.rolled_back_until is not None and watch.rolled_back_since is not None:
        served = WindowSpan(window_start=watch.rolled_back_since, window_end=watch.rolled_back_until)
    result = RollbackOutcome(
        rollback_id=watch.rollback_id,
        model=watch.model,
        from_version=watch.from_version,
        target_version=watch.target_version,
        verified=verified,
        reason=reason,
        comparisons=comparisons,
        triggers=watch.triggers,
        confidence=verify.confidence,
        counted_windows=windows[:MAX_LISTED],
        counted_window_count=len(windows),
        counted_until=max((w.window_end for w in windows), default=None),
        rolled_back_last_window=served,
        rolled_back_windows_after_request=watch.rolled_back_windows,
    )
    # A failure's reason already says what was missing; a verification says what it rests on.
    named = which_windows(result) if verified else ""
    return result.model_copy(update={"reason": f"{reason}; {named}"}) if named else result


def remember(verified: list[Verified], watch: Watch, outcome: RollbackOutcome, at: datetime) -> None:
    """Keep what a verification rested on: a window of the rolled-back version after it withdraws it."""
    verified.append(Verified(outcome=outcome, counts_after=watch.counts_after(), verified_at=at))
    del verified[:-MAX_VERIFIED]


def in_force(verified: list[Verified], detection: Detection, within: timedelta) -> Verified | None:
    """The verification, still remembered, of a rollback away from this detection's version, if any."""
    version = detection.segment.model_version
    for v in verified:
        if v.outcome.from_version == version and detection.window_end - v.verified_at <= within:
            return v
    return None


def withdrawn(verified: list[Verified], detection: Detection, within: timedelta) -> list[RollbackOutcome]:
    """Failed outcomes of the verifications this window of a rolled-back version takes back.

    A verification is remembered for ``within`` (the watch's own horizon) of
    the windows' times after it went out.
    """
    done: list[RollbackOutcome] = []
    for v in list(verified):
        if detection.window_end - v.verified_at > within:
            verified.remove(v)
        elif (
            detection.segment.model_version == v.outcome.from_version
            and detection.window_start >= v.counts_after
        ):
            verified.remove(v)
            reason = (
                f"verification withdrawn: {v.outcome.from_version} served in the window"
                f" {detection.window_start.isoformat()} to {detection.window_end.isoformat()}, after"
                f" {v.outcome.target_version}'s windows from {v.counts_after.isoformat()} verified the"
                " rollback: the rollback is not in effect"
            )
            served = WindowSpan(window_start=detection.window_start, window_end=detection.window_end)
            update = {
                "verified": False,
                "reason": reason,
                "comparisons": [],
                "rolled_back_last_window": served,
                "rolled_back_windows_after_request": v.outcome.rolled_back_windows_after_request + 1,
            }
            done.append(v.outcome.model_copy(update=update))
    return done
