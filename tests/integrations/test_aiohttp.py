"""The aiohttp client middleware against a real server on loopback (real time, short waits)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from ratekeeper import AcquireTimeout, TokenBucket
from ratekeeper.integrations.aiohttp import RateLimitMiddleware
from ratekeeper.integrations.httpx import Aimd

from ._providers import Scripted
from ._server import serve


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[Scripted, str]]:
    app = Scripted()
    with serve(app) as url:
        yield app, url


async def statuses(
    middleware: RateLimitMiddleware, *requests: tuple[str, str, object]
) -> list[int]:
    found = []
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        for method, url, data in requests:
            async with session.request(method, url, data=data) as response:
                await response.read()
                found.append(response.status)
    return found


async def test_a_429_pauses_and_is_retried_when_the_payload_can_be_sent_again(
    app: tuple[Scripted, str],
) -> None:
    server, url = app
    server.reset([429, 200, 429], {"Retry-After": "0.3"})
    middleware = RateLimitMiddleware(rate="100/s", retries=2)

    async def once() -> AsyncIterator[bytes]:
        yield b"once"

    start = time.monotonic()
    assert await statuses(middleware, ("POST", url, b"payload")) == [200]
    assert time.monotonic() - start >= 0.29
    assert await statuses(middleware, ("POST", url, once())) == [429]  # not sent twice
    assert server.bodies == [b"payload", b"payload", b"once"]
    assert middleware.limited == 2


async def test_costs_and_provider_headers(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset([], {"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "400ms"})

    def cost(request: aiohttp.ClientRequest) -> int:
        return 0 if request.method == "HEAD" else 1

    middleware = RateLimitMiddleware(rate="100/s", capacity=10, cost=cost)
    assert await statuses(middleware, ("GET", url, None), ("GET", url, None)) == [200, 200]
    # The answers say 2 are left in a window ending 400 ms after each: the two requests
    # sent since count against them (a HEAD too, though it takes no tokens), so the third
    # GET waits for the reset.
    answered = time.monotonic()
    await statuses(middleware, ("HEAD", url, None), ("GET", url, None), ("GET", url, None))
    # (0.4 s from the second answer, less the closing of the first session; not waiting at
    # all would take a few milliseconds)
    assert time.monotonic() - answered >= 0.3
    assert middleware.limited == 0


async def test_per_host_and_aimd(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset([429], {"Retry-After": "0"})
    middleware = RateLimitMiddleware(rate=8, per_host=True, aimd=Aimd(1, 8))
    other = url.replace("127.0.0.1", "localhost")
    assert await statuses(middleware, ("GET", url, None), ("GET", other, None)) == [429, 200]
    port = url.rsplit(":", 1)[1]
    assert set(middleware.buckets()) == {f"127.0.0.1:{port}", f"localhost:{port}"}
    assert middleware.current_rate(f"127.0.0.1:{port}") == 4
    assert middleware.current_rate(f"localhost:{port}") == 8


async def test_a_timeout_with_a_shared_limiter(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset()
    middleware = RateLimitMiddleware(limiter=TokenBucket("1/minute", 1), timeout=1.0)
    with pytest.raises(AcquireTimeout):
        await statuses(middleware, ("GET", url, None), ("GET", url, None))
    assert len(server.bodies) == 1
