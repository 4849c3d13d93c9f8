"""A real WSGI server (waitress) on a free loopback port, in a thread, for the tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from waitress import wasyncore
from waitress.server import create_server


@contextlib.contextmanager
def serve_wsgi(app: Any, threads: int = 4) -> Iterator[str]:
    """Run ``app`` under waitress on 127.0.0.1 (a port the OS picks); yield its base URL."""
    server: Any = create_server(app, host="127.0.0.1", port=0, threads=threads)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        # Close the sockets in the server's own loop (closing them from here races its
        # select); with nothing left to watch, the loop ends.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        thread.join(10)
        server.task_dispatcher.shutdown()
