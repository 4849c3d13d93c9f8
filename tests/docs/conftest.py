"""What the documentation's code blocks may need: a Redis server and an HTTP server.

The Redis server is the session's test server from ``tests/_redis_fixtures.py``; the HTTP
server (``api_url``) is a small one on loopback, started here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .._redis_fixtures import redis_url

__all__ = ["api_url", "redis_url"]


class _Handler(BaseHTTPRequestHandler):
    """Answers every request with 200 and JSON naming it; ``/status/N`` answers status N.

    A 429 or 503 from ``/status/N`` carries ``Retry-After: 1``, as a rate-limited API's would.
    """

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status = 200
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            status = int(parts[1])
        body = json.dumps({"method": self.command, "path": self.path}).encode()
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def api_url() -> Iterator[str]:
    """The URL of an HTTP server on loopback (see ``_Handler``), for the whole session."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
