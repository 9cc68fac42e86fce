"""``loopwatch silence`` and ``loopwatch model``: the control state every worker follows.

Both keep a local copy under --state-dir and, with --bootstrap, publish to (or
read back) the compacted control topic that running workers apply at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.settings import Settings
from services.commands.common import STATE_DIR_OPTION, settings_from_flags, state_dir_or_default

if TYPE_CHECKING:
    from retrain_trigger.control import ControlEvent
    from retrain_trigger.silence import Silence, Silences
    from retrain_trigger.stable import StableVersionMarked, StableVersions
    from services.control_topic import ControlLog

_BOOTSTRAP_OPTION = click.option(
    "--bootstrap",
    default=None,
    help="Also publish to the control topic of this Kafka, so running workers apply it at once",
)
_READ_BOOTSTRAP_OPTION = click.option(
    "--bootstrap",
    default=None,
    help="Read the control topic of this Kafka (what the workers apply) instead of the local state",
)


def _publish_control(bootstrap: str | None, event: ControlEvent) -> None:
    """Send a silence or stable mark to the workers (loopwatch.control.v1) and say where it went."""
    if bootstrap is not None:
        click.echo(publish_control(settings_from_flags(kafka_bootstrap=bootstrap), event))


def publish_control(settings: Settings, event: ControlEvent) -> str:
    """Publish ``event`` on the control topic, signed when a key is set; the line that says so."""
    from services import control_topic

    control_topic.publish(settings, event)
    signed = "signed" if settings.control_key else "unsigned: LOOPWATCH_CONTROL_KEY is not set"
    return f"published to {settings.topics.control} at {settings.kafka_bootstrap} ({signed})"


def _read_control(bootstrap: str) -> ControlLog:
    """The control topic as the workers see it; its refused records are printed first."""
    from services import control_topic

    log = control_topic.read(settings_from_flags(kafka_bootstrap=bootstrap))
    for line in refused_lines(log):
        click.echo(line)
    return log


def refused_lines(log: ControlLog) -> Iterator[str]:
    """One line per record of the control topic that the workers refuse, with where and why."""
    for record in log.refused:
        key = record.key.decode(errors="replace") if record.key else "-"
        yield f"refused  offset {record.offset} key {key}  {record.refused.reason}: {record.refused.detail}"


@click.group(name="silence")
def silence_group() -> None:
    """Maintenance windows: mute the alerts and actions whose labels match, for a while.

    Alert labels: alertname (the policy rule), action, severity, detector, model,
    model_version, and app, route, tenant when the segment has them. A silence
    that matches every alert, or lasts longer than LOOPWATCH_SILENCE_MAX_SECONDS,
    needs --force; workers refuse such a silence without it.
    """


@silence_group.command(name="add")
@click.option(
    "--matcher",
    "-m",
    "matchers",
    multiple=True,
    required=True,
    help="LABEL=VALUE (or !=, =~ regex, !~), e.g. model=chat; repeat to narrow",
)
@click.option("--duration", default="2h", show_default=True, help="How long, e.g. 30m, 2h, 1d")
@click.option("--start", default=None, help="When it starts, ISO 8601 [default: now]")
@click.option("--comment", required=True, help="Why (shown to on-call)")
@click.option("--created-by", default="loopwatch-cli", show_default=True)
@click.option(
    "--force", is_flag=True, help="Allow a silence that matches every alert or outlasts the maximum"
)
@STATE_DIR_OPTION
@_BOOTSTRAP_OPTION
def silence_add(
    matchers: tuple[str, ...],
    duration: str,
    start: str | None,
    comment: str,
    created_by: str,
    force: bool,
    state_dir: Path | None,
    bootstrap: str | None,
) -> None:
    """Add a silence; prints its id."""
    from retrain_trigger.control import ControlEvent
    from retrain_trigger.policy import parse_duration
    from retrain_trigger.silence import Silence, parse_matcher

    try:
        parsed = [parse_matcher(m) for m in matchers]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--matcher") from exc
    try:
        length = parse_duration(duration)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from exc
    begins = parse_start(start)
    settings = settings_from_flags(kafka_bootstrap=bootstrap)
    silence = Silence(
        matchers=parsed,
        starts_at=begins,
        ends_at=begins + length,
        comment=comment,
        created_by=created_by,
        force=force,
    )
    limit = silence.needs_force(timedelta(seconds=settings.silence_max_seconds))
    if limit is not None:
        raise click.UsageError(f"refused: {limit[1]}; add --force if that is what you mean")
    add_silence(state_dir_or_default(state_dir) / "silences.json", silence)
    click.echo(silence.id)
    _publish_control(bootstrap, ControlEvent(silence=silence))


def parse_start(start: str | None) -> datetime:
    """--start as an aware time (UTC when it names no zone), or now."""
    try:
        begins = datetime.fromisoformat(start) if start else datetime.now(UTC)
    except ValueError as exc:
        raise click.BadParameter(f"{start!r} is not an ISO 8601 time", param_hint="--start") from exc
    return begins if begins.tzinfo else begins.replace(tzinfo=UTC)


def add_silence(path: Path, silence: Silence) -> None:
    """Add ``silence`` to the local silences file."""
    from retrain_trigger.explain import load_silences, save_silences

    silences = load_silences(path)
    silences.add(silence)
    save_silences(path, silences)


@silence_group.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Include expired silences")
@STATE_DIR_OPTION
@_READ_BOOTSTRAP_OPTION
def silence_list(show_all: bool, state_dir: Path | None, bootstrap: str | None) -> None:
    """Active and upcoming silences (all with --all); with --bootstrap, also the refused control records."""
    from retrain_trigger.explain import load_silences

    now = datetime.now(UTC)
    if bootstrap is not None:
        silences = _read_control(bootstrap).silences
    else:
        silences = load_silences(state_dir_or_default(state_dir) / "silences.json")
    lines = list(silence_lines(silences, now, show_all=show_all))
    if not lines:
        click.echo("no silences")
    for line in lines:
        click.echo(line)


def silence_lines(silences: Silences, now: datetime, *, show_all: bool) -> Iterator[str]:
    """One line per silence by start: state, window, matchers, comment (expired ones only with show_all)."""
    shown = [s for s in silences.items.values() if show_all or s.ends_at > now]
    for s in sorted(shown, key=lambda s: s.starts_at):
        state = "active" if s.active(now) else ("expired" if s.ends_at <= now else "pending")
        matchers = ",".join(str(m) for m in s.matchers)
        yield (
            f"{s.id}  {state:<7} {s.starts_at.isoformat()} -> {s.ends_at.isoformat()}"
            f"  {matchers}  {s.comment}" + ("  (forced)" if s.force else "")
        )


@silence_group.command(name="expire")
@click.argument("silence_id")
@STATE_DIR_OPTION
@_BOOTSTRAP_OPTION
def silence_expire(silence_id: str, state_dir: Path | None, bootstrap: str | None) -> None:
    """End a silence now (an unambiguous id prefix is enough)."""
    from retrain_trigger.control import ControlEvent

    try:
        path = state_dir_or_default(state_dir) / "silences.json"
        ended = expire_silence(path, silence_id, datetime.now(UTC))
    except KeyError:
        raise click.BadParameter(
            f"no single silence with id {silence_id!r}", param_hint="SILENCE_ID"
        ) from None
    click.echo(f"expired {ended.id} at {ended.ends_at.isoformat()}")
    _publish_control(bootstrap, ControlEvent(silence=ended))


def expire_silence(path: Path, prefix: str, now: datetime) -> Silence:
    """End the one local silence whose id starts with ``prefix`` (KeyError when none or several)."""
    from retrain_trigger.explain import load_silences, save_silences

    silences = load_silences(path)
    ended = silences.expire(silences.match_prefix(prefix).id, now)
    save_silences(path, silences)
    return ended


@click.group(name="model")
def model_group() -> None:
    """Model versions: mark the known-good one that rollbacks go back to and canaries are compared with."""


@model_group.command(name="mark-stable")
@click.argument("name")
@click.argument("version")
@STATE_DIR_OPTION
@_BOOTSTRAP_OPTION
def model_mark_stable(name: str, version: str, state_dir: Path | None, bootstrap: str | None) -> None:
    """Mark VERSION of model NAME stable: the target of its next rollback, the reference of its canaries.

    With a registry configured (LOOPWATCH_REGISTRY=mlflow), its stable alias is moved to VERSION first.
    """
    from retrain_trigger.control import ControlEvent

    moved = mark_in_registry(settings_from_flags(), name, version)
    if moved is not None:
        click.echo(moved)
    marked, previous = mark_stable(
        state_dir_or_default(state_dir) / "stable_versions.json", name, version, datetime.now(UTC)
    )
    _publish_control(bootstrap, ControlEvent(stable=marked))
    click.echo(
        f"{name}: {version} is stable" + (f" (was {previous})" if previous and previous != version else "")
    )


def mark_in_registry(settings: Settings, name: str, version: str) -> str | None:
    """Point the registry's stable alias of ``name`` at ``version``; what to print (None: no registry)."""
    from retrain_trigger.registry import registry_from_settings, set_stable

    registry = registry_from_settings(settings)
    if registry is None:
        return None
    previous = set_stable(registry, name, version)  # tags ``version`` with the one it replaces
    was = f" (was {previous})" if previous and previous != version else ""
    return f"{name}: alias {registry.stable_alias} -> {version} in the registry{was}"


