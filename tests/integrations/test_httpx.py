"""The httpx transports: header parsing, pauses and AIMD on the manual clock, then a real server
that enforces its own limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratekeeper import AcquireTimeout, SyncTokenBucket, TokenBucket
from ratekeeper._keyed import KeyedLimiter
from ratekeeper.integrations.asgi import RateLimitMiddleware
from ratekeeper.integrations.httpx import (
    Aimd,
    RateLimitTransport,
    SyncRateLimitTransport,
    parse_ratelimit,
    parse_retry_after,
)
from ratekeeper.testing import ManualClock

from ._server import serve

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


# -- reading the server --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        ("120", None, 120.0),
        (" 3 ", None, 3.0),
        ("1.5", None, 1.5),  # not in the RFC, tolerated
        ("0", None, 0.0),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), None, 30.0),
        # measured from the response's Date: the two clocks need not agree
        (
            format_datetime(NOW + timedelta(seconds=30), usegmt=True),
            format_datetime(NOW + timedelta(seconds=20), usegmt=True),
            10.0,
        ),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), None, 0.0),  # past
        ("-5", None, None),
        ("soon", None, None),
        ("", None, None),
        ("1e3", None, None),
        ("Mon, 99 Foo 2026 25:00:00 GMT", None, None),
    ],
)
def test_parse_retry_after(value: str, date: str | None, expected: float | None) -> None:
    result = parse_retry_after(value, date, now=NOW.timestamp())
    assert result == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"default";r=50;t=30', [("default", 50, 30)]),
        ('"burst";r=0;t=1, "daily";r=999;t=3600', [("burst", 0, 1), ("daily", 999, 3600)]),
        ("default;r=0", [("default", 0, None)]),  # a token name, no t
        ('"a";r=1;t=2;pk=:cHsdsRa894==:;acme-x=1', [("a", 1, 2)]),
        ('"a,b";r=3;t=4', [("a,b", 3, 4)]),
        ('"a";r=-1;t=2, "b";r=2;t=x', [("b", 2, None)]),  # malformed pieces are ignored
        ("", []),
        (",,", []),
    ],
)
def test_parse_ratelimit(value: str, expected: list[tuple[str, int | None, int | None]]) -> None:
    assert parse_ratelimit(value) == expected


# -- the sync transport on virtual time ----------------------------------------------------------


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def test_requests_take_tokens() -> None:
    clock = ManualClock(auto_advance=True)
    transport = SyncRateLimitTransport(
        mock(lambda r: httpx.Response(200)), rate="2/s", capacity=1, clock=clock
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(5):
            assert client.get("https://api.example/").status_code == 200
    assert clock.time() == 2.0


def test_cost_per_request() -> None:
    clock = ManualClock(auto_advance=True)

    def cost(request: httpx.Request) -> int:
        return 0 if request.method == "HEAD" else len(request.content) // 10 + 1

    transport = SyncRateLimitTransport(
        mock(lambda r: httpx.Response(200)), rate="10/s", capacity=10, cost=cost, clock=clock
    )
    with httpx.Client(transport=transport) as client:
        client.post("https://x/", content=b"x" * 95)  # 10 tokens
        client.head("https://x/")  # free
        assert clock.time() == 0.0
        client.get("https://x/")
        assert clock.time() == pytest.approx(0.1)
    bad = SyncRateLimitTransport(mock(lambda r: httpx.Response(200)), rate=1, cost=lambda r: -1)
    with pytest.raises(TypeError, match="cost function"), httpx.Client(transport=bad) as client:
        client.get("https://x/")


def test_a_429_with_retry_after_pauses_the_limit() -> None:
    clock = ManualClock(auto_advance=True)
    statuses = iter([429, 200, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses), headers={"Retry-After": "3"})

    transport = SyncRateLimitTransport(mock(handler), rate="10/s", capacity=5, clock=clock)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://x/").status_code == 429
        assert client.get("https://x/").status_code == 200
    assert clock.time() == pytest.approx(3.0)
    assert transport.limited == 1


def test_concurrent_429s_pause_once() -> None:
    clock = ManualClock()
    transport = SyncRateLimitTransport(
        mock(lambda r: httpx.Response(429, headers={"Retry-After": "2"})),
        rate="10/s",
        capacity=5,
        clock=clock,
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://x/")
    governor = transport._governor
    state = governor.host("x")
    for _ in range(4):  # four more answers to requests that were in flight together
        governor.heard(state, 429, {"retry-after": ["2"]}, 0)
    bucket = transport.buckets()["*"]
    assert bucket.full_in() == pytest.approx(2.0 + 0.5, abs=0.11)  # one pause, not five
    assert bucket.available() == pytest.approx(-19, abs=1)


@pytest.mark.parametrize(
    ("status", "headers", "pause"),
    [
        (429, {}, 1.0),  # no Retry-After: default_pause
        (429, {"Retry-After": "soon"}, 1.0),  # malformed: default_pause
        (429, {"Retry-After": "-3"}, 1.0),
        (429, {"Retry-After": "0"}, 0.0),
        (429, {"Retry-After": "86400"}, 60.0),  # capped by max_pause
        (503, {}, 0.0),  # a 503 alone is not a rate signal
        (503, {"Retry-After": "4"}, 4.0),
        (200, {"RateLimit": '"default";r=0;t=5'}, 5.0),  # the quota is spent: wait t
        (200, {"RateLimit": '"default";r=3;t=5'}, 0.0),
        (200, {"RateLimit": '"a";r=2;t=9, "b";r=0;t=4'}, 4.0),
        (200, {"RateLimit-Remaining": "0", "RateLimit-Reset": "7"}, 7.0),  # draft-06 style
        (429, {"Retry-After": "2", "RateLimit": '"d";r=0;t=9'}, 2.0),  # Retry-After wins
        (429, {"RateLimit": '"d";r=0;t=9'}, 9.0),
    ],
)
def test_what_the_server_says(status: int, headers: dict[str, str], pause: float) -> None:
    clock = ManualClock()
    transport = SyncRateLimitTransport(
        mock(lambda r: httpx.Response(status, headers=headers)),
        rate="100/s",
        capacity=1,
        clock=clock,
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://x/")
    next_token = transport.buckets()["*"].full_in()
    assert next_token == pytest.approx(max(pause, 0.01), abs=0.011)


class Unbuffered(httpx.BaseTransport):
    """Like MockTransport, but without reading the request first (as on the wire)."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


