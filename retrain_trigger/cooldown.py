"""Cooldown and rate limit: no second action of a kind for a group too soon, and a cap per time span."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import Field

from retrain_trigger.policy import RateLimit
from retrain_trigger.state import State

if TYPE_CHECKING:
    from retrain_trigger.context import Candidate, DecideContext


class CooldownState(State):
    """When each (action, group) last acted, and the recent action times per action kind."""

    last: dict[str, datetime] = Field(default_factory=dict)
    history: dict[str, list[datetime]] = Field(default_factory=dict)

    def check(
        self, action: str, group: str, now: datetime, cooldown: timedelta, limit: RateLimit
    ) -> str | None:
        """Why an action may not be published now (``None``: it may)."""
        last = self.last.get(f"{action}|{group}")
        if last is not None and now - last < cooldown:
            return (
                f"cooldown: last {action} at {last.isoformat()}, quiet until {(last + cooldown).isoformat()}"
            )
        recent = [t for t in self.history.get(action, []) if now - t < limit.per]
        if len(recent) >= limit.max_actions:
            return f"rate limit: {len(recent)} {action} actions within {limit.per}"
        return None

    def record(self, action: str, group: str, now: datetime, limit: RateLimit) -> None:
        """Remember an action published at ``now``."""
        self.last[f"{action}|{group}"] = now
        recent = [t for t in self.history.get(action, []) if now - t < limit.per]
        self.history[action] = [*recent, now]


class CooldownStage:
    """Cooldown: an action too soon after the last one for its group, or over the rate limit, stops here."""

    def run(self, ctx: DecideContext, candidate: Candidate) -> bool:
        """False (and why) while the incident's group is cooling down or its action kind is capped."""
        rule = candidate.rule
        assert rule is not None, "the cooldown stage runs after dedup"
        policy = ctx.policy
        reason = ctx.state.cooldown.check(
            rule.action, candidate.action_key, ctx.now, policy.cooldown_for(rule), policy.rate_limit
        )
        if reason is None:
            return True
        ctx.log("cooldown", candidate.subject, False, reason)
        return False
