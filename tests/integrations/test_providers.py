"""Every client integration against fake provider servers that enforce their limits and send
each family's real header names: once a client has seen one answer's headers, it never
receives a 429."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import httpx
import requests

from ratekeeper.integrations.aiohttp import RateLimitMiddleware
from ratekeeper.integrations.httpx import RateLimitTransport, SyncRateLimitTransport
from ratekeeper.integrations.requests import RateLimitAdapter

from ._providers import FAMILIES, Provider
from ._server import serve

LIMIT = 5  # per one-second window, per server
SECONDS = 2.5
WORKERS = 3  # concurrent callers per server: fewer than LIMIT, so even the first wave fits
OPTIONS: dict[str, object] = {"rate": 40, "capacity": 5, "per_host": True}
Log = list[tuple[float, float, int]]  # (sent, answered, status)


@contextlib.contextmanager
def providers() -> Iterator[dict[str, tuple[Provider, str]]]:
    with contextlib.ExitStack() as stack:
        found = {}
        for family in FAMILIES:
            app = Provider(family, LIMIT)
            found[family] = (app, stack.enter_context(serve(app)))
        yield found


def check(servers: dict[str, tuple[Provider, str]], logs: dict[str, Log]) -> None:
    for family, (server, _) in servers.items():
        log = logs[family]
        first_answer = min(answered for _, answered, _ in log)
        late = [status for sent, _, status in log if sent > first_answer]
        assert 429 not in late, (family, late.count(429), len(late))
        assert set(late) == {200}
        # and it does not give up: at least half of what the windows allowed
        assert server.accepted >= LIMIT * (SECONDS - 1) * 0.5, (family, server.accepted)
        assert server.refused == sum(s == 429 for _, _, s in log)


def run_threads(get: Callable[[str], int], urls: dict[str, str]) -> dict[str, Log]:
    logs: dict[str, Log] = {family: [] for family in urls}
    start = time.monotonic()

    def worker(family: str) -> None:
        while time.monotonic() - start < SECONDS:
            sent = time.monotonic()
            status = get(urls[family])
            logs[family].append((sent, time.monotonic(), status))

    threads = [
        threading.Thread(target=worker, args=(family,)) for family in urls for _ in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return logs


async def run_tasks(get: Callable[[str], Awaitable[int]], urls: dict[str, str]) -> dict[str, Log]:
    logs: dict[str, Log] = {family: [] for family in urls}
    start = time.monotonic()

    async def worker(family: str) -> None:
        while time.monotonic() - start < SECONDS:
            sent = time.monotonic()
            status = await get(urls[family])
            logs[family].append((sent, time.monotonic(), status))

    await asyncio.gather(*(worker(family) for family in urls for _ in range(WORKERS)))
    return logs


def test_httpx_sync() -> None:
    transport = SyncRateLimitTransport(**OPTIONS)  # type: ignore[arg-type]
    with providers() as servers, httpx.Client(transport=transport) as client:
        logs = run_threads(
            lambda url: client.get(url).status_code, {f: u for f, (_, u) in servers.items()}
        )
    check(servers, logs)


def test_requests() -> None:
    session = requests.Session()
    session.mount("http://", RateLimitAdapter(**OPTIONS))  # type: ignore[arg-type]
    with providers() as servers, session:
        logs = run_threads(
            lambda url: session.get(url).status_code, {f: u for f, (_, u) in servers.items()}
        )
    check(servers, logs)


async def test_httpx_async() -> None:
    transport = RateLimitTransport(**OPTIONS)  # type: ignore[arg-type]
    with providers() as servers:
        async with httpx.AsyncClient(transport=transport) as client:

            async def get(url: str) -> int:
                return (await client.get(url)).status_code

            logs = await run_tasks(get, {f: u for f, (_, u) in servers.items()})
    check(servers, logs)


async def test_aiohttp() -> None:
    middleware = RateLimitMiddleware(**OPTIONS)  # type: ignore[arg-type]
    with providers() as servers:
        async with aiohttp.ClientSession(middlewares=(middleware,)) as session:

            async def get(url: str) -> int:
                async with session.get(url) as response:
                    await response.read()
                    return response.status

            logs = await run_tasks(get, {f: u for f, (_, u) in servers.items()})
    check(servers, logs)