def test_retries_after_the_pause_when_the_body_can_be_sent_again() -> None:
    clock = ManualClock(auto_advance=True)
    statuses = iter([429, 429, 200, 429, 200])
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(request.stream, httpx.ByteStream):
            seen.append(request.content)
        else:
            seen.append(b"".join(request.stream))  # type: ignore[arg-type]
        return httpx.Response(next(statuses), headers={"Retry-After": "1"})

    transport = SyncRateLimitTransport(Unbuffered(handler), rate="10/s", retries=3, clock=clock)
    with httpx.Client(transport=transport) as client:
        assert client.post("https://x/", content=b"payload").status_code == 200
        assert clock.time() == pytest.approx(2.0, abs=0.11)

        def stream() -> object:
            yield b"once"

        response = client.post("https://x/", content=stream())  # type: ignore[arg-type]
        assert response.status_code == 429  # a generator body cannot be sent twice
    assert seen == [b"payload"] * 3 + [b"once"]


def test_aimd_halves_once_per_round_and_climbs_back() -> None:
    clock = ManualClock(auto_advance=True)
    answers: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answers.pop(0) if answers else 200, headers={"Retry-After": "0"})

    aimd = Aimd(min_rate=2, max_rate=40, decrease=0.5, increase=10)
    transport = SyncRateLimitTransport(mock(handler), rate=40, capacity=1, aimd=aimd, clock=clock)
    governor = transport._governor
    state = governor.host("x")
    sent = governor.now_ns()
    clock.advance(0.01)
    for _ in range(3):  # three 429s for requests sent together: one decrease
        governor.heard(state, 429, {"retry-after": ["0"]}, sent)
    assert transport.current_rate() == 20
    assert transport.buckets()["*"].rate.per_second == 20
    answers.extend([429, 429])
    with httpx.Client(transport=transport) as client:
        client.get("https://x/")  # sent after the decrease: halves again
        client.get("https://x/")  # and again
        assert transport.current_rate() == 5
        for _ in range(60):
            client.get("https://x/")
    assert 5 < transport.current_rate() <= 40
    assert transport.buckets()["*"].rate.per_second == pytest.approx(
        transport.current_rate(), rel=0.03
    )
    for _ in range(2000):
        governor.heard(state, 200, {}, governor.now_ns())
    assert transport.current_rate() == 40  # never past max_rate


