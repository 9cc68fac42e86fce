"""The ``loopwatch`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

from core.settings import Settings
from schemas.errors import LoopwatchError


def _settings(**overrides: Any) -> Settings:
    """Settings from keyword arguments (CLI flags), then LOOPWATCH_* variables, then defaults."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


class _Group(click.Group):
    """Turns loopwatch's own errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LoopwatchError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        except SettingsError as exc:
            # Its message names the field and source, never the value.
            click.secho(f"error: {exc}: {exc.__cause__ or 'invalid value'}", fg="red", err=True)
            sys.exit(2)
        except ValidationError as exc:
            if exc.title not in ("Settings", "Topics"):
                raise
            click.secho(f"error: {_invalid_settings(exc)}", fg="red", err=True)
            sys.exit(2)


def _invalid_settings(exc: ValidationError) -> str:
    """One line per settings error, named by its variable, without the value (it may be a secret)."""
    prefix = "LOOPWATCH_TOPIC_" if exc.title == "Topics" else "LOOPWATCH_"
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        name = f"{prefix}{loc[0].upper()}" if loc else "settings"
        where = ".".join([name, *loc[1:]])
        lines.append(f"invalid setting {where}: {error['msg']}")
    return "\n".join(lines)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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


@main.command()
@click.option("--port", type=int, default=None, help="Port to listen on [default: 9092]")
def broker(port: int | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in-memory) in the foreground."""
    from core.processes import stop_process
    from services.broker import start_broker

    settings = _settings(broker_port=port)
    process = start_broker(settings.broker_port, quiet=False)
    click.echo(f"broker listening on 127.0.0.1:{settings.broker_port} (in-memory; Ctrl-C stops it)")
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(process)


@main.command()
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers [env: LOOPWATCH_KAFKA_BOOTSTRAP]")
@click.option("--web-port", type=int, default=None, help="Port of /metrics and /health [default: 6066]")
def worker(bootstrap: str | None, web_port: int | None) -> None:
    """Run the stream workers against any Kafka (LOOPWATCH_KAFKA_BOOTSTRAP).

    Waits for the broker if it is not up yet, creates missing topics, then
    ingests, dead-letters and joins until stopped.
    """
    from services.worker import run_worker

    run_worker(_settings(kafka_bootstrap=bootstrap, web_port=web_port))


@main.command()
@click.option("--port", type=int, default=None, help="Port of the embedded broker [default: 9092]")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes to run")
@click.option("--bootstrap", default=None, help="Use this Kafka instead of starting the embedded broker")
def up(port: int | None, workers: int, bootstrap: str | None) -> None:
    """Broker + workers + metrics endpoint on this machine; Ctrl-C stops everything."""
    from services.worker import run_up

    settings = _settings(broker_port=port, kafka_bootstrap=bootstrap)
    run_up(settings, workers=workers, embedded_broker=bootstrap is None)


@main.command()
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

    settings = _settings(kafka_bootstrap=bootstrap)
    sent = run_replay(read_events(file), topic, settings.kafka_bootstrap, rate=rate, limit=limit)
    click.echo(f"sent {sent} events to {topic}")


@main.command()
@click.option("--bootstrap", default=None, help="Use this Kafka instead of an embedded broker")
@click.option("--pairs", type=int, default=240, show_default=True, help="HH-RLHF preference pairs to replay")
@click.option("--oasst", type=int, default=150, show_default=True, help="OASST1 replies to replay")
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the summary as JSON to this file",
)
def demo(bootstrap: str | None, pairs: int, oasst: int, summary_json: Path | None) -> None:
    """Replay real traffic (HH-RLHF, OASST1 and their human feedback) through the loop.

    Starts an embedded broker and a worker, sends real conversations plus
    deliberately broken messages, and prints what came out: events in,
    rejected with reasons, feedback joined.
    """
    from services.demo import run_demo

    summary = run_demo(_settings(), bootstrap=bootstrap, pairs=pairs, oasst=oasst, summary_json=summary_json)
    if not summary["counts_add_up"]:
        sys.exit(1)


@main.command(name="settings")
def show_settings() -> None:
    """Print the resolved settings (secrets hidden) and their environment variables."""
    settings = Settings()
    click.echo(json.dumps(json.loads(settings.model_dump_json()), indent=2))


@main.group()
def detect() -> None:
    """Run the detectors on files (CSV, Parquet or JSONL): backfills and threshold checks."""


