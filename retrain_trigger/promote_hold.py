"""One promotion per model at a time: a request holds the model's other challengers until it settles.

Without a registry every version that is not stable is on trial, so two
healthy challengers can qualify within a second of each other (trial 17c: r2
and r3), and a pipeline acting on both requests makes the last one win by
chance. So a model's promotion request is *pending* until it settles: the
stable version is no longer the one it was requested from (the promoted one,
or another, was marked stable), or a stable mark of the model came after it
(a person chose). While it is pending, and within the policy's ``cooldown``
after it was decided, no other challenger of the model is requested; each is
logged ``held: ...`` and stays ready, to be judged again against the new
stable version once its trial starts over there.

When several challengers qualify in one step, :func:`choose` takes the
best-supported one: the lowest upper end of the interval of the difference
(challenger minus stable) on the first ``promote.margins`` measure, ties by
the next measures, then by version name.

>>> from retrain_trigger.actions import MarginComparison
>>> def qualified(version, high):
...     measure = MarginComparison(detector_id="quality.negative_feedback.v1", measurement="current_rate",
...         stable=0.12, candidate=0.1, stable_samples=400, candidate_samples=400, margin=0.05,
...         ci_high=high, judgement="non_inferior")
...     return CandidateEvidence(model="chat", stable_version="v1", candidate_version=version,
...         status="non_inferior", reason="", confidence=0.95, windows=3, windows_required=3,
...         stable_windows=3, comparisons=[measure])
>>> best, why = choose([qualified("v3", 0.01), qualified("v2", 0.03)], Promote())
>>> best.candidate_version, why.split(":")[0]
('v3', 'chosen over v2')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from retrain_trigger.actions import CandidateEvidence
from retrain_trigger.policy import Promote
from retrain_trigger.stable import StableVersions


class PendingPromotion(BaseModel):
    """A model's promotion request that holds its other challengers until it settles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(description="The challenger requested")
    from_version: str = Field(description="The stable version it was requested from")
    event_id: str
    at: datetime = Field(description="The request's time, as on its CloudEvent (its evidence's)")
    requested_at: datetime = Field(description="When it was decided: the cooldown runs from here")


def hold(
    pending: PendingPromotion | None, stable: StableVersions, model: str, now: datetime, cooldown: timedelta
) -> str | None:
    """Why no other challenger of ``model`` may be requested now; None once the request settled and cooled."""
    if pending is None:
        return None
    mark = stable.models.get(model)
    settled = stable.target(model) != pending.from_version or (
        mark is not None and mark.marked_at > pending.requested_at
    )
    requested = f"held: promotion of {pending.version} requested at {pending.at.isoformat()}"
    if not settled:
        return f"{requested}, waiting for it to take effect ({pending.from_version} is still stable)"
    until = pending.requested_at + cooldown
    if now < until:
        return f"{requested}, settled; the policy's cooldown lasts until {until.isoformat()}"
    return None


def _rank(evidence: CandidateEvidence, promote: Promote) -> tuple[tuple[float, ...], str]:
    highs = {c.detector_id: c.ci_high for c in evidence.comparisons}
    # A measure the challenger was not seen on ranks it last on that measure, not first.
    values = tuple(math.inf if (high := highs.get(d)) is None else high for d in promote.margins)
    return values, evidence.candidate_version


def choose(qualified: Sequence[CandidateEvidence], promote: Promote) -> tuple[CandidateEvidence, str]:
    """The best-supported of the challengers that qualified in one step, and why it goes first ("": alone)."""
    ranked = sorted(qualified, key=lambda e: _rank(e, promote))
    best, others = ranked[0], ranked[1:]
    if not others:
        return best, ""
    first = next(iter(promote.margins))
    highs = ", ".join(f"{e.candidate_version} {_high(e, first)}" for e in ranked)
    why = (
        f"chosen over {', '.join(e.candidate_version for e in others)}: of the challengers that qualified"
        f" together, the lowest upper end of the {best.confidence:.0%} interval of the difference on {first}"
        f" ({highs}), ties by the next measure, then by version name; the others wait until this promotion"
        " settles"
    )
    return best, why


def _high(evidence: CandidateEvidence, detector: str) -> str:
    high = next((c.ci_high for c in evidence.comparisons if c.detector_id == detector), None)
    return "not measured" if high is None else f"{high:+.3g}"
