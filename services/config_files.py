"""Small YAML files named by settings (detectors, alert receivers), read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from schemas.errors import ConfigError


def load_yaml_list(path: Path, item_type: Any, what: str) -> list[Any]:
    """A YAML list validated item by item; any problem is a ConfigError naming the file."""
    try:
        return TypeAdapter(list[item_type]).validate_python(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"cannot use {what} file {path}: {exc}") from exc
