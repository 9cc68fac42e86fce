"""The decide context: what every stage of one decide step reads and changes, and the stage contracts.

A step is one detection (:meth:`~retrain_trigger.pipeline.Decider.decide`) or
one model's time-based work (:meth:`~retrain_trigger.pipeline.Decider.tick`).
The Decider builds a :class:`DecideContext` per step and runs the stages of
``pipeline.py`` over it in order; a stage changes the model state, adds events
to the decision and says why in its log. Stages hold no state of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from retrain_trigger.alerts import AlertRecord, alert_labels, fingerprint
from retrain_trigger.publish import Decision, LogEntry, Stage
from retrain_trigger.revisions import WindowUpdate
from retrain_trigger.route import Router
from schemas.events import Alert, Detection

if TYPE_CHECKING:
    from retrain_trigger.dedup import Incident
    from retrain_trigger.pipeline import ModelState
    from retrain_trigger.policy import Policy, Rule
    from retrain_trigger.silence import Silences
    from retrain_trigger.stable import StableVersions


class PolicyIndex:
    """A policy with what stages look up on every step: its router, rules by name, alert ids and texts."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.router = Router(policy)
        self.rules = {rule.name: rule for rule in policy.rules}
        self._labels: dict[tuple[str | None, ...], tuple[str, dict[str, str]]] = {}

    def alert_id(self, rule: Rule, detection: Detection) -> tuple[str, dict[str, str]]:
        """The fingerprint and labels of the alert ``rule`` raises on the detection's segment (cached)."""
        s = detection.segment
        cache_key = (rule.name, detection.detector_id, s.model, s.model_version, s.app, s.route, s.tenant)
        found = self._labels.get(cache_key)
        if found is None:
            labels = alert_labels(rule, detection.detector_id, s)
            found = self._labels[cache_key] = (fingerprint(labels), labels)
        return found

    def summary(self, record: AlertRecord) -> str:
        """The alert's one-line summary: the rule's own, or the rule name, with detector and version."""
        rule = self.rules.get(record.rule)
        labels = record.labels
        base = f"{labels['detector']} on {labels['model']}/{labels['model_version']}"
        return f"{rule.summary} ({base})" if rule and rule.summary else f"{record.rule}: {base}"

    def alert(
        self, record: AlertRecord, status: Literal["firing", "resolved"], ends_at: datetime | None
    ) -> Alert:
        """The Alert event of a record, with its rule's summary and runbook."""
        rule = self.rules.get(record.rule)
        return record.to_alert(status, self.summary(record), ends_at, rule.runbook_url if rule else None)


class DecideContext:
    """One step of one model: its state, the time, the policy, the shared state, the decision and its log."""

    # A plain class with slots, not a dataclass: one is built per detection, and the
    # generated dataclass __init__ (defaults, factories) is measurably slower here.
    __slots__ = (
        "active",
        "await_applied",
        "changed",
        "decision",
        "detection",
        "explain",
        "firing",
        "firing_groups",
        "index",
        "matched",
        "now",
        "policy",
        "resolved",
        "resolved_by_group",
        "silences",
        "stable",
        "state",
        "window",
    )

    def __init__(
        self,
        index: PolicyIndex,
        state: ModelState,
        silences: Silences,
        stable: StableVersions,
        now: datetime,
        decision: Decision,
        explain: bool,
        detection: Detection | None = None,
        window: WindowUpdate | None = None,
        *,
        await_applied: bool = False,
    ) -> None:
        self.index = index
        #: The policy deciding this step.
        self.policy: Policy = index.policy
        self.state = state
        self.silences = silences
        self.stable = stable
        self.now = now
        self.decision = decision
        self.explain = explain
        #: The detection of a decide step; None on a tick.
        self.detection = detection
        #: What the detection is to its series (:mod:`retrain_trigger.revisions`); None: a new window.
        self.window = window
        #: Does a rollback watch wait for the act stage's ``rollback.applied`` before it counts windows?
        self.await_applied = await_applied
        #: The rules the detection routes to (set by the route stage).
        self.matched: Sequence[Rule] = ()
        #: Did an alert fire or resolve on this detection (the gates say)?
        self.changed = False
        #: Alerts resolved in this step, with their end time.
        self.resolved: list[tuple[AlertRecord, datetime]] = []
        #: Resolved alert events by notification group, for the resolved page.
        self.resolved_by_group: dict[str, list[Alert]] = {}
        #: (fingerprint, labels) of every firing alert, muted or not: the sources of inhibition.
        self.firing: list[tuple[str, dict[str, str]]] = []
        #: Notification groups with a firing alert, muted or not (a muted group is not resolved).
        self.firing_groups: set[str] = set()
        #: Firing, unmuted alerts by notification group: what the page stage pages.
        self.active: dict[str, list[AlertRecord]] = {}

    def log(self, stage: Stage, subject: str, passed: bool, reason: str) -> None:
        """Say why a stage let a candidate through or stopped it (kept only with ``explain``)."""
        if self.explain:
            self.decision.log.append(LogEntry(stage, subject, passed, reason))


@dataclass(slots=True)
class Candidate:
    """One firing alert on its way through the per-alert stages (inhibit to publish)."""

    record: AlertRecord
    #: ``rule detector model/version``: what the log lines of this alert are about.
    subject: str
    #: The notification group the alert is paged in.
    page_group: str
    rule: Rule | None
    #: The incident the alert's action belongs to, and its group labels (set by the dedup stage).
    incident: Incident | None = None
    action_group: dict[str, str] = field(default_factory=dict)
    #: The incident's group as one key: cooldowns are kept per (action, this key).
    action_key: str = ""


class PipelineStage(Protocol):
    """A stage of a decide step; returns False to end the step there."""

    def run(self, ctx: DecideContext) -> bool:
        """Read and change the context; False stops the stages after this one."""
        ...


class PerAlertStage(Protocol):
    """A stage run once per firing alert; returns False when this alert goes no further."""

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        """Read and change the context for one alert; False stops the later stages for it."""
        ...
