"""A worker killed by ``kill -9`` leaves no slow-detector child nor its resource tracker (trial 17a, 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.processes import spawn

from .helpers import process_alive, wait_until

ROOT = Path(__file__).resolve().parent.parent

# A worker-like parent: it starts the child as the detect stage does (the first slow job), says
# the child's and the resource tracker's pids, and waits to be killed. "ready" waits until the
# child has started (its initializer ran); "starting" is killed while the child still imports.
PARENT = """
import os, signal, sys
from multiprocessing import resource_tracker
from streams.slow_detectors import SlowDetectors
slow = SlowDetectors([], alpha=0.05, log_level="warning")
job = slow._pool.submit(os.getpid)
if sys.argv[1] == "ready":
    job.result(timeout=60)
print(*slow._pool._processes, resource_tracker._resource_tracker._pid, flush=True)
signal.pause()
"""


@pytest.mark.parametrize("child", ["starting", "ready"])
def test_the_child_and_its_resource_tracker_exit_when_the_worker_is_killed(child: str) -> None:
    parent = spawn([sys.executable, "-c", PARENT, child], cwd=ROOT, stdout=subprocess.PIPE)
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().decode()
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2, f"the parent said {line!r}"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        wait_until(
            lambda: not any(process_alive(pid) for pid in pids),
            20,
            "the slow-detector child or its resource tracker outlived the killed worker",
            detail=lambda: f"alive: {[pid for pid in pids if process_alive(pid)]}",
        )
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)  # a failed run leaves no orphan either
