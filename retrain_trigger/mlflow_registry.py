"""The MLflow model registry: stable and canary versions are aliases, moves are checked before they are made.

Since MLflow 2.9 stages are deprecated: a deployment serves
``models:/<name>@champion`` (and a canary ``@challenger``), and promoting or
rolling back means moving or removing an alias
(``MlflowClient.set_registered_model_alias``,
``delete_registered_model_alias``). ``mlflow`` is imported on first use only
(the optional extra ``loopwatch[mlflow]``), so a worker without a registry
never pays for it.

MLflow has no conditional alias update:
:func:`~retrain_trigger.registry.compare_and_set` reads the alias afresh and
changes it only if it is still where the request expects, so a person's move
is overruled only if it lands in the milliseconds between the two calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from retrain_trigger.registry import AliasMove, RegistryError, compare_and_set

#: MLflow error codes that trying again will not change.
_PERMANENT = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
#: MLflow refuses tag values longer than this (model version tags).
MAX_TAG_VALUE = 5000


class MlflowRegistry:
    """A :class:`~retrain_trigger.registry.ModelRegistry` on an MLflow tracking server's model registry."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        stable_alias: str = "champion",
        canary_alias: str = "challenger",
        cache_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.stable_alias = stable_alias
        self.canary_alias = canary_alias
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._client: Any = None
        # Called from worker threads (the act stage's calls, the decide stage's refresh).
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._tags: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    def stable_version(self, model: str) -> str | None:
        """The version the stable alias points to (cached for ``cache_seconds``), or None."""
        return self.aliases(model).get(self.stable_alias)

    def canary_version(self, model: str) -> str | None:
        """The version the canary alias points to (cached for ``cache_seconds``), or None."""
        return self.aliases(model).get(self.canary_alias)

    def aliases(self, model: str, *, fresh: bool = False) -> dict[str, str]:
        """Alias -> version of ``model`` ({} for a model the registry does not know)."""
        with self._lock:
            cached = self._cache.get(model)
        if cached is not None and not fresh and self.clock() - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            aliases = dict(self._call(lambda c: c.get_registered_model(model).aliases))
        except RegistryError as exc:
            if exc.recoverable:
                raise
            aliases = {}  # not registered (yet): no alias
        with self._lock:
            self._cache[model] = (self.clock(), aliases)
        return aliases

    def move_stable(self, model: str, *, expected: str, to_version: str) -> AliasMove:
        """Point the stable alias at ``to_version`` if a fresh read still finds it at ``expected``."""
        return compare_and_set(self, model, self.stable_alias, expected=expected, to_version=to_version)

    def set_stable(self, model: str, version: str) -> None:
        """Point the stable alias at ``version``."""
        self.set_alias(model, self.stable_alias, version)

    def set_alias(self, model: str, alias: str, version: str | None) -> None:
        """Point ``alias`` at ``version``, or remove it (None); the cached aliases are dropped."""
        if version is None:
            self._call(lambda c: c.delete_registered_model_alias(model, alias))
        else:
            self._call(lambda c: c.set_registered_model_alias(model, alias, version))
        with self._lock:
            self._cache.pop(model, None)

    def tag_version(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        """Set tags on one version (values cut to what MLflow accepts)."""
        for key, value in tags.items():
            self._call(partial(_set_tag, model=model, version=version, key=key, value=value[:MAX_TAG_VALUE]))
        with self._lock:
            self._tags.pop((model, version), None)

    def version_tags(self, model: str, version: str, *, cached: bool = False) -> dict[str, str]:
        """The tags of one version, read now (``cached``: up to ``cache_seconds`` old)."""
        key = (model, version)
        with self._lock:
            hit = self._tags.get(key)
        if cached and hit is not None and self.clock() - hit[0] < self.cache_seconds:
            return dict(hit[1])
        tags = dict(self._call(lambda c: c.get_model_version(model, version).tags))
        with self._lock:
            self._tags[key] = (self.clock(), tags)
        return dict(tags)

    def _call(self, call: Callable[[Any], Any]) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return call(self._mlflow())
        except MlflowException as exc:
            code = str(getattr(exc, "error_code", ""))
            raise RegistryError(
                f"MLflow registry: {exc.message}", recoverable=code not in _PERMANENT
            ) from exc
        except OSError as exc:  # requests' connection errors are OSErrors
            raise RegistryError(f"MLflow registry at {self.tracking_uri}: {exc}", recoverable=True) from exc

    def _mlflow(self) -> Any:
        with self._lock:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return self._client


def _set_tag(client: Any, *, model: str, version: str, key: str, value: str) -> None:
    client.set_model_version_tag(model, version, key, value)
