"""``loopwatch console``: read-only web pages and a JSON API over the monitoring history and datasets.

``reader`` opens the Delta tables (only the partitions a page shows),
``views``, ``segment`` and ``datasets`` build each page's typed model (``incidents``: what
followed each rollback and what the policy did not do), ``app`` serves
them as HTML and JSON, ``server`` binds it (loopback unless a token is set).
"""

from services.console.app import Console, create_app
from services.console.server import build_console, check_bind, serve

__all__ = ["Console", "build_console", "check_bind", "create_app", "serve"]
