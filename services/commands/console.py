"""``loopwatch console``: the web console over the monitoring history and the curated datasets."""

from __future__ import annotations

import click

from services.commands.common import settings_from_flags


@click.command(name="console")
@click.option("--history", default=None, help="History root [LOOPWATCH_HISTORY_ROOT, <data_dir>/history]")
@click.option("--datasets", default=None, help="Dataset root [LOOPWATCH_DATASETS_ROOT, <data_dir>/datasets]")
@click.option("--port", type=int, default=None, help="Port to listen on [LOOPWATCH_CONSOLE_PORT, 8050]")
@click.option(
    "--host",
    default=None,
    help="Address to listen on [LOOPWATCH_CONSOLE_HOST, 127.0.0.1]; any other than loopback needs"
    " LOOPWATCH_CONSOLE_TOKEN",
)
@click.option(
    "--bootstrap",
    default=None,
    help="The Kafka the Dead letters page's replay commands name [LOOPWATCH_KAFKA_BOOTSTRAP; unset: a"
    " placeholder]; the console itself never connects",
)
@click.option(
    "--policy",
    default=None,
    help="The decision policy the Incidents page explains [LOOPWATCH_POLICY_FILE, as the workers read it;"
    " unset: the built-in default]",
)
@click.option(
    "--this-run",
    is_flag=True,
    hidden=True,
    help="Started by `loopwatch up`, whose history stage writes the history: none yet is no mistake",
)
def console(
    history: str | None,
    datasets: str | None,
    port: int | None,
    host: str | None,
    bootstrap: str | None,
    policy: str | None,
    this_run: bool,
) -> None:
    """Serve the read-only web console: Overview, Segment, Incidents, Dead letters, Datasets.

    Pages and their JSON API (/api/, described by /api/openapi.json) read the
    history and dataset Delta tables; nothing is written. With
    LOOPWATCH_CONSOLE_TOKEN set, every request must carry the token (header
    X-Loopwatch-Token, or open the console once with ?token=...).
    """
    from services.console import build_console, serve

    settings = settings_from_flags(console_port=port, console_host=host, kafka_bootstrap=bootstrap)
    serve(
        build_console(settings, history=history, datasets=datasets, policy=policy),
        host=settings.console_host,
        port=settings.console_port,
        token=settings.console_token,
        on_ready=lambda url: click.echo(f"loopwatch console on {url} (read-only; Ctrl-C stops it)"),
        this_run=this_run,
    )