def test_per_host_buckets() -> None:
    clock = ManualClock(auto_advance=True)
    transport = SyncRateLimitTransport(
        mock(lambda r: httpx.Response(429 if r.url.host == "slow" else 200)),
        rate="1/s",
        per_host=True,
        aimd=Aimd(0.5, 1),
        clock=clock,
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://slow/")
        client.get("https://fast:8443/")
        assert clock.time() == 0.0  # separate buckets
    assert set(transport.buckets()) == {"slow", "fast:8443"}
    assert transport.current_rate("slow") == 0.5
    assert transport.current_rate("fast:8443") == 1.0
    with pytest.raises(ValueError, match="name the host"):
        transport.current_rate()


def test_a_timeout_that_cannot_be_met_raises_at_once() -> None:
    clock = ManualClock()
    transport = SyncRateLimitTransport(
        mock(lambda r: httpx.Response(200)), rate="1/minute", capacity=1, timeout=1.0, clock=clock
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://x/")
        with pytest.raises(AcquireTimeout):
            client.get("https://x/")


def test_a_shared_limiter() -> None:
    clock = ManualClock(auto_advance=True)
    shared = SyncTokenBucket("2/s", 1, clock=clock)
    one = SyncRateLimitTransport(mock(lambda r: httpx.Response(200)), limiter=shared)
    two = SyncRateLimitTransport(mock(lambda r: httpx.Response(200)), limiter=shared)
    with httpx.Client(transport=one) as a, httpx.Client(transport=two) as b:
        for _ in range(2):
            a.get("https://x/")
            b.get("https://x/")
    assert clock.time() == 1.5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, "either rate"),
        ({"rate": 1, "limiter": SyncTokenBucket(1)}, TypeError, "either rate"),
        ({"limiter": SyncTokenBucket(1), "per_host": True}, TypeError, "per_host"),
        ({"rate": 1, "cost": -1}, TypeError, "cost"),
        ({"rate": 1, "retries": -1}, ValueError, "retries"),
        ({"rate": 1, "max_pause": float("inf")}, ValueError, "max_pause"),
        ({"rate": 1, "default_pause": "1"}, TypeError, "default_pause"),
        ({"rate": 1, "aimd": (1, 2)}, TypeError, "Aimd"),
        ({"rate": "fast"}, ValueError, "cannot read the rate"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SyncRateLimitTransport(mock(lambda r: httpx.Response(200)), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 1), "min_rate"),
        ((2, 1), "min_rate"),
        ((1, 2, 1.0), "decrease"),
        ((1, 2, 0.5, -1), "increase"),
        ((1, float("nan")), "finite"),
    ],
)
def test_bad_aimd(args: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Aimd(*args)


# -- the async transport -------------------------------------------------------------------------


async def test_async_transport_pauses_waiters_too() -> None:
    clock = ManualClock()
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(clock.time())
        status = 429 if len(calls) == 1 else 200
        return httpx.Response(status, headers={"Retry-After": "2"})

    transport = RateLimitTransport(mock(handler), rate="10/s", capacity=1, clock=clock)
    async with httpx.AsyncClient(transport=transport) as client:
        first = await client.get("https://x/")
        tasks = [asyncio.create_task(client.get("https://x/")) for _ in range(3)]
        await clock.sleep(5)
        responses = await asyncio.gather(*tasks)
    assert first.status_code == 429
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert calls == [0.0, pytest.approx(2.0), pytest.approx(2.1), pytest.approx(2.2)]


async def test_async_transport_retries() -> None:
    clock = ManualClock()
    statuses = iter([429, 200])
    transport = RateLimitTransport(
        mock(lambda r: httpx.Response(next(statuses), headers={"Retry-After": "1"})),
        rate="10/s",
        retries=1,
        clock=clock,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        task = asyncio.create_task(client.get("https://x/"))
        await clock.sleep(1.2)
        assert (await task).status_code == 200
    assert isinstance(transport.buckets()["*"], TokenBucket)


# -- against a real server that enforces its own limit ------------------------------------------


def limited_server(rate: str, capacity: int, **kwargs: object) -> Starlette:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(
        RateLimitMiddleware,
        limiter=KeyedLimiter(rate, capacity),
        key=lambda scope: "everyone",
        **kwargs,
    )
    return app


async def test_client_converges_below_the_server_limit() -> None:
    """A client twice too fast, with AIMD: one wave of 429s, then it stays under 20/s."""
    server_rate = 20
    transport = RateLimitTransport(
        rate=40, capacity=5, aimd=Aimd(min_rate=2, max_rate=40, decrease=0.5, increase=3)
    )
    log: list[tuple[float, float, int]] = []  # (sent, answered, status)
    with serve(limited_server(f"{server_rate}/s", 5)) as url:
        async with httpx.AsyncClient(base_url=url, transport=transport) as client:
            start = time.monotonic()

            async def worker() -> None:
                while time.monotonic() - start < 4.0:
                    sent = time.monotonic() - start
                    status = (await client.get("/")).status_code
                    log.append((sent, time.monotonic() - start, status))

            await asyncio.gather(*(worker() for _ in range(8)))
    statuses = [status for _, _, status in log]
    first_429 = statuses.index(429)
    after_first_wave = [s for sent, _, s in log if sent > log[first_429][1] + 0.05]
    refused_later = after_first_wave.count(429)
    assert refused_later <= 0.05 * len(after_first_wave) + 5, (refused_later, len(log))
    late = [s for sent, _, s in log if sent >= 2.0]
    accepted_late = late.count(200) / 2.0
    assert len(late) / 2.0 <= server_rate * 1.1  # the client's own rate, not just the server's
    assert accepted_late >= server_rate * 0.25, accepted_late  # and it does not give up
    assert transport.limited >= 1


def test_sync_client_against_a_real_server() -> None:
    transport = SyncRateLimitTransport(rate=50, capacity=1, retries=3)
    with (
        serve(limited_server("10/s", 2)) as url,
        httpx.Client(base_url=url, transport=transport) as client,
    ):
        statuses = [client.get("/").status_code for _ in range(6)]
    assert statuses == [200] * 6  # 429s were waited out and retried
    assert transport.limited >= 1