@main.group()
def score() -> None:
    """Score the rows of a file (toxicity) without running a worker."""


@detect.command("quality")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL of JoinedFeedback events (as on loopwatch.feedback-joined.v1), or CSV/Parquet rows",
)
@click.option("--baseline-version", default=None, help="Version to compare with [default: most traffic]")
@click.option("--slo-p95-ms", type=float, default=None, help="SLO of the p95 latency [default: 2000]")
@click.option("--format", "output", type=click.Choice(["json", "text"]), default="json", show_default=True)
def detect_quality(
    input_path: Path, baseline_version: str | None, slo_p95_ms: float | None, output: str
) -> None:
    """Compare model versions on feedback, ratings, errors, refusals, latency and cost.

    Groups the rows by model version and judges every version against the
    baseline (canary vs stable). Exits 0 whatever the verdicts, 2 on bad input.
    """
    from detectors.quality import LatencyConfig, compare_versions, load_quality_window, render_text

    latency = LatencyConfig() if slo_p95_ms is None else LatencyConfig(slo_p95_ms=slo_p95_ms)
    report = compare_versions(load_quality_window(input_path), baseline_version, latency)
    click.echo(report.model_dump_json(indent=2) if output == "json" else render_text(report))


@score.command("toxicity")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV, Parquet or JSONL file",
)
@click.option("--text-column", required=True, help="Column holding the texts, e.g. response")
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSONL to write"
)
@click.option(
    "--scorer",
    "scorer_kind",
    type=click.Choice(["auto", "detoxify", "profanity", "cascade"]),
    default="auto",
    show_default=True,
    help="detoxify; profanity (profanity-check, no download); cascade (profanity-check, then Detoxify); "
    "auto: Detoxify when its weights load, else profanity-check (with a warning)",
)
@click.option("--model-type", default="original", show_default=True, help="Detoxify model type")
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Local Detoxify checkpoint (.ckpt) instead of the download",
)
@click.option(
    "--config-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Local Hugging Face config and tokenizer folder of the checkpoint's model",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch threads")
@click.option("--quantize", is_flag=True, help="Run Detoxify in int8: several times faster on CPU")
@click.option(
    "--prefilter-threshold",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="cascade: texts profanity-check scores below this skip Detoxify (scored 0)",
)
def score_toxicity(
    input_path: Path,
    text_column: str,
    output: Path,
    scorer_kind: str,
    model_type: str,
    checkpoint: Path | None,
    config_dir: Path | None,
    batch_size: int,
    threads: int,
    quantize: bool,
    prefilter_threshold: float,
) -> None:
    """Write one JSON line per input row, in order: toxicity in [0, 1] and every label's score.

    Without internet, Detoxify needs --checkpoint and --config-dir; --scorer
    profanity needs no download, and the default (auto) falls back to it.
    """
    from typing import cast

    from detectors.files import read_frame
    from detectors.scorers import (
        DetoxifyScorer,
        DetoxifySettings,
        ProfanityScorer,
        ScorerKind,
        ScorerUnavailable,
        TextScorer,
        build_scorer,
        score_records,
    )

    table = read_frame(input_path)
    if text_column not in table.columns:
        columns = ", ".join(map(str, table.columns))
        raise click.BadParameter(f"no column {text_column!r}; columns: {columns}", param_hint="--text-column")
    settings = DetoxifySettings(
        model_type=model_type,
        checkpoint=checkpoint,
        config_dir=config_dir,
        batch_size=batch_size,
        threads=threads,
        quantize=quantize,
    )
    scorer: TextScorer
    if scorer_kind == "auto":
        try:
            scorer = DetoxifyScorer(settings)
            scorer.detoxify()  # loads the weights now, or raises
            scorer_kind = "detoxify"
        except ScorerUnavailable as exc:
            # One line: the full advice is what --scorer detoxify prints when it fails.
            click.secho(
                f"warning: Detoxify weights could not be loaded ({exc.reason}); scoring with profanity-check"
                " (--scorer detoxify says how to load them offline)",
                fg="yellow",
                err=True,
            )
            scorer, scorer_kind = ProfanityScorer(), "profanity"
    else:
        scorer = build_scorer(cast(ScorerKind, scorer_kind), settings, prefilter_threshold)
    records = score_records(table[text_column].fillna("").astype(str).tolist(), scorer)
    ids = table["request_id"].astype(str).tolist() if "request_id" in table.columns else None
    with output.open("w") as out:
        for row, record in enumerate(records):
            keys = {"row": row, **({"request_id": ids[row]} if ids else {})}
            out.write(json.dumps({**keys, **record}) + "\n")
    click.echo(f"scored {len(records)} rows with {scorer_kind} into {output}")


@detect.command("drift")
@click.option(
    "--reference", "reference_path", required=True, type=click.Path(path_type=Path), help="Reference file"
)
@click.option(
    "--current", "current_path", required=True, type=click.Path(path_type=Path), help="Current file"
)
@click.option("--columns", default=None, help="Comma-separated columns to test [default: all shared columns]")
@click.option("--text-column", default=None, help="Text column to test with sentence embeddings (MMD, LSDD)")
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Significance level, after correction",
)
@click.option(
    "--correction",
    type=click.Choice(["bh", "bonferroni"]),
    default="bh",
    show_default=True,
    help="Benjamini-Hochberg (false discovery rate) or Bonferroni",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="JSON for machines, a table for people",
)
@click.option(
    "--html-report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="When drift is found, also write Evidently's HTML drift report of the tested columns here",
)
def detect_drift(
    reference_path: Path,
    current_path: Path,
    columns: str | None,
    text_column: str | None,
    alpha: float,
    correction: str,
    output_format: str,
    html_report: Path | None,
) -> None:
    """Compare two files (CSV, Parquet, JSONL) column by column: is the current data drifting?

    Numeric columns get the KS test, the others chi-square; --text-column
    adds embedding tests. p-values are corrected together (Benjamini-Hochberg
    by default) and a column counts as drifted only when its shift is also
    large enough (KS D or Cramér's V >= 0.1), so big files do not alarm on
    trivia. Prints JSON (top-level "drift" and one entry per test) or a table.

    Exit code 0 whether or not drift was found (read "drift" in the output);
    2 on bad input (missing file, unknown extension, missing column).
    """
    from detectors.files import drift_report, format_table, read_frame

    reference, current = read_frame(reference_path), read_frame(current_path)
    chosen = [name.strip() for name in columns.split(",") if name.strip()] if columns else None
    report = drift_report(
        reference,
        current,
        columns=chosen,
        text_column=text_column,
        alpha=alpha,
        correction="bonferroni" if correction == "bonferroni" else "bh",
    )
    click.echo(report.model_dump_json(indent=2) if output_format == "json" else format_table(report))
    tabular = [test.column for test in report.tests if test.column != text_column]
    if html_report is not None and report.drift and tabular:
        from detectors.report import render_drift_report

        render_drift_report(reference, current, list(dict.fromkeys(tabular)), html_report)
        click.echo(f"Evidently drift report written to {html_report}", err=True)


