"""A crashed worker ends at once, non-zero, with one line saying what crashed; `loopwatch up` restarts it.

faust's "We experienced a crash!" used to come 17 s to over 2.5 min after the
crash (its shutdown waited on the work still under way), so a supervisor that
restarts on exit could not restart the worker meanwhile (issue 17).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from core.settings import Settings, Topics
from services.broker import free_port
from services.replay import Replayer
from services.worker import EXIT_CRASHED, crash_line
from streams.runtime import Stage

from .helpers import ROOT, wait_until
from .test_up import _get

#: How long after the crash the worker may take to be gone (it exits in the same turn of its loop).
EXIT_DEADLINE_SECONDS = 5

_CRASH_LINE = re.compile(r"level=CRITICAL logger=loopwatch\.worker pid=(\d+) (the worker crashed.*)")


class _Failing(Stage):
    name = "failing"

    def write(self) -> None:
        _raise_deep(OSError("the disk is full:\n  /var/lib/loopwatch"))


def _raise_deep(error: Exception) -> None:
    raise error


def _crash_of(call: Any) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def test_the_crash_line_names_the_stage_the_exception_on_one_line_and_where_it_was_raised() -> None:
    stage = _Failing(cast(Any, None))
    line = crash_line(_crash_of(stage.write))
    raised_at = _raise_deep.__code__.co_firstlineno + 1
    assert line == (
        "the worker crashed in the failing stage: OSError: the disk is full: /var/lib/loopwatch"
        f" (raised at tests/test_crash_exit.py:{raised_at}); exiting with code {EXIT_CRASHED}"
    )


def test_the_crash_line_of_a_library_error_outside_any_stage_points_at_the_last_loopwatch_frame() -> None:
    def parse() -> None:
        import json

        json.loads("{" + "x" * 400)

    line = crash_line(_crash_of(parse))
    assert line.startswith("the worker crashed: JSONDecodeError: Expecting property name")
    # Where loopwatch's code called the library, not the json module's own frame.
    assert f"(raised at tests/test_crash_exit.py:{parse.__code__.co_firstlineno + 3})" in line
    assert line.endswith(f"; exiting with code {EXIT_CRASHED}")


def test_a_long_message_is_cut() -> None:
    line = crash_line(_crash_of(lambda: _raise_deep(ValueError("y" * 1000))))
    assert "y" * 300 + "..." in line
    assert "y" * 301 not in line


def _starts(log: str) -> list[str]:
    """The pids of the workers that started, in order."""
    return re.findall(r"logger=loopwatch\.worker pid=(\d+) starting worker", log)


@pytest.mark.broker
def test_a_crashed_worker_exits_at_once_with_one_line_and_up_restarts_it(tmp_path: Path) -> None:
    # The history tables cannot be created under a file: the history stage's first write fails
    # (after its retries) and crashes the worker. Nothing but a setting makes it fail.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    broker_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "LOOPWATCH_WEB_PORT": str(web_port),
        "LOOPWATCH_CONSOLE_PORT": str(free_port()),
        "LOOPWATCH_DATA_DIR": str(tmp_path / "data"),
        "LOOPWATCH_HISTORY_ROOT": str(blocker / "history"),
        "LOOPWATCH_LOG_LEVEL": "info",
        **{f"LOOPWATCH_{stage}": "false" for stage in ("DETECTION", "CURATION", "DECIDE")},
    }
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", "--port", str(broker_port)],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def log() -> str:
        return log_path.read_text(errors="replace")

    try:
        wait_until(
            lambda: '"ok"' in _get(f"http://127.0.0.1:{web_port}/health"),
            90,
            "the worker never became healthy",
            detail=lambda: log()[-3000:],
        )
        (first,) = _starts(log())
        replayer = Replayer(Settings(kafka_bootstrap=f"127.0.0.1:{broker_port}"))

        def malformed_traffic_until_the_crash() -> bool:
            # Live traffic: the stages still have work queued and under way when the crash comes.
            replayer.send(Topics().inference, b"{not json")
            replayer.flush()
            return "Crashed reason=" in log()

        wait_until(
            malformed_traffic_until_the_crash, 60, "the worker did not crash", detail=lambda: log()[-3000:]
        )
        replayer.close()
        exited = f"worker 0 exited with code {EXIT_CRASHED}; restarting"
        wait_until(
            lambda: exited in log(),
            EXIT_DEADLINE_SECONDS,
            "the crashed worker did not exit at once with its code",
            detail=lambda: log()[-5000:],
        )
        crashed = _CRASH_LINE.findall(log())
        assert len(crashed) == 1, crashed  # one line, by the worker that crashed
        pid, line = crashed[0]
        assert pid == first
        assert re.fullmatch(
            "the worker crashed in the history stage: TableNotFoundError: "
            rf".*{re.escape(str(blocker))}/history.*"
            rf" \(raised at \S+:\d+\); exiting with code {EXIT_CRASHED}",
            line,
        ), line
        # What faust would have said at the end of a long shutdown is never reached.
        assert "We experienced a crash" not in log()

        restarted = wait_until(
            lambda: _starts(log())[1:], 30, "`up` did not restart the worker", detail=lambda: log()[-3000:]
        )
        assert restarted[0] != first
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
