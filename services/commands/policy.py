"""``loopwatch policy``: validate and explain a decision policy, or backtest it on recorded detections."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from services.commands.common import STATE_DIR_OPTION, settings_from_flags, state_dir_or_default

if TYPE_CHECKING:
    from core.settings import Settings
    from retrain_trigger.explain import BacktestReport
    from retrain_trigger.policy import Policy
    from retrain_trigger.stable import StableVersions
    from schemas.events import Detection


@click.group(name="policy")
def policy_group() -> None:
    """Decision policies: validate and explain one, or replay recorded detections through it."""


@policy_group.command(name="check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Validate a policy file and explain which detections lead to an alert, a retrain or a rollback."""
    from detectors.registry import all_detectors
    from retrain_trigger.explain import explain_policy
    from retrain_trigger.policy import load_policy

    policy = load_policy(file)
    click.echo(f"{file}: ok")
    for line in explain_policy(policy, all_detectors()):
        click.echo(line)


@policy_group.command(name="backtest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--detections",
    "detections_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Recorded Detections, one JSON object per line",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Instead of a file: read the detections topic of this Kafka, from its start to its end",
)
@click.option(
    "--topic", default=None, help="The topic read with --bootstrap [default: loopwatch.detections.v1]"
)
@click.option("--stable", multiple=True, help="MODEL=VERSION marked stable first [default: from --state-dir]")
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@STATE_DIR_OPTION
def policy_backtest(
    file: Path,
    detections_file: Path | None,
    bootstrap: str | None,
    topic: str | None,
    stable: tuple[str, ...],
    output: str,
    state_dir: Path | None,
) -> None:
    """Which alerts, pages and actions a policy would have produced over recorded detections, and when.

    The detections come from a file (--detections) or straight from Kafka
    (--bootstrap, optionally --topic): records that are not Detections are
    skipped and counted.
    """
    from retrain_trigger.explain import backtest, load_silences, read_detections
    from retrain_trigger.policy import load_policy

    if (detections_file is None) == (bootstrap is None):
        raise click.UsageError("give exactly one of --detections FILE and --bootstrap SERVERS")
    if topic is not None and bootstrap is None:
        raise click.UsageError("--topic goes with --bootstrap")
    policy = load_policy(file)
    state_dir = state_dir_or_default(state_dir)
    stable_versions = stable_for_backtest(state_dir, stable)
    skipped: list[str] = []
    if detections_file is not None:
        detections = read_detections(detections_file)
    elif bootstrap is not None:
        settings = settings_from_flags(kafka_bootstrap=bootstrap)
        topic = topic or settings.topics.detections
        detections, skipped, read = detections_from_topic(settings, topic)
        # On stderr, so that --format json stays one JSON document on stdout.
        click.echo(f"read {read} records from {topic} at {bootstrap}", err=True)
        for problem in skipped[:5]:
            click.echo(f"skipped {problem}", err=True)
    report = backtest(policy, detections, stable_versions, load_silences(state_dir / "silences.json"))
    if output == "json":
        click.echo(backtest_json(report, skipped if bootstrap is not None else None))
        return
    for line in backtest_lines(report, policy, skipped):
        click.echo(line)


def parse_stable(pair: str) -> tuple[str, str]:
    """The (model, version) of a --stable MODEL=VERSION."""
    model, sep, version = pair.partition("=")
    if not sep or not model or not version:
        raise click.BadParameter(f"{pair!r}: use MODEL=VERSION", param_hint="--stable")
    return model, version


def stable_for_backtest(state_dir: Path, pairs: tuple[str, ...]) -> StableVersions:
    """The stable versions in ``state_dir``, then the --stable MODEL=VERSION marks of the command line."""
    from retrain_trigger.explain import load_stable
    from retrain_trigger.stable import StableVersionMarked

    stable_versions = load_stable(state_dir / "stable_versions.json")
    for model, version in map(parse_stable, pairs):
        stable_versions.apply(StableVersionMarked(model=model, version=version, marked_at=datetime.now(UTC)))
    return stable_versions


def detections_from_topic(settings: Settings, topic: str) -> tuple[list[Detection], list[str], int]:
    """The Detections of ``topic`` from its start to its end, what was skipped and why, and how many read."""
    from retrain_trigger.explain import parse_detections
    from services.topic_reader import read_topic

    records = read_topic(settings, topic)
    detections, skipped = parse_detections((f"{topic}/{r.partition}@{r.offset}", r.value) for r in records)
    return detections, skipped, len(records)


def backtest_json(report: BacktestReport, skipped: list[str] | None) -> str:
    """The backtest as one JSON document; ``skipped`` is listed when the detections came from a topic."""
    rows = [
        {"at": e.at.isoformat(), "kind": e.kind, "what": e.what, "subject": e.subject, "id": e.id}
        for e in report.timeline
    ]
    body: dict[str, Any] = {"detections": report.detections, "counts": dict(report.counts), "timeline": rows}
    if skipped is not None:
        body["skipped"] = skipped
    return json.dumps(body, indent=2)


def backtest_lines(report: BacktestReport, policy: Policy, skipped: list[str]) -> Iterator[str]:
    """The backtest as text: the counts, then the timeline, each entry offset from the first detection."""
    yield f"{report.detections} detections, policy {policy.name!r} ({policy.mode})"
    if skipped:
        yield f"  skipped (not Detections): {len(skipped)}"
    for name, count in sorted(report.counts.items()):
        yield f"  {name}: {count}"
    start = report.first_detection
    for entry in report.timeline:
        offset = f"+{entry.at - start}" if start else ""
        yield (
            f"{entry.at.isoformat()} {offset:>10}  {entry.kind:<14} {entry.what}"
            f"  [{entry.subject}] {entry.id}"
        )
