"""Cost of embedding drift on this CPU: the two-sample tests, the embeddings, the online calibration.

Usage: ``python bench/embedding_bench.py [--threads N] [--repeats 3]``

On real HH-RLHF prompts (384-dim all-MiniLM-L6-v2 embeddings), one run measures:

1. embedding 1,000 texts (text cache off), the baseline the tests are compared with;
2. ``drift.embedding_mmd.v1`` on a 1,000-row reservoir sample against a
   1,000-row reference (100 permutations): set-up from the reference, then the
   test itself (goal: under 2 s); ``drift.embedding_lsdd.v1`` likewise;
3. ``drift.embedding_mmd_online.v1`` with its default config (500 reference
   rows, window 20, ERT 5,000, 20,000 bootstraps): the first start, which
   calibrates the thresholds, against a second start that reads them from the
   cache, and the cost of feeding 1,000 rows.

It prints the median of ``--repeats`` timings and the ratios test/embedding
and calibration/cached start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from detectors.embedding import (  # noqa: E402
    Embedder,
    EmbedderConfig,
    EmbeddingLSDD,
    EmbeddingMMD,
    LSDDConfig,
    MMDConfig,
    sample_rows,
)
from detectors.online import OnlineConfig, OnlineEmbeddingMMD  # noqa: E402
from eval.embedding_eval import hh_rlhf_texts  # noqa: E402


def timed(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    """Run every measurement once (each timing the median of ``--repeats``) and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads [all cores]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    texts = hh_rlhf_texts(Settings().sample_data, "prompt")
    order = np.random.default_rng(0).permutation(len(texts))
    reference_texts = [texts[i] for i in order[:1000]]
    pool = [texts[i] for i in order[1000:]]
    reservoir_texts = [pool[i] for i in sample_rows(len(pool), 1000, seed=1)]

    uncached = Embedder(EmbedderConfig(cache_size=0))
    uncached.embed(["warm up"])  # load the model outside the timings
    embed_seconds = timed(lambda: uncached.embed(reference_texts), args.repeats)
    reference = uncached.embed(reference_texts)
    current = uncached.embed(reservoir_texts)
    print(f"torch threads: {torch.get_num_threads()}, embeddings: {reference.shape[1]} dims")
    print(
        f"embed 1,000 texts (cache off):         {embed_seconds:7.2f} s  ({1000 / embed_seconds:.0f} texts/s)"
    )

    detectors: list[EmbeddingMMD | EmbeddingLSDD] = [EmbeddingMMD(MMDConfig()), EmbeddingLSDD(LSDDConfig())]
    for detector in detectors:
        setup = timed(partial(detector.fit_embeddings, reference), args.repeats)
        test = timed(partial(detector.test_embeddings, current), args.repeats)
        result = detector.test_embeddings(current)
        print(
            f"{detector.id:<26} set-up {setup:6.2f} s, test 1,000 vs 1,000: {test:6.2f} s "
            f"(test / embedding = {test / embed_seconds:.2f}; p={result.p_value:.2f}, "
            f"statistic={result.statistic:.5f})"
        )

    with tempfile.TemporaryDirectory() as cache_dir:
        online_config = OnlineConfig(cache_dir=cache_dir)
        online_reference = reference[: online_config.reference_size]
        first = OnlineEmbeddingMMD(online_config)
        started = time.perf_counter()
        first.fit_embeddings(online_reference)
        calibrate = time.perf_counter() - started
        second = OnlineEmbeddingMMD(online_config)
        cached = timed(lambda: second.fit_embeddings(online_reference), args.repeats)
        assert second.calibration is not None and second.calibration.source == "cache"
        feed = timed(lambda: first.run(current), args.repeats)
        fed = len(first.run(current).test_stats)  # it stops at the first alarm
        print(
            f"{OnlineEmbeddingMMD.id:<26} calibrating start {calibrate:6.2f} s, cached start {cached:6.3f} s "
            f"(calibration / cached = {calibrate / cached:.0f}x); fed {fed} rows in {feed:.3f} s"
        )


if __name__ == "__main__":
    main()
