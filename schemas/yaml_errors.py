"""YAML configuration errors as ``file:line: field: message``, never echoing a value from the file.

Configuration files hold secrets (webhook URLs with tokens, routing keys), and
both pydantic's ``str(ValidationError)`` (``input_value=...``) and PyYAML's
marked errors (a copy of the offending line) would print them. These helpers
keep only the location and pydantic's message.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from schemas.errors import ConfigError


def compose_yaml(
    text: str, origin: str, error: type[ConfigError] = ConfigError
) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (for line numbers) and the loaded data; bad YAML raises ``error`` with its line.

    >>> root, data = compose_yaml("- {kind: slack}", "r.yaml")
    >>> data, root.start_mark.line
    ([{'kind': 'slack'}], 0)
    >>> compose_yaml("a: [1\\nb: 2", "r.yaml")
    Traceback (most recent call last):
    ...
    schemas.errors.ConfigError: r.yaml:2: not valid YAML: expected ',' or ']', but got ':'
    """
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its line: str(exc) quotes the source line, which may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise error(f"{origin}:{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise error(f"{origin}: not valid YAML: {type(exc).__name__}") from None


def node_at(root: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The deepest YAML node along a pydantic error location (pydantic adds union tags: skipped)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None
            )
            if child is None:
                # An unknown key: point at the key itself.
                child = next((k for k, _ in node.value if k.value == part), None)
            if child is None:
                continue
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
    return node


def describe_error(error: Any) -> str:
    """One pydantic error as ``rules.2.gates.for_windows: message`` (the message, never the input)."""
    path = ".".join(str(p) for p in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (misspelt?)"
    return f"{path}: {message}" if path else message


def located_errors(exc: ValidationError, root: yaml.Node | None, origin: str) -> str:
    """Every error of ``exc`` on its own line, as ``origin:line: field: message``.

    >>> from pydantic import BaseModel, TypeAdapter
    >>> class Receiver(BaseModel):
    ...     name: str
    ...     retries: int = 3
    >>> root, data = compose_yaml("- {name: a}\\n- {name: b, retries: many}", "r.yaml")
    >>> try:
    ...     TypeAdapter(list[Receiver]).validate_python(data)
    ... except ValidationError as exc:
    ...     print(located_errors(exc, root, "r.yaml"))
    r.yaml:2: 1.retries: Input should be a valid integer, unable to parse string as an integer
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        line = node_at(root, error["loc"]).start_mark.line + 1 if root is not None else 1
        lines.append(f"{origin}:{line}: {describe_error(error)}")
    return "\n".join(lines)
