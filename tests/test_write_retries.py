"""Delta writes retried after a conflict with another worker's commit (two workers, one dataset folder)."""

from __future__ import annotations

import logging

import pytest

from curation import store
from curation.store import with_retries


class _Conflict(Exception):
    pass


def test_a_conflicting_write_is_retried_with_jittered_pauses_and_one_line_per_retry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(store.time, "sleep", pauses.append)
    failures = iter([_Conflict("Transaction failed: concurrent transaction")] * 6)

    def write() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "written"

    with caplog.at_level(logging.WARNING, logger=store.log.name):
        assert with_retries(write, "dataset write") == "written"
    assert len(pauses) == 6 and all(0.2 <= p <= 5.0 for p in pauses)
    assert max(pauses) >= 2.5  # the pause grew: not six quick retries into the same conflict
    lines = [r for r in caplog.records if "dataset write failed" in r.getMessage()]
    assert len(lines) == 6 and all(r.exc_info is None for r in lines)  # one line each, no traceback
    assert "concurrent transaction" in lines[0].getMessage()


def test_a_write_that_keeps_failing_raises_after_its_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(store.time, "sleep", pauses.append)

    def write() -> None:
        raise _Conflict("still conflicting")

    with pytest.raises(_Conflict):
        with_retries(write, "history write", attempts=4)
    assert len(pauses) == 3
