"""``loopwatch gate``: a CD pipeline step that passes a candidate only when live traffic shows it is fine.

It reads the detections and alerts topics from their start and judges the
candidate against the stable version exactly as the promote stage of the
decide pipeline does (:func:`retrain_trigger.promote.judge_candidate`, the
policy's ``promote`` section): exit 0 when it is non-inferior on every
measure over enough windows and no alert fired for it, 1 when it is worse (or
an alert fired), 2 when there is still not enough data once ``--wait`` has
run out, 3 when the gate itself cannot run (Kafka, registry or settings; also
a candidate the configured registry does not hold, at once, in one line). A
candidate that is already the stable version (loopwatch promoted it) is judged
against the version it replaced (its ``loopwatch.previous_champion`` tag).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from schemas.errors import LoopwatchError
from services.commands.common import settings_from_flags

if TYPE_CHECKING:
    from core.settings import Settings
    from retrain_trigger.actions import CandidateEvidence, MarginComparison
    from retrain_trigger.policy import Promote

#: Exit codes of the gate.
PASS, WORSE, NOT_ENOUGH_DATA, ERROR = 0, 1, 2, 3
EXIT_CODES = {"non_inferior": PASS, "worse": WORSE, "not_enough_data": NOT_ENOUGH_DATA}


class GateUsageError(click.UsageError):
    """A usage error of the gate: exit 3, since click's usual 2 means "not enough data" here."""

    exit_code = ERROR


class GateCommand(click.Command):
    """A command whose bad flags exit 3, not click's 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse as click does; a usage error gets the gate's error code."""
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = ERROR
            raise


@click.command(name="gate", cls=GateCommand)
@click.option("--model", required=True, help="The model's name")
@click.option("--candidate", required=True, help="The version to judge against stable")
@click.option(
    "--stable",
    default=None,
    help="The version it is compared with [default: the registry's stable alias, else the control topic's"
    " latest stable mark, else LOOPWATCH_STABLE_VERSIONS]",
)
@click.option("--wait", default="0s", show_default=True, help="Keep reading while there is not enough data")
@click.option("--interval", default="10s", show_default=True, help="Time between reads while waiting")
@click.option(
    "--bootstrap", default=None, help="Kafka bootstrap servers [default: LOOPWATCH_KAFKA_BOOTSTRAP]"
)
@click.option(
    "--policy",
    "policy_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Policy whose promote section judges [default: LOOPWATCH_POLICY_FILE, else the built-in one]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the evidence as one JSON document")
