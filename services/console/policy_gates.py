"""The policy's p-value gates on a Segment page's p-value charts (trial 12i).

The charts drew the detector's alpha (0.01), while what rolled the canary back was the rule's gate
(``max_p_value 0.001``, ``immediate_p_value 1e-6``): an on-call engineer could not see how close a window
came to the action. Each rollback or retrain rule that matches the detector and the segment adds its
gates as lines of their own: ``rollback gate (bad-replies): p < 0.001``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from retrain_trigger.policy import SEGMENT_FIELDS, Policy
from retrain_trigger.route import segment_matches
from schemas.events import Segment

#: The gates drawn, and how each is named.
_GATES = (("max_p_value", "gate"), ("immediate_p_value", "immediate gate"))


class PolicyGate(BaseModel):
    """One p-value gate of a rollback or retrain rule on one detector's chart."""

    detector_id: str
    p_value: float = Field(description="A breach needs a p-value (adjusted, when corrected) below this")
    label: str = Field(description="rollback gate (bad-replies): p < 0.001")


def p_value_gates(policy: Policy, segment: str, detector_ids: set[str]) -> list[PolicyGate]:
    """The rollback and retrain rules' p-value gates on ``detector_ids`` of ``segment`` (its key)."""
    fields = dict(zip(SEGMENT_FIELDS, segment.split("|"), strict=False))
    where = Segment(
        model=fields.get("model", ""),
        model_version=fields.get("model_version", ""),
        app=fields.get("app") or None,
        route=fields.get("route") or None,
        tenant=fields.get("tenant") or None,
    )
    out = []
    for rule in policy.rules:
        if rule.action not in ("rollback", "retrain") or not segment_matches(rule, where):
            continue
        for detector_id in sorted(d for d in detector_ids if rule.match.matches_detector(d)):
            for name, called in _GATES:
                value = getattr(rule.gates, name)
                if value is not None:
                    label = f"{rule.action} {called} ({rule.name}): p < {value:g}"
                    out.append(PolicyGate(detector_id=detector_id, p_value=value, label=label))
    return out
