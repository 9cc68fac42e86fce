"""What one slow verdict costs: CPU seconds and memory per window in the slow-detector child.

Usage: ``python bench/slow_verdict_bench.py [--small] [--windows 4] [--rows 2000]``

Windows of ``--rows`` rows (``LOOPWATCH_WINDOW_SAMPLE_SIZE``, 2,000 by
default: the sample the detectors see) of real HH-RLHF exchanges, made into
window rows as ingest makes them, judged by the built-in slow detectors (the
two sentence-embedding MMD tests, prompt and response) in the real child
process (:class:`streams.slow_detectors.SlowDetectors`), in two cases:

- **pinned**: every window against one reference, as a stable version's
  windows are judged: the reference is embedded once, then cached;
- **moving**: every window against another reference, as a canary's windows
  are judged against its stable version's latest window: both are embedded.

The child's CPU seconds (user + system, from ``/proc``) and wall seconds are
measured per window after a first window that loads the model (not counted).
Baseline, same run: the built-in fast detectors' CPU seconds on the same
windows, in this process. It also prints the pickled size of one window (what
each window waiting in the slow-detector queue holds) and the child's RSS, so
a queue length can be chosen (``LOOPWATCH_SLOW_DETECTOR_QUEUE``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pickle
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.soak_bench import rss_mb  # noqa: E402
from core.settings import Settings  # noqa: E402
from detectors.frame import describe, log_row  # noqa: E402
from schemas.events import InferenceLog  # noqa: E402
from services import sample_data  # noqa: E402
from streams.detect import DEFAULT_SPECS, Judge, Reference  # noqa: E402
from streams.slow_detectors import SlowDetectors  # noqa: E402
from streams.windows import ClosedWindow  # noqa: E402

START = datetime(2026, 12, 1, 12, tzinfo=UTC)
SEGMENT = {"model": "bench-bot", "model_version": "v1", "app": "support-bot", "route": "chat", "tenant": None}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def windows(count: int, rows: int, text_chars: int) -> list[ClosedWindow]:
    """``count`` windows of ``rows`` real exchanges each, every text unique.

    The data sets hold fewer exchanges than the windows need, and the embedder
    remembers texts it saw: a tag makes each text new, as live traffic mostly is.
    """
    rng = random.Random(0)
    pairs = itertools.cycle([chosen for chosen, _ in sample_data.hh_rlhf(Settings().sample_data)])
    made = []
    for index in range(count):
        start = START + timedelta(seconds=10 * index)
        window_rows = []
        for i, chosen in zip(range(rows), pairs, strict=False):
            event = InferenceLog.model_validate(sample_data.inference_event(chosen, start, rng))
            # As the detect stage has it: decoded from a summary's JSON.
            row = json.loads(json.dumps(log_row(event, describe(event), text_chars), default=str))
            row["prompt"], row["response"] = (
                f"{row['prompt']} ({index}.{i})",
                f"{row['response']} ({index}.{i})",
            )
            window_rows.append(row)
        end = start + timedelta(seconds=10)
        made.append(
            ClosedWindow(SEGMENT, "inference", start, end, len(window_rows), window_rows, window_id=index)
        )
    return made


def as_reference(window: ClosedWindow, name: str) -> Reference:
    """A window as the reference another window is judged against."""
    import pandas as pd

    return Reference(name, pd.DataFrame(window.rows), window.seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 measured windows per case (about a minute)")
    parser.add_argument("--windows", type=int, default=4, help="measured windows per case")
    parser.add_argument("--rows", type=int, default=Settings().window_sample_size, help="rows per window")
    args = parser.parse_args()
    if args.small:
        args.windows = 2
    settings = Settings()
    slow_specs = [spec for spec in DEFAULT_SPECS if spec.slow]
    fast_specs = [spec for spec in DEFAULT_SPECS if not spec.slow and spec.kind == "inference"]
    # The first window loads the model; pinned: windows 1.. against window 0; moving: each against another.
    # Moving: a reference and a window neither judged before (the embedder remembers texts it saw).
    made = windows(2 + 3 * args.windows, args.rows, settings.window_text_chars)
    pinned = as_reference(made[0], "pinned:bench")
    cases = {
        "pinned": [(window, pinned) for window in made[1 : 2 + args.windows]],
        "moving": [
            (made[i + 1], as_reference(made[i], f"stable:bench@{i}"))
            for i in range(2 + args.windows, len(made), 2)
        ],
    }
    print(
        f"{args.rows} rows per window, slow detectors: "
        + ", ".join(f"{s.detector_id}({s.config.get('column')})" for s in slow_specs)
    )
    print(f"one window pickled (what a queued window holds): {len(pickle.dumps(made[0])) / 1e6:.1f} MB")

    fast = Judge(fast_specs, alpha=settings.drift_alpha)
    fast_cpu = []
    for window, reference in cases["pinned"]:
        before = time.process_time()
        fast.run(window, reference, fast_specs)
        fast_cpu.append(time.process_time() - before)

    slow = SlowDetectors(slow_specs, alpha=settings.drift_alpha, log_level="warning")

    async def judge(window: ClosedWindow, reference: Reference) -> tuple[float, float]:
        [child] = list(slow._pool._processes) or [0]
        cpu, wall = (cpu_seconds(child) if child else 0.0), time.monotonic()
        await slow.judge(window, reference, slow_specs)
        [child] = list(slow._pool._processes)
        return cpu_seconds(child) - cpu, time.monotonic() - wall

    try:
        first_cpu, first_wall = asyncio.run(judge(cases["pinned"][0][0], pinned))
        print(
            f"first window (loads the model, embeds the reference): {first_cpu:.1f} CPU s, {first_wall:.1f} s"
        )
        results = {}
        for case, jobs in cases.items():
            start = 1 if case == "pinned" else 0  # the pinned case's first job was the warm-up above
            measured = [asyncio.run(judge(window, reference)) for window, reference in jobs[start:]]
            results[case] = measured
        [child] = list(slow._pool._processes)
        child_rss = rss_mb(child)
    finally:
        slow.stop()
    base = statistics.median(fast_cpu)
    print(f"baseline: the fast inference detectors, {base:.3f} CPU s per window (median of {len(fast_cpu)})")
    for case, measured in results.items():
        cpu = statistics.median(c for c, _ in measured)
        wall = statistics.median(w for _, w in measured)
        print(
            f"slow verdict, {case} reference: {cpu:.1f} CPU s per window, {wall:.1f} s wall "
            f"(median of {len(measured)}; {cpu / base:.0f}x the fast detectors)"
        )
    print(f"child RSS after the runs: {child_rss or 0:.0f} MB")


if __name__ == "__main__":
    main()
