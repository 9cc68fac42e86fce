"""Window completeness on 1 and 2 workers, with and without a CPU hog: watermark rule against timer rule.

Usage: ``python bench/windows_bench.py [--small] [--inference 40000] [--feedback 8000] [--windows 8]
[--speed 1] [--hold 1.5] [--workers 1 2]``

One embedded broker, 8 partitions, real worker processes. The traffic
(``tests/scaleout_traffic.py``): one model served by four versions in 10 s
event-time windows, a canary clearly worse than stable (about 70% negative
feedback against 15%), real HH-RLHF text, replayed paced by event time
(``--speed`` times faster), one partition's events held back by a slow,
bursty producer: sent every ``--hold`` seconds, each 1-2 periods late, with
their original event time.

For each window close rule (``LOOPWATCH_WINDOW_CLOSE``: ``timer`` is the
baseline, ``watermark`` the rule under test), for 1 and 2 workers, the same
traffic is replayed twice on the same workers, each time as another model:
alone, then with a CPU hog (a process keeping one core busy). The second
replay's event times start after the first one's last: each input partition's
watermark never goes back, so a replay that went back in event time was late
on arrival, and its first windows closed on their first partials (a stable
window 0 closed on fewer than ``LOOPWATCH_REFERENCE_MIN_EVENTS`` events left
the reference incomplete, so window 1 was pinned too and got no verdict). Each
replay's traffic starts 300 s before its own start, so this happened whenever
the first replay took less wall time than its traffic spans in event time. The workers run
the fast detectors only, without curation and history (the window close is what
is measured). Each run prints the fraction of windows whose final verdict (the
Detections of the highest revision) counted exactly the events sent for the
window, the spread of events judged / true events (min/median/max; a window
never judged counts 0), the duplicate actions (rollback and retrain requests
beyond one per incident), the canary's rollbacks and any rollback of a version
as good as stable (a false alarm), and a few wrong windows. The last three
lines are the watermark rule's, for a script to check.

Until the worker has the ``window_close`` setting, only the timer rule runs
(and the last lines are its figures, said so above them).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.processes import spawn, stop_process  # noqa: E402
from core.settings import Settings  # noqa: E402
from schemas.events import WindowClosed  # noqa: E402
from services.broker import free_port, start_broker  # noqa: E402
from tests.helpers import WorkerStack, wait_until  # noqa: E402
from tests.scaleout_traffic import (  # noqa: E402
    CANARY,
    STABLE,
    VERSIONS,
    WINDOW_SECONDS,
    Actions,
    Score,
    Sender,
    Verdicts,
    WindowKey,
    build,
    missing,
    score,
    worker_settings,
)
from tests.test_rekey_stream import split_partitions  # noqa: E402

HELD_PARTITION = 3


@dataclass(frozen=True)
class Run:
    """What one replay came to."""

    rule: str
    workers: int
    hog: bool
    score: Score
    duplicates: int
    canary_rollbacks: int
    #: Rollback requests away from the versions as good as stable (by version).
    false_rollbacks: dict[str, int]
    #: A few windows judged on the wrong count: "version kind window n: true vs judged".
    examples: list[str]

    def line(self) -> str:
        """One line of figures."""
        low, median, high = self.score.spread()
        return (
            f"  {self.workers} worker{'s' if self.workers > 1 else ' '}, "
            f"{'hog   ' if self.hog else 'no hog'}: "
            f"windows complete {self.score.complete}/{self.score.windows} = {self.score.fraction:.3f}   "
            f"judged/true min {low:.2f} median {median:.2f} max {high:.2f}   "
            f"first verdict complete {self.score.first_complete}/{self.score.windows}, "
            f"revised {self.score.revised}   "
            f"duplicate actions {self.duplicates}   canary rollbacks {self.canary_rollbacks}   "
            f"false rollbacks {sum(self.false_rollbacks.values())}"
            + (f" {self.false_rollbacks}" if self.false_rollbacks else "")
            + "".join(f"\n      {example}" for example in self.examples)
        )


@dataclass
class Outcomes:
    """Each window's ``WindowClosed`` records: revision, outcome and events, in the order published."""

    closings: dict[WindowKey, list[tuple[int, str, int]]]

    @classmethod
    def of(cls, records: Iterable[Any], model: str) -> Outcomes:
        """From the records of the windows topic (other models' are skipped)."""
        closings: dict[WindowKey, list[tuple[int, str, int]]] = {}
        for record in records:
            closed = WindowClosed.model_validate_json(record.value)
            if closed.segment.model != model:
                continue
            key = (
                closed.segment.model_version,
                closed.kind,
                int(closed.window_start.timestamp() // WINDOW_SECONDS),
            )
            closings.setdefault(key, []).append((closed.revision, closed.outcome, closed.events))
        return cls(closings)

    def said(self, key: WindowKey) -> str:
        """What the window's closings said, e.g. "r0 reference 57 events" (none: it never closed)."""
        found = self.closings.get(key, [])
        return ", ".join(f"r{rev} {outcome} {events} events" for rev, outcome, events in found) or "never"


def cpu_hog() -> subprocess.Popen[bytes]:
    """A process that keeps one core busy until stopped."""
    return spawn([sys.executable, "-c", "while True: pass"])


def replay(
    workers: list[WorkerStack], args: argparse.Namespace, model: str, *, hog: bool, rule: str, after: float
) -> tuple[Run, float]:
    """Send one run's traffic (event times after ``after``), wait for its verdicts, score them.

    Returns the run and its latest event time, after which the next run on these workers starts.
    """
    stack = workers[0]
    traffic = build(
        Settings().sample_data,
        inference=args.inference,
        feedback=args.feedback,
        windows=args.windows,
        model=model,
        after=after,
    )
    held = HELD_PARTITION if args.hold > 0 else None
    sender = Sender(
        traffic, stack.bootstrap, stack.topics, speed=args.speed, held_partition=held, hold_seconds=args.hold
    )
    hogging = cpu_hog() if hog else None
    try:
        sender.send_until(1.0)
        sender.close()
        stack.wait_committed(stack.topics.inference, stack.topics.feedback, timeout=300)

        def judged() -> bool:
            return not missing(traffic.truth, Verdicts.of(stack.read_all(stack.topics.detections), model))

        # A canary's window may wait up to window_idle_seconds (30 s) for its stable window; one
        # still not judged after that is scored as it is (incomplete).
        with contextlib.suppress(AssertionError):
            wait_until(judged, 60, "windows not judged", interval=1.0)
        stack.wait_committed(stack.topics.summaries, stack.topics.detections, timeout=120)
    finally:
        if hogging is not None:
            stop_process(hogging)
    verdicts = Verdicts.of(stack.read_all(stack.topics.detections), model)
    outcomes = Outcomes.of(stack.read_all(stack.topics.windows), model)
    requests = stack.read_all(stack.topics.rollback_requests) + stack.read_all(stack.topics.retrain_requests)
    actions = Actions.of(requests, model)
    false = {v: n for v in VERSIONS if v != CANARY and (n := actions.rollbacks(v, model))}
    result = score(traffic.truth, verdicts)
    examples = [
        f"{version} {kind} window {window - traffic.truth.first_window}: {true} true vs {judged} judged"
        f" (closed: {outcomes.said((version, kind, window))})"
        for (version, kind, window), (true, judged) in list(result.wrong.items())[:3]
    ]
    # A later window pinned as a reference: what the first window, the reference, counted when it closed.
    first = traffic.truth.first_window
    examples += [
        f"{version} {kind} window 0 (the reference): {outcomes.said((version, kind, first))}"
        for version, kind in sorted({(v, k) for v, k, _ in result.wrong if v == STABLE})
    ]
    run = Run(
        rule,
        len(workers),
        hog,
        result,
        actions.duplicates,
        actions.rollbacks(CANARY, model),
        false,
        examples,
    )
    return run, max(message.at for message in traffic.messages)


def one_rule(broker: str, workdir: Path, args: argparse.Namespace, rule: str | None) -> list[Run]:
    """1 and 2 workers of one close rule, each without and with the hog."""
    runs = []
    for count in args.workers:
        base = workdir / f"{rule}-{count}"
        base.mkdir(parents=True)
        models = [f"scaleout-{rule}-{count}-{hog}" for hog in ("calm", "hog")]
        extra = {"window_close": rule} if rule else {}
        settings = worker_settings(base, models, log_level="warning", **extra)
        first = WorkerStack(broker, base, **settings)
        workers = [first] + [first.peer(base / f"w{n}") for n in range(1, count)]
        try:
            for worker in workers:
                worker.start(wait=False)
            for worker in workers:
                worker.wait_healthy()
            split_partitions(workers)
            last = 0.0
            for model, hog in zip(models, (False, True), strict=True):
                run, last = replay(workers, args, model, hog=hog, rule=rule or "timer", after=last)
                runs.append(run)
                print(run.line(), flush=True)
        finally:
            for worker in workers:
                worker.stop()
    return runs


def fraction(runs: list[Run], hog: bool) -> float:
    """Complete windows over all windows of the runs with (or without) the hog."""
    chosen = [r for r in runs if r.hog == hog]
    return sum(r.score.complete for r in chosen) / max(sum(r.score.windows for r in chosen), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="a few minutes: 6,000 requests over 3 windows, 2x"
    )
    parser.add_argument("--inference", type=int, default=40_000)
    parser.add_argument("--feedback", type=int, default=8_000)
    parser.add_argument("--windows", type=int, default=8, help="measured 10 s windows per version")
    parser.add_argument("--speed", type=float, default=1.0, help="event time runs this much faster")
    parser.add_argument("--hold", type=float, default=1.5, help="partition 3's producer sends every N s")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run")
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=["timer", "watermark"],
        default=["timer", "watermark"],
        help="close rules to run (the timer rule is the baseline)",
    )
    args = parser.parse_args()
    if args.small:
        args.inference, args.feedback, args.windows, args.speed = 6_000, 1_600, 3, 2.0
    rules: list[str | None] = list(args.rules) if "window_close" in Settings.model_fields else [None]
    print(
        f"{args.inference} requests, {args.feedback} rated, {args.windows} windows of 10 s per version, "
        f"4 versions, 8 partitions, speed {args.speed:g}x, "
        f"partition {HELD_PARTITION} sent in bursts every {args.hold:g} s "
        f"(each event {args.hold:g}-{2 * args.hold:g} s late)"
    )
    port = free_port()
    broker_process = start_broker(port)
    results: dict[str, list[Run]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rule in rules:
                name = rule or "timer"
                print(f"{name} rule{' (baseline)' if name == 'timer' else ''}:", flush=True)
                results[name] = one_rule(f"127.0.0.1:{port}", Path(tmp), args, rule)
    finally:
        stop_process(broker_process)
    timer = results.get("timer")
    firsts = {
        name: sum(r.score.first_complete for r in runs) / max(sum(r.score.windows for r in runs), 1)
        for name, runs in results.items()
    }
    for name, first in firsts.items():
        print(f"{name} rule: first verdicts (revision 0) complete = {first:.3f}")
    if "watermark" in firsts and firsts.get("timer"):
        print(f"watermark / timer, first verdicts complete: {firsts['watermark'] / firsts['timer']:.2f}x")
    if timer is not None:
        print(
            f"baseline (timer rule): windows complete (no hog) = {fraction(timer, False):.3f}, "
            f"(hog) = {fraction(timer, True):.3f}, duplicate actions = {sum(r.duplicates for r in timer)}"
        )
    final = results.get("watermark")
    if final is None:
        print("the watermark rule did not run: the lines below are the timer rule's")
        final = results["timer"]
    elif timer is not None:
        for hog in (False, True):
            base = fraction(timer, hog)
            ratio = f"{fraction(final, hog) / base:.2f}x" if base else "n/a"
            print(f"watermark / timer, complete windows ({'hog' if hog else 'no hog'}): {ratio}")
    print(f"windows complete (no hog) = {fraction(final, False):.3f}")
    print(f"windows complete (hog) = {fraction(final, True):.3f}")
    print(f"duplicate actions = {sum(r.duplicates for r in final)}")


if __name__ == "__main__":
    main()
