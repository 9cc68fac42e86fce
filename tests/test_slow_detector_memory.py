"""The slow-detector child gives back what its permutation tests free (issue 15, finding 8).

The child grew by hundreds of MB per window: glibc kept the 16 MB kernel
matrices that alibi-detect's MMD test frees. This runs that test, on random
unit vectors shaped like a window's sentence embeddings (no model needed),
in the real child and reads the child's own RSS after each run.
"""

from __future__ import annotations

import asyncio

import numpy as np

from detectors.embedding import EmbeddingMMD, MMDConfig
from streams.detect import DetectorSpec
from streams.slow_detectors import SlowDetectors

# Growth of the child over its RSS after the first test. Without the fix, the
# first run alone added about 640 MB; with it the runs stay within ~20 MB.
MAX_GROWTH_MB = 150


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def mmd_rss_in_child(runs: int) -> list[float]:
    """Run the MMD permutation test ``runs`` times (1,000 vs 1,000 rows); the RSS before and after each."""
    rng = np.random.default_rng(0)
    detector = EmbeddingMMD(MMDConfig())
    detector.fit_embeddings(_unit(rng, 1000))
    rss = [_rss_mb()]
    for _ in range(runs):
        detector.test_embeddings(_unit(rng, 1000))
        rss.append(_rss_mb())
    return rss


def test_the_child_returns_the_memory_its_permutation_tests_free() -> None:
    slow = SlowDetectors(
        [DetectorSpec("drift.ks.v1", "inference", slow=True)], alpha=0.05, log_level="warning"
    )
    try:
        loop = asyncio.new_event_loop()
        try:
            rss = loop.run_until_complete(loop.run_in_executor(slow._pool, mmd_rss_in_child, 3))
        finally:
            loop.close()
    finally:
        slow.stop()
    assert max(rss) - rss[0] < MAX_GROWTH_MB, f"child RSS (MB) before and after each test: {rss}"
