"""One test per classic bug of naive token-bucket limiters (and of the usual fixes), named for it.

The table in docs/design.md ("the bug -> how ratekeeper prevents it -> the test") points here.
"""

from __future__ import annotations

import asyncio
import time
import warnings

import pytest

from ratekeeper import Rate, TokenBucket, TokenBucketRateLimiter
from ratekeeper._gcra import Gcra
from ratekeeper.testing import ManualClock

from .conftest import live_timers


async def test_classic_bug_aenter_did_not_await_acquire(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(rate=5, capacity=5, clock=clock)
    entered: list[float] = []

    async def process() -> None:
        async with limiter:
            entered.append(clock.time())

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an un-awaited coroutine would warn
        tasks = [asyncio.ensure_future(process()) for _ in range(7)]
        await clock.sleep(1)
    await asyncio.gather(*tasks)
    assert entered == pytest.approx([0, 0, 0, 0, 0, 0.2, 0.4])


async def test_classic_bug_wall_clock_jumps_do_not_change_decisions(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A naive limiter reads time.time(): an NTP step backwards froze refills, forwards burst. The
    # default clock is monotonic; here the wall clock jumps a day both ways and nothing moves.
    limiter = TokenBucket(5, 5)
    assert await limiter.acquire(5)
    real = time.time
    for jump in (+86400.0, -86400.0):
        monkeypatch.setattr(time, "time", lambda jump=jump: real() + jump)
        assert limiter.try_acquire_nowait() is False
        assert limiter.available_nowait() < 1


async def test_classic_bug_request_larger_than_capacity_hung_forever(clock: ManualClock) -> None:
    limiter = TokenBucket(5, 5, clock=clock)
    with pytest.raises(ValueError, match="tokens=6 exceeds the capacity 5"):
        await asyncio.wait_for(limiter.acquire(6), 1)
    with pytest.raises(ValueError, match="exceeds the capacity"):
        limiter.try_acquire_nowait(6)


async def test_classic_bug_thundering_herd_woke_every_waiter(clock: ManualClock) -> None:
    limiter = TokenBucket(5, 1, clock=clock)
    await limiter.acquire()
    wakeups = 0

    async def waiter() -> None:
        nonlocal wakeups
        await limiter.acquire()
        wakeups += 1

    tasks = [asyncio.ensure_future(waiter()) for _ in range(50)]
    await asyncio.sleep(0)
    assert live_timers(clock) == 1  # one timer for the whole queue, not one sleep each
    await clock.sleep(0.2)
    assert wakeups == 1  # one token, one wake-up
    await clock.sleep(10)
    assert wakeups == 50
    await asyncio.gather(*tasks)


async def test_classic_bug_starvation_of_large_requests(clock: ManualClock) -> None:
    limiter = TokenBucket(10, 5, clock=clock)
    await limiter.acquire(5)
    order: list[str] = []

    async def ask(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(name)

    tasks = [asyncio.ensure_future(ask("large", 5))]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(ask(f"small{i}", 1)) for i in range(20)]
    await clock.sleep(5)
    await asyncio.gather(*tasks)
    assert order[0] == "large"


async def test_classic_bug_cancelled_waiter_lost_tokens(clock: ManualClock) -> None:
    limiter = TokenBucket(5, 1, clock=clock)
    await limiter.acquire()
    doomed = asyncio.ensure_future(limiter.acquire())
    survivor = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    doomed.cancel()
    await clock.sleep(0.2)
    assert survivor.done()  # it got the slot at 0.2 s, as if the cancelled one never came
    await clock.sleep(0.2)
    assert limiter.available_nowait() == 1  # and no token was lost


@pytest.mark.parametrize("rate", [0, -5, float("nan")])
def test_classic_bug_zero_or_negative_rate_divided_by_zero(rate: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, 5)


async def test_classic_bug_busy_polling_while_waiting(clock: ManualClock) -> None:
    limiter = TokenBucket(Rate(1, per=10), 1, clock=clock)
    await limiter.acquire()
    fired = 0
    arm = clock.call_at

    def counting_call_at(loop: object, when_ns: int, callback: object) -> object:
        def counted() -> None:
            nonlocal fired
            fired += 1
            callback()  # type: ignore[operator]

        return arm(loop, when_ns, counted)  # type: ignore[arg-type]

    clock.call_at = counting_call_at  # type: ignore[method-assign,assignment]
    task = asyncio.ensure_future(limiter.acquire())
    await clock.sleep(10)
    await task
    assert fired == 1  # slept once until its due time; no polling loop


def test_classic_bug_float_drift_over_a_long_run() -> None:
    # Three tokens a second is 333,333,333.33 ns a token; a float bucket drifts, the integer
    # core is exact after a million grants.
    g = Gcra(Rate(3), 2, 0, initial=0)
    for k in range(1, 1_000_001, 997):
        assert g.tokens_at(-(-k * 10**9 // 3)) >= 0
    assert g.wait_ns(0, 1) == 333_333_334
    assert g.tokens_at(1_000_000 * 10**9 // 3 * 3) == 2


async def test_classic_bug_tokens_leaked_by_the_unlocked_sleep(clock: ManualClock) -> None:
    # The demo's scenario on virtual time: 20 tasks, 5/s, capacity 5, each holding 0.1 s.
    limiter = TokenBucketRateLimiter(rate=5, capacity=5, clock=clock)
    starts: list[float] = []

    async def process() -> None:
        async with limiter:
            starts.append(clock.time())
            await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(process()) for _ in range(20)]
    await clock.sleep(4)
    await asyncio.gather(*tasks)
    ideal = [max(0, i - 4) * 0.2 for i in range(20)]
    assert starts == pytest.approx(ideal, abs=1e-9)
