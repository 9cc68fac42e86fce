"""A local HTTP server that records the requests it gets and answers with statuses the test chooses."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: The status it was answered with.
    status: int = 0

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class Recorder:
    """What the server got, and the statuses it answers with (the last one repeats)."""

    url: str
    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[Recorded] = field(default_factory=list)
    #: Called with each request before it is answered (e.g. to forward it); returns (status, body) or None.
    respond: Callable[[Recorded], tuple[int, bytes, str] | None] | None = None


@contextmanager
def recording_server(statuses: list[int] | None = None) -> Iterator[Recorder]:
    """Serve on a free port of 127.0.0.1 until the block ends."""
    recorder = Recorder(url="", statuses=list(statuses or [200]))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Recorded(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
            with lock:
                nth = min(len(recorder.requests) + 1, len(recorder.statuses))
                # Known before the request is listed: a test may read the answers while it is in flight.
                request.status = recorder.statuses[nth - 1]
                recorder.requests.append(request)
            answer = recorder.respond(request) if recorder.respond else None
            status = request.status
            status, body, kind = answer or (status, b"{}" if status != 204 else b"", "application/json")
            request.status = status
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