def mark_stable(path: Path, name: str, version: str, now: datetime) -> tuple[StableVersionMarked, str | None]:
    """Mark ``version`` of model ``name`` stable in the local file; the mark, and the version it replaces."""
    from retrain_trigger.explain import load_stable, save_stable
    from retrain_trigger.stable import StableVersionMarked

    stable = load_stable(path)
    previous = stable.target(name)
    marked = StableVersionMarked(model=name, version=version, marked_at=now, marked_by="cli")
    stable.apply(marked)
    save_stable(path, stable)
    return marked, previous


@model_group.command(name="list")
@STATE_DIR_OPTION
@_READ_BOOTSTRAP_OPTION
def model_list(state_dir: Path | None, bootstrap: str | None) -> None:
    """The version marked stable of each model; with --bootstrap, also the refused control records."""
    from retrain_trigger.explain import load_stable

    if bootstrap is not None:
        stable = _read_control(bootstrap).stable
    else:
        stable = load_stable(state_dir_or_default(state_dir) / "stable_versions.json")
    if not stable.models:
        click.echo("no stable versions")
    for line in stable_lines(stable):
        click.echo(line)


def stable_lines(stable: StableVersions) -> Iterator[str]:
    """One line per model: the version marked stable, by whom and when."""
    for model, mark in sorted(stable.models.items()):
        yield f"{model}: {mark.version}  (marked by {mark.marked_by} at {mark.marked_at.isoformat()})"
