"""Route: which policy rules a detection is about (detector id and segment patterns)."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from retrain_trigger.policy import Policy, Rule
from schemas.events import Segment

if TYPE_CHECKING:
    from retrain_trigger.context import DecideContext


def segment_matches(rule: Rule, segment: Segment) -> bool:
    """Do the rule's segment patterns match (a missing segment field matches only ``*`` or ``""``)?"""
    for field, pattern in rule.match.segment.items():
        if not fnmatchcase(getattr(segment, field) or "", pattern):
            return False
    return True


class Router:
    """Finds the rules of a policy that match a detection; detector patterns are matched once per id."""

    def __init__(self, policy: Policy) -> None:
        self._rules = policy.rules
        self._by_detector: dict[str, list[Rule]] = {}
        # Per detector id, its rules when none of them has segment patterns (the usual case).
        self._segment_free: dict[str, tuple[Rule, ...] | None] = {}

    def rules_for_detector(self, detector_id: str) -> list[Rule]:
        """Rules whose detector patterns match ``detector_id`` (cached: ids are few, detections many)."""
        rules = self._by_detector.get(detector_id)
        if rules is None:
            rules = [rule for rule in self._rules if rule.match.matches_detector(detector_id)]
            self._by_detector[detector_id] = rules
        return rules

    def route(self, detector_id: str, segment: Segment) -> Sequence[Rule]:
        """Rules matching both the detector id and the segment."""
        try:
            free = self._segment_free[detector_id]
        except KeyError:
            rules = self.rules_for_detector(detector_id)
            free = self._segment_free[detector_id] = (
                None if any(rule.match.segment for rule in rules) else tuple(rules)
            )
        if free is not None:
            return free
        return [rule for rule in self.rules_for_detector(detector_id) if segment_matches(rule, segment)]


class RouteStage:
    """Route: the rules a detection is about go to the gates; a detection no rule matches is logged."""

    def run(self, ctx: DecideContext) -> bool:
        """Set ``ctx.matched``; the step goes on either way (time-based work may still be due)."""
        detection = ctx.detection
        if detection is None:
            return True
        segment = detection.segment
        ctx.matched = ctx.index.router.route(detection.detector_id, segment)
        if not ctx.matched:
            ctx.log("route", f"{detection.detector_id} {segment.key()}", False, "no rule matches")
        return True
