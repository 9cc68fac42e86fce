"""Univariate drift on 20 features, 10k-event windows: loopwatch against Evidently, in one run.

Usage: ``python bench/drift_bench.py [--windows 20] [--baseline-windows 3]``

The reference window and every current window hold 10,000 rows of 20
numeric features (normal, log-normal, integer counts, uniform; some current
windows shift a few features). Timed per window:

(a) ``detectors.files.drift_report``: KS with effect-size gate on each
    column plus the Benjamini-Hochberg correction (what ``loopwatch detect
    drift`` runs), fitting the reference every time;
(b) the stream path: KS detectors fitted once on the reference, then only
    ``detect`` per window, plus the correction;
(c) the baseline: Evidently's ``DataDriftPreset`` report on the same frames
    (computation only, no HTML).

It prints milliseconds per window for each, the ratio baseline / loopwatch,
and whether each window was judged drifted. The goal is (a) under 50 ms.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectors.correction import correct  # noqa: E402
from detectors.drift import KSDrift, numeric_detector  # noqa: E402
from detectors.files import drift_report  # noqa: E402

FEATURES = 20
ROWS = 10_000


def window(rng: np.random.Generator, shifted: int = 0) -> pd.DataFrame:
    """One window; the first ``shifted`` features of each kind move by about half a spread."""
    columns: dict[str, np.ndarray] = {}
    for index in range(FEATURES):
        move = 0.5 if index % 5 < shifted else 0.0
        kind = index % 4
        if kind == 0:
            columns[f"normal_{index}"] = rng.normal(move, 1.0, ROWS)
        elif kind == 1:
            columns[f"lognormal_{index}"] = rng.lognormal(move, 1.0, ROWS)
        elif kind == 2:
            columns[f"count_{index}"] = rng.poisson(5 + 2 * move, ROWS).astype(float)
        else:
            columns[f"uniform_{index}"] = rng.uniform(move, 1 + move, ROWS)
    return pd.DataFrame(columns)


def per_window(run: Callable[[pd.DataFrame], bool], windows: list[pd.DataFrame]) -> tuple[float, list[bool]]:
    """Milliseconds per window (after one warm-up call) and each window's verdict."""
    run(windows[0])
    start = time.perf_counter()
    verdicts = [run(current) for current in windows]
    return 1000 * (time.perf_counter() - start) / len(windows), verdicts


def main() -> None:
    """Build the windows, time the three ways, print the table."""
    parser = argparse.ArgumentParser(description="Univariate drift benchmark")
    parser.add_argument("--windows", type=int, default=20, help="Current windows timed for loopwatch")
    parser.add_argument("--baseline-windows", type=int, default=3, help="Current windows timed for Evidently")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    reference = window(rng)
    windows = [window(rng, shifted=i % 3) for i in range(args.windows)]

    def report(current: pd.DataFrame) -> bool:
        return drift_report(reference, current).drift

    fitted: list[KSDrift] = []
    for column in reference.columns:
        detector = numeric_detector(column)
        detector.fit(reference)
        fitted.append(detector)

    def stream(current: pd.DataFrame) -> bool:
        findings = correct([detector.detect(current) for detector in fitted])
        return any(finding.verdict == "drift" for finding in findings)

    from evidently import Report
    from evidently.presets import DataDriftPreset

    evidently_report = Report([DataDriftPreset(columns=list(reference.columns))])

    def evidently(current: pd.DataFrame) -> bool:
        snapshot = evidently_report.run(current_data=current, reference_data=reference)
        drifted = snapshot.dict()["metrics"][0]["value"]["count"]
        return bool(drifted > 0)

    report_ms, report_verdicts = per_window(report, windows)
    stream_ms, stream_verdicts = per_window(stream, windows)
    evidently_ms, evidently_verdicts = per_window(evidently, windows[: args.baseline_windows])

    print(f"{FEATURES} numeric features, reference {ROWS} rows, current windows {ROWS} rows")
    print(f"{'method':<52} {'windows':>7} {'ms/window':>10} {'Evidently / this':>17}")
    rows = [
        ("loopwatch drift_report (KS + effect gate + BH)", args.windows, report_ms),
        ("loopwatch fitted KS detectors, detect only (+ BH)", args.windows, stream_ms),
        ("Evidently 0.7 DataDriftPreset (baseline)", args.baseline_windows, evidently_ms),
    ]
    for name, count, ms in rows:
        print(f"{name:<52} {count:>7} {ms:>10.1f} {evidently_ms / ms:>16.1f}x")
    print(f"goal drift_report < 50 ms/window: {'met' if report_ms < 50 else 'NOT met'}")
    shifted = [i % 3 > 0 for i in range(args.windows)]
    print(f"windows with shifted features: {sum(shifted)} of {args.windows}")
    print(f"drifted by drift_report: {sum(report_verdicts)}; by fitted detectors: {sum(stream_verdicts)}")
    agree = sum(a == b for a, b in zip(evidently_verdicts, report_verdicts, strict=False))
    print(f"Evidently agrees with drift_report on {agree} of {len(evidently_verdicts)} windows")


if __name__ == "__main__":
    main()
