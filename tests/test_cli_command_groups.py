"""The command groups plugged into ``loopwatch``, and the plain functions their commands call."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from retrain_trigger.silence import Silence, Silences, parse_matcher
from services.cli import main
from services.commands.control import expire_silence, mark_stable, silence_lines, stable_lines
from services.commands.detect import split_columns
from services.commands.policy import parse_stable

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# Every command of the CLI; the split into modules must neither drop nor add one.
COMMANDS = {
    "broker",
    "worker",
    "up",
    "replay",
    "demo",
    "settings",
    "detect",
    "detect quality",
    "detect drift",
    "score",
    "score toxicity",
    "dataset",
    "dataset export",
    "dataset stats",
    "dataset snapshot",
    "dataset expire",
    "policy",
    "policy check",
    "policy backtest",
    "silence",
    "silence add",
    "silence list",
    "silence expire",
    "model",
    "model mark-stable",
    "model list",
    "gate",
    "deadletter",
    "deadletter stats",
    "deadletter show",
    "deadletter replay",
    "console",
}


def _paths(group: click.Group, prefix: str = "") -> set[str]:
    paths = set()
    for name, command in group.commands.items():
        paths.add(f"{prefix}{name}")
        if isinstance(command, click.Group):
            paths |= _paths(command, f"{prefix}{name} ")
    return paths


def test_every_command_of_every_group_is_plugged_in_and_has_help() -> None:
    assert _paths(main) == COMMANDS
    runner = CliRunner()
    for path in sorted(COMMANDS):
        result = runner.invoke(main, [*path.split(), "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, path
        # -h works at every depth: the subgroups inherit the top group's help options.
        assert runner.invoke(main, [*path.split(), "-h"]).output == result.output, path


def test_python_m_services_cli_runs_the_worker_command() -> None:
    # core.processes.spawn_worker starts workers this way.
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "worker", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m services.cli worker" in result.stdout
    assert "Run the stream workers against any Kafka" in result.stdout


def test_silence_lines_say_each_state_in_start_order() -> None:
    silences = Silences()
    later = Silence(
        matchers=[parse_matcher("model=chat")],
        starts_at=T0 + timedelta(hours=1),
        ends_at=T0 + timedelta(hours=2),
        comment="upgrade",
    )
    now = Silence(
        matchers=[parse_matcher("model=chat"), parse_matcher("alertname=~input-.*")],
        starts_at=T0 - timedelta(minutes=5),
        ends_at=T0 + timedelta(minutes=5),
        comment="deploy",
        force=True,
    )
    done = Silence(matchers=[parse_matcher("app=x")], starts_at=T0 - timedelta(hours=2), ends_at=T0)
    for silence in (later, now, done):
        silences.add(silence)
    assert list(silence_lines(silences, T0, show_all=False)) == [
        f"{now.id}  active  {now.starts_at.isoformat()} -> {now.ends_at.isoformat()}"
        "  model=chat,alertname=~input-.*  deploy  (forced)",
        f"{later.id}  pending {later.starts_at.isoformat()} -> {later.ends_at.isoformat()}"
        "  model=chat  upgrade",
    ]
    every = list(silence_lines(silences, T0, show_all=True))
    assert len(every) == 3 and every[0].startswith(f"{done.id}  expired ")


def test_expire_silence_ends_the_one_silence_its_prefix_names(tmp_path: Path) -> None:
    from retrain_trigger.explain import load_silences, save_silences

    path = tmp_path / "silences.json"
    silences = Silences()
    for sid in ("abc111", "abc222"):
        silences.add(
            Silence(
                id=sid, matchers=[parse_matcher("model=chat")], starts_at=T0, ends_at=T0 + timedelta(hours=1)
            )
        )
    save_silences(path, silences)
    with pytest.raises(KeyError):
        expire_silence(path, "abc", T0 + timedelta(minutes=1))  # two match
    ended = expire_silence(path, "abc2", T0 + timedelta(minutes=1))
    assert (ended.id, ended.ends_at) == ("abc222", T0 + timedelta(minutes=1))
    saved = load_silences(path).items
    assert saved["abc222"].ends_at == ended.ends_at and saved["abc111"].ends_at == T0 + timedelta(hours=1)


def test_mark_stable_returns_the_version_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "stable_versions.json"
    first, previous = mark_stable(path, "chat", "v1", T0)
    assert (first.version, first.marked_by, previous) == ("v1", "cli", None)
    second, previous = mark_stable(path, "chat", "v2", T0 + timedelta(hours=1))
    assert (second.version, previous) == ("v2", "v1")
    from retrain_trigger.explain import load_stable

    assert list(stable_lines(load_stable(path))) == [
        f"chat: v2  (marked by cli at {(T0 + timedelta(hours=1)).isoformat()})"
    ]


def test_option_parsers_of_the_commands() -> None:
    assert split_columns(None) is None and split_columns("") is None
    assert split_columns(" a, b,,c ") == ["a", "b", "c"]
    assert parse_stable("chat=v1=rc") == ("chat", "v1=rc")
    for bad in ("chat", "=v1", "chat="):
        with pytest.raises(click.BadParameter, match="use MODEL=VERSION"):
            parse_stable(bad)
