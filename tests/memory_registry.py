"""A model registry held in memory, for tests that need no MLflow server: aliases and tags per version."""

from __future__ import annotations

from collections.abc import Mapping


class MemoryRegistry:
    """A :class:`~retrain_trigger.registry.ModelRegistry` in memory (no cache: every read is fresh)."""

    def __init__(
        self,
        aliases: Mapping[str, Mapping[str, str]] | None = None,
        *,
        stable_alias: str = "champion",
        canary_alias: str = "challenger",
    ) -> None:
        self.stable_alias = stable_alias
        self.canary_alias = canary_alias
        self.alias_map: dict[str, dict[str, str]] = {m: dict(a) for m, a in (aliases or {}).items()}
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def stable_version(self, model: str) -> str | None:
        """The version the stable alias points to, or None."""
        return self.aliases(model).get(self.stable_alias)

    def canary_version(self, model: str) -> str | None:
        """The version the canary alias points to, or None."""
        return self.aliases(model).get(self.canary_alias)

    def aliases(self, model: str, *, fresh: bool = False) -> dict[str, str]:
        """Alias -> version of ``model``."""
        return dict(self.alias_map.get(model, {}))

    def set_alias(self, model: str, alias: str, version: str | None) -> None:
        """Point ``alias`` at ``version``, or remove it (None)."""
        held = self.alias_map.setdefault(model, {})
        if version is None:
            held.pop(alias, None)
        else:
            held[alias] = version

    def tag_version(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        """Set tags on one version."""
        self.tags.setdefault((model, version), {}).update(tags)

    def version_tags(self, model: str, version: str, *, cached: bool = False) -> dict[str, str]:
        """The tags of one version."""
        return dict(self.tags.get((model, version), {}))