def gate(
    model: str,
    candidate: str,
    stable: str | None,
    wait: str,
    interval: str,
    bootstrap: str | None,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Exit 0 when CANDIDATE is healthy and non-inferior to stable on live traffic, 1 when worse, 2 when
    there is not enough data when the wait runs out (3: the gate could not run)."""
    from retrain_trigger.policy import load_policy, parse_duration

    try:
        wait_seconds = parse_duration(wait).total_seconds()
        interval_seconds = max(parse_duration(interval).total_seconds(), 0.1)
    except ValueError as exc:
        raise GateUsageError(str(exc)) from exc
    try:
        settings = settings_from_flags(kafka_bootstrap=bootstrap)
        promote = load_policy(policy_file or settings.policy_file).promote
        check_registered(settings, model, candidate)
        stable = stable or stable_version(settings, model)
        if stable == candidate:
            stable = replaced_version(settings, model, candidate)
            click.echo(
                f"{candidate} is the stable version: gated against {stable}, the one it replaced", err=True
            )
        deadline = time.monotonic() + wait_seconds
        while True:
            evidence = evaluate(settings, promote, model=model, candidate=candidate, stable=stable)
            remaining = deadline - time.monotonic()
            if evidence.status != "not_enough_data" or remaining <= 0:
                break
            click.echo(f"waiting: {evidence.reason}", err=True)
            time.sleep(min(interval_seconds, remaining))
    except LoopwatchError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(ERROR)
    code = EXIT_CODES[evidence.status]
    if as_json:
        click.echo(json.dumps({"exit_code": code, **evidence.model_dump(mode="json")}, indent=2))
    else:
        for line in evidence_lines(evidence):
            click.echo(line)
    sys.exit(code)


def check_registered(settings: Settings, model: str, candidate: str) -> None:
    """With a registry, refuse at once a candidate it does not hold (no wait for data that cannot come)."""
    from retrain_trigger.registry import RegistryError, registry_from_settings

    registry = registry_from_settings(settings)
    if registry is None:
        return
    try:
        registry.version_tags(model, candidate)
    except RegistryError as exc:
        if exc.recoverable:
            raise  # the registry did not answer: that error says so
        where = settings.mlflow_tracking_uri
        raise LoopwatchError(
            f"model {model} has no version {candidate} in the MLflow registry at {where}: check --model and"
            " --candidate"
        ) from exc


def stable_version(settings: Settings, model: str) -> str:
    """The version ``model``'s candidates are compared with: registry, control topic, then settings."""
    from retrain_trigger.registry import registry_from_settings
    from services import control_topic

    registry = registry_from_settings(settings)
    if registry is not None:
        found = registry.stable_version(model)
        if found is not None:
            return found
    marked = control_topic.read(settings).stable.target(model) or settings.stable_versions.get(model)
    if marked is None:
        raise GateUsageError(f"no stable version of {model} is known: pass --stable VERSION")
    return marked


def replaced_version(settings: Settings, model: str, candidate: str) -> str:
    """The stable version ``candidate`` replaced when loopwatch made it stable (its registry tag).

    A CD pipeline may gate a version after loopwatch promoted it: it is judged
    against the champion it replaced. Without that tag there is nothing to compare with.
    """
    from retrain_trigger.registry import previous_stable, registry_from_settings

    registry = registry_from_settings(settings)
    previous = previous_stable(registry, model, candidate) if registry is not None else None
    if previous is None or previous == candidate:
        raise GateUsageError(f"{candidate} is the stable version of {model}: nothing to gate")
    return previous


def evaluate(
    settings: Settings, promote: Promote, *, model: str, candidate: str, stable: str
) -> CandidateEvidence:
    """Read the detections and alerts topics once and judge the candidate."""
    from pydantic import ValidationError

    from retrain_trigger.explain import parse_detections
    from retrain_trigger.promote import judge_candidate
    from schemas.events import Alert
    from services.topic_reader import read_topic

    topics = settings.topics
    records = read_topic(settings, topics.detections)
    detections, _ = parse_detections(
        (f"{topics.detections}/{r.partition}@{r.offset}", r.value) for r in records
    )
    alerts = []
    for record in read_topic(settings, topics.alerts):
        try:
            alerts.append(Alert.model_validate_json(record.value))
        except ValidationError:
            continue  # not an alert of ours: it says nothing about the candidate
    return judge_candidate(detections, alerts, promote, model=model, candidate=candidate, stable=stable)


def evidence_lines(evidence: CandidateEvidence) -> list[str]:
    """The evidence for a person: verdict, reason, windows, then one line per measure."""
    code = EXIT_CODES[evidence.status]
    span = (
        f", {evidence.window_start.isoformat()} to {evidence.window_end.isoformat()}"
        if evidence.window_start and evidence.window_end
        else ""
    )
    lines = [
        f"gate {evidence.model} {evidence.candidate_version} vs stable {evidence.stable_version}:"
        f" {evidence.status} (exit {code})",
        f"  {evidence.reason}",
        f"  windows: {evidence.windows} of {evidence.windows_required}"
        f" (stable {evidence.stable_windows}){span}",
    ]
    # The alerts fired for the candidate are in the reason already ("alerts fired for ...").
    lines += [f"  {measure_line(c, evidence.confidence)}" for c in evidence.comparisons]
    return lines


def measure_line(c: MarginComparison, confidence: float) -> str:
    """``quality.negative_feedback.v1 current_rate: candidate 0.1 (n=400), stable 0.12 (n=400), ...``."""
    text = (
        f"{c.detector_id} {c.measurement}: candidate {c.candidate:.4g} (n={c.candidate_samples}),"
        f" stable {c.stable:.4g} (n={c.stable_samples})"
    )
    if c.difference is not None and c.ci_low is not None and c.ci_high is not None:
        text += (
            f", difference {c.difference:+.4g}, {confidence:.0%} interval [{c.ci_low:+.4g}, {c.ci_high:+.4g}]"
        )
    if c.p_value is not None:
        text += f", p(worse)={c.p_value:.2g}"
    return f"{text}, margin {c.margin:g} -> {c.judgement}"
