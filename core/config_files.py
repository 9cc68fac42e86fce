"""Small YAML files named by settings (detectors, alert receivers), read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from schemas.errors import ConfigError
from schemas.yaml_errors import compose_yaml, located_errors


def load_yaml_list(path: Path, item_type: Any, what: str) -> list[Any]:
    """A YAML list validated item by item; any problem is a ConfigError of ``file:line: field: message``.

    The message never quotes a value from the file: receivers files hold webhook
    tokens and routing keys.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc}") from exc
    origin = str(path)
    root, data = compose_yaml(text, origin)
    if not isinstance(data, list):
        raise ConfigError(f"{origin}:1: a {what} file is a YAML list ('- ...' items)")
    try:
        return TypeAdapter(list[item_type]).validate_python(data)
    except ValidationError as exc:
        # Not chained: a traceback of the ValidationError would print the values after all.
        raise ConfigError(f"invalid {what} file {path}:\n{located_errors(exc, root, origin)}") from None
