"""``loopwatch score``: score the rows of a file (toxicity) without running a worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

if TYPE_CHECKING:
    import pandas as pd

    from detectors.scorers import DetoxifySettings, TextScorer


@click.group()
def score() -> None:
    """Score the rows of a file (toxicity) without running a worker."""


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
    from detectors.files import read_frame
    from detectors.scorers import DetoxifySettings

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
    scorer, scorer_kind, warning = pick_scorer(scorer_kind, settings, prefilter_threshold)
    if warning is not None:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    rows = write_scores(table, text_column, scorer, output)
    click.echo(f"scored {rows} rows with {scorer_kind} into {output}")


def pick_scorer(
    kind: str, settings: DetoxifySettings, prefilter_threshold: float
) -> tuple[TextScorer, str, str | None]:
    """The scorer --scorer asks for, the kind it is, and why ``auto`` fell back to profanity-check."""
    from detectors.scorers import DetoxifyScorer, ProfanityScorer, ScorerKind, ScorerUnavailable, build_scorer

    if kind != "auto":
        return build_scorer(cast(ScorerKind, kind), settings, prefilter_threshold), kind, None
    try:
        scorer = DetoxifyScorer(settings)
        scorer.detoxify()  # loads the weights now, or raises
    except ScorerUnavailable as exc:
        # One line: the full advice is what --scorer detoxify prints when it fails.
        warning = (
            f"Detoxify weights could not be loaded ({exc.reason}); scoring with profanity-check"
            " (--scorer detoxify says how to load them offline)"
        )
        return ProfanityScorer(), "profanity", warning
    return scorer, "detoxify", None


def write_scores(table: pd.DataFrame, text_column: str, scorer: TextScorer, output: Path) -> int:
    """Score ``text_column`` into ``output``, one JSON line per row (with its request_id); the row count."""
    from detectors.scorers import score_records

    records = score_records(table[text_column].fillna("").astype(str).tolist(), scorer)
    ids = table["request_id"].astype(str).tolist() if "request_id" in table.columns else None
    with output.open("w") as out:
        for row, record in enumerate(records):
            keys = {"row": row, **({"request_id": ids[row]} if ids else {})}
            out.write(json.dumps({**keys, **record}) + "\n")
    return len(records)
