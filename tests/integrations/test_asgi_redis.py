"""The ASGI middleware on Redis: real uvicorn servers, a real valkey-server, httpx over loopback.

``RateLimitMiddleware(limiter=KeyedLimiter(backend=RedisKeyedBackend(...)))`` in Starlette and
FastAPI apps: the same responses and headers as in memory, limits shared by two servers (as
by two worker processes), and 503 or a pass when the Redis server is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratekeeper._keyed import KeyedLimiter, Limit
from ratekeeper.integrations.asgi import RateLimitMiddleware, header_key
from ratekeeper.redis import RedisKeyedBackend

from .._redis_fixtures import Server
from ._server import serve


class Served:
    """An app and its Redis backend; remembers the server's event loop to close it there."""

    def __init__(self, app: Any, backend: RedisKeyedBackend) -> None:
        self.app = app
        self.backend = backend
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def close(self) -> None:
        """Close the backend's client in the loop its connections belong to."""
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self.backend.aclose(), self.loop).result(5)


def on_redis(url: str, limits: dict[str, Limit], prefix: str | None = None) -> RedisKeyedBackend:
    """A backend on the server at ``url``, with keys no other test uses (or ``prefix``)."""
    prefix = prefix or f"asgi{uuid.uuid4().hex[:10]}:"
    return RedisKeyedBackend(url, limits, prefix=prefix, timeout=0.3, retry_interval=0.1)


def starlette_app(backend: RedisKeyedBackend, **middleware: Any) -> Served:
    """A Starlette app limited per key by ``backend``."""

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello), Route("/health", hello)])
    app.add_middleware(RateLimitMiddleware, limiter=KeyedLimiter(backend=backend), **middleware)
    return Served(app, backend)


@contextmanager
def serving(*apps: Served) -> Iterator[list[str]]:
    """Serve each app under its own uvicorn server; yield their base URLs."""
    with ExitStack() as stack:
        urls = [stack.enter_context(serve(app)) for app in apps]
        try:
            yield urls
        finally:
            for app in apps:
                app.close()


async def test_429_with_retry_after_and_ratelimit_headers_after_the_burst(redis_url: str) -> None:
    backend = on_redis(redis_url, {"default": Limit("3/minute", 3)})
    app = starlette_app(backend, exempt=["/health"], headers=True)
    with serving(app) as (url,):
        async with httpx.AsyncClient(base_url=url) as client:
            responses = [await client.get("/") for _ in range(5)]
            health = await client.get("/health")
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert responses[0].text == "hello"
    assert responses[0].headers["ratelimit"] == '"default";r=2;t=20'
    assert responses[0].headers["ratelimit-policy"] == '"default";q=3;w=60'
    refused = responses[3]
    assert refused.json() == {"detail": "Too Many Requests", "retry_after": 20}
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["ratelimit"] == '"default";r=0;t=20'
    assert health.status_code == 200 and "ratelimit" not in health.headers


async def test_two_servers_share_each_keys_limit(redis_url: str) -> None:
    """Two servers (as two worker processes) on one prefix: one limit per API key."""
    prefix = f"asgi{uuid.uuid4().hex[:10]}:"
    limits = {"default": Limit("2/minute", 2)}
    apps = [
        starlette_app(on_redis(redis_url, limits, prefix), key=header_key("x-api-key"))
        for _ in "ab"
    ]
    with serving(*apps) as urls:
        async with httpx.AsyncClient() as client:
            alpha = [
                (await client.get(url, headers={"x-api-key": "alpha"})).status_code
                for url in urls * 2
            ]
            beta = [
                (await client.get(url, headers={"x-api-key": "beta"})).status_code for url in urls
            ]
    assert alpha == [200, 200, 429, 429]  # 2 per key across both servers
    assert beta == [200, 200]  # per-key isolation


async def test_fastapi_app_with_composite_limits_and_route_costs(redis_url: str) -> None:
    api = FastAPI()

    @api.get("/items/{item}")
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    @api.get("/export")
    async def export() -> dict[str, str]:
        return {"export": "ok"}

    backend = on_redis(redis_url, {"minute": Limit("2/minute", 2), "hour": Limit("6/hour", 6)})
    api.add_middleware(
        RateLimitMiddleware,
        limiter=KeyedLimiter(backend=backend),
        key=header_key("x-api-key", fallback=None),
        costs={"/export": {"hour": 4}},  # an export spends only the hourly budget
        headers=True,
    )
    headers = {"x-api-key": "alpha"}
    with serving(Served(api, backend)) as (url,):
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            items = [await client.get(f"/items/{i}") for i in range(3)]
            export = await client.get("/export")
            again = await client.get("/export")
            other = await client.get("/items/7", headers={"x-api-key": "beta"})
    assert [r.status_code for r in items] == [200, 200, 429]
    assert items[0].json() == {"item": 0}
    assert items[0].headers["ratelimit-policy"] == '"minute";q=2;w=60, "hour";q=6;w=3600'
    assert items[0].headers["ratelimit"] == '"minute";r=1;t=30, "hour";r=5;t=600'
    # The export took nothing from "minute", whose state came back in the same round trip.
    assert export.status_code == 200
    assert export.headers["ratelimit"] == '"minute";r=0;t=60, "hour";r=0;t=3600'
    assert again.status_code == 429
    assert other.json() == {"item": 7}


async def test_requests_wait_their_turn_within_max_wait(redis_url: str) -> None:
    app = starlette_app(on_redis(redis_url, {"default": Limit("20/s", 1)}), max_wait=1.0)
    with serving(app) as (url,):
        async with httpx.AsyncClient(base_url=url) as client:
            start = time.monotonic()
            responses = await asyncio.gather(*(client.get("/") for _ in range(6)))
            elapsed = time.monotonic() - start
    assert [r.status_code for r in responses] == [200] * 6
    assert 5 / 20 - 0.02 <= elapsed < 2.0  # slots booked at the server, slept locally


@pytest.mark.parametrize(
    "policy",
    [
        ("deny", "closed", 503, "answering 503"),
        ("allow", "closed", 200, "letting the request through"),
        ("deny", "open", 200, None),  # the backend fails open: no error reaches the middleware
    ],
)
async def test_redis_down(
    own_server: Server, caplog: pytest.LogCaptureFixture, policy: tuple[str, str, int, str | None]
) -> None:
    on_error, on_failure, status, logged = policy
    backend = RedisKeyedBackend(
        own_server.url,
        {"default": Limit("1/minute", 1)},
        timeout=0.2,
        retry_interval=0.1,
        on_failure=on_failure,  # type: ignore[arg-type]
    )
    app = starlette_app(backend, on_error=on_error)
    with serving(app) as (url,), caplog.at_level(logging.ERROR, logger="ratekeeper.asgi"):
        async with httpx.AsyncClient(base_url=url) as client:
            assert [(await client.get("/")).status_code for _ in range(2)] == [200, 429]
            own_server.kill()
            down = await client.get("/")
    assert down.status_code == status
    if status == 503:
        assert down.headers["retry-after"] == "1"
    if logged is None:
        assert not caplog.records
    else:
        assert logged in caplog.text
        assert f"127.0.0.1:{own_server.port}" in caplog.text  # which server, and why
