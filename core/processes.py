"""Child processes that never outlive the loopwatch process that started them."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from schemas.errors import LoopwatchError


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the child gets SIGTERM when its parent dies, even by kill -9, so
    # `loopwatch up`, the demo and test sessions never leave orphans behind.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a child process tied to this one's lifetime.

    The child gets its own session, so a Ctrl-C in the terminal reaches only the
    parent, which then stops its children in order (workers before the broker
    they commit to).
    """
    return subprocess.Popen(
        command,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
        start_new_session=True,
        **popen,
    )


def spawn_worker(env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``loopwatch worker`` as a child process configured by ``env`` (``LOOPWATCH_*``)."""
    return spawn([sys.executable, "-m", "services.cli", "worker"], env=env, **popen)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Poll a worker's ``/health`` until it answers 200; fail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LoopwatchError(f"the worker exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise LoopwatchError(f"the worker was not healthy within {timeout:.0f}s ({url})")
