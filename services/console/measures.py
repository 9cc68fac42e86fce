"""The quality measures a Segment page charts: which of a detection's measurements, in what unit, in words.

A quality detector records its measures under keys such as ``p95.share_above_slo`` or
``cost.current_mean`` (``detectors.quality_checks.combine`` prefixes each check's name). Trial 18: the
charts' legends showed those keys; every measure drawn now has its words (``share of requests above the
p95 latency SLO``), naming whose it is (``v2``, ``reference (v1, stable)``), and a key this console does
not know is still said as words, never as the raw key.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from services.console.columns import boxed, parse_objects

#: A detector's measure in words, where its id says it badly (``empty_refusal``).
MEASURES: dict[str, str] = {"quality.empty_refusal.v1": "empty or refusal"}
#: A check of several (``combine``) in words: what its means and SLO are of.
CHECKS: dict[str, str] = {
    "tokens": "tokens per request",
    "tokens_slo": "tokens per request",
    "cost": "cost per request",
    "cost_slo": "cost per request",
    "rating": "rating",
}
_RATE = re.compile(r"(^|_)rate$|_ms$|_mean$|^share_above_slo$|^slo$")
_NOT_RATE = re.compile(r"samples$|^p_value|^decided_by$")
#: A toxicity detector's rates per label (``rate.profanity``): the label is the field.
_PER_LABEL = ("rate", "baseline_rate")
_SIDED = re.compile(r"^(current|canary|reference|stable)_(.+)$")
_PERCENTILE = re.compile(r"^p(\d+)$")
#: The sides of a comparison that are not this version's own.
OTHERS = ("reference", "stable")


@functools.lru_cache(maxsize=4096)
def is_rate(name: str) -> bool:
    """Whether a quality measurement is a rate, latency, mean or SLO to chart (``p95.observed_ms``).

    Judged on its field (the part after its check's name): ``error_rate.ci_low``, a check named
    ``error_rate``, is an interval's end, and ``error_rate.min_samples`` a count; neither is charted.
    A toxicity rate per label (``rate.profanity``) is named by its prefix.
    """
    check, _, field = name.rpartition(".")
    if check in _PER_LABEL:
        return True
    return bool(_RATE.search(field)) and not _NOT_RATE.search(field)


def is_bound(name: str) -> bool:
    """Whether a measurement is a configured bound (``p95.slo_ms``), not something observed."""
    field = name.rpartition(".")[2]
    return field in ("slo", "slo_ms") or field.startswith("slo_")


def measurement_unit(name: str, detector_id: str = "") -> str:
    """What a quality measurement counts in: ``p95.observed_ms`` milliseconds, ``cost.current_mean`` USD.

    A mean rating (``quality.rating.v1``'s, the canary's ``rating`` check) is in rating points: drawn
    on a share's axis it read as a rate.
    """
    check, _, field = name.rpartition(".")
    if field.endswith("_ms"):
        return "milliseconds"
    if "token" in check or "token" in field:
        return "tokens"
    if "cost" in check or "usd" in field:
        return "USD"
    if field.endswith("_mean") and ("rating" in check or (not check and "rating" in detector_id)):
        return "rating"
    return "share"


def measure_words(detector_id: str, name: str) -> tuple[str, str | None]:
    """A measurement in words, and whose it is: ``current``, ``reference`` or None (a bound, a setting).

    >>> measure_words("quality.latency.v1", "p95.share_above_slo")
    ('share of requests above the p95 latency SLO', 'current')
    >>> measure_words("quality.cost.v1", "tokens.reference_mean")
    ('mean tokens per request', 'reference')
    """
    check, _, field = name.rpartition(".")
    if percentile := _PERCENTILE.match(check):
        latency = f"p{percentile.group(1)} latency"
        if field == "share_above_slo":
            return f"share of requests above the {latency} SLO", "current"
        return (f"{latency} SLO", None) if is_bound(name) else (latency, "current")
    subject = CHECKS.get(check) or _words(check) or MEASURES.get(detector_id) or _detector_words(detector_id)
    if is_bound(name):
        return f"{subject} SLO", None
    if check.endswith("_slo"):  # the mean its SLO is checked on, the same as its own check's
        words, side = measure_words(detector_id, f"{check.removesuffix('_slo')}.{field}")
        return f"{words} (SLO check)", side
    side, what = "current", field
    if sided := _SIDED.match(field):
        side = "reference" if sided.group(1) in OTHERS else "current"
        what = sided.group(2)
    elif field.endswith("_rate"):
        return _words(field), "current"  # a measure of its own (refusal_rate): its name says what it is
    if what == "mean":
        return f"mean {subject}", side
    return _join(subject, _words(what)), side


def measure_labels(
    detector_id: str, names: Iterable[str], version: str, reference: str, bounds: Iterable[str] = ()
) -> dict[str, str]:
    """Per measurement: its legend entry in words, naming whose it is (``v2 p95 latency``, ``reference
    (v1, stable) error rate``); a bound (an SLO) is the configured line (``p95 latency SLO (bound)``).

    >>> measure_labels("quality.error_rate.v1", ["current_rate", "reference_rate"], "v2",
    ...                "reference (v1, stable)")
    {'current_rate': 'v2 error rate', 'reference_rate': 'reference (v1, stable) error rate'}
    """
    bound = set(bounds)
    labels: dict[str, str] = {}
    for name in names:
        words, side = measure_words(detector_id, name)
        if name in bound or side is None:
            labels[name] = f"{words} (bound)"
        else:
            labels[name] = _join(reference if side == "reference" else version, words)
    return labels


def _detector_words(detector_id: str) -> str:
    return _words(detector_id.split(".")[1]) if "." in detector_id else _words(detector_id)


def _words(name: str) -> str:
    return re.sub(r"\bslo\b", "SLO", name.removesuffix("_ms").replace("_", " ").replace(".", " ").strip())


def _join(*parts: str) -> str:
    """The parts as one phrase, a word the previous part ends with not said twice (error rate rate)."""
    words: list[str] = []
    for part in parts:
        for word in part.split():
            if not words or words[-1] != word:
                words.append(word)
    return " ".join(words)


def quality_measurements(group: pa.Table, is_rate: Callable[[str], bool]) -> dict[str, list[float | None]]:
    """The quality rates of judged windows, per name (null where a window has none)."""
    given = pc.fill_null(pc.greater(pc.utf8_length(group["measurements"]), 0), False)
    objects = pc.if_else(pc.and_(group["judged"], given), group["measurements"], "{}")
    parsed = parse_objects(objects)
    if parsed is None:  # not what pyarrow's reader takes (NaN, mixed types): one object at a time
        loaded = [json.loads(text) for text in objects.to_pylist()]
        names = sorted({k for m in loaded for k in m if is_rate(k)})
        return {k: [_num(m.get(k)) for m in loaded] for k in names}
    names = sorted(name for name in parsed.column_names if is_rate(name))
    return {name: boxed(_finite(parsed[name])) for name in names}


def _finite(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # Strict JSON out: NaN and infinities (a detector that could not decide) become null.
    numbers = pc.cast(column, pa.float64())
    return pc.if_else(pc.is_finite(numbers), numbers, pa.scalar(None, pa.float64()))


def _num(value: Any) -> float | None:
    # Strict JSON out: NaN and infinities (a detector that could not decide) become null.
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
