"""False-alarm rate and power of the embedding drift tests on real prompts and replies.

Usage: ``python eval/embedding_eval.py [--splits 50] [--threads 1]``

* No drift: ``--splits`` random disjoint halves of the distinct HH-RLHF
  prompts (and of the chosen replies) tested against each other. The share
  with p < alpha should be near alpha (0.05); the share called ``drift`` (also
  past the minimum effect size) should be near zero.
* Drift: HH-RLHF prompts (red-teaming) as reference against OpenAssistant
  oasst1 prompts (ordinary assistant use) at several sample sizes.

Texts are embedded once; each run draws new samples and a new seed. The table
also shows the mean effect size (MMD^2 or LSDD), the number the default
``min_effect_size`` was read from.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from detectors.base import verdict  # noqa: E402
from detectors.embedding import Embedder, EmbeddingLSDD, EmbeddingMMD, LSDDConfig, MMDConfig  # noqa: E402
from services import sample_data  # noqa: E402

DETECTORS = (EmbeddingMMD, EmbeddingLSDD)


def hh_rlhf_texts(data_dir: Path, field: str = "prompt") -> list[str]:
    """Distinct HH-RLHF last human turns (``prompt``) or chosen replies (``response``), file order."""
    texts = []
    for chosen, _ in sample_data.hh_rlhf(data_dir):
        texts.append(chosen.prompt[-1]["content"] if field == "prompt" else chosen.response)
    return list(dict.fromkeys(texts))


def oasst1_prompts(data_dir: Path) -> list[str]:
    """Distinct oasst1 prompter messages that received an assistant reply, file order."""
    return list(dict.fromkeys(exchange.prompt[-1]["content"] for exchange in sample_data.oasst1(data_dir)))


@dataclass(frozen=True)
class Row:
    """One line of the table: how often one detector fired on one kind of case."""

    case: str
    detector: str
    sample_size: int
    runs: int
    significant: float  # share of runs with p < alpha
    drift: float  # share of runs with verdict "drift"
    mean_effect: float
    seconds_per_run: float


def trial(
    cls: type[EmbeddingMMD] | type[EmbeddingLSDD], reference: np.ndarray, current: np.ndarray, seed: int
) -> tuple[bool, bool, float]:
    """(significant, drift, effect size) for one test of current against reference embeddings."""
    config = MMDConfig(seed=seed) if cls is EmbeddingMMD else LSDDConfig(seed=seed)
    detector = cls(config)
    detector.fit_embeddings(reference)
    result = detector.test_embeddings(current)
    effect = max(result.statistic, 0.0)
    level = verdict(result.p_value, config.alpha, effect, config.min_effect_size)
    return level != "ok", level == "drift", effect


def run_case(case: str, pool_ref: np.ndarray, pool_cur: np.ndarray | None, size: int, runs: int) -> list[Row]:
    """Repeat one case: split ``pool_ref`` in halves if ``pool_cur`` is None, else sample both."""
    rows = []
    for cls in DETECTORS:
        outcomes = []
        started = time.perf_counter()
        for seed in range(runs):
            rng = np.random.default_rng(seed)
            if pool_cur is None:
                order = rng.permutation(len(pool_ref))
                reference, current = pool_ref[order[:size]], pool_ref[order[size : 2 * size]]
            else:
                reference = pool_ref[rng.choice(len(pool_ref), size, replace=False)]
                current = pool_cur[rng.choice(len(pool_cur), size, replace=False)]
            outcomes.append(trial(cls, reference, current, seed))
        significant, drift, effect = (np.array(column, dtype=float) for column in zip(*outcomes, strict=True))
        rows.append(
            Row(
                case,
                cls.id,
                size,
                runs,
                float(significant.mean()),
                float(drift.mean()),
                float(effect.mean()),
                (time.perf_counter() - started) / runs,
            )
        )
    return rows


def print_table(rows: list[Row]) -> None:
    """The results as a fixed-width table."""
    header = f"{'case':<34} {'detector':<24} {'n':>5} {'runs':>5} {'p<a':>6} {'drift':>6}"
    header += f" {'effect':>9} {'s/run':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.case:<34} {r.detector:<24} {r.sample_size:>5} {r.runs:>5} {r.significant:>6.2f} "
            f"{r.drift:>6.2f} {r.mean_effect:>9.5f} {r.seconds_per_run:>6.2f}"
        )


def main() -> None:
    """Embed the texts once, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--splits", type=int, default=50, help="Runs per no-drift case (>= 50 for the report)"
    )
    parser.add_argument("--power-runs", type=int, default=20, help="Runs per drift case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    data_dir = Settings().sample_data
    embedder = Embedder()
    started = time.perf_counter()
    prompts = embedder.embed(hh_rlhf_texts(data_dir, "prompt"))
    responses = embedder.embed(hh_rlhf_texts(data_dir, "response"))
    oasst = embedder.embed(oasst1_prompts(data_dir))
    print(
        f"embedded {len(prompts)} HH prompts, {len(responses)} HH replies, {len(oasst)} oasst1 prompts "
        f"in {time.perf_counter() - started:.1f} s\n"
    )

    rows: list[Row] = []
    rows += run_case("no drift: HH prompt halves", prompts, None, 200, args.splits)
    rows += run_case("no drift: HH prompt halves", prompts, None, 1000, args.splits)
    rows += run_case("no drift: HH reply halves", responses, None, 200, args.splits)
    for size in (25, 50, 100, 200):
        rows += run_case("drift: HH vs oasst1 prompts", prompts, oasst, size, args.power_runs)
    print_table(rows)


if __name__ == "__main__":
    main()
