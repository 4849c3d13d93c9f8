"""The contract, scenario by scenario, on every implementation (see conftest.py).

Each scenario states one promise of ``ratekeeper.contract`` and checks it the same way on
memory and Redis, asyncio and threads, one limit and a composite. Times are real (the
server's clock decides on Redis), so rates are slow enough for loose tolerances.
"""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

from ratekeeper import AcquireTimeout, LimiterClosed, Statistics
from ratekeeper.contract import AsyncLimiter, SyncLimiter

from .conftest import Driver

ASYNC_VERBS = ("acquire", "try_acquire", "reserve", "refund", "charge", "available")
ASYNC_VERBS += ("full_in", "set_rate", "aclose")


def test_the_verbs_are_awaitable_in_the_asyncio_family_and_plain_in_the_blocking(
    driver: Driver,
) -> None:
    """The bug it holds: a coroutine where a bool was meant (``if limiter.try_acquire():``)
    is always true. In the asyncio family every verb is a coroutine function on every
    implementation; in the blocking family none is."""
    cls = type(driver.make("1/minute", 1))
    verbs = ASYNC_VERBS if driver.impl.is_async else ASYNC_VERBS[:-1]
    if driver.impl.keyed:  # the limits belong to every key: no set_rate (see the next test)
        verbs = tuple(verb for verb in verbs if verb != "set_rate")
    for verb in verbs:
        method = getattr(cls, verb)
        assert inspect.iscoroutinefunction(method) is driver.impl.is_async, verb
    protocol = AsyncLimiter if driver.impl.is_async else SyncLimiter
    for name in ("take", "limit", "statistics", "close", "__call__"):
        assert hasattr(cls, name) and hasattr(protocol, name), name


async def test_a_burst_then_refusal_and_a_real_bool(driver: Driver) -> None:
    limiter = driver.make("1/minute", 2)
    answers = [await driver.call(limiter, "try_acquire") for _ in range(3)]
    assert answers == [True, True, False]
    assert all(type(a) is bool for a in answers)
    assert driver.main(await driver.call(limiter, "available")) == pytest.approx(0, abs=0.01)


async def test_acquire_waits_its_turn_at_the_rate(driver: Driver) -> None:
    limiter = driver.make("20/s", 1)
    start = time.monotonic()
    for _ in range(3):
        assert await driver.call(limiter, "acquire") is True
    took = time.monotonic() - start
    assert 0.09 <= took < 2.0  # two waits of 50 ms (the upper bound only catches a hang)


async def test_a_timeout_that_cannot_be_met_is_refused_at_once_consuming_nothing(
    driver: Driver,
) -> None:
    limiter = driver.make("1/s", 1)
    await driver.call(limiter, "acquire")
    start = time.monotonic()
    with pytest.raises(AcquireTimeout) as caught:
        await driver.call(limiter, "acquire", timeout=0.2)
    assert time.monotonic() - start < 0.2  # refused, not slept on
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.retry_after == pytest.approx(1.0, abs=0.1)
    assert driver.main(await driver.call(limiter, "available")) > -0.01  # nothing taken
    assert limiter.statistics().rejected == 1


async def test_reserve_tells_the_wait_and_cancel_before_use_gives_tokens_back(
    driver: Driver,
) -> None:
    limiter = driver.make("1/minute", 2)
    first = await driver.call(limiter, "reserve")
    assert first.delay == 0 and first.granted
    first.cancel()
    assert first.cancelled and not first.granted
    assert await driver.call(limiter, "try_acquire")
    assert await driver.call(limiter, "try_acquire")  # the cancelled one's token was back
    with pytest.raises(AcquireTimeout):
        await driver.call(limiter, "reserve", timeout=1.0)  # the next is a minute away


async def test_cancel_after_the_reservation_was_used_does_nothing(driver: Driver) -> None:
    """The burst through cancel: ``try: await r; act() finally: r.cancel()`` must not hand
    back tokens that were used."""
    limiter = driver.make("10/s", 2)
    used = [await driver.call(limiter, "reserve") for _ in range(2)]
    for reservation in used:
        await driver.wait(reservation)
        reservation.cancel()  # the holder resumed: spent, nothing goes back
    assert await driver.call(limiter, "try_acquire") is False


async def test_a_queued_reservation_is_granted_at_its_delay(driver: Driver) -> None:
    limiter = driver.make("10/s", 1)
    before = time.monotonic()
    await driver.call(limiter, "acquire")
    reservation = await driver.call(limiter, "reserve")
    # The token refills between the two calls: a stall there (a worker thread's start on a
    # loaded machine) shortens the delay by as much, so it is judged against what was read.
    stalled = time.monotonic() - before
    assert 0.1 - stalled - 0.03 <= reservation.delay <= 0.1 + 0.03
    start = time.monotonic()
    await driver.wait(reservation)
    assert reservation.granted
    assert time.monotonic() - start < 0.4


async def test_refund_gives_unused_tokens_back_never_above_capacity(driver: Driver) -> None:
    limiter = driver.make("1/minute", 2)
    await driver.call(limiter, "acquire", 2)
    back = await driver.call(limiter, "refund", 1)
    assert driver.main(back) == pytest.approx(1)
    assert driver.main(await driver.call(limiter, "available")) == pytest.approx(1, abs=0.01)
    assert await driver.call(limiter, "try_acquire")
    assert not await driver.call(limiter, "try_acquire")
    await driver.call(limiter, "refund", 5)  # vouched for, but capped at capacity
    assert driver.main(await driver.call(limiter, "available")) <= 2


