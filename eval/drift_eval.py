"""How often ``loopwatch detect drift`` alarms without drift, and how often it sees real drift.

Usage: ``python -m eval.drift_eval [--splits 60] [--sizes 200,1000,5000]``

On the two real drift benchmarks in ``shared/data/drift`` (Elec2, NOAA
weather; 8 numeric features each) it runs :func:`detectors.files.drift_report`
(KS per column, minimum effect size 0.1, Benjamini-Hochberg across the
columns, alpha 0.05: the CLI's defaults, not tuned on these files) and prints:

(a) false alarms: shuffle the rows, take the first n as reference and the
    next n as current, ``--splits`` times per window size. Such splits come
    from one distribution, so every top-level ``drift`` is a false alarm; the
    rate should stay at or below the nominal 5%. For comparison it also
    prints how often any uncorrected p-value fell below 0.05 (what a plain
    per-column test would report).
(b) power: windows in time order, where the data really moves: the first n
    rows against the last n, and every block of n consecutive rows against
    the block half the record later. Elec2's ``date`` column grows with time,
    so it drifts by construction; the Elec2 rows are also shown without it.
    Adjacent blocks are shown too, without ground truth: how often the data
    moves within one step.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from detectors.files import drift_report  # noqa: E402

ELEC2_COLUMNS = ["date", "day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]
# Feature order as described by Elwell & Polikar for the Offutt AFB daily records.
WEATHER_COLUMNS = [
    "temperature",
    "dew_point",
    "sea_level_pressure",
    "visibility",
    "wind_speed",
    "max_sustained_wind",
    "max_temperature",
    "min_temperature",
]


def load_elec2(folder: Path) -> pd.DataFrame:
    """Elec2's 45,312 half-hour rows, in time order."""
    return pd.read_csv(folder / "drift" / "elec2_data.dat", sep=" ", names=ELEC2_COLUMNS)


def load_weather(folder: Path) -> pd.DataFrame:
    """The 18,159 daily weather rows, in time order."""
    return pd.read_csv(folder / "drift" / "weather_data.csv", names=WEATHER_COLUMNS)


@dataclass(frozen=True)
class Rate:
    """How many of ``trials`` windows raised an alarm."""

    alarms: int
    trials: int

    def __str__(self) -> str:
        return f"{self.alarms}/{self.trials} = {100 * self.alarms / max(self.trials, 1):.1f}%"


@dataclass(frozen=True)
class Row:
    """One line of the printed table."""

    dataset: str
    case: str
    size: int
    drift: Rate
    raw: Rate
    seconds: float


def _judge(pairs: Iterator[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[Rate, Rate, float]:
    """Top-level drift rate, rate of "any raw p < 0.05", and seconds per report."""
    drift = raw = trials = 0
    start = time.perf_counter()
    for reference, current in pairs:
        report = drift_report(reference, current)
        trials += 1
        drift += report.drift
        raw += any(test.finding.p_value is not None and test.finding.p_value < 0.05 for test in report.tests)
    seconds = (time.perf_counter() - start) / max(trials, 1)
    return Rate(drift, trials), Rate(raw, trials), seconds


def random_splits(
    data: pd.DataFrame, size: int, splits: int, seed: int
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``splits`` reference/current pairs of ``size`` rows each from shuffled rows (no drift by design)."""
    rng = np.random.default_rng(seed)
    for _ in range(splits):
        order = rng.permutation(len(data))
        yield data.iloc[order[:size]], data.iloc[order[size : 2 * size]]


def first_vs_last(data: pd.DataFrame, size: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """The first ``size`` rows against the last ``size``."""
    yield data.iloc[:size], data.iloc[-size:]


def half_record_apart(data: pd.DataFrame, size: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Each block of ``size`` consecutive rows against the block half the record later."""
    blocks = len(data) // size
    gap = blocks // 2
    for start in range(blocks - gap):
        later = start + gap
        yield data.iloc[start * size : (start + 1) * size], data.iloc[later * size : (later + 1) * size]


def adjacent_blocks(data: pd.DataFrame, size: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Each block of ``size`` consecutive rows against the next one (how much moves in one step)."""
    for start in range(len(data) // size - 1):
        yield data.iloc[start * size : (start + 1) * size], data.iloc[(start + 1) * size : (start + 2) * size]


def evaluate(folder: Path, sizes: list[int], splits: int, seed: int) -> list[Row]:
    """Every (dataset, case, window size) row of the table."""
    elec2 = load_elec2(folder)
    datasets: dict[str, pd.DataFrame] = {
        "elec2": elec2,
        "elec2 (no date)": elec2.drop(columns="date"),
        "weather": load_weather(folder),
    }
    cases: dict[str, Callable[[pd.DataFrame, int], Iterator[tuple[pd.DataFrame, pd.DataFrame]]]] = {
        "first vs last n": first_vs_last,
        "blocks half the record apart": half_record_apart,
        "adjacent blocks (no ground truth)": adjacent_blocks,
    }
    rows = []
    for name, data in datasets.items():
        for size in sizes:
            if 2 * size > len(data):
                continue
            drift, raw, seconds = _judge(random_splits(data, size, splits, seed))
            rows.append(Row(name, "random split (no drift)", size, drift, raw, seconds))
            for case, pairs in cases.items():
                drift, raw, seconds = _judge(pairs(data, size))
                rows.append(Row(name, case, size, drift, raw, seconds))
    return rows


def print_table(rows: list[Row]) -> None:
    """The rows as an aligned text table."""
    header = ("dataset", "case", "n", "drift verdict", "any raw p<0.05", "ms/report")
    cells = [header] + [
        (r.dataset, r.case, str(r.size), str(r.drift), str(r.raw), f"{1000 * r.seconds:.1f}") for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def summary(rows: list[Row]) -> str:
    """The overall false-alarm rate over every random split."""
    nulls = [r.drift for r in rows if r.case.startswith("random")]
    alarms, trials = sum(r.alarms for r in nulls), sum(r.trials for r in nulls)
    return f"false alarms over all random splits: {Rate(alarms, trials)} (nominal at most 5%)"


def main() -> None:
    """Parse the options, run the evaluation, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--splits", type=int, default=60, help="Random splits per dataset and window size")
    parser.add_argument("--sizes", default="200,1000,5000", help="Window sizes (rows on each side)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="Sample data folder [default: settings]")
    args = parser.parse_args()
    folder = args.data or Settings().sample_data
    if not (folder / "drift").is_dir():
        sys.exit(f"no drift data under {folder}: set LOOPWATCH_SAMPLE_DATA to the shared data folder")
    rows = evaluate(folder, [int(size) for size in args.sizes.split(",")], args.splits, args.seed)
    print_table(rows)
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
