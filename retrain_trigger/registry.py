"""The model registry loopwatch reads and moves: which version is stable, which is the canary.

The stable version of a model is the one its ``champion`` alias points to,
the canary the one its ``challenger`` alias points to (names configurable).
Every change is a compare-and-set, so a person who moved an alias meanwhile
is never overruled:

- a promotion moves ``champion`` from the request's ``from_version`` to its
  ``target_version``, tags the new champion with the version it replaced
  (:data:`PREVIOUS_STABLE_TAG`, the target of a later rollback of it) and
  removes ``challenger`` if it pointed at the promoted version;
- a rollback from B to T takes a bad canary out of rotation when
  ``challenger`` points at B and ``champion`` at T (``challenger`` is removed,
  ``champion`` stays), or moves ``champion`` back to T when it points at B
  (:func:`rollback_plan`); anything else is refused with who points where.

:func:`apply_move` makes either happen at most once per request, even when
the request is delivered again after a crash between the change and its
result event.

>>> rollback_plan({"champion": "1", "challenger": "2"}, "champion", "challenger", "2", "1")
('challenger', None)
>>> rollback_plan({"champion": "2"}, "champion", "challenger", "2", "1")
('champion', '1')
>>> rollback_plan({"champion": "3"}, "champion", "challenger", "2", "1")
'champion points to 3, not 2, and challenger is not set: moved meanwhile, left alone'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING, Literal, Protocol

from schemas.errors import LoopwatchError

if TYPE_CHECKING:
    from core.settings import Settings

#: The per-request marker on the target version: "pending" before the change, then "applied" or
#: "rejected: ..."; " removal" follows "pending" and "applied" when the change removes the canary alias.
MARKER_PREFIX = "loopwatch.move."
#: On a version loopwatch made stable (promotion, mark-stable): the stable version it replaced.
PREVIOUS_STABLE_TAG = "loopwatch.previous_champion"
_REMOVAL = " removal"
_TAG_KEY_UNSAFE = re.compile(r"[^\w.\-/ :]")


class RegistryError(LoopwatchError):
    """The registry did not answer, or refused a call (``recoverable``: trying again may help)."""

    def __init__(self, message: str, *, recoverable: bool) -> None:
        super().__init__(message)
        self.recoverable = recoverable


@dataclass(frozen=True)
class AliasMove:
    """The result of a compare-and-set on an alias."""

    moved: bool
    current: str | None  # the version the alias points to now (None: not set, or removed)
    reason: str  # why it did not move, or "moved" / "removed"
    alias: str = ""  # the alias that changed, or that was to change


class ModelRegistry(Protocol):
    """What loopwatch needs of a model registry."""

    stable_alias: str
    canary_alias: str

    def stable_version(self, model: str) -> str | None:
        """The version the stable alias points to (briefly cached), or None."""
        ...

    def canary_version(self, model: str) -> str | None:
        """The version the canary alias points to (briefly cached), or None."""
        ...

    def aliases(self, model: str, *, fresh: bool = False) -> dict[str, str]:
        """Alias -> version of ``model`` (``fresh``: read now, not from the cache)."""
        ...

    def set_alias(self, model: str, alias: str, version: str | None) -> None:
        """Point ``alias`` at ``version`` (None: remove the alias), whatever it pointed to."""
        ...

    def tag_version(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        """Set tags on one version (the incident's id, reason and detections)."""
        ...

    def version_tags(self, model: str, version: str, *, cached: bool = False) -> dict[str, str]:
        """The tags of one version, read now (``cached``: may be a few seconds old)."""
        ...


def marker_key(request_id: str) -> str:
    """The tag key that records what became of one request (safe for MLflow's tag-key rules)."""
    safe = _TAG_KEY_UNSAFE.sub("_", request_id)
    if safe != request_id or len(safe) > 200:
        # Two ids that differ only in unsafe characters must not share a marker.
        safe = f"{safe[:160]}~{sha256(request_id.encode()).hexdigest()[:16]}"
    return MARKER_PREFIX + safe


def compare_and_set(
    registry: ModelRegistry, model: str, alias: str, *, expected: str, to_version: str | None
) -> AliasMove:
    """Point ``alias`` at ``to_version`` (None: remove it) if a fresh read still finds it at ``expected``.

    Registries have no conditional alias update: a person's change is
    overruled only if it lands between the read and the write.
    """
    current = registry.aliases(model, fresh=True).get(alias)
    if current != expected:
        return AliasMove(False, current, moved_meanwhile(alias, current, expected), alias)
    registry.set_alias(model, alias, to_version)
    return AliasMove(True, to_version, "moved" if to_version is not None else "removed", alias)


def rollback_plan(
    aliases: Mapping[str, str], stable_alias: str, canary_alias: str, from_version: str, to_version: str
) -> tuple[str, str | None] | str:
    """Which alias a rollback from ``from_version`` to ``to_version`` changes, and to what; or why none.

    A bad canary (canary alias on it, stable alias on the target) leaves
    rotation: its alias is removed and the stable one stays. A bad stable
    version goes back to the target.
    """
    stable, canary = aliases.get(stable_alias), aliases.get(canary_alias)
    if canary == from_version and stable == to_version:
        return canary_alias, None
    if stable == from_version:
        return stable_alias, to_version
    if canary == from_version:
        return f"{canary_alias} points to {from_version} but " + moved_meanwhile(
            stable_alias, stable, to_version
        )
    return (
        f"{stable_alias} {_where(stable)}, not {from_version}, and {canary_alias} {_where(canary)}: "
        "moved meanwhile, left alone"
    )


def apply_move(
    registry: ModelRegistry,
    model: str,
    *,
    kind: Literal["rollback", "promotion"],
    from_version: str,
    to_version: str,
    request_id: str,
    tags: Mapping[str, str],
) -> AliasMove:
    """Apply a rollback or promotion from ``from_version`` to ``to_version`` at most once for ``request_id``.

    The target version carries a marker tag for the request: ``pending`` (with
    the plan: which alias changes) is set before the change, ``applied`` (or
    ``rejected: <why>``) after. A request seen again (redelivered after a crash,
    or published twice) finds the marker and reports the first outcome without
    changing anything; a crash between the change and ``applied`` leaves
    ``pending`` with the alias already where the plan said, which counts as
    applied. Both versions get ``tags`` (the incident) before the change, so a
    changed alias always has its explanation; a request the aliases refuse
    tags nothing but its marker.
    """
    marker = marker_key(request_id)
    state = registry.version_tags(model, to_version).get(marker)
    if state is not None and state.startswith("applied"):
        removed = state == "applied" + _REMOVAL
        alias = registry.canary_alias if removed else registry.stable_alias
        return AliasMove(True, None if removed else to_version, "already applied", alias)
    if state is not None and state.startswith("rejected: "):
        return AliasMove(False, None, state.removeprefix("rejected: "), registry.stable_alias)
    if from_version == to_version:
        outcome = AliasMove(False, from_version, "nothing to move", registry.stable_alias)
        return _finish(registry, model, to_version, marker, outcome)
    if state is None:
        plan = _plan(registry, model, kind, from_version, to_version)
        if isinstance(plan, AliasMove):
            return _finish(registry, model, to_version, marker, plan)
        alias, target = plan
        registry.tag_version(model, from_version, tags)
        pending = {**tags, marker: "pending" + (_REMOVAL if target is None else "")}
        if kind == "promotion":
            pending[PREVIOUS_STABLE_TAG] = from_version  # set before the move: a champion always has it
        registry.tag_version(model, to_version, pending)
    else:  # "pending": a crash cut this request short; carry on with the plan it recorded
        removal = state == "pending" + _REMOVAL
        alias, target = (registry.canary_alias, None) if removal else (registry.stable_alias, to_version)
    outcome = compare_and_set(registry, model, alias, expected=from_version, to_version=target)
    if not outcome.moved and state is not None and outcome.current == target:
        # This request's own change, made before a crash cut it short.
        outcome = AliasMove(True, target, "moved" if target is not None else "removed", alias)
    if outcome.moved and kind == "promotion":
        # The promoted challenger is the champion now: no longer a canary.
        canary = registry.canary_alias
        compare_and_set(registry, model, canary, expected=to_version, to_version=None)
    return _finish(registry, model, to_version, marker, outcome)


def _plan(
    registry: ModelRegistry, model: str, kind: str, from_version: str, to_version: str
) -> tuple[str, str | None] | AliasMove:
    # Checked before anything is tagged: a refused request leaves no previous-champion tag behind.
    aliases = registry.aliases(model, fresh=True)
    stable = registry.stable_alias
    if kind == "promotion":
        current = aliases.get(stable)
        if current != from_version:
            return AliasMove(False, current, moved_meanwhile(stable, current, from_version), stable)
        return stable, to_version
    plan = rollback_plan(aliases, stable, registry.canary_alias, from_version, to_version)
    return AliasMove(False, aliases.get(stable), plan, stable) if isinstance(plan, str) else plan


def _finish(registry: ModelRegistry, model: str, version: str, marker: str, outcome: AliasMove) -> AliasMove:
    if outcome.moved:
        state = "applied" + (_REMOVAL if outcome.current is None else "")
    else:
        state = f"rejected: {outcome.reason}"
    registry.tag_version(model, version, {marker: state})
    return outcome


def set_stable(registry: ModelRegistry, model: str, version: str) -> str | None:
    """Point the stable alias at ``version``, wherever it was (a person's mark-stable); the one replaced.

    ``version`` is tagged with the version it replaces first, so a rollback
    of it goes back there.
    """
    previous = registry.aliases(model, fresh=True).get(registry.stable_alias)
    if previous is not None and previous != version:
        registry.tag_version(model, version, {PREVIOUS_STABLE_TAG: previous})
    registry.set_alias(model, registry.stable_alias, version)
    return previous


def previous_stable(registry: ModelRegistry, model: str, version: str) -> str | None:
    """The stable version ``version`` replaced when loopwatch made it stable (briefly cached), or None."""
    return registry.version_tags(model, version, cached=True).get(PREVIOUS_STABLE_TAG)


def moved_meanwhile(alias: str, current: str | None, expected: str) -> str:
    """The reason a compare-and-set refused: the alias is not where the request thought."""
    return f"{alias} {_where(current)}, not {expected}: moved meanwhile, left alone"


def _where(version: str | None) -> str:
    return f"points to {version}" if version is not None else "is not set"


def registry_from_settings(settings: Settings) -> ModelRegistry | None:
    """The configured registry (``registry`` or ``actuator`` is mlflow), or None: stable marks as before."""
    if "mlflow" not in (settings.registry, settings.actuator):
        return None
    from retrain_trigger.mlflow_registry import MlflowRegistry

    assert settings.mlflow_tracking_uri is not None, "checked by Settings"
    return MlflowRegistry(
        settings.mlflow_tracking_uri,
        stable_alias=settings.registry_stable_alias,
        canary_alias=settings.registry_canary_alias,
        cache_seconds=settings.registry_cache_seconds,
    )