async def test_charge_goes_into_debt_and_later_callers_wait_it_off(driver: Driver) -> None:
    limiter = driver.make("1/minute", 2)
    await driver.call(limiter, "charge", 3)  # more than the capacity: allowed, as debt
    assert driver.main(await driver.call(limiter, "available")) == pytest.approx(-1, abs=0.01)
    assert not await driver.call(limiter, "try_acquire")
    # A bucket refills 3 tokens at 1/minute; a window (2 in any 2 minutes) is empty once
    # the charge has slid out of it; a fixed window of 2 carries the debt of 1 into the
    # next window, and starts empty the one after.
    full_in = driver.expect(bucket=180, window=120, fixed=240)
    assert await driver.call(limiter, "full_in") == pytest.approx(full_in, abs=1)


async def test_take_refunds_a_failed_block_when_asked(driver: Driver) -> None:
    limiter = driver.make("1/minute", 3)
    with pytest.raises(RuntimeError):
        async with driver.take(limiter, 2, refund_on_error=True):
            raise RuntimeError("the call failed")
    assert await driver.call(limiter, "try_acquire", 2)  # both came back
    async with driver.take(limiter, 1, timeout=0):
        pass
    with pytest.raises(AcquireTimeout):
        async with driver.take(limiter, 1, timeout=0):
            pass


async def test_the_decorators_take_tokens_per_call(driver: Driver) -> None:
    limiter = driver.make("1/minute", 3)
    assert await driver.decorated_calls(limiter, 1) == [0]  # @limiter: one token a call
    assert await driver.decorated_calls(limiter.limit(2), 1) == [0]
    with pytest.raises(AcquireTimeout):
        await driver.decorated_calls(limiter.limit(1, timeout=0.1), 1)


async def test_close_refuses_later_calls_and_wakes_waiters(driver: Driver) -> None:
    limiter = driver.make("1/s", 1)
    await driver.call(limiter, "acquire")
    waiter = asyncio.ensure_future(driver.call(limiter, "acquire"))
    await asyncio.sleep(0.1)
    limiter.close()
    assert limiter.closed
    with pytest.raises(LimiterClosed):
        await asyncio.wait_for(waiter, 3)
    with pytest.raises(LimiterClosed):
        await driver.call(limiter, "acquire")


async def test_set_rate_applies_now_and_keeps_the_balance(driver: Driver) -> None:
    limiter = driver.make("1/minute", 2)
    if driver.impl.keyed:
        # One key's view cannot change the limits of every key: the type says so (a view is
        # an AsyncLimiter/SyncLimiter, not a Bucket or Composite) and so does the object.
        assert not hasattr(limiter, "set_rate")
        return
    await driver.call(limiter, "acquire")  # 1 of 2 left
    if driver.impl.composite:
        await driver.call(limiter, "set_rate", "main", "10/s", 4)
    else:
        await driver.call(limiter, "set_rate", "10/s", 4)
    start = time.monotonic()
    left = driver.main(await driver.call(limiter, "available"))
    # A bucket carries its balance over (not refilled to the new capacity: that would be 4;
    # on a real clock it refills at the new rate meanwhile, allow for a stall of 150 ms); a
    # window keeps the token it holds, against the new capacity of 4.
    assert driver.expect(bucket=1, window=3) <= left < driver.expect(bucket=2.5, window=3.01)
    for _ in range(4):
        await driver.call(limiter, "acquire")
    elapsed = time.monotonic() - start
    # What was missing at the start comes at the new rate, 10/s: at least (4 - left) / 10.
    assert (4 - left) / 10 - 0.02 < elapsed < 2.0, (left, elapsed)


@pytest.mark.parametrize("tokens", [0, -1, 1.5, True, "1"])
async def test_bad_token_counts_are_refused_with_a_typed_error(
    driver: Driver, tokens: object
) -> None:
    limiter = driver.make("1/minute", 2)
    for verb in ("acquire", "try_acquire"):
        with pytest.raises((TypeError, ValueError)):
            await driver.call(limiter, verb, tokens)


async def test_more_than_the_capacity_can_never_be_granted(driver: Driver) -> None:
    limiter = driver.make("1/minute", 2)
    with pytest.raises(ValueError, match="capacity"):
        await driver.call(limiter, "acquire", 3)
    with pytest.raises(ValueError):
        await driver.call(limiter, "acquire", 1, timeout=-1)


async def test_statistics_have_the_same_fields_everywhere(driver: Driver) -> None:
    limiter = driver.make("1/minute", 2)
    await driver.call(limiter, "acquire", 2)
    assert not await driver.call(limiter, "try_acquire")
    stats = limiter.statistics()
    assert isinstance(stats, Statistics)
    assert (stats.granted, stats.rejected, stats.waiting) == (1, 1, 0)
    assert stats.granted_tokens >= 2  # a composite counts its side limit's tokens too


async def test_waiters_are_served_first_come_first_served(driver: Driver) -> None:
    limiter = driver.make("20/s", 2)
    await driver.call(limiter, "acquire", 2)
    order: list[str] = []

    async def wait(name: str, tokens: int) -> None:
        await driver.call(limiter, "acquire", tokens)
        order.append(name)

    tasks = []
    for name, tokens in (("big", 2), ("small", 1), ("last", 1)):
        tasks.append(asyncio.ensure_future(wait(name, tokens)))
        await asyncio.sleep(0.02)  # arrival order is the order they were made
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["big", "small", "last"]


async def test_a_timed_out_waiter_consumed_nothing(driver: Driver) -> None:
    limiter = driver.make("2/s", 1)
    await driver.call(limiter, "acquire")
    with pytest.raises(AcquireTimeout):
        await driver.call(limiter, "acquire", timeout=0.1)
    await asyncio.sleep(0.55)
    assert await driver.call(limiter, "try_acquire")  # the refill was not spent on it