_DATASET_TABLES = ["sft", "preference", "golden", "safety_review"]
_ROOT_OPTION = click.option(
    "--root", default=None, help="Dataset root: a folder or object-store URI [default: <data_dir>/datasets]"
)


def _dataset_store(root: str | None) -> Any:
    """The dataset store under --root, else under the settings' data_dir."""
    from curation.store import DatasetStore

    return DatasetStore(root or Path(_settings().data_dir) / "datasets")


@main.group()
def dataset() -> None:
    """Curated feedback datasets (Delta tables): export, stats, snapshot.

    \b
    Tables: sft (corrections), preference (chosen/rejected pairs),
    golden (positively rated replies), safety_review (toxicity-flagged).
    Versions are Delta versions; a tag pins one for a retrain request.
    """


@dataset.command(name="export")
@click.option("--table", "table", type=click.Choice(_DATASET_TABLES), required=True, help="Dataset table")
@click.option("--version", type=int, default=None, help="Delta version [default: latest]")
@click.option("--tag", default=None, help="Export the version a snapshot tag pins (instead of --version)")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="File to write"
)
@_ROOT_OPTION
def dataset_export(
    table: str, version: int | None, tag: str | None, fmt: str, output: Path, root: str | None
) -> None:
    """Write one table version as chat fine-tuning JSONL or Parquet.

    JSONL lines are {"messages": [...]} (sft, golden, safety_review) or
    {"prompt": [...], "chosen": [...], "rejected": [...]} (preference), each
    validated before it is written. Parquet keeps every column and the lineage.
    """
    from curation.export import export
    from curation.store import table_kind

    result = export(
        _dataset_store(root),
        table_kind(table),
        output,
        fmt="parquet" if fmt == "parquet" else "jsonl",
        version=version,
        tag=tag,
    )
    skipped = f" ({result.skipped} without a reply skipped)" if result.skipped else ""
    click.echo(f"exported {result.rows} rows of {table}@{result.version} to {result.path}{skipped}")


