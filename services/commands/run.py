"""The commands that run loopwatch: broker, worker, up, replay, demo, and the settings they use."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from core.settings import Settings
from services.commands.common import settings_from_flags


@click.command()
@click.option("--port", type=int, default=None, help="Port to listen on [default: 9092]")
@click.option(
    "--advertised-url",
    default=None,
    metavar="HOST:PORT",
    help="Address clients are told to use after bootstrapping, e.g. a TLS terminator's [default: --port's]",
)
def broker(port: int | None, advertised_url: str | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in-memory) in the foreground."""
    from services.broker import advertised_address, start_broker, wait_then_stop

    try:
        advertised = advertised_address(advertised_url) if advertised_url else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--advertised-url") from exc
    settings = settings_from_flags(broker_port=port)
    process = start_broker(settings.broker_port, quiet=False, advertised=advertised)
    where = f"; clients are told to use {advertised}" if advertised else ""
    click.echo(f"broker listening on 127.0.0.1:{settings.broker_port} (in-memory{where}; Ctrl-C stops it)")
    wait_then_stop(process)


@click.command()
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers [env: LOOPWATCH_KAFKA_BOOTSTRAP]")
@click.option("--web-port", type=int, default=None, help="Port of /metrics and /health [default: 6066]")
def worker(bootstrap: str | None, web_port: int | None) -> None:
    """Run the stream workers against any Kafka (LOOPWATCH_KAFKA_BOOTSTRAP).

    Waits for the broker if it is not up yet, creates missing topics, then
    ingests, dead-letters and joins until stopped.
    """
    from services.worker import run_worker

    run_worker(settings_from_flags(kafka_bootstrap=bootstrap, web_port=web_port))


@click.command()
@click.option("--port", type=int, default=None, help="Port of the embedded broker [default: 9092]")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes to run")
@click.option("--bootstrap", default=None, help="Use this Kafka instead of starting the embedded broker")
def up(port: int | None, workers: int, bootstrap: str | None) -> None:
    """Broker + workers + console on this machine; Ctrl-C stops everything.

    Starts the embedded broker (unless --bootstrap), the workers (their /metrics and /health on
    LOOPWATCH_WEB_PORT [6066], plus the worker's index) and the console on LOOPWATCH_CONSOLE_PORT
    [8050] and LOOPWATCH_CONSOLE_HOST [127.0.0.1]; the console reads the history the workers write.
    """
    from services.worker import run_up

    settings = settings_from_flags(broker_port=port, kafka_bootstrap=bootstrap)
    run_up(settings, workers=workers, embedded_broker=bootstrap is None)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", required=True, help="Topic to write to, e.g. llm.inference.v1")
@click.option("--rate", type=float, default=None, help="Events per second [default: as fast as possible]")
@click.option("--limit", type=int, default=None, help="Stop after this many events")
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers [env: LOOPWATCH_KAFKA_BOOTSTRAP]")
def replay(file: Path, topic: str, rate: float | None, limit: int | None, bootstrap: str | None) -> None:
    """Replay a JSONL or Parquet file of events into a topic (keyed by request_id).

    JSONL lines are sent byte for byte, malformed ones included.
    """
    from services.replay import read_events
    from services.replay import replay as run_replay

    settings = settings_from_flags(kafka_bootstrap=bootstrap)
    sent = run_replay(read_events(file), topic, settings, rate=rate, limit=limit)
    click.echo(f"sent {sent} events to {topic}")


@click.command()
@click.option("--bootstrap", default=None, help="Use this Kafka instead of an embedded broker")
@click.option("--pairs", type=int, default=240, show_default=True, help="HH-RLHF preference pairs to replay")
@click.option("--oasst", type=int, default=150, show_default=True, help="OASST1 replies to replay")
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the summary as JSON to this file",
)
@click.option(
    "--console", "console", is_flag=True, help="Then serve `loopwatch console` on this run until Ctrl-C"
)
@click.option(
    "--port", type=int, default=None, help="The console's port with --console [LOOPWATCH_CONSOLE_PORT: 8050]"
)
@click.option(
    "--host", default=None, help="The console's address with --console [LOOPWATCH_CONSOLE_HOST: 127.0.0.1]"
)
@click.option(
    "--otlp", is_flag=True, help="The inference logs arrive as OpenTelemetry GenAI spans from a Collector"
)
@click.option(
    "--mlflow",
    is_flag=True,
    help="With a local MLflow registry and the actuator: the rollback, then a second canary promoted",
)
def demo(
    bootstrap: str | None,
    pairs: int,
    oasst: int,
    summary_json: Path | None,
    console: bool,
    port: int | None,
    host: str | None,
    otlp: bool,
    mlflow: bool,
) -> None:
    """Replay real traffic (HH-RLHF, OASST1 and their human feedback) through the loop.

    Starts an embedded broker and a worker, sends real conversations plus
    deliberately broken messages, and prints what came out: events in,
    rejected with reasons, feedback joined.
    """
    from services.demo import run_demo

    if (port is not None or host is not None) and not console:
        raise click.UsageError("--port and --host are the console's: give them with --console")
    settings = settings_from_flags(console_port=port, console_host=host)
    summary = run_demo(
        settings,
        bootstrap=bootstrap,
        pairs=pairs,
        oasst=oasst,
        summary_json=summary_json,
        otlp=otlp,
        mlflow=mlflow,
    )
    if console:
        from services.console import build_console, serve

        serve(
            build_console(
                settings,
                history=summary["history_uri"],
                datasets=summary["datasets_uri"],
                demo=True,
                policy=summary["policy_file"],
            ),
            host=settings.console_host,
            port=settings.console_port,
            token=settings.console_token,
            on_ready=lambda url: click.echo(f"console of this run on {url} (Ctrl-C stops it)"),
            this_run=True,
        )
    if not summary["counts_add_up"]:
        sys.exit(1)


@click.command(name="settings")
def show_settings() -> None:
    """Print the resolved settings (secrets hidden) and their environment variables."""
    click.echo(settings_json(Settings()))


def settings_json(settings: Settings) -> str:
    """The settings as indented JSON, secrets hidden the way pydantic dumps them."""
    return json.dumps(json.loads(settings.model_dump_json()), indent=2)
