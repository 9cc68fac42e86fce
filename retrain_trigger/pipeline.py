"""The Decider: detections in, alerts, pages and CloudEvent actions out, through a list of stages.

:func:`decide_stages` is the pipeline, in order, in one place (in the spirit of
Alertmanager's ``MultiStage``): each stage is a small object whose ``run`` reads
and changes one :class:`~retrain_trigger.context.DecideContext`; a stage that
returns False ends the step. The stages from inhibit to publish run once per
firing alert (:class:`EachFiringAlert`), so a muted alert stops before it is
announced, and an action published for one alert is seen by the next one's
dedup and cooldown. To add a stage, write a class with ``run`` and put it in the
list. State is kept per model (:class:`ModelState`, one changelog-table key per
model); silences and stable versions are shared (:class:`Silences`,
:class:`StableVersions`, each a compacted topic). Every public method takes
``now``: pass the detection's time when replaying, so a replay decides exactly
as the first run did.

>>> from retrain_trigger.policy import load_policy
>>> decider = Decider(load_policy())
>>> decider.policy.name
'default'
>>> [type(stage).__name__ for stage in decide_stages()][:5]
['WatchStage', 'RouteStage', 'GatesStage', 'PromoteStage', 'SettleStage']
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import Field

from retrain_trigger.alerts import AlertBook, group_key
from retrain_trigger.announce import AnnounceStage
from retrain_trigger.context import Candidate, DecideContext, PerAlertStage, PipelineStage, PolicyIndex
from retrain_trigger.cooldown import CooldownStage, CooldownState
from retrain_trigger.dedup import DEDUP_RETENTION, DedupStage, DedupState, Incident
from retrain_trigger.followup import WatchDeadlineStage, WatchStage, settle_rollback
from retrain_trigger.gates import GatesStage
from retrain_trigger.inhibit import InhibitStage
from retrain_trigger.page import PageStage
from retrain_trigger.policy import Policy
from retrain_trigger.promote import CanaryLookup, PromoteStage, PromotionState
from retrain_trigger.publish import Decision, PublishStage
from retrain_trigger.resolve import SETTLE_EVERY, ResolveStage, SettleStage
from retrain_trigger.revisions import WindowLedger, WindowUpdate
from retrain_trigger.route import RouteStage
from retrain_trigger.silence import Silence, Silences, SilenceStage
from retrain_trigger.stable import StableVersionMarked, StableVersions
from retrain_trigger.state import State
from retrain_trigger.watch import WatchState
from schemas.events import Detection

if TYPE_CHECKING:
    from retrain_trigger.act import MoveResult

__all__ = [
    "DEDUP_RETENTION",
    "SETTLE_EVERY",
    "Decider",
    "DeciderState",
    "EachFiringAlert",
    "Incident",
    "ModelState",
    "decide_stages",
]


class EachFiringAlert:
    """Runs per-alert stages over every firing alert, in order; an alert stops at the first False."""

    def __init__(self, stages: Sequence[PerAlertStage]) -> None:
        self.stages = list(stages)

    def run(self, ctx: DecideContext) -> bool:
        """Every firing alert through the stages (muted or not, it keeps its group from resolving)."""
        alerts = ctx.state.book.alerts
        group_by = ctx.policy.group_by
        ctx.firing = [(fp, r.labels) for fp, r in alerts.items() if r.status == "firing"]
        for fp, labels in ctx.firing:
            record = alerts[fp]
            candidate = Candidate(
                record=record,
                subject=f"{record.rule} {labels['detector']} {labels['model']}/{labels['model_version']}",
                page_group=group_key(labels, group_by),
                rule=ctx.index.rules.get(record.rule),
            )
            ctx.firing_groups.add(candidate.page_group)
            for stage in self.stages:
                if not stage.run(ctx, candidate):
                    break
        return True


def decide_stages(canary: CanaryLookup | None = None) -> list[PipelineStage]:
    """The decide pipeline in order: a step runs these until one returns False (``canary``: challengers)."""
    return [
        WatchStage(),  # a detection is evidence for the model's pending rollback watches
        RouteStage(),  # which rules the detection is about
        GatesStage(),  # their alerts go pending, fire, resolve or reset
        PromoteStage(canary),  # a challenger surely no worse than stable, with no alert, is proposed once
        SettleStage(),  # the rest runs when an alert changed, or every SETTLE_EVERY (and on every tick)
        ResolveStage(),  # stale alerts resolve; resolved alerts leave incidents and announce their end
        WatchDeadlineStage(),  # rollbacks not shown better in time fail
        EachFiringAlert(
            [
                InhibitStage(),  # muted by another firing alert
                SilenceStage(),  # muted by a maintenance window
                AnnounceStage(),  # first firing event; joins its group's page
                DedupStage(),  # one incident, one idempotency key, at most one action
                CooldownStage(),  # quiet time and rate limit
                PublishStage(),  # the CloudEvent (or the dry-run log line); rollbacks are watched
            ]
        ),
        PageStage(),  # one page per group: first firing, repeat interval, resolved
    ]


class ModelState(State):
    """All decision state of one model: alerts, incidents, published keys, cooldowns, rollback watches."""

    book: AlertBook = Field(default_factory=AlertBook)
    incidents: dict[str, Incident] = Field(default_factory=dict)
    dedup: DedupState = Field(default_factory=DedupState)
    cooldown: CooldownState = Field(default_factory=CooldownState)
    watch: WatchState = Field(default_factory=WatchState)
    promotion: PromotionState = Field(default_factory=PromotionState)
    windows: WindowLedger = Field(default_factory=WindowLedger)
    settled_at: datetime | None = None


class DeciderState(State):
    """The whole Decider state (per-model states plus the shared silences and stable versions)."""

    models: dict[str, ModelState] = Field(default_factory=dict)
    silences: Silences = Field(default_factory=Silences)
    stable: StableVersions = Field(default_factory=StableVersions)


class Decider:
    """Runs the decide stages over detections and ticks; holds their state but never sends anything."""

    def __init__(
        self,
        policy: Policy,
        state: DeciderState | None = None,
        *,
        explain: bool = True,
        canary: CanaryLookup | None = None,
        await_applied: bool = False,
    ) -> None:
        self.state = state if state is not None else DeciderState()
        self.explain = explain
        #: An act stage applies rollbacks: a watch counts the target's windows only after ``applied``.
        self.await_applied = await_applied
        #: The pipeline this Decider runs (see :func:`decide_stages`).
        self.stages: tuple[PipelineStage, ...] = tuple(decide_stages(canary))
        # Bound once: a step calls each of them, and there is a step per detection.
        self._runs = tuple(stage.run for stage in self.stages)
        self.use_policy(policy)

    def use_policy(self, policy: Policy) -> None:
        """Switch to a new (already validated) policy, keeping all state."""
        self.policy = policy
        self._index = PolicyIndex(policy)

    def model_state(self, model: str) -> ModelState:
        """The state of one model (created empty on first use)."""
        state = self.state.models.get(model)
        if state is None:
            state = self.state.models[model] = ModelState()
        return state

    def restore_model(self, model: str, state: ModelState) -> None:
        """Put back the state of one model (e.g. read from the changelog table after a restart)."""
        self.state.models[model] = state

    def add_silence(self, silence: Silence) -> None:
        """Add or replace a silence; it applies from the next step (or :meth:`tick`)."""
        self.state.silences.add(silence)

    def mark_stable(self, event: StableVersionMarked) -> None:
        """Record a version marked stable: the target of later rollbacks of that model."""
        self.state.stable.apply(event)

    def decide(self, detection: Detection, now: datetime) -> Decision:
        """One detection through every stage."""
        decision = Decision()
        ms = self.model_state(detection.segment.model)
        # The one place that says whether this is a new window or a correction of one counted.
        self._run(ms, now, decision, detection, ms.windows.classify(detection))
        return decision

    def rollback_result(self, result: MoveResult, at: datetime, now: datetime) -> Decision:
        """The act stage applied (``at``) or rejected a rollback: its watch starts counting, or fails."""
        decision = Decision()
        ms = self.state.models.get(result.model)
        if ms is not None:
            ctx = self._context(ms, now, decision, None, None)
            settle_rollback(ctx, result, at)
        return decision

    def tick(self, now: datetime) -> Decision:
        """Time-based work for every model: stale alerts, ended silences, repeat pages, watch deadlines."""
        decision = Decision()
        for ms in self.state.models.values():
            self._run(ms, now, decision, None)
        return decision

    def _run(
        self,
        ms: ModelState,
        now: datetime,
        decision: Decision,
        detection: Detection | None,
        window: WindowUpdate | None = None,
    ) -> None:
        ctx = self._context(ms, now, decision, detection, window)
        for run in self._runs:
            if not run(ctx):
                return

    def _context(
        self,
        ms: ModelState,
        now: datetime,
        decision: Decision,
        detection: Detection | None,
        window: WindowUpdate | None,
    ) -> DecideContext:
        state = self.state
        return DecideContext(
            self._index,
            ms,
            state.silences,
            state.stable,
            now,
            decision,
            self.explain,
            detection,
            window,
            await_applied=self.await_applied,
        )
