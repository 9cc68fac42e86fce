"""Detectors by versioned id (``drift.ks.v1``, ``toxicity.detoxify.v1``).

Modules register their classes with :func:`register` when imported;
:func:`all_detectors` imports every detector module first, so the registry
is complete without importing torch or alibi-detect at ``import detectors``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, TypeVar

from pydantic import ValidationError

from detectors.base import Detector
from schemas.errors import ConfigError

_ID = re.compile(r"^[a-z_]+(\.[a-z0-9_]+)+\.v[0-9]+$")
_MODULES = (
    "detectors.drift",
    "detectors.descriptors",
    "detectors.embedding",
    "detectors.online",
    "detectors.toxicity",
    "detectors.feedback",
    "detectors.serving",
    "detectors.canary",
)
_REGISTRY: dict[str, type[Detector[Any]]] = {}

D = TypeVar("D", bound=type[Detector[Any]])


def register(cls: D) -> D:
    """Class decorator: make ``cls`` available under ``cls.id``."""
    if not _ID.match(cls.id):
        raise ValueError(f"detector id {cls.id!r} must look like family.name.v1")
    if cls.id in _REGISTRY and _REGISTRY[cls.id] is not cls:
        raise ValueError(f"two detectors claim the id {cls.id!r}")
    _REGISTRY[cls.id] = cls
    return cls


def all_detectors() -> dict[str, type[Detector[Any]]]:
    """Every registered detector class, by id."""
    for module in _MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def create(detector_id: str, config: dict[str, Any] | None = None) -> Detector[Any]:
    """A detector built from its id and a plain config dict (as found in a Detection).

    Raises :class:`~schemas.errors.ConfigError` for an unknown id or an invalid config.
    """
    detectors = all_detectors()
    if detector_id not in detectors:
        raise ConfigError(f"unknown detector {detector_id!r}; known: {', '.join(detectors)}")
    cls = detectors[detector_id]
    try:
        return cls(cls.Config.model_validate(config or {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid config for {detector_id}: {exc}") from exc
