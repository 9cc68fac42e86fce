"""Route: which policy rules a detection is about (detector id and segment patterns)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from retrain_trigger.policy import Policy, Rule
from schemas.events import Segment


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

    def rules_for_detector(self, detector_id: str) -> list[Rule]:
        """Rules whose detector patterns match ``detector_id`` (cached: ids are few, detections many)."""
        rules = self._by_detector.get(detector_id)
        if rules is None:
            rules = [rule for rule in self._rules if rule.match.matches_detector(detector_id)]
            self._by_detector[detector_id] = rules
        return rules

    def route(self, detector_id: str, segment: Segment) -> list[Rule]:
        """Rules matching both the detector id and the segment."""
        return [rule for rule in self.rules_for_detector(detector_id) if segment_matches(rule, segment)]
