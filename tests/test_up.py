"""`loopwatch up`: broker + worker + metrics in one command; Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from services.broker import free_port

from .helpers import ROOT, process_alive, wait_until

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


def _metrics(web_port: int) -> str:
    """The /metrics page ('' while it does not answer)."""
    return _get(f"http://127.0.0.1:{web_port}/metrics")


def _get(url: str) -> str:
    """The body at ``url`` ('' while it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def test_up_serves_metrics_and_ctrl_c_leaves_no_process_behind(tmp_path):
    web_port, console_port = free_port(), free_port()
    env = {**os.environ, "LOOPWATCH_WEB_PORT": str(web_port), "LOOPWATCH_DATA_DIR": str(tmp_path)}
    env["LOOPWATCH_CONSOLE_PORT"] = str(console_port)
    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        metrics = wait_until(lambda: _metrics(web_port), 90, "/metrics never answered")
        assert "loopwatch_events_in" in metrics
        overview = wait_until(
            lambda: _get(f"http://127.0.0.1:{console_port}/api/overview"), 60, "the console never answered"
        )
        assert '"models":[]' in overview  # no history written yet: an empty overview, not an error
        children = _children(up.pid)
        assert len(children) == 3  # the broker, one worker and the console

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert up.wait(timeout=60) == 0
        # `up` waits for its children before it exits: none may be running now.
        assert not [pid for pid in children if process_alive(pid)]
        # The log says it stopped, and nothing went wrong on the way (trial 12u: it ended at
        # "SIGTERM: stopping"; 12t: a "leaked semaphore" warning).
        said = log.read_text()
        assert "stopped: worker 0 exited with 0; the console and the broker too" in said
        assert "Traceback" not in said and "Warning" not in said
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
