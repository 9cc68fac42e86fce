"""/health and /metrics while a worker waits for Kafka, before its own web server exists.

The worker's web server (faust's) starts with the app, once the broker has
answered. Until then nothing listened on the web port, so a liveness probe
saw a dead process and restarted it over and over. This small stdlib server
holds the port meanwhile, answers ``/health`` 503 with the reason the last
attempt gave (the same JSON as the worker's), and ``/metrics`` 503 with the
reason as text (a scrape that fails is Prometheus's ``up`` 0: no metrics exist
yet, and a partial page would read as a worker that counted nothing); it
closes the port just before the worker's own server opens it.
"""

from __future__ import annotations

import errno
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core.settings import Settings
from schemas.errors import ConfigError


class WaitingWeb:
    """The web port's placeholder while Kafka does not answer; :meth:`close` hands the port on."""

    def __init__(self, settings: Settings) -> None:
        self.reason = f"waiting for kafka at {settings.kafka_bootstrap}: first attempt under way"
        self._app_id = settings.app_id
        self._bootstrap = settings.kafka_bootstrap
        try:
            self._server = ThreadingHTTPServer((settings.web_host, settings.web_port), self._handler())
        except OSError as exc:
            raise ConfigError(port_problem(settings, exc)) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="waiting-web", daemon=True)
        self._thread.start()

    def waiting(self, problem: str) -> None:
        """Record why the broker does not answer yet (what /health says next)."""
        self.reason = f"kafka at {self._bootstrap} does not answer yet: {problem}"

    def close(self) -> None:
        """Stop answering and free the port for the worker's web server."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def health(self) -> dict[str, Any]:
        """The /health body: the worker's shape, unhealthy, with the reason."""
        return {
            "status": "unhealthy",
            "app_id": self._app_id,
            "assigned_partitions": 0,
            "reason": self.reason,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    self._answer(503, "application/json", json.dumps(web.health()).encode())
                elif path == "/metrics":
                    self._answer(503, "text/plain", f"no metrics yet: {web.reason}\n".encode())
                else:
                    self._answer(404, "text/plain", b"not found\n")

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds is not worth a log line

        return Handler


def port_problem(settings: Settings, exc: OSError) -> str:
    """The one line for a web port that cannot be opened."""
    where = f"port {settings.web_port} on {settings.web_host}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is in use: set LOOPWATCH_WEB_PORT (or stop what listens there)"
    return (
        f"cannot listen on {where} ({exc.strerror or exc}): check LOOPWATCH_WEB_HOST and LOOPWATCH_WEB_PORT"
    )
