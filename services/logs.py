"""How every loopwatch process logs."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """One line per record: time, level, logger, message (key=value pairs in messages)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s pid=%(process)d %(message)s",
    )
