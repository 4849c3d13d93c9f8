"""LLMLimiter: estimate, call and settle, and what provider headers do to it (manual clock)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from ratekeeper import AcquireTimeout, CompositeLimiter, Limit
from ratekeeper.llm import LLMLimiter, SyncLLMLimiter, estimate_tokens
from ratekeeper.testing import ManualClock


def llm(clock: ManualClock, rpm: int = 60, tpm: int = 6000) -> LLMLimiter:
    return LLMLimiter(requests_per_minute=rpm, tokens_per_minute=tpm, clock=clock)


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "expected"),
    [
        ("", 0, 0),
        ("abcd" * 10, 0, 10),
        ("abc", 100, 101),
        ([{"role": "user", "content": "abcd" * 5}], 0, 5 + 4),
        ([{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}], 10, 2 + 4 + 10),
        ([], 7, 7),
        ([{"role": "user", "content": [{"type": "image"}, "not a part"]}], 0, 4),
    ],
)
def test_estimate(prompt: object, max_tokens: int, expected: int) -> None:
    assert estimate_tokens(prompt, max_tokens) == expected  # type: ignore[arg-type]
    assert LLMLimiter.estimate(prompt, max_tokens) == expected  # type: ignore[arg-type]


def test_estimate_refuses_what_is_not_a_prompt() -> None:
    with pytest.raises(TypeError, match="mapping"):
        estimate_tokens(["hello"])  # type: ignore[list-item]


async def test_a_call_is_settled_with_what_the_reply_used() -> None:
    clock = ManualClock()
    limiter = llm(clock)
    async with limiter.call(1000) as call:
        call.used(400)  # 600 come back
    assert (await limiter.limiter.available()) == {"requests": 59, "tokens": 5600}
    async with limiter.call(500) as call:
        call.used(900)  # 400 more are charged
    assert (await limiter.limiter.available()) == {"requests": 58, "tokens": 4700}
    with pytest.raises(RuntimeError):
        async with limiter.call(100):
            raise RuntimeError("the call failed before its reply")
    # no usage reported: the estimate stands (the provider may have counted it)
    assert (await limiter.limiter.available())["tokens"] == 4600
    with pytest.raises(TypeError):
        limiter.call(1).used(-1)


async def test_calls_wait_for_both_limits() -> None:
    clock = ManualClock()
    limiter = llm(clock, rpm=60, tpm=600)  # 1 request/s, 10 tokens/s
    async with limiter.call(600):
        pass
    task = asyncio.create_task(limiter.acquire(100))
    await clock.sleep(9.9)
    assert not task.done()  # tokens: 10 s for 100
    await clock.sleep(0.2)
    await task
    with pytest.raises(AcquireTimeout):
        await limiter.acquire(600, timeout=1.0)


async def test_openai_headers_lower_the_limits_to_what_is_left() -> None:
    clock = ManualClock()
    limiter = llm(clock, rpm=600, tpm=60_000)  # the client thinks it has plenty
    headers = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "700ms",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "200",
        "x-ratelimit-reset-tokens": "800ms",
    }
    await limiter.observe(200, headers)
    available = await limiter.limiter.available()
    # requests: at most 3 now, and no more than the limit of 10 by the reset (10 - 10/s * 0.7)
    assert available["requests"] == 3
    # tokens: at most 200 now, and 1000 by the reset: 1000 - 1000/s * 0.8 = 200
    assert available["tokens"] == 200


async def test_a_slower_provider_rate_is_followed_and_never_exceeded_upwards() -> None:
    clock = ManualClock()
    limiter = llm(clock, rpm=600, tpm=60_000)  # 10 requests/s configured
    # 10 requests missing, back in 5 s: the provider refills 2 a second
    headers = {"x-ratelimit-limit-requests": "30", "x-ratelimit-remaining-requests": "20"}
    await limiter.observe(200, {**headers, "x-ratelimit-reset-requests": "5s"})
    assert limiter.limiter.limits["requests"].rate.per_second == 2
    # faster than configured: back to the configured 10/s, never above
    await limiter.observe(200, {**headers, "x-ratelimit-reset-requests": "100ms"})
    assert limiter.limiter.limits["requests"].rate.per_second == 10


async def test_a_window_gives_nothing_back_before_its_reset() -> None:
    clock = ManualClock()
    limiter = llm(clock, rpm=600, tpm=60_000)
    await limiter.observe(200, {"X-RateLimit-Remaining": "2", "X-RateLimit-Reset": "3"})
    # 10 requests/s locally: 2 left for 3 s means -28 now, so that 3 s of refill make 2
    assert (await limiter.limiter.available())["requests"] == pytest.approx(-28)


async def test_in_flight_calls_are_counted_against_what_is_left() -> None:
    clock = ManualClock()
    limiter = llm(clock, rpm=600, tpm=60_000)
    for _ in range(3):
        await limiter.acquire(100)
    # the answer to one of the three: the other two (200 tokens) may not be counted yet
    await limiter.observe(
        200, {"x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "0s"}
    )
    assert (await limiter.limiter.available())["tokens"] == 800
    for _ in range(3):
        await limiter.settle(100, 100)


async def test_a_429_pauses_both_limits() -> None:
    clock = ManualClock()
    limiter = llm(clock)
    await limiter.observe(429, {"Retry-After": "5"})
    assert limiter.limited == 1
    assert (await limiter.limiter.full_in()) >= 5.0
    task = asyncio.create_task(limiter.acquire(1))
    await clock.sleep(4.9)
    assert not task.done()
    await clock.sleep(0.2)
    await task


async def test_garbage_and_huge_values_change_nothing_or_are_capped() -> None:
    clock = ManualClock()
    limiter = LLMLimiter(60, 6000, clock=clock, max_pause=2.0)
    await limiter.observe(
        200, {"x-ratelimit-remaining-requests": "soon", "x-ratelimit-reset-requests": "9" * 5000}
    )
    assert (await limiter.limiter.available()) == {"requests": 60, "tokens": 6000}
    await limiter.observe(429, {"Retry-After": "99999999999999"})
    task = asyncio.create_task(limiter.acquire(1))
    await clock.sleep(2.1)
    await task


async def test_the_response_hook_reads_an_httpx_response() -> None:
    clock = ManualClock()
    limiter = llm(clock)
    headers = {
        "anthropic-ratelimit-requests-remaining": "5",
        "anthropic-ratelimit-requests-reset": "2020-01-01T00:00:00Z",
    }
    await limiter.on_response(httpx.Response(200, headers=headers))
    assert (await limiter.limiter.available())["requests"] == 5


async def test_a_shared_composite() -> None:
    shared = CompositeLimiter({"requests": Limit("60/minute", weight=1), "tokens": "6000/minute"})
    limiter = LLMLimiter(limiter=shared)
    await limiter.acquire(100)
    assert (await shared.available()) == pytest.approx({"requests": 59, "tokens": 5900}, abs=1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((), {}, TypeError),
        ((60,), {}, TypeError),
        ((60, 600), {"limiter": CompositeLimiter({"requests": 1, "tokens": 1})}, TypeError),
        ((), {"limiter": CompositeLimiter({"a": 1})}, ValueError),
        ((60, 600), {"max_pause": -1}, ValueError),
        ((60, 600), {"default_pause": "1"}, TypeError),
    ],
)
def test_bad_arguments(args: tuple[int, ...], kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        LLMLimiter(*args, **kwargs)  # type: ignore[arg-type]


# -- the blocking twin -------------------------------------------------------------------------


def test_the_sync_twin_settles_and_observes_the_same() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncLLMLimiter(requests_per_minute=600, tokens_per_minute=60_000, clock=clock)
    with limiter.call(1000) as call:
        call.used(400)
    assert limiter.limiter.available() == {"requests": 599, "tokens": 59_600}
    headers = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "700ms",
    }
    limiter.on_response(httpx.Response(200, headers=headers))
    assert limiter.limiter.available()["requests"] == 3
    assert limiter.limiter.limits["requests"].rate.per_second == 10  # 7 in 0.7 s: 10/s
    limiter.observe(429, {"Retry-After": "2"})
    start = clock.time()
    limiter.acquire(1)
    assert clock.time() - start >= 2.0
    assert limiter.limited == 1


def test_the_sync_twin_with_threads_and_an_httpx_client() -> None:
    served: list[int] = []

    def provider(request: httpx.Request) -> httpx.Response:
        served.append(1)
        left = max(0, 4 - len(served))
        headers = {
            "x-ratelimit-limit-requests": "4",
            "x-ratelimit-remaining-requests": str(left),
            "x-ratelimit-reset-requests": "50ms",
        }
        return httpx.Response(200, headers=headers)

    limiter = SyncLLMLimiter(requests_per_minute=6000, tokens_per_minute=600_000)
    hooks = {"response": [limiter.on_response]}
    with httpx.Client(transport=httpx.MockTransport(provider), event_hooks=hooks) as client:

        def one() -> None:
            with limiter.call(10) as call:
                client.get("https://api/")
                call.used(5)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert len(served) == 8
    assert limiter.limiter.statistics().granted == 8
