"""A strict JSON reader for tests: RFC 8259 as other languages' readers take it, plus I-JSON's rules.

Python's ``json.loads`` accepts ``NaN`` and ``Infinity``, turns ``1e400`` into
``inf``, keeps the last of two equal keys and passes lone surrogates through.
:func:`strict_loads` refuses all of that, as a JavaScript or Go client (or an
I-JSON reader, RFC 7493) would.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NotStrictJson(ValueError):
    """The text is not strict JSON."""


def _refuse_constant(name: str) -> Any:
    raise NotStrictJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStrictJson(f"{text} does not fit a double")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise NotStrictJson(f"key {key!r} repeated in one object")
        result[key] = value
    return result


def _no_surrogates(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise NotStrictJson("a lone surrogate in a string") from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_surrogates(key)
            _no_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _no_surrogates(item)


def strict_loads(data: bytes | str) -> Any:
    """Parse ``data``, or raise :class:`NotStrictJson` (or :class:`json.JSONDecodeError`)."""
    value = json.loads(
        data,
        parse_constant=_refuse_constant,
        parse_float=_finite,
        object_pairs_hook=_unique,
    )
    _no_surrogates(value)
    return value
