"""Composite limits: several rates checked and charged together, all or nothing."""

from __future__ import annotations

import asyncio

import pytest

from ratekeeper import AcquireTimeout, CompositeLimiter, SyncCompositeLimiter
from ratekeeper.testing import ManualClock


def llm(clock: ManualClock) -> CompositeLimiter:
    # 2 requests a second (burst 2) AND 100 LLM tokens a second (burst 100).
    return CompositeLimiter({"requests": "2/s", "tokens": ("100/s", 100)}, clock=clock)


async def test_a_request_waits_until_it_fits_in_every_limit(clock: ManualClock) -> None:
    limiter = llm(clock)
    grants: list[tuple[int, float]] = []

    async def call(i: int, tokens: int) -> None:
        await limiter.acquire({"requests": 1, "tokens": tokens})
        grants.append((i, round(clock.time(), 9)))

    tasks = [asyncio.ensure_future(call(i, 60)) for i in range(3)]
    await clock.sleep(5)
    await asyncio.gather(*tasks)
    # 1st at 0 (40 tokens left); 2nd needs 60 tokens: 0.2 s; 3rd: tokens at 0.8 s, and
    # requests (2/s, burst 2) allow it from 0.5 s: the later of the two wins.
    assert grants == [(0, 0.0), (1, 0.2), (2, 0.8)]


async def test_try_acquire_is_all_or_nothing(clock: ManualClock) -> None:
    limiter = llm(clock)
    assert limiter.try_acquire_nowait({"requests": 1, "tokens": 90})
    assert not limiter.try_acquire_nowait({"requests": 1, "tokens": 20})  # tokens short
    assert limiter.available_nowait() == {"requests": 1, "tokens": 10}  # requests not taken
    assert limiter.try_acquire_nowait({"tokens": 10})  # a cost may skip a limit
    assert limiter.available_nowait() == {"requests": 1, "tokens": 0}


async def test_fifo_across_the_composite(clock: ManualClock) -> None:
    limiter = llm(clock)
    await limiter.acquire({"requests": 2, "tokens": 100})
    order: list[str] = []

    async def call(name: str, cost: dict[str, int]) -> None:
        await limiter.acquire(cost)
        order.append(name)

    tasks = [asyncio.ensure_future(call("big", {"tokens": 100}))]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(call(f"small{i}", {"requests": 1})) for i in range(3)]
    await clock.sleep(3)
    await asyncio.gather(*tasks)
    assert order == ["big", "small0", "small1", "small2"]


async def test_charge_and_refund_settle_the_true_cost(clock: ManualClock) -> None:
    limiter = llm(clock)
    await limiter.acquire({"requests": 1, "tokens": 50})  # estimate
    limiter.charge_nowait({"tokens": 80})  # the reply used 130 tokens
    assert limiter.available_nowait() == {"requests": 1, "tokens": -30}
    assert limiter.refund_nowait({"tokens": 20}) == {"requests": 0, "tokens": 20}
    assert limiter.available_nowait()["tokens"] == -10
    with pytest.raises(AcquireTimeout):
        await limiter.acquire({"tokens": 1}, timeout=0.05)


async def test_cancelled_composite_waiter_consumes_nothing(clock: ManualClock) -> None:
    limiter = llm(clock)
    await limiter.acquire({"requests": 2})
    task = asyncio.ensure_future(limiter.acquire({"requests": 1, "tokens": 50}))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.available_nowait() == {"requests": 0, "tokens": 100}
    assert limiter.statistics().cancelled == 1


async def test_set_rate_of_one_limit(clock: ManualClock) -> None:
    limiter = llm(clock)
    await limiter.acquire({"tokens": 100})
    limiter.set_rate_nowait("tokens", "1000/s", 1000)
    await clock.sleep(0.1)
    assert limiter.available_nowait()["tokens"] == pytest.approx(100)
    with pytest.raises(ValueError, match="unknown limit 'words'"):
        limiter.set_rate_nowait("words", "1/s")


