"""``loopwatch deadletter stats|show|replay``: the dead-letter topic, counted, read safely, and replayed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from schemas.events import DeadLetterReason
from services.commands.common import settings_from_flags

if TYPE_CHECKING:
    from core.settings import Settings
    from services.deadletters import StoredLetter


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """--since as a time: ISO 8601 (UTC when it names no offset) or a duration back from now (2h, 1d)."""
    if value is None:
        return None
    from retrain_trigger.policy import parse_duration

    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use an ISO 8601 time or a duration like 30m, 2h, 1d") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _filters(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every deadletter command shares: which letters, and which Kafka."""
    for option in reversed(
        (
            click.option(
                "--reason",
                "reasons",
                multiple=True,
                type=click.Choice([r.value for r in DeadLetterReason]),
                metavar="REASON",
                help="Only this reason, e.g. malformed_json (repeat for several; see the README)",
            ),
            click.option("--topic", default=None, help="Only letters of messages read from this topic"),
            click.option(
                "--since",
                default=None,
                callback=_since,
                help="Only letters received since this time (ISO 8601) or this long ago (30m, 2h, 1d)",
            ),
            click.option(
                "--bootstrap", default=None, help="Kafka bootstrap servers [env: LOOPWATCH_KAFKA_BOOTSTRAP]"
            ),
        )
    ):
        command = option(command)
    return command


def _letters(
    settings: Settings, reasons: tuple[str, ...], topic: str | None, since: datetime | None
) -> list[StoredLetter]:
    """The dead letters on the topic that pass the filters; records that are not dead letters on stderr."""
    from services.deadletters import parse_letters, select
    from services.topic_reader import read_topic

    letters, unreadable = parse_letters(read_topic(settings, settings.topics.deadletter))
    if unreadable:
        click.echo(
            f"skipped {len(unreadable)} records that are not dead letters; first: {unreadable[0]}", err=True
        )
    return select(letters, reasons=reasons, topic=topic, since=since)


_FORMAT = click.option(
    "--format", "output", type=click.Choice(["text", "json"]), default="text", show_default=True
)


@click.group(name="deadletter")
def deadletter_group() -> None:
    """The dead-letter topic: what was refused and why, the messages themselves, and their replay.

    Every refused message has a dead letter with its reason, error, source
    topic/partition/offset, key and the first LOOPWATCH_DEADLETTER_VALUE_BYTES of
    its value (with the whole value's length and SHA-256).
    """


@deadletter_group.command(name="stats")
@_filters
@_FORMAT
def stats_command(
    reasons: tuple[str, ...], topic: str | None, since: datetime | None, bootstrap: str | None, output: str
) -> None:
    """Count the dead letters by reason, by source topic, and by hour (UTC), source topic and reason."""
    import json

    from services.deadletters import stats, stats_json, stats_lines

    settings = settings_from_flags(kafka_bootstrap=bootstrap)
    counted = stats(_letters(settings, reasons, topic, since))
    if output == "json":
        click.echo(json.dumps(stats_json(counted, settings.topics.deadletter), indent=2))
        return
    for line in stats_lines(counted, settings.topics.deadletter):
        click.echo(line)


@deadletter_group.command(name="show")
@_filters
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Show the N latest")
@click.option(
    "--max-bytes",
    type=click.IntRange(min=0),
    default=1_000,
    show_default=True,
    help="Print at most this many bytes of each message",
)
@_FORMAT
def show_command(
    reasons: tuple[str, ...],
    topic: str | None,
    since: datetime | None,
    bootstrap: str | None,
    limit: int,
    max_bytes: int,
    output: str,
) -> None:
    """Print the latest dead letters: the error and the original bytes, escaped for a terminal.

    Control characters, terminal escapes, bidirectional overrides and bytes that
    are not UTF-8 are printed as \\xNN / \\uNNNN. A value the dead letter kept only
    the start of is marked TRUNCATED, with how many bytes were not kept.
    """
    from services.deadletters import show_json, show_lines

    settings = settings_from_flags(kafka_bootstrap=bootstrap)
    letters = _letters(settings, reasons, topic, since)
    latest = sorted(letters, key=lambda s: s.letter.received_at)[-limit:]
    for stored in latest:
        if output == "json":
            click.echo(show_json(stored, settings.topics.deadletter))
            continue
        for line in show_lines(stored, settings.topics.deadletter, max_bytes):
            click.echo(line)
    if output == "text":
        click.echo(f"{len(latest)} of {len(letters)} dead letters shown")


@deadletter_group.command(name="replay")
@_filters
@click.option(
    "--to-topic", default=None, help="Send every message to this topic [default: the topic it was read from]"
)
@click.option("--dry-run", is_flag=True, help="Say what would be sent, send nothing")
@click.option("--no-progress", is_flag=True, help="No progress bar")
def replay_command(
    reasons: tuple[str, ...],
    topic: str | None,
    since: datetime | None,
    bootstrap: str | None,
    to_topic: str | None,
    dry_run: bool,
    no_progress: bool,
) -> None:
    """Send the refused messages again (after a producer fix): the original bytes and key, to their topic.

    A dead letter that kept only the start of its message is replayed from the
    source offset while the topic retains it, checked against its SHA-256; the
    ones that cannot be replayed are listed with why, and the exit code is 1.
    Downstream, replays are idempotent: the join and the curated datasets
    de-duplicate by event id. A message that had no key is keyed by its
    request_id, as `loopwatch replay` does.
    """
    from functools import partial

    from tqdm import tqdm

    from services.deadletters import plan_replay, printable, replay_headers
    from services.replay import Replayer
    from services.topic_reader import read_records

    settings = settings_from_flags(kafka_bootstrap=bootstrap)
    letters = _letters(settings, reasons, topic, since)
    plan = plan_replay(letters, partial(read_records, settings))
    if dry_run:
        for original in plan.originals:
            target = to_topic or _source(original.stored)
            how = "fetched from the source" if original.fetched else "kept whole"
            click.echo(
                f"would send {original.stored.place} ({len(original.value):,} bytes, {how}) to {target}"
            )
    else:
        replayer = Replayer(settings)
        try:
            for original in tqdm(
                plan.originals, unit="message", desc="replaying", disable=no_progress or None
            ):
                target = to_topic or _source(original.stored)
                replayer.send(target, original.value, original.key, headers=replay_headers(original))
        finally:
            replayer.close()
    verb = "would replay" if dry_run else "replayed"
    where = to_topic or "the topics they were read from"
    skipped = (
        f"; {plan.duplicates} repeats of a message skipped (same key and bytes)" if plan.duplicates else ""
    )
    click.echo(f"{verb} {len(plan.originals)} of {len(letters)} dead letters to {printable(where)}{skipped}")
    if plan.unreplayable:
        click.echo(f"could not replay {len(plan.unreplayable)}:")
        for failed in plan.unreplayable:
            click.echo(f"  {failed.stored.place}  {failed.stored.letter.reason.value}  {failed.why}")
        sys.exit(1)


def _source(stored: StoredLetter) -> str:
    assert stored.letter.source is not None  # letters without one are never planned
    return stored.letter.source.topic
