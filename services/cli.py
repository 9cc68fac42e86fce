"""The ``loopwatch`` command: the top-level group, with each command group's module plugged in."""

from __future__ import annotations

import click

from services.commands import console, control, dataset, deadletter, detect, gate, policy, run, score
from services.commands.common import LoopwatchGroup


@click.group(cls=LoopwatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """loopwatch: monitoring and feedback loops for production LLM and ML apps.

    It reads the inference logs and user feedback your application writes to
    Kafka, validates them (bad messages go to a dead-letter topic with a
    reason), joins feedback to its request, and serves Prometheus metrics.

    \b
    Quick start on one machine (embedded broker, nothing else to install):
      loopwatch demo          replay real traffic through the loop, print what it caught
      loopwatch up            broker + worker + metrics; Ctrl-C stops everything
    Against your own Kafka:
      LOOPWATCH_KAFKA_BOOTSTRAP=kafka:9092 loopwatch worker

    Every setting is a LOOPWATCH_* environment variable: see `loopwatch settings`.
    """


for command in (
    run.broker,
    run.worker,
    run.up,
    run.replay,
    run.demo,
    run.show_settings,
    detect.detect,
    score.score,
    dataset.dataset,
    policy.policy_group,
    control.silence_group,
    control.model_group,
    gate.gate,
    deadletter.deadletter_group,
    console.console,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
