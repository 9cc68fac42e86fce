"""Decision policies: a YAML file, validated by pydantic, with errors that name the line.

A policy says which detections lead to an alert only, a retrain request or a
rollback request, how much evidence that takes (gates), what mutes what
(inhibit rules), how often on-call may be paged, and whether actions are
published (``mode: auto``) or only logged and alerted (``mode: dry-run``).
``retrain_trigger/default_policy.yaml`` is the documented default.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from schemas.errors import ConfigError
from schemas.yaml_errors import compose_yaml, located_errors

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")

Action = Literal["alert", "retrain", "rollback"]
Severity = Literal["info", "warning", "critical"]
VerdictName = Literal["ok", "warning", "drift"]
SegmentField = Literal["model", "model_version", "app", "route", "tenant"]
SEGMENT_FIELDS: tuple[SegmentField, ...] = ("model", "model_version", "app", "route", "tenant")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class PolicyError(ConfigError):
    """A policy file cannot be read or is invalid; the message starts with ``file:line:``."""


def parse_duration(value: Any) -> timedelta:
    """``"90s"``, ``"5m"``, ``"2h"``, ``"1d"`` or a number of seconds, as a timedelta.

    >>> parse_duration("2h"), parse_duration(30)
    (datetime.timedelta(seconds=7200), datetime.timedelta(seconds=30))
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 2h, 1d")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration: use a number of seconds or 30s, 5m, 2h, 1d, 1w")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gates(_Strict):
    """How much evidence a rule needs before it fires, and before it resolves again."""

    min_samples: int = Field(0, ge=0, description="Windows with fewer current rows are not evidence")
    min_effect_size: float | None = Field(
        None, ge=0, description="Breaches need |effect_size| at least this (unset: trust the verdict)"
    )
    max_p_value: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Breaches need a p-value (the adjusted one, when the window was corrected) below this:"
        " stricter than the detector's alpha, e.g. for automatic actions (unset: trust the verdict)",
    )
    for_windows: int = Field(1, ge=1, description="Consecutive breaching windows before the alert fires")
    immediate_p_value: float | None = Field(
        None,
        gt=0,
        le=1,
        description="A breach with a p-value below this fires at once, whatever for_windows says"
        " (overwhelming evidence; unset: never)",
    )
    resolve_windows: int = Field(1, ge=1, description="Consecutive clear windows before it resolves")


class Match(_Strict):
    """Which detections a rule is about: detector id patterns, verdicts, segment patterns (fnmatch)."""

    detectors: list[str] = Field(min_length=1, description="Detector id patterns, e.g. drift.*")
    verdicts: list[VerdictName] = Field(
        ["drift"], min_length=1, description="Verdicts that count as a breach"
    )
    segment: dict[SegmentField, str] = Field(default_factory=dict, description="Segment field patterns")

    def matches_detector(self, detector_id: str) -> bool:
        """Does any detector pattern match this id?"""
        return any(fnmatchcase(detector_id, pattern) for pattern in self.detectors)


