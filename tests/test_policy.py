"""Policy files: the default loads, bad files are refused with the file and line of the mistake."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.registry import all_detectors
from retrain_trigger.policy import DEFAULT_POLICY, PolicyError, load_policy, parse_duration, parse_policy
from schemas.errors import ConfigError

GOOD = """\
name: p
rules:
  - name: r1
    match:
      detectors: [drift.ks.v1]
    action: retrain
"""


def test_default_policy_loads_and_covers_the_detectors_that_matter() -> None:
    policy = load_policy()
    assert policy.name == "default" and policy.mode == "auto"
    by_action = {rule.action for rule in policy.rules}
    assert by_action == {"alert", "retrain", "rollback"}
    ids = set(all_detectors())
    covered = {i for i in ids if any(rule.match.matches_detector(i) for rule in policy.rules)}
    # Every quality, toxicity and drift detector that exists leads somewhere.
    assert {"quality.negative_feedback.v1", "drift.ks.v1", "quality.error_rate.v1"} <= covered
    rollback = next(rule for rule in policy.rules if rule.action == "rollback")
    assert rollback.match.matches_detector("quality.negative_feedback.v1")
    assert not rollback.match.matches_detector("drift.ks.v1")


@pytest.mark.parametrize(
    "text,line,message",
    [
        (
            GOOD.replace("action: retrain", "action: retrain\n    sevrity: critical"),
            7,
            "sevrity: unknown field",
        ),
        (GOOD.replace("action: retrain", "action: deploy"), 6, "rules.0.action: Input should be"),
        (
            GOOD + "    gates:\n      for_windows: 0\n",
            8,
            "rules.0.gates.for_windows: Input should be greater",
        ),
        (GOOD + "cooldown: soon\n", 7, "cooldown: Value error, 'soon' is not a duration"),
        (GOOD + "group_by: [tenant]\n", 7, "group_by: Value error, group_by must include 'model'"),
        (GOOD.replace("      detectors: [drift.ks.v1]", "      detectors: []"), 5, "rules.0.match.detectors"),
        (GOOD + "  - name: r1\n    match: {detectors: [x]}\n", 3, "rule names must be unique; repeated: r1"),
        (GOOD.replace("name: p\n", "name: p\nmode: [auto\n"), 3, "not valid YAML"),
        ("- just\n- a list\n", 1, "a policy is a YAML mapping"),
    ],
    ids=[
        "misspelt",
        "bad-action",
        "zero-windows",
        "bad-duration",
        "group-by",
        "empty",
        "dup",
        "yaml",
        "list",
    ],
)
def test_bad_policies_are_refused_with_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "my.yaml")
    assert f"my.yaml:{line}: " in str(caught.value)
    assert message in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_load_policy_from_a_file_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    policy = load_policy(path)
    assert policy.rules[0].gates.for_windows == 1 and policy.cooldown_for(policy.rules[0]) == timedelta(
        hours=1
    )
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_default_policy_file_is_the_packaged_one() -> None:
    assert DEFAULT_POLICY.name == "default_policy.yaml" and DEFAULT_POLICY.exists()


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86_400), ("1w", 604_800), (45, 45), ("1.5h", 5400)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "h", "-5m", True])
def test_bad_durations(text: str | bool) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_either_a_policy_or_a_policy_error(text: str) -> None:
    try:
        parse_policy(text, "fuzz.yaml")
    except PolicyError as exc:
        assert str(exc).startswith("fuzz.yaml")
