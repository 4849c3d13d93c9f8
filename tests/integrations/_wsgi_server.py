"""A real WSGI server (waitress) on a free loopback port, in a thread or a process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from .._redis_fixtures import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextlib.contextmanager
def serve_wsgi(app: Any, threads: int = 4) -> Iterator[str]:
    """Run ``app`` under waitress on 127.0.0.1 (a port the OS picks); yield its base URL."""
    server: Any = create_server(app, host="127.0.0.1", port=0, threads=threads)
    stop = threading.Event()

    def run() -> None:
        # waitress's own loop, a step at a time, so that it stops when asked and every
        # socket is closed here, in its thread (closing them from another races select).
        while not stop.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, count=1)
        wasyncore.close_all(server._map)
        server.task_dispatcher.shutdown()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop.set()
        thread.join(10)


@contextlib.contextmanager
def run_server(
    folder: Path, app: str, env: dict[str, str] | None = None, threads: int = 4
) -> Iterator[str]:
    """Run ``app`` (``module:attribute``, from ``folder``) under waitress in its own process.

    Yields the base URL once the server answers; stops the process at the end. ``env``
    adds to this process's environment.
    """
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "waitress",
        f"--listen=127.0.0.1:{port}",
        f"--threads={threads}",
        app,
    ]
    process = subprocess.Popen(
        command,
        cwd=folder,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"the server exited ({process.returncode}):\n{output}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start in 30 s") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout:
            process.stdout.close()
