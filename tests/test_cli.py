"""The command line: help a newcomer can read, and clear errors."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from services.cli import main


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for command in ("broker", "worker", "up", "replay", "demo", "settings"):
        assert command in top.output
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_broker_refuses_a_taken_port_with_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["broker", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port}" in result.output and "already in use" in result.output


def test_replay_refuses_unknown_formats(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("a,b\n")
    result = CliRunner().invoke(main, ["replay", str(path), "--topic", "t"])
    assert result.exit_code == 2 and "expected a .jsonl or .parquet file" in result.output


def test_settings_come_from_the_environment():
    result = CliRunner().invoke(main, ["settings"], env={"LOOPWATCH_PARTITIONS": "12"})
    assert result.exit_code == 0 and '"partitions": 12' in result.output
