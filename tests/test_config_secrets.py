"""Configuration errors name the file, line and field, and never print a secret from the file or variable."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.errors import ConfigError
from services.cli import main
from streams.notify_stage import load_receivers

from .helpers import WorkerStack

TOKEN = "SLACKTOKEN-7f3a9c1e"
ROUTING_KEY = "ROUTINGKEY-51d2e8b0"
URL = f"https://hooks.slack.com/services/T0001/B0002/{TOKEN}"


def _refusal(path: Path) -> str:
    """The ConfigError's message and its whole traceback, as a log would show them."""
    with pytest.raises(ConfigError) as caught:
        load_receivers(path)
    return "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A misspelt field beside the secret URL.
        (
            f'- kind: slack\n  name: ml-alerts\n  url: "{URL}"\n  min_severty: warning\n',
            ":4: 0.slack.min_severty: unknown field (misspelt?)",
        ),
        # No kind: pydantic's own message would quote the whole item, URL included.
        (f'- name: ml-alerts\n  url: "{URL}"\n', ":1: 0: Unable to extract tag using discriminator 'kind'"),
        # A secret of the wrong type is quoted as the input of its own error.
        (
            f"- kind: pagerduty\n  name: oncall\n  routing_key: [{ROUTING_KEY}]\n",
            ":3: 0.pagerduty.routing_key",
        ),
        (
            f"- {{kind: slack, name: a, url: '{URL}'}}\n"
            f"- {{kind: pagerduty, name: b, routing_key: {ROUTING_KEY}, retries: many}}\n",
            ":2: 1.pagerduty.retries: Input should be a valid integer",
        ),
        # The case: a misnamed URL field is quoted as the input of "extra inputs".
        (
            f'- kind: slack\n  name: ml-alerts\n  webhook_url: "{URL}"\n',
            ":3: 0.slack.webhook_url: unknown field (misspelt?)",
        ),
        # A misspelt kind: pydantic quotes the whole item.
        (f'- kind: slak\n  name: ml-alerts\n  url: "{URL}"\n', ":1: 0: Input tag 'slak' found using 'kind'"),
        # Broken YAML on the secret's line: PyYAML's message quotes that line.
        (f'- kind: slack\n  name: ml-alerts\n  url: "{URL}" x\n', ":3: not valid YAML"),
        (f'- kind: slack\n  name: ml-alerts\n  url: "{URL}\n', ":4: not valid YAML"),
    ],
)
def test_a_malformed_receivers_file_names_line_and_field_but_no_secret(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "receivers.yaml"
    path.write_text(text)
    printed = _refusal(path)
    assert f"{path}{expected}" in printed
    assert TOKEN not in printed and ROUTING_KEY not in printed
    assert "input_value" not in printed


def test_a_receivers_file_that_is_no_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "receivers.yaml"
    path.write_text(f"kind: slack\nurl: {URL}\n")
    printed = _refusal(path)
    assert f"{path}:1: a receivers file is a YAML list" in printed and TOKEN not in printed


def test_a_bad_setting_holding_a_secret_is_named_but_not_printed() -> None:
    result = CliRunner().invoke(main, ["settings"], env={"LOOPWATCH_PARTITIONS": URL})
    assert result.exit_code == 2
    assert "invalid setting LOOPWATCH_PARTITIONS: Input should be a valid integer" in result.output
    assert TOKEN not in result.output


def test_a_setting_that_is_not_json_is_named_but_not_printed() -> None:
    result = CliRunner().invoke(main, ["settings"], env={"LOOPWATCH_STABLE_VERSIONS": f'{{"m": "{URL}'})
    assert result.exit_code == 2
    assert 'field "stable_versions"' in result.output and TOKEN not in result.output


@pytest.mark.broker
def test_worker_start_up_refuses_a_malformed_receivers_file_without_printing_its_token(
    broker: str, tmp_path: Path
) -> None:
    receivers = tmp_path / "receivers.yaml"
    receivers.write_text(f'- kind: slack\n  name: ml-alerts\n  webhook_url: "{URL}"\n')
    worker = WorkerStack(broker, tmp_path, receivers_file=receivers).start(wait=False)
    assert worker.process is not None
    try:
        code = worker.process.wait(timeout=120)
    finally:
        worker.stop()
    log = worker.log()
    assert code == 2, f"exit code {code}:\n{log[-3000:]}"
    assert f"{receivers}:3: 0.slack.webhook_url: unknown field (misspelt?)" in log
    assert TOKEN not in log
