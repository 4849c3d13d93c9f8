"""The httpx transports under httpx2 clients: the current OpenAI and Anthropic SDKs are built
on httpx2, a fork of httpx with the same transport API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import openai
import pytest

from ratekeeper.integrations.httpx import RateLimitTransport, SyncRateLimitTransport

from ._providers import FakeLLM, Scripted
from ._server import serve


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[Scripted, str]]:
    app = Scripted()
    with serve(app) as url:
        yield app, url


async def test_an_async_httpx2_client_is_limited_and_retried(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset([429], {"Retry-After": "0.2"})
    transport = RateLimitTransport(httpx2.AsyncHTTPTransport(), rate=100, retries=1)
    async with httpx2.AsyncClient(transport=transport) as client:  # type: ignore[arg-type]
        response = await client.post(url, content=b"payload")
    assert response.status_code == 200
    assert server.bodies == [b"payload", b"payload"]  # its body was sent again
    assert transport.limited == 1


def test_a_sync_httpx2_client_is_limited_and_retried(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset([429], {"Retry-After": "0.2"})
    transport = SyncRateLimitTransport(httpx2.HTTPTransport(), rate=100, retries=1)
    with httpx2.Client(transport=transport) as client:  # type: ignore[arg-type]
        assert client.post(url, content=b"payload").status_code == 200
    assert server.bodies == [b"payload", b"payload"]


async def test_the_openai_sdk_through_the_transport() -> None:
    """The SDK's own client class with the transport: OpenAI's headers keep a client that is
    configured ten times too fast from any 429 (the SDK's retries are off)."""
    app = FakeLLM(requests=(6, 4.0), tokens=(100_000, 100_000.0))
    transport = RateLimitTransport(httpx2.AsyncHTTPTransport(), rate=40, capacity=5)
    gate = asyncio.Semaphore(3)
    with serve(app) as url:
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1",
            api_key="sk-test",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport),  # type: ignore[arg-type]
        ) as client:

            async def one() -> None:
                async with gate:
                    await client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )

            await asyncio.gather(*(one() for _ in range(12)))
    assert app.served["openai"] == 12
    assert app.refused["openai"] == 0
