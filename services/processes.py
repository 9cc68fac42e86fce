"""Child processes that never outlive the loopwatch process that started them."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from typing import Any


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
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
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        start_new_session=True,
        **popen,
    )


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