@dataset.command(name="stats")
@click.argument("name", type=click.Choice(_DATASET_TABLES), required=False)
@click.option("--version", type=int, default=None, help="Delta version [default: latest]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text")
@_ROOT_OPTION
def dataset_stats(name: str | None, version: int | None, as_json: bool, root: str | None) -> None:
    """Counts by table, model, model version and label, and redactions per kind (all tables without NAME)."""
    import dataclasses

    from curation.export import stats
    from curation.store import table_kind

    store = _dataset_store(root)
    names = [name] if name else [t for t in _DATASET_TABLES if store.exists(table_kind(t))]
    reports = [stats(store, table_kind(n), version) for n in names]
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in reports], indent=2))
        return
    if not reports:
        click.echo(f"no dataset tables under {store.root}")
    for report in reports:
        click.echo(f"{report.table}@{report.version}: {report.rows} rows")
        for title, counts in (
            ("by model", report.by_model),
            ("by model version", report.by_model_version),
            ("by label", report.by_label),
            ("redactions", report.redactions),
            ("tags", report.tags),
        ):
            click.echo(f"  {title}: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "none"))


@dataset.command(name="snapshot")
@click.option("--table", "table", type=click.Choice(_DATASET_TABLES), required=True, help="Dataset table")
@click.option("--version", type=int, default=None, help="Delta version to pin [default: latest]")
@click.option("--tag", required=True, help="Name of the pin, e.g. retrain-2026-03-01")
@_ROOT_OPTION
def dataset_snapshot(table: str, version: int | None, tag: str, root: str | None) -> None:
    """Pin and tag a table version, so a retrain request can name (table, version) for good.

    The tag is a Delta table property (loopwatch.tag.<TAG>); vacuum keeps tagged versions.
    """
    from curation.store import table_kind

    snapshot = _dataset_store(root).snapshot(table_kind(table), tag, version)
    click.echo(f"tagged {snapshot.table}@{snapshot.version} as {snapshot.tag}")


@dataset.command(name="expire")
@click.option("--retention-days", type=int, required=True, help="Delete rows whose inference is older")
@click.option("--vacuum-hours", type=int, default=None, help="Then delete unreferenced files older than this")
@_ROOT_OPTION
def dataset_expire(retention_days: int, vacuum_hours: int | None, root: str | None) -> None:
    """Delete expired rows (a new version); optionally vacuum old files, keeping tagged versions."""
    from curation.store import DatasetStore

    store = _dataset_store(root)
    store = DatasetStore(store.root, retention_days=retention_days)
    result = store.expire()
    for table, deleted in result.deleted.items():
        click.echo(f"{table}: deleted {deleted} expired rows (now version {result.versions[table]})")
    if vacuum_hours is not None:
        removed = store.vacuum(retention_hours=vacuum_hours)
        click.echo(f"vacuum removed {sum(len(files) for files in removed.values())} files")


@main.group(name="policy")
def policy_group() -> None:
    """Decision policies: validate and explain one, or replay recorded detections through it."""


_STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Local state: silences.json and stable_versions.json [default: LOOPWATCH_DATA_DIR]",
)


def _state_dir(state_dir: Path | None) -> Path:
    """--state-dir, else the settings' data_dir (LOOPWATCH_DATA_DIR), wherever the command runs."""
    return state_dir if state_dir is not None else _settings().data_dir