class Rule(_Strict):
    """One routing rule: matching detections become an alert and maybe an action."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
    match: Match
    action: Action = "alert"
    severity: Severity = "warning"
    summary: str | None = Field(None, description="One line for on-call; default: rule and detector")
    runbook_url: str | None = None
    gates: Gates = Field(default_factory=Gates)
    cooldown: Duration | None = Field(None, description="Quiet time after an action [default: policy's]")

    @field_validator("runbook_url")
    @classmethod
    def _is_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://\S+$", value):
            raise ValueError("runbook_url must be an http(s) URL")
        return value


class InhibitRule(_Strict):
    """While an alert matching ``source`` fires, alerts matching ``target`` with the same ``equal`` labels
    are muted (no page, no action); they are released when the source resolves."""

    source: dict[str, str] = Field(min_length=1, description="Label patterns of the muting alert")
    target: dict[str, str] = Field(min_length=1, description="Label patterns of the muted alerts")
    equal: list[str] = Field(default_factory=list, description="Labels both must share")


class RateLimit(_Strict):
    """At most ``max_actions`` actions of one kind per model within ``per``."""

    max_actions: int = Field(3, ge=1)
    per: Duration = timedelta(hours=1)


class Verify(_Strict):
    """The follow-up watch after a rollback: is the target version better than the rolled-back one?

    The measures that triggered the rollback must be lower on the target with
    ``confidence``; any other measure fails it only when significantly and
    materially worse (``alpha`` after Benjamini-Hochberg, ``min_effect_size``).
    """

    within: Duration = Field(
        timedelta(hours=1), description="Give up (rollback.failed) after this long without a verdict"
    )
    min_samples: int = Field(
        30, ge=1, description="Samples each version needs on a measure before it is judged"
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="Confidence that a triggering measure is lower on the target"
    )
    alpha: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Another measure fails the rollback when worse at this level after Benjamini-Hochberg"
        " [default: that detector's alpha, else 0.05]",
    )
    min_effect_size: float | None = Field(
        None,
        ge=0,
        le=1,
        description="... and worse by at least this (absolute rate) [default: that detector's minimum"
        " effect (min_effect_size or min_rate_increase), else 0.02]",
    )
    metrics: dict[str, str] = Field(
        default_factory=lambda: {
            "quality.negative_feedback.v1": "current_rate",
            "toxicity.detoxify.v1": "rate.toxicity",
            "toxicity.profanity.v1": "rate.profanity",
        },
        description="Detector id -> rate compared (a share in [0, 1], lower is better)",
    )
    stand_ins: dict[str, str] = Field(
        default_factory=lambda: {"quality.canary.v1": "quality.negative_feedback.v1"},
        description="A trigger with no rate in ``metrics`` -> the measure judged for it (the stable"
        " version gets no canary verdict; its thumbs-down rate is the canary check's main measure)",
    )


class Margin(_Strict):
    """One quality measure a challenger must not be worse on, and by how much it may be."""

    measurement: str = Field(
        description="Measurement of the detector compared (a share in [0, 1], lower is better)"
    )
    margin: float = Field(
        gt=0,
        le=1,
        description="Non-inferior when challenger minus stable is surely below this (absolute rate)",
    )


class Promote(_Strict):
    """Promotion of a challenger version: when has it served enough, and is it surely not worse than stable?

    Each measure in ``margins`` is compared on the windows since the challenger
    first served (both versions added up): non-inferior when the upper end of
    the ``confidence`` interval of challenger minus stable is below the margin,
    worse when Fisher's exact test says the challenger is higher at
    ``1 - confidence`` (and it is not non-inferior). A request needs ``windows``
    challenger windows, ``min_samples`` samples per measure on each version,
    every measure seen non-inferior, and no alert fired for the challenger.
    """

    enabled: bool = Field(True, description="Publish promotion requests (false: never)")
    windows: int = Field(3, ge=1, description="Challenger windows with a judged measure before a promotion")
    min_samples: int = Field(
        100, ge=1, description="Samples each version needs on a measure before it is judged"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the intervals and of the worse test")
    margins: dict[str, Margin] = Field(
        default_factory=lambda: {
            "quality.negative_feedback.v1": Margin(measurement="current_rate", margin=0.05),
            "toxicity.detoxify.v1": Margin(measurement="rate.toxicity", margin=0.02),
            "toxicity.profanity.v1": Margin(measurement="rate.profanity", margin=0.02),
        },
        min_length=1,
        description="Detector id -> measure compared and its non-inferiority margin",
    )


class Policy(_Strict):
    """A whole decision policy."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    mode: Literal["auto", "dry-run"] = "auto"
    source: str = Field("/loopwatch/retrain-trigger", description="CloudEvents source of published actions")
    group_by: list[str] = Field(["model"], description="Labels that group alerts into one page")
    repeat_interval: Duration = Field(timedelta(hours=4), description="Re-page a still-firing group after")
    resolve_timeout: Duration = Field(
        timedelta(minutes=30), description="An alert with no detection for this long resolves"
    )
    cooldown: Duration = Field(timedelta(hours=1), description="Default quiet time after an action")
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    verify: Verify = Field(default_factory=Verify)
    promote: Promote = Field(default_factory=Promote)
    rules: list[Rule] = Field(min_length=1)
    inhibit: list[InhibitRule] = Field(default_factory=list)

    @field_validator("group_by")
    @classmethod
    def _groups_within_a_model(cls, value: list[str]) -> list[str]:
        # Decider state is partitioned by model (one table key per model), so a group never spans models.
        if "model" not in value:
            raise ValueError("group_by must include 'model' (decision state is kept per model)")
        return value

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[Rule]) -> list[Rule]:
        names = [rule.name for rule in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        return rules

    def cooldown_for(self, rule: Rule) -> timedelta:
        """The rule's cooldown, or the policy default."""
        return rule.cooldown if rule.cooldown is not None else self.cooldown


# --------------------------------------------------------------------------
# Loading with line numbers


def parse_policy(text: str, origin: str = "<policy>") -> Policy:
    """A Policy from YAML text; errors raise PolicyError as ``origin:line: message``."""
    root, data = compose_yaml(text, origin, PolicyError)
    if root is None or not isinstance(data, dict):
        raise PolicyError(f"{origin}:1: a policy is a YAML mapping with at least 'name' and 'rules'")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(located_errors(exc, root, origin)) from exc


def load_policy(path: Path | str | None = None) -> Policy:
    """Read and validate a policy file (the default policy without a path)."""
    path = Path(path) if path is not None else DEFAULT_POLICY
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc}") from exc
    return parse_policy(text, str(path))
