"""Toxicity scoring throughput on 2 torch threads: one text per call vs batched vs the cascade.

Usage: ``python bench/toxicity_bench.py [--one-by-one 30] [--batched 200] [--cascade 1000]``

The model is bert-base-shaped (12 layers, hidden 768) with random weights,
built in a temp dir in Detoxify's checkpoint format and loaded by Detoxify's
own code (no real weights can be downloaded here; speed does not depend on
the weight values). Texts are real HH-RLHF replies, each short enough for
Detoxify's own ``predict`` (which does not truncate).

(a) ``Detoxify.predict`` on one text per call, the obvious baseline;
(b) :class:`DetoxifyScorer`: truncated, length-bucketed batches;
(c) the cascade: profanity-check first, (b) on the texts it escalates.

It prints texts/s for each and the ratios b/a and c/a (goal: c/a >= 10).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from detectors.scorers import (  # noqa: E402
    CascadeScorer,
    DetoxifyScorer,
    DetoxifySettings,
    ProfanityScorer,
    thread_budget,
)
from services import sample_data  # noqa: E402
from services.settings import Settings  # noqa: E402
from tests.detoxify_fixture import build_detoxify_checkpoint  # noqa: E402

THREADS = 2


def texts_per_second(run: Callable[[], object], count: int) -> float:
    """Texts per second of one timed call of ``run`` over ``count`` texts."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def main() -> None:
    """Build the model, time the three ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one-by-one", type=int, default=30, help="texts for one-call-per-text")
    parser.add_argument("--batched", type=int, default=200, help="texts for batched + bucketed")
    parser.add_argument("--cascade", type=int, default=1000, help="texts for the cascade")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prefilter-threshold", type=float, default=0.1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        print("building a bert-base-shaped Detoxify checkpoint (random weights) ...", flush=True)
        files = build_detoxify_checkpoint(
            Path(folder), layers=12, hidden=768, heads=12, intermediate=3072, init_std=0.02
        )
        settings = DetoxifySettings(
            checkpoint=files.checkpoint,
            config_dir=files.config_dir,
            batch_size=args.batch_size,
            threads=THREADS,
        )
        scorer = DetoxifyScorer(settings)
        detoxify = scorer.detoxify()

    tokenizer = detoxify.tokenizer
    replies = [chosen.response for chosen, _ in sample_data.hh_rlhf(Settings().sample_data)]
    # Detoxify's predict crashes past 512 tokens, so the shared text set fits in that.
    texts = [t for t in replies if len(tokenizer(t)["input_ids"]) <= 512]
    needed = max(args.one_by_one, args.batched, args.cascade)
    texts = (texts * (needed // len(texts) + 1))[:needed]
    print(f"{len(replies)} HH-RLHF replies, {len(texts)} used; torch threads: {THREADS}", flush=True)

    scorer.score(texts[:8])  # warm-up
    with thread_budget(THREADS):
        one = texts[: args.one_by_one]
        a = texts_per_second(lambda: [detoxify.predict(t) for t in one], len(one))
    b = texts_per_second(lambda: scorer.score(texts[: args.batched]), args.batched)
    cascade = CascadeScorer(ProfanityScorer(), scorer, args.prefilter_threshold)
    cascade_texts = texts[: args.cascade]
    ProfanityScorer().score(texts[:8])  # warm-up: loads profanity-check's model
    start = time.perf_counter()
    escalated = cascade.route(cascade_texts).escalated.mean()
    c = len(cascade_texts) / (time.perf_counter() - start)

    print(f"(a) Detoxify.predict, one text per call: {a:8.1f} texts/s  ({args.one_by_one} texts)")
    print(f"(b) batched + length-bucketed (bs {args.batch_size}): {b:8.1f} texts/s  ({args.batched} texts)")
    print(
        f"(c) cascade (prefilter >= {args.prefilter_threshold}, {escalated:.1%} escalated):"
        f" {c:8.1f} texts/s  ({args.cascade} texts)"
    )
    print(f"b/a = {b / a:.2f}x   c/a = {c / a:.2f}x   (goal c/a >= 10)")


if __name__ == "__main__":
    main()