@policy_group.command(name="check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Validate a policy file and explain which detections lead to an alert, a retrain or a rollback."""
    from detectors.registry import all_detectors
    from retrain_trigger.explain import explain_policy
    from retrain_trigger.policy import load_policy

    policy = load_policy(file)
    click.echo(f"{file}: ok")
    for line in explain_policy(policy, all_detectors()):
        click.echo(line)


@policy_group.command(name="backtest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--detections",
    "detections_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Recorded Detections, one JSON object per line",
)
@click.option(
    "--bootstrap",
    default=None,
    help="Instead of a file: read the detections topic of this Kafka, from its start to its end",
)
@click.option(
    "--topic", default=None, help="The topic read with --bootstrap [default: loopwatch.detections.v1]"
)
@click.option("--stable", multiple=True, help="MODEL=VERSION marked stable first [default: from --state-dir]")
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_STATE_DIR_OPTION
def policy_backtest(
    file: Path,
    detections_file: Path | None,
    bootstrap: str | None,
    topic: str | None,
    stable: tuple[str, ...],
    output: str,
    state_dir: Path | None,
) -> None:
    """Which alerts, pages and actions a policy would have produced over recorded detections, and when.

    The detections come from a file (--detections) or straight from Kafka
    (--bootstrap, optionally --topic): records that are not Detections are
    skipped and counted.
    """
    from datetime import UTC, datetime

    from retrain_trigger.explain import (
        backtest,
        load_silences,
        load_stable,
        parse_detections,
        read_detections,
    )
    from retrain_trigger.policy import load_policy
    from retrain_trigger.stable import StableVersionMarked

    if (detections_file is None) == (bootstrap is None):
        raise click.UsageError("give exactly one of --detections FILE and --bootstrap SERVERS")
    if topic is not None and bootstrap is None:
        raise click.UsageError("--topic goes with --bootstrap")
    policy = load_policy(file)
    state_dir = _state_dir(state_dir)
    stable_versions = load_stable(state_dir / "stable_versions.json")
    for pair in stable:
        model, sep, version = pair.partition("=")
        if not sep or not model or not version:
            raise click.BadParameter(f"{pair!r}: use MODEL=VERSION", param_hint="--stable")
        stable_versions.apply(StableVersionMarked(model=model, version=version, marked_at=datetime.now(UTC)))
    skipped: list[str] = []
    if detections_file is not None:
        detections = read_detections(detections_file)
    elif bootstrap is not None:
        from services.topic_reader import read_topic

        topic = topic or _settings(kafka_bootstrap=bootstrap).topics.detections
        records = read_topic(bootstrap, topic)
        detections, skipped = parse_detections(
            (f"{topic}/{r.partition}@{r.offset}", r.value) for r in records
        )
        # On stderr, so that --format json stays one JSON document on stdout.
        click.echo(f"read {len(records)} records from {topic} at {bootstrap}", err=True)
        for problem in skipped[:5]:
            click.echo(f"skipped {problem}", err=True)
    report = backtest(policy, detections, stable_versions, load_silences(state_dir / "silences.json"))
    if output == "json":
        rows = [
            {"at": e.at.isoformat(), "kind": e.kind, "what": e.what, "subject": e.subject, "id": e.id}
            for e in report.timeline
        ]
        body = {"detections": report.detections, "counts": dict(report.counts), "timeline": rows}
        if bootstrap is not None:
            body["skipped"] = skipped
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{report.detections} detections, policy {policy.name!r} ({policy.mode})")
    if skipped:
        click.echo(f"  skipped (not Detections): {len(skipped)}")
    for name, count in sorted(report.counts.items()):
        click.echo(f"  {name}: {count}")
    start = report.first_detection
    for entry in report.timeline:
        offset = f"+{entry.at - start}" if start else ""
        click.echo(
            f"{entry.at.isoformat()} {offset:>10}  {entry.kind:<14} {entry.what}"
            f"  [{entry.subject}] {entry.id}"
        )


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


def _publish_control(bootstrap: str | None, event: Any) -> None:
    """Send a silence or stable mark to the workers (loopwatch.control.v1), signed when a key is set."""
    if bootstrap is None:
        return
    from services import control_topic

    settings = _settings(kafka_bootstrap=bootstrap)
    control_topic.publish(settings, event)
    signed = "signed" if settings.control_key else "unsigned: LOOPWATCH_CONTROL_KEY is not set"
    click.echo(f"published to {settings.topics.control} at {bootstrap} ({signed})")


def _read_control(bootstrap: str) -> Any:
    """The control topic as the workers see it; its refused records are printed first."""
    from services import control_topic

    log = control_topic.read(_settings(kafka_bootstrap=bootstrap))
    for record in log.refused:
        key = record.key.decode(errors="replace") if record.key else "-"
        click.echo(
            f"refused  offset {record.offset} key {key}  {record.refused.reason}: {record.refused.detail}"
        )
    return log


@main.group(name="silence")
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
@_STATE_DIR_OPTION
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
    from datetime import UTC, datetime, timedelta

    from retrain_trigger.control import ControlEvent
    from retrain_trigger.explain import load_silences, save_silences
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
    try:
        begins = datetime.fromisoformat(start) if start else datetime.now(UTC)
    except ValueError as exc:
        raise click.BadParameter(f"{start!r} is not an ISO 8601 time", param_hint="--start") from exc
    begins = begins if begins.tzinfo else begins.replace(tzinfo=UTC)
    settings = _settings(kafka_bootstrap=bootstrap)
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
    path = _state_dir(state_dir) / "silences.json"
    silences = load_silences(path)
    silences.add(silence)
    save_silences(path, silences)
    click.echo(silence.id)
    _publish_control(bootstrap, ControlEvent(silence=silence))


@silence_group.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Include expired silences")
@_STATE_DIR_OPTION
@_READ_BOOTSTRAP_OPTION
def silence_list(show_all: bool, state_dir: Path | None, bootstrap: str | None) -> None:
    """Active and upcoming silences (all with --all); with --bootstrap, also the refused control records."""
    from datetime import UTC, datetime

    from retrain_trigger.explain import load_silences

    now = datetime.now(UTC)
    if bootstrap is not None:
        silences = _read_control(bootstrap).silences
    else:
        silences = load_silences(_state_dir(state_dir) / "silences.json")
    shown = [s for s in silences.items.values() if show_all or s.ends_at > now]
    if not shown:
        click.echo("no silences")
    for s in sorted(shown, key=lambda s: s.starts_at):
        state = "active" if s.active(now) else ("expired" if s.ends_at <= now else "pending")
        matchers = ",".join(str(m) for m in s.matchers)
        click.echo(
            f"{s.id}  {state:<7} {s.starts_at.isoformat()} -> {s.ends_at.isoformat()}"
            f"  {matchers}  {s.comment}" + ("  (forced)" if s.force else "")
        )


@silence_group.command(name="expire")
@click.argument("silence_id")
@_STATE_DIR_OPTION
@_BOOTSTRAP_OPTION
def silence_expire(silence_id: str, state_dir: Path | None, bootstrap: str | None) -> None:
    """End a silence now (an unambiguous id prefix is enough)."""
    from datetime import UTC, datetime

    from retrain_trigger.control import ControlEvent
    from retrain_trigger.explain import load_silences, save_silences

    path = _state_dir(state_dir) / "silences.json"
    silences = load_silences(path)
    try:
        found = silences.match_prefix(silence_id)
    except KeyError:
        raise click.BadParameter(
            f"no single silence with id {silence_id!r}", param_hint="SILENCE_ID"
        ) from None
    ended = silences.expire(found.id, datetime.now(UTC))
    save_silences(path, silences)
    click.echo(f"expired {ended.id} at {ended.ends_at.isoformat()}")
    _publish_control(bootstrap, ControlEvent(silence=ended))


@main.group(name="model")
def model_group() -> None:
    """Model versions: mark the known-good one that rollbacks go back to and canaries are compared with."""


@model_group.command(name="mark-stable")
@click.argument("name")
@click.argument("version")
@_STATE_DIR_OPTION
@_BOOTSTRAP_OPTION
def model_mark_stable(name: str, version: str, state_dir: Path | None, bootstrap: str | None) -> None:
    """Mark VERSION of model NAME stable: the target of its next rollback, the reference of its canaries."""
    from datetime import UTC, datetime

    from retrain_trigger.control import ControlEvent
    from retrain_trigger.explain import load_stable, save_stable
    from retrain_trigger.stable import StableVersionMarked

    path = _state_dir(state_dir) / "stable_versions.json"
    stable = load_stable(path)
    previous = stable.target(name)
    marked = StableVersionMarked(model=name, version=version, marked_at=datetime.now(UTC), marked_by="cli")
    stable.apply(marked)
    save_stable(path, stable)
    _publish_control(bootstrap, ControlEvent(stable=marked))
    click.echo(
        f"{name}: {version} is stable" + (f" (was {previous})" if previous and previous != version else "")
    )


@model_group.command(name="list")
@_STATE_DIR_OPTION
@_READ_BOOTSTRAP_OPTION
def model_list(state_dir: Path | None, bootstrap: str | None) -> None:
    """The version marked stable of each model; with --bootstrap, also the refused control records."""
    from retrain_trigger.explain import load_stable

    if bootstrap is not None:
        stable = _read_control(bootstrap).stable
    else:
        stable = load_stable(_state_dir(state_dir) / "stable_versions.json")
    if not stable.models:
        click.echo("no stable versions")
    for model, mark in sorted(stable.models.items()):
        click.echo(f"{model}: {mark.version}  (marked by {mark.marked_by} at {mark.marked_at.isoformat()})")


# File commands of the detectors live above this line, one function per command.


if __name__ == "__main__":
    main()
