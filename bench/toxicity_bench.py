"""Toxicity scoring throughput on 2 torch threads: one text per call vs batched vs the cascade.

Usage: ``python bench/toxicity_bench.py [--texts 150] [--cascade 1000]``

The model is bert-base-shaped (12 layers, hidden 768) with random weights,
built in a temp dir in Detoxify's checkpoint format and loaded by Detoxify's
own code (no real weights can be downloaded here; speed does not depend on
the weight values). Texts are real HH-RLHF replies, each short enough for
Detoxify's own ``predict`` (which does not truncate), in one seeded shuffle,
so every set below has the same length distribution.

(a) ``Detoxify.predict`` on one text per call, the obvious baseline;
(b) :class:`DetoxifyScorer` on the same texts: truncated, length-bucketed batches;
(c) the cascade: profanity-check first, (b) on the texts it escalates;
(d) the same cascade with Detoxify quantized to int8 (``quantize=True``).

It prints texts/s for each and the ratios to (a) (goal: the cascade >= 10x).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.settings import Settings  # noqa: E402
from detectors.scorers import (  # noqa: E402
    CascadeScorer,
    DetoxifyScorer,
    DetoxifySettings,
    ProfanityScorer,
    thread_budget,
)
from services import sample_data  # noqa: E402
from tests.detoxify_fixture import build_detoxify_checkpoint  # noqa: E402

THREADS = 2


def texts_per_second(run: Callable[[], object], count: int) -> float:
    """Texts per second of one timed call of ``run`` over ``count`` texts."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def cascade_rate(cascade: CascadeScorer, texts: Sequence[str]) -> tuple[float, float]:
    """Texts per second of the cascade over ``texts``, and the share it escalated."""
    start = time.perf_counter()
    escalated = float(cascade.route(texts).escalated.mean())
    return len(texts) / (time.perf_counter() - start), escalated


def main() -> None:
    """Build the model, time the four ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=150, help="texts for (a) and (b)")
    parser.add_argument("--cascade", type=int, default=1000, help="texts for the cascades")
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
        quantized = DetoxifyScorer(settings.model_copy(update={"quantize": True}))
        quantized.detoxify()
    tokenizer = detoxify.tokenizer
    replies = [chosen.response for chosen, _ in sample_data.hh_rlhf(Settings().sample_data)]
    # Detoxify's predict crashes past 512 tokens, so the shared text set fits in that.
    texts = [t for t in replies if len(tokenizer(t)["input_ids"]) <= 512]
    random.Random(0).shuffle(texts)
    needed = max(args.texts, args.cascade)
    texts = (texts * (needed // len(texts) + 1))[:needed]
    print(f"{len(replies)} HH-RLHF replies, {len(texts)} used; torch threads: {THREADS}", flush=True)
    scorer.score(texts[:8])  # warm-up
    quantized.score(texts[:8])
    ProfanityScorer().score(texts[:8])  # loads profanity-check's model
    same = texts[: args.texts]
    with thread_budget(THREADS):
        a = texts_per_second(lambda: [detoxify.predict(t) for t in same], len(same))
    b = texts_per_second(lambda: scorer.score(same), len(same))
    cascade_texts = texts[: args.cascade]
    threshold = args.prefilter_threshold
    c, escalated = cascade_rate(CascadeScorer(ProfanityScorer(), scorer, threshold), cascade_texts)
    d, _ = cascade_rate(CascadeScorer(ProfanityScorer(), quantized, threshold), cascade_texts)
    print(f"(a) Detoxify.predict, one text per call: {a:8.1f} texts/s  ({len(same)} texts)")
    print(f"(b) batched + length-bucketed (bs {args.batch_size}): {b:8.1f} texts/s  (the same texts)")
    print(
        f"(c) cascade (prefilter >= {args.prefilter_threshold}, {escalated:.1%} escalated):"
        f" {c:8.1f} texts/s  ({len(cascade_texts)} texts)"
    )
    print(f"(d) the cascade, Detoxify quantized to int8: {d:8.1f} texts/s  ({len(cascade_texts)} texts)")
    print(f"b/a = {b / a:.2f}x   c/a = {c / a:.2f}x   d/a = {d / a:.2f}x   (goal: cascade >= 10x)")


if __name__ == "__main__":
    main()
