"""The silence and model commands: state under LOOPWATCH_DATA_DIR, limits, and reading the control topic."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.settings import Settings
from services.cli import main
from services.replay import Replayer
from tests.helpers import forged_silence


def _in(directory: Path, runner: CliRunner, args: list[str]) -> tuple[int, str]:
    """Run the command with ``directory`` as the current directory (as an operator's shell would)."""
    directory.mkdir(parents=True, exist_ok=True)
    before = Path.cwd()
    os.chdir(directory)
    try:
        result = runner.invoke(main, args)
    finally:
        os.chdir(before)
    return result.exit_code, result.output


def test_silences_and_stable_marks_live_under_the_data_dir_whatever_the_current_directory(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    runner = CliRunner(env={"LOOPWATCH_DATA_DIR": str(data)})
    code, output = _in(tmp_path / "a", runner, ["silence", "add", "-m", "model=chat", "--comment", "upgrade"])
    assert code == 0, output
    silence_id = output.strip()
    assert _in(tmp_path / "a", runner, ["model", "mark-stable", "chat", "v1"])[0] == 0
    assert json.loads((data / "silences.json").read_text())["items"][silence_id]["comment"] == "upgrade"
    assert not (tmp_path / "a" / ".loopwatch").exists()
    code, listed = _in(tmp_path / "b", runner, ["silence", "list"])
    assert code == 0 and listed.startswith(f"{silence_id}  active") and "model=chat  upgrade" in listed
    code, models = _in(tmp_path / "b", runner, ["model", "list"])
    assert code == 0 and models.startswith("chat: v1  (marked by cli at "), models
    code, expired = _in(tmp_path / "b", runner, ["silence", "expire", silence_id[:4]])
    assert code == 0 and expired.startswith(f"expired {silence_id}")
    assert _in(tmp_path / "c", runner, ["silence", "list"])[1] == "no silences\n"


def test_a_silence_matching_everything_or_outlasting_the_maximum_needs_force(tmp_path: Path) -> None:
    runner = CliRunner(env={"LOOPWATCH_DATA_DIR": str(tmp_path), "LOOPWATCH_SILENCE_MAX_SECONDS": "86400"})
    everything = runner.invoke(main, ["silence", "add", "-m", "model=~.*", "--comment", "x"])
    assert everything.exit_code == 2 and "model=~.* matches every alert" in everything.output
    assert "--force" in everything.output
    too_long = runner.invoke(
        main, ["silence", "add", "-m", "model=chat", "--duration", "2d", "--comment", "x"]
    )
    assert too_long.exit_code == 2 and "longer than 1 day" in too_long.output
    assert not (tmp_path / "silences.json").exists()
    forced = runner.invoke(main, ["silence", "add", "-m", "model=~.*", "--force", "--comment", "freeze"])
    assert forced.exit_code == 0, forced.output
    assert "(forced)" in runner.invoke(main, ["silence", "list"]).output


@pytest.mark.broker
def test_listing_with_bootstrap_reads_the_control_topic_and_shows_refused_records(
    broker: str, tmp_path: Path
) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.loopwatch.control.v1"
    env = {"LOOPWATCH_DATA_DIR": str(tmp_path), "LOOPWATCH_TOPIC_CONTROL": topic}
    signed = CliRunner(env={**env, "LOOPWATCH_CONTROL_KEY": "operators-only"})
    added = signed.invoke(
        main, ["silence", "add", "-m", "model=chat", "--comment", "db", "--bootstrap", broker]
    )
    assert added.exit_code == 0 and "(signed)" in added.output, added.output
    marked = signed.invoke(main, ["model", "mark-stable", "chat", "v7", "--bootstrap", broker])
    assert marked.exit_code == 0, marked.output
    # A forged silence, written with a plain producer: no signature.
    forged = forged_silence()
    replayer = Replayer(Settings(kafka_bootstrap=broker))
    replayer.send(topic, forged.model_dump_json().encode(), forged.key())
    replayer.close()
    # Listed from another data dir: what is shown comes from the topic, not from local files.
    elsewhere = {**env, "LOOPWATCH_DATA_DIR": str(tmp_path / "empty")}
    reader = CliRunner(env={**elsewhere, "LOOPWATCH_CONTROL_KEY": "operators-only"})
    silences = reader.invoke(main, ["silence", "list", "--bootstrap", broker])
    assert silences.exit_code == 0, silences.output
    lines = silences.output.splitlines()
    assert lines[0].startswith("refused  offset "), lines
    assert "key silence:forged  unsigned: no signature header" in lines[0]
    assert lines[1].startswith(added.output.splitlines()[0]) and "model=chat  db" in lines[1]
    assert len(lines) == 2
    models = reader.invoke(main, ["model", "list", "--bootstrap", broker])
    assert models.output.splitlines()[1].startswith("chat: v7  (marked by cli"), models.output
    # Without a key nothing is verified: the forged silence shows as a silence.
    unverified = CliRunner(env=elsewhere).invoke(main, ["silence", "list", "--bootstrap", broker])
    assert "refused" not in unverified.output and "forged  active" in unverified.output