@pytest.mark.parametrize(
    ("cost", "error", "match"),
    [
        ({"bogus": 1}, ValueError, r"unknown limit name\(s\) \['bogus'\]"),
        ({"requests": -1}, ValueError, "must be an int >= 0"),
        ({"tokens": 101}, ValueError, "from 0 to its capacity 100"),
        ({"tokens": 1.5}, TypeError, "must be an int >= 0"),
        ({"requests": 0}, ValueError, "at least one token"),
        (True, TypeError, "not bool"),
        (0, ValueError, "cost must be >= 1"),
    ],
)
async def test_bad_costs(
    clock: ManualClock, cost: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await llm(clock).acquire(cost)


@pytest.mark.parametrize(
    "limits", [{}, {"a": ("1/s", 1, 2)}, {"": "1/s"}, {"a": "fast"}, {"a": ("1/s", 0)}]
)
def test_bad_limits(limits: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        CompositeLimiter(limits)  # type: ignore[arg-type]


def test_sync_twin() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncCompositeLimiter({"requests": "2/s", "tokens": ("100/s", 100)}, clock=clock)
    times = []
    for _ in range(3):
        limiter.acquire({"requests": 1, "tokens": 60})
        times.append(round(clock.time(), 9))
    assert times == [0.0, 0.2, 0.8]
    assert "requests=2/s capacity=2" in repr(limiter)
    assert limiter.statistics().granted == 3
    assert limiter.statistics().granted_tokens == 3 + 180


async def test_reservations_with_composite_costs(clock: ManualClock) -> None:
    limiter = llm(clock)
    now = limiter.reserve_nowait({"requests": 1, "tokens": 80})
    later = limiter.reserve_nowait({"requests": 1, "tokens": 80})
    assert now.granted
    assert later.delay == pytest.approx(0.6)
    later.cancel()
    now.cancel()  # nothing was granted after it: both limits get everything back
    assert limiter.available_nowait() == {"requests": 2, "tokens": 100}
    assert now.cancelled
    assert not now.granted
    assert limiter.statistics().cancelled == 2


async def test_weighted_limits_take_their_weight_from_an_int_cost(clock: ManualClock) -> None:
    from ratekeeper import Limit

    limiter = CompositeLimiter(
        {"requests": Limit("2/s", weight=1), "tokens": Limit("100/s", 100)}, clock=clock
    )
    assert limiter.try_acquire_nowait(60)  # one request and 60 tokens
    assert limiter.available_nowait() == {"requests": 1, "tokens": 40}
    limiter.charge_nowait(10)  # settling an int touches only the unweighted limits
    assert limiter.available_nowait() == {"requests": 1, "tokens": 30}
    assert limiter.refund_nowait(20) == {"requests": 0, "tokens": 20}
    assert limiter.available_nowait() == {"requests": 1, "tokens": 50}
    assert limiter.limits["requests"].weight == 1


async def test_take_limit_and_the_bare_decorator_accept_a_composite_cost(
    clock: ManualClock,
) -> None:
    """They used to raise "cost must be an int >= 1, not Cost (1, 10)" whatever the cost:
    the cost was checked once up front, then checked again as if it were raw."""
    llm = CompositeLimiter({"requests": "10/s", "tokens": ("100/s", 100)}, clock=clock)
    async with llm.take({"requests": 1, "tokens": 10}):
        pass

    @llm
    async def one() -> str:
        return "one"

    @llm.limit({"tokens": 50})
    async def fifty() -> str:
        return "fifty"

    assert (await one(), await fifty()) == ("one", "fifty")
    assert llm.available_nowait() == {"requests": 8, "tokens": 39}
    sync = SyncCompositeLimiter({"requests": "10/s", "tokens": ("100/s", 100)}, clock=clock)
    with sync.take(5):
        pass
    assert sync.limit({"tokens": 5})(lambda: "ok")() == "ok"
    assert sync(lambda: "ok")() == "ok"


async def test_a_waiter_held_back_by_the_one_ahead_gets_no_late_timer_credit(
    clock: ManualClock,
) -> None:
    """The late-timer slack once credited a waiter that was not late but queued behind one
    held by another limit: at that instant its limit passed capacity + 1."""
    limiter = CompositeLimiter({"a": ("1/s", 1), "b": ("10/s", 1)}, clock=clock)
    await limiter.acquire({"a": 1, "b": 1})
    ahead = asyncio.ensure_future(limiter.acquire({"a": 1}))  # due at 1 s, on "a"
    behind = asyncio.ensure_future(limiter.acquire({"b": 1}))  # "b" is free at 0.1 s
    await asyncio.sleep(0)
    await clock.sleep(1.0)
    assert ahead.done() and behind.done()
    assert limiter.available_nowait()["b"] == 0  # "behind" took b's only token at 1 s
    assert not limiter.try_acquire_nowait({"b": 1})
