"""examples/fastapi_app.py under real uvicorn servers (subprocesses) on loopback, with httpx.

In memory and on a real Valkey server (two server processes sharing the limits), and with
the Valkey server killed: 503 with ``Retry-After: 1`` by default, let through with
``RATEKEEPER_ON_ERROR=allow``.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from .._redis_fixtures import Server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextmanager
def example_server(**env: str) -> Iterator[str]:
    """Start ``uvicorn fastapi_app:app`` on a port the OS picks; yield its base URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(EXAMPLES),
            "fastapi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-access-log",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def drain() -> None:  # keeps reading, so that the server never blocks on its stderr
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                raise RuntimeError(f"uvicorn did not start: {''.join(log)}") from None
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                break
        yield found.group(1)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def check_the_limits(urls: list[str]) -> None:
    """The documented limits, per route and per key; requests alternate between ``urls``."""
    alpha = {"x-api-key": f"alpha-{uuid.uuid4()}"}
    beta = {"x-api-key": f"beta-{uuid.uuid4()}"}
    with httpx.Client() as client:

        def get(i: int, path: str, headers: dict[str, str]) -> httpx.Response:
            return client.get(urls[i % len(urls)] + path, headers=headers)

        def post(i: int, path: str, headers: dict[str, str]) -> httpx.Response:
            return client.post(urls[i % len(urls)] + path, headers=headers)

        items = [get(i, f"/items/{i}", alpha) for i in range(6)]
        other_key = get(0, "/items/1", beta)
        searches = [get(i, "/search?q=ratekeeper", alpha) for i in range(3)]
        uploads = [post(i, p, alpha) for i, p in enumerate(["/photos", "/videos", "/photos"])]
        fourth_upload = post(1, "/videos", alpha)
        health = [get(i, "/health", alpha) for i in range(5)]

    assert [r.status_code for r in items] == [200] * 5 + [429]
    assert items[0].json() == {"item_id": 0}
    assert items[0].headers["ratelimit-policy"] == ('"minute";q=5;w=60, "default";q=100;w=60')
    assert items[0].headers["ratelimit"] == '"minute";r=4;t=12, "default";r=99;t=1'
    refused = items[5]
    assert refused.json() == {"detail": "Too Many Requests", "retry_after": 12}
    assert refused.headers["retry-after"] == "12"
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["ratelimit"].startswith('"minute";r=0;t=12')
    assert other_key.status_code == 200  # each API key has its own buckets

    assert [r.status_code for r in searches] == [200, 200, 429]  # 10 tokens, 5 a search
    assert searches[0].json() == {"results": ["RATEKEEPER"]}
    assert searches[2].json()["retry_after"] == 30

    assert [r.status_code for r in uploads] == [200, 200, 200]
    assert fourth_upload.status_code == 429  # the shared budget, across both routes
    assert '"uploads";q=3;w=60' in fourth_upload.headers["ratelimit-policy"]

    assert {r.status_code for r in health} == {200}
    assert "ratelimit" not in health[0].headers  # exempt


def test_in_memory() -> None:
    with example_server() as url:
        check_the_limits([url])


def test_on_redis_with_two_server_processes(redis_url: str) -> None:
    with ExitStack() as stack:
        urls = [stack.enter_context(example_server(RATEKEEPER_STORAGE=redis_url)) for _ in range(2)]
        check_the_limits(urls)


@pytest.mark.parametrize(
    ("on_error", "status"),
    [("deny", 503), ("allow", 200)],
)
def test_redis_down(own_server: Server, on_error: str, status: int) -> None:
    env = {"RATEKEEPER_STORAGE": own_server.url, "RATEKEEPER_ON_ERROR": on_error}
    headers = {"x-api-key": "alpha"}
    with example_server(**env) as url, httpx.Client(base_url=url, headers=headers) as client:
        assert client.get("/items/1").status_code == 200
        own_server.kill()
        down = [client.get("/items/1"), client.get("/search?q=x"), client.post("/photos")]
        health = client.get("/health")
    assert [r.status_code for r in down] == [status] * 3
    if status == 503:
        for response in down:
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"detail": "Service Unavailable", "retry_after": 1}
    assert health.status_code == 200  # exempt: no limiter asked
