"""The ``requests`` adapter against a real server on loopback; waits on the manual clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from ratekeeper import AcquireTimeout, SyncTokenBucket
from ratekeeper.integrations.httpx import Aimd
from ratekeeper.integrations.requests import RateLimitAdapter, host_of
from ratekeeper.testing import ManualClock

from ._providers import Scripted
from ._server import serve


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[Scripted, str]]:
    app = Scripted()
    with serve(app) as url:
        yield app, url


def session(adapter: RateLimitAdapter) -> requests.Session:
    s = requests.Session()
    s.mount("http://", adapter)
    return s


def test_requests_take_tokens_and_cost(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset()
    clock = ManualClock(auto_advance=True)

    def cost(request: requests.PreparedRequest) -> int:
        return 0 if request.method == "HEAD" else 1 + len(request.body or b"") // 10

    adapter = RateLimitAdapter(rate="10/s", capacity=10, cost=cost, clock=clock)
    with session(adapter) as s:
        assert s.post(url, data=b"x" * 95).status_code == 200  # 10 tokens
        assert s.head(url).status_code == 200  # free
        assert clock.time() == 0.0
        s.get(url)
        assert clock.time() == pytest.approx(0.1)


def test_a_429_pauses_and_is_retried_when_the_body_can_be_sent_again(
    app: tuple[Scripted, str],
) -> None:
    server, url = app
    server.reset([429, 429, 200, 429], {"Retry-After": "2"})
    clock = ManualClock(auto_advance=True)
    adapter = RateLimitAdapter(rate="10/s", retries=3, clock=clock)
    with session(adapter) as s:
        assert s.post(url, data=b"payload").status_code == 200
        assert clock.time() == pytest.approx(4.0, abs=0.11)

        def once() -> Iterator[bytes]:
            yield b"once"

        assert s.post(url, data=once()).status_code == 429  # a generator: not sent twice
    assert server.bodies == [b"payload"] * 3 + [b"once"]
    assert adapter.limited == 3


def test_provider_headers_hold_the_session_to_what_is_left(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset([200], {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "5s"})
    clock = ManualClock(auto_advance=True)
    adapter = RateLimitAdapter(rate="100/s", capacity=10, clock=clock)
    with session(adapter) as s:
        s.get(url)
        s.get(url)  # the last one left
        assert clock.time() < 0.1
        s.get(url)
        assert clock.time() >= 5.0


def test_per_host_and_aimd(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset([429], {"Retry-After": "0"})
    clock = ManualClock(auto_advance=True)
    adapter = RateLimitAdapter(rate=8, per_host=True, aimd=Aimd(1, 8), clock=clock)
    other = url.replace("127.0.0.1", "localhost")
    with session(adapter) as s:
        assert s.get(url).status_code == 429
        assert s.get(other).status_code == 200
    assert set(adapter.buckets()) == {host_of(url), host_of(other)}
    assert adapter.current_rate(host_of(url)) == 4
    assert adapter.current_rate(host_of(other)) == 8


def test_a_timeout_and_a_shared_limiter(app: tuple[Scripted, str]) -> None:
    server, url = app
    server.reset()
    clock = ManualClock()
    shared = SyncTokenBucket("1/minute", 1, clock=clock)
    with session(RateLimitAdapter(limiter=shared, timeout=1.0)) as s:
        s.get(url)
        with pytest.raises(AcquireTimeout):
            s.get(url)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://example.com/x", "example.com"),
        ("https://user:pw@Example.com:8443/x", "example.com:8443"),
        ("http://[::1]:80/", "::1:80"),
        ("http://host:port/", "host:port"),
        ("", ""),
    ],
)
def test_host_of(url: str, host: str) -> None:
    assert host_of(url) == host


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="either rate"):
        RateLimitAdapter()
    with pytest.raises(ValueError, match="retries"):
        RateLimitAdapter(rate=1, retries=-1)
