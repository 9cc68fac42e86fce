"""What every command group shares: settings from flags, the error handling group, the state folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from kafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_settings import SettingsError

from core.settings import Settings
from schemas.errors import LoopwatchError


def settings_from_flags(**overrides: Any) -> Settings:
    """Settings from keyword arguments (CLI flags), then LOOPWATCH_* variables, then defaults."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


class LoopwatchGroup(click.Group):
    """Turns loopwatch's own errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, reporting loopwatch and settings errors on one line each."""
        try:
            return super().invoke(ctx)
        except LoopwatchError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        except KafkaError as exc:
            # A client gave up (a timeout, a broker that went away after the probe): say so, no traceback.
            # kafka-python's errors put their class name in front of their message.
            what = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            click.secho(f"error: Kafka: {what}", fg="red", err=True)
            sys.exit(2)
        except SettingsError as exc:
            # Its message names the field and source, never the value.
            click.secho(f"error: {exc}: {exc.__cause__ or 'invalid value'}", fg="red", err=True)
            sys.exit(2)
        except ValidationError as exc:
            if exc.title not in ("Settings", "Topics"):
                raise
            click.secho(f"error: {invalid_settings(exc)}", fg="red", err=True)
            sys.exit(2)


def invalid_settings(exc: ValidationError) -> str:
    """One line per settings error, named by its variable, without the value (it may be a secret)."""
    prefix = "LOOPWATCH_TOPIC_" if exc.title == "Topics" else "LOOPWATCH_"
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        if not loc:  # a check across settings: its message names the variables
            lines.append(f"invalid settings: {error['msg'].removeprefix('Value error, ')}")
            continue
        where = ".".join([f"{prefix}{loc[0].upper()}", *loc[1:]])
        lines.append(f"invalid setting {where}: {error['msg']}")
    return "\n".join(lines)


STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Local state: silences.json and stable_versions.json [default: LOOPWATCH_DATA_DIR]",
)


def state_dir_or_default(state_dir: Path | None) -> Path:
    """--state-dir, else the settings' data_dir (LOOPWATCH_DATA_DIR), wherever the command runs."""
    return state_dir if state_dir is not None else settings_from_flags().data_dir
