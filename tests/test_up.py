"""`loopwatch up`: broker + worker + metrics in one command; Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from services.broker import free_port

from .helpers import ROOT

pytestmark = pytest.mark.broker


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_up_serves_metrics_and_ctrl_c_leaves_no_process_behind(tmp_path):
    web_port = free_port()
    env = {**os.environ, "LOOPWATCH_WEB_PORT": str(web_port), "LOOPWATCH_DATA_DIR": str(tmp_path)}
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        metrics = ""
        while time.monotonic() < deadline and not metrics:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=2) as r:
                    metrics = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert "loopwatch_events_in" in metrics
        children = _children(up.pid)
        assert len(children) == 2  # the broker and one worker

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert up.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
