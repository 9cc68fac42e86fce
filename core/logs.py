"""How every loopwatch process logs: quiet and true at INFO.

- One line per record: time, level, logger, message (key=value pairs in messages).
- Only loopwatch's own loggers speak at INFO; the libraries under it (kafka-python,
  aiokafka, faust, mode, Evidently, urllib3, ...) log every connection, rebalance step
  and start-up phase at INFO, about 170 lines in the first 25 s of ``loopwatch up``.
  They are held at WARNING unless the level is ``debug``.
- A warning or error that repeats (same logger, level and message template) is shown
  once per :data:`REPEAT_WINDOW_SECONDS`; the repeats are counted and summarised in one line.
  A broker that went away made aiokafka log about 5,000 identical errors in 100 s.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s pid=%(process)d %(message)s"

#: A repeated line is let through once per this many seconds.
REPEAT_WINDOW_SECONDS = 60.0

_MAX_KEYS = 5_000

_active: RepeatFilter | None = None
_flusher: threading.Thread | None = None

# Numbers (offsets, ports, partitions, ids) vary between otherwise identical lines.
_NUMBERS = re.compile(r"\d+")


def configure_logging(level: str) -> RepeatFilter:
    """Log to stderr; loopwatch at ``level``, everything else at WARNING unless ``level`` is debug.

    Returns the handler's :class:`RepeatFilter`, whose :meth:`RepeatFilter.flush`
    writes the summaries of repeats still pending.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    global _active
    repeats = _active = RepeatFilter()
    handler.addFilter(SecretFilter())  # first: a repeat's summary must not carry a secret either
    handler.addFilter(repeats)
    root = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    logging.basicConfig(level=root, handlers=[handler], force=True)
    logging.getLogger("loopwatch").setLevel(numeric)
    global _flusher
    if _flusher is None:
        # Without it, the count of a flood that stopped would wait for its next line.
        _flusher = threading.Thread(target=_flush_periodically, name="log-repeats", daemon=True)
        _flusher.start()
        atexit.register(flush_repeats)
    return repeats


#: Values no log line may show (a Kafka password): see :func:`hide_in_logs`.
_SECRETS: set[str] = set()
HIDDEN = "**********"


def hide_in_logs(secret: str) -> None:
    """Have every line logged from now on show ``secret`` as ``**********``.

    A library at DEBUG may log its whole configuration (kafka-python's admin client
    does, password included); the settings' SecretStr cannot help once a client has it.
    """
    if secret:
        _SECRETS.add(secret)


class SecretFilter(logging.Filter):
    """Masks the values given to :func:`hide_in_logs` in every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message without the secrets (the record is always kept)."""
        if _SECRETS:
            message = record.getMessage()
            hidden = message
            for secret in _SECRETS:
                hidden = hidden.replace(secret, HIDDEN)
            if hidden != message:
                record.msg, record.args = hidden, None
        return True


def flush_repeats() -> None:
    """Write the summaries of repeated lines still pending (before the process exits, say)."""
    if _active is not None:
        _active.flush()


def _flush_periodically() -> None:
    while True:
        time.sleep(REPEAT_WINDOW_SECONDS / 2)
        flush_repeats()


@dataclass
class _Seen:
    shown_at: float
    counted_since: float
    repeats: int = 0


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per ``window`` seconds; counts the rest and summarises them.

    Lines are alike when their logger and level are, and their message template
    (numbers ignored; for loopwatch's own lines, the whole message). The summary
    goes out with the first such line after the window, or from :meth:`flush`
    (every half window, and at exit).
    """

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        self._lock = threading.Lock()  # kafka-python and faust's consumer log from their own threads
        self._summarising = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        """True when the record should be written."""
        if record.levelno < logging.WARNING or getattr(self._summarising, "active", False):
            return True  # INFO lines say what happened once each; floods are warnings and errors
        key = (record.name, record.levelno, self._line_kind(record))
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.shown_at < self.window:
                seen.repeats += 1
                return False
            if len(self._seen) >= _MAX_KEYS:
                self._forget(now)
            self._seen[key] = _Seen(now, now)
        if seen is not None and seen.repeats:
            self._summarise(key, seen.repeats, now - seen.counted_since)
        return True

    @staticmethod
    def _line_kind(record: logging.LogRecord) -> str:
        # loopwatch's own lines each name their condition: alike only when equal.
        # A library's are alike when their templates are, numbers aside.
        if record.name.startswith("loopwatch"):
            return record.getMessage()[:300]
        return _NUMBERS.sub("#", str(record.msg))[:300]

    def _forget(self, now: float) -> None:
        """Drop lines whose window passed without repeats (bounds memory for ever-new messages)."""
        for key in [k for k, s in self._seen.items() if not s.repeats and now - s.shown_at >= self.window]:
            del self._seen[key]

    def flush(self) -> None:
        """Write a summary line for every line that repeated since it was last shown."""
        now = time.monotonic()
        with self._lock:
            pending = [
                (key, seen.repeats, now - seen.counted_since)
                for key, seen in self._seen.items()
                if seen.repeats
            ]
            for key, *_ in pending:
                self._seen[key].repeats = 0
                self._seen[key].counted_since = now
        for key, repeats, seconds in pending:
            self._summarise(key, repeats, seconds)

    def _summarise(self, key: tuple[str, int, str], repeats: int, seconds: float) -> None:
        name, level, template = key
        self._summarising.active = True
        try:
            logging.getLogger(name).log(
                level,
                "%d more like this in %.0fs (each kind of line is shown once per %.0fs): %.150s",
                repeats,
                seconds,
                self.window,
                template,
            )
        finally:
            self._summarising.active = False
