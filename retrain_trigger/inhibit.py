"""Inhibit: a firing alert mutes others (a rollback mutes retrains of its model; broken input mutes drift).

Muting is re-evaluated on every step, so it works both ways in time: when the
muting alert resolves, the muted ones are released (paged and acted on).
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from retrain_trigger.policy import InhibitRule

if TYPE_CHECKING:
    from retrain_trigger.context import Candidate, DecideContext


def labels_match(patterns: dict[str, str], labels: dict[str, str]) -> bool:
    """Do the labels match every fnmatch pattern (a missing label is the empty string)?"""
    return all(fnmatchcase(labels.get(name, ""), pattern) for name, pattern in patterns.items())


def inhibited_by(
    target: tuple[str, dict[str, str]],
    firing: Iterable[tuple[str, dict[str, str]]],
    rules: list[InhibitRule],
) -> str | None:
    """The fingerprint of a firing alert that mutes ``target`` (fingerprint, labels), if any."""
    target_fp, target_labels = target
    for rule in rules:
        if not labels_match(rule.target, target_labels):
            continue
        for source_fp, source_labels in firing:
            if source_fp == target_fp or not labels_match(rule.source, source_labels):
                continue
            if all(source_labels.get(n, "") == target_labels.get(n, "") for n in rule.equal):
                return source_fp
    return None


class InhibitStage:
    """Inhibit: a firing alert muted by another firing alert of the policy's inhibit rules stops here."""

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        """False (and a log line naming the muting alert) when another firing alert inhibits this one."""
        record = candidate.record
        source = inhibited_by((record.fingerprint, record.labels), ctx.firing, ctx.policy.inhibit)
        if source is None:
            return True
        ctx.log("inhibit", candidate.subject, False, f"muted by firing alert {source}")
        return False
