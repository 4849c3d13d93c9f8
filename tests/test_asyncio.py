"""The asyncio limiter on virtual time (ManualClock): order, timing, cancellation, errors."""

from __future__ import annotations

import asyncio
import math

import pytest

from ratekeeper import (
    AcquireTimeout,
    LimiterClosed,
    Rate,
    TokenBucket,
    TokenBucketRateLimiter,
)
from ratekeeper.testing import ManualClock

from .conftest import live_timers


def make(clock: ManualClock, rate: float | str = 5, capacity: int = 5, **kw: object) -> TokenBucket:
    return TokenBucket(rate, capacity, clock=clock, **kw)  # type: ignore[arg-type]


async def start(coro: object) -> asyncio.Task[object]:
    task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
    await asyncio.sleep(0)
    return task  # type: ignore[no-any-return]


class Recorder:
    """Runs acquires as tasks and records (name, virtual time) of each grant."""

    def __init__(self, clock: ManualClock, limiter: TokenBucket) -> None:
        self.clock = clock
        self.limiter = limiter
        self.grants: list[tuple[str, float]] = []

    async def run(self, name: str, tokens: int = 1, **kw: object) -> None:
        await self.limiter.acquire(tokens, **kw)  # type: ignore[arg-type]
        self.grants.append((name, round(self.clock.time(), 9)))

    def spawn(self, name: str, tokens: int = 1, **kw: object) -> asyncio.Task[None]:
        return asyncio.ensure_future(self.run(name, tokens, **kw))


async def test_burst_then_one_per_interval(clock: ManualClock) -> None:
    rec = Recorder(clock, make(clock))
    for i in range(8):
        rec.spawn(f"t{i}")
    await clock.sleep(1)
    assert rec.grants == [(f"t{i}", 0.0) for i in range(5)] + [
        ("t5", 0.2),
        ("t6", 0.4),
        ("t7", 0.6),
    ]


async def test_fifo_large_request_is_not_starved_by_small_ones(clock: ManualClock) -> None:
    limiter = make(clock)
    assert await limiter.acquire(5)
    rec = Recorder(clock, limiter)
    rec.spawn("big", 5)
    await asyncio.sleep(0)
    for i in range(10):
        rec.spawn(f"small{i}")
    await clock.sleep(3)
    assert rec.grants[0] == ("big", 1.0)
    assert [name for name, _ in rec.grants[1:]] == [f"small{i}" for i in range(10)]
    assert rec.grants[1] == ("small0", 1.2)


async def test_no_barging_when_tokens_free_up_while_others_wait(clock: ManualClock) -> None:
    limiter = make(clock, capacity=2)
    await limiter.acquire(2)
    rec = Recorder(clock, limiter)
    rec.spawn("first", 2)  # due at 0.4 s
    await clock.sleep(0.3)  # one token is back, but "first" needs two
    assert limiter.try_acquire_nowait() is False  # a newcomer does not overtake
    rec.spawn("second")
    await clock.sleep(0.3)
    assert rec.grants == [("first", 0.4), ("second", 0.6)]


async def test_priority_classes_are_served_first_fifo_within(clock: ManualClock) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    rec = Recorder(clock, limiter)
    rec.spawn("batch1")
    rec.spawn("batch2")
    rec.spawn("ui1", priority=10)
    rec.spawn("ui2", priority=10)
    await clock.sleep(1)
    assert [name for name, _ in rec.grants] == ["ui1", "ui2", "batch1", "batch2"]
    assert [t for _, t in rec.grants] == [0.2, 0.4, 0.6, 0.8]


async def test_timeout_that_cannot_be_met_is_refused_at_once(clock: ManualClock) -> None:
    limiter = make(clock)
    await limiter.acquire(5)
    with pytest.raises(AcquireTimeout) as info:
        await limiter.acquire(2, timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert info.value.retry_after == pytest.approx(0.4)
    assert clock.time() == 0  # no time passed: fail fast, not after sleeping
    assert limiter.statistics().rejected == 1
    assert limiter.statistics().waiting == 0
    await clock.sleep(0.4)
    assert limiter.try_acquire_nowait(2)  # nothing was consumed by the refusal


async def test_timeout_that_can_be_met_waits(clock: ManualClock) -> None:
    limiter = make(clock)
    await limiter.acquire(5)
    rec = Recorder(clock, limiter)
    rec.spawn("a", 2, timeout=0.4)
    await clock.sleep(0.5)
    assert rec.grants == [("a", 0.4)]
    assert live_timers(clock) == 0  # the deadline timer was disarmed on grant


async def test_waiter_times_out_when_the_plan_changes_and_consumes_nothing(
    clock: ManualClock,
) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    rec = Recorder(clock, limiter)
    low = rec.spawn("low", timeout=0.3)  # due at 0.2 s when it queued
    await asyncio.sleep(0)
    rec.spawn("high", priority=1)  # takes the 0.2 s slot; low would now go at 0.4 s
    await clock.sleep(0.3)
    with pytest.raises(AcquireTimeout):
        await low
    assert rec.grants == [("high", 0.2)]
    stats = limiter.statistics()
    assert (stats.timed_out, stats.waiting) == (1, 0)
    await clock.sleep(0.1)
    assert limiter.try_acquire_nowait()  # the slot low never used is free at 0.4 s


async def test_try_acquire_never_waits(clock: ManualClock) -> None:
    limiter = make(clock, capacity=2)
    assert limiter.try_acquire_nowait(2)
    assert not limiter.try_acquire_nowait()
    await clock.sleep(0.2)
    assert limiter.try_acquire_nowait()
    assert limiter.statistics().rejected == 1


async def test_cancelled_waiter_consumes_nothing_and_blocks_no_one(clock: ManualClock) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    rec = Recorder(clock, limiter)
    head = rec.spawn("head", 1)
    rec.spawn("next", 1)
    await clock.sleep(0.1)
    head.cancel()
    await clock.sleep(0.5)
    # "next" takes the slot the cancelled head would have had.
    assert rec.grants == [("next", 0.2)]
    stats = limiter.statistics()
    assert (stats.cancelled, stats.waiting) == (1, 0)
    assert live_timers(clock) == 0


async def test_waiter_cancelled_after_its_grant_gives_the_tokens_back(clock: ManualClock) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    task = await start(limiter.acquire())
    clock.advance(0.2)  # the timer fires: the grant is made, the task has not run yet
    assert limiter.available_nowait() == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.available_nowait() == 1  # returned: the task never used its token
    stats = limiter.statistics()
    assert (stats.cancelled, stats.refunded_tokens) == (1, 1)


async def test_only_the_head_has_a_timer(clock: ManualClock) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    tasks = [await start(limiter.acquire()) for _ in range(100)]
    assert live_timers(clock) == 1
    await clock.sleep(10)
    assert all(t.done() for t in tasks[:50])
    assert live_timers(clock) == 1
    await clock.sleep(11)
    assert live_timers(clock) == 0
    assert limiter.statistics().waiting == 0


async def test_reservation_delay_await_and_cancel(clock: ManualClock) -> None:
    limiter = make(clock)
    now = limiter.reserve_nowait(5)
    assert (now.granted, now.delay) == (True, 0)
    later = limiter.reserve_nowait(2)
    assert later.delay == pytest.approx(0.4) and not later.granted
    last = limiter.reserve_nowait(1)
    assert last.delay == pytest.approx(0.6)
    later.cancel()  # leaves the queue; "last" moves up
    await clock.sleep(0.2)
    await last
    assert last.granted and later.cancelled
    assert clock.time() == pytest.approx(0.2)
    now.cancel()  # granted at 0, cancelled at 0.2 s: 4 of its 5 tokens are still outstanding
    assert limiter.available_nowait() == pytest.approx(4)


async def test_reservation_refused_past_max_wait(clock: ManualClock) -> None:
    limiter = make(clock)
    limiter.reserve_nowait(5)
    with pytest.raises(AcquireTimeout):
        limiter.reserve_nowait(1, timeout=0.1)
    assert limiter.statistics().waiting == 0


async def test_take_refunds_when_the_block_raises(clock: ManualClock) -> None:
    limiter = make(clock)
    with pytest.raises(RuntimeError):
        async with limiter.take(3, refund_on_error=True):
            raise RuntimeError("the call failed before it reached the server")
    assert limiter.available_nowait() == 5
    async with limiter.take(3, refund_on_error=True):
        pass
    assert limiter.available_nowait() == 2
    with pytest.raises(RuntimeError):
        async with limiter.take(2):
            raise RuntimeError("without the option the tokens stay spent")
    assert limiter.available_nowait() == 0


async def test_refund_replans_waiters(clock: ManualClock) -> None:
    limiter = make(clock)
    await limiter.acquire(5)
    rec = Recorder(clock, limiter)
    rec.spawn("w", 3)  # due at 0.6 s
    await clock.sleep(0.1)
    assert limiter.refund_nowait(2) == 2
    await clock.sleep(0.5)
    assert rec.grants == [("w", 0.2)]


async def test_charge_puts_the_bucket_in_debt(clock: ManualClock) -> None:
    limiter = make(clock)
    limiter.charge_nowait(8)
    assert limiter.available_nowait() == -3
    rec = Recorder(clock, limiter)
    rec.spawn("after")
    await clock.sleep(1)
    assert rec.grants == [("after", 0.8)]
    assert limiter.statistics().granted_tokens == 9
    assert limiter.statistics().granted == 1


async def test_set_rate_replans_waiters_and_carries_the_balance(clock: ManualClock) -> None:
    limiter = make(clock)
    await limiter.acquire(5)
    rec = Recorder(clock, limiter)
    rec.spawn("w", 2)  # due at 0.4 s at 5/s
    await clock.sleep(0.1)  # half a token accrued
    limiter.set_rate_nowait("10/s", 10)
    assert limiter.available_nowait() == pytest.approx(0.5)
    await clock.sleep(1)
    assert rec.grants == [("w", 0.25)]
    assert limiter.rate == Rate.parse("10/s") and limiter.capacity == 10


async def test_set_rate_refuses_a_capacity_below_a_queued_request(clock: ManualClock) -> None:
    limiter = make(clock)
    await limiter.acquire(5)
    task = await start(limiter.acquire(4))
    with pytest.raises(ValueError, match="below a queued request for 4 tokens"):
        limiter.set_rate_nowait(5, 3)
    limiter.close()
    with pytest.raises(LimiterClosed):
        await task


async def test_close_wakes_every_waiter_and_refuses_later_calls(clock: ManualClock) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    tasks = [await start(limiter.acquire()) for _ in range(3)]
    limiter.close()
    for task in tasks:
        with pytest.raises(LimiterClosed):
            await task
    with pytest.raises(LimiterClosed):
        await limiter.acquire()
    with pytest.raises(LimiterClosed):
        limiter.try_acquire_nowait()
    assert live_timers(clock) == 0
    assert limiter.closed and "closed" in repr(limiter)
    limiter.close()  # idempotent


async def test_statistics_count_everything(clock: ManualClock) -> None:
    limiter = make(clock, capacity=2)
    await limiter.acquire(2)
    limiter.try_acquire_nowait()
    waiting = await start(limiter.acquire())
    cancelled = await start(limiter.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    await clock.sleep(1)
    await waiting
    stats = limiter.statistics()
    assert (stats.granted, stats.rejected, stats.cancelled, stats.waiting) == (2, 1, 1, 0)
    assert stats.max_wait == pytest.approx(0.2) and stats.total_wait == pytest.approx(0.2)
    assert stats.wait_histogram[-1] == (math.inf, 2)
    assert dict(stats.wait_histogram)[0.25] == 2 and dict(stats.wait_histogram)[0.1] == 1


async def test_events_report_each_decision(clock: ManualClock) -> None:
    events: list[tuple[str, float, float]] = []
    limiter = make(
        clock, capacity=1, name="api", on_event=lambda e: events.append((e.kind, e.time, e.wait))
    )
    await limiter.acquire()
    limiter.try_acquire_nowait()
    with pytest.raises(AcquireTimeout):
        await limiter.acquire(timeout=0.1)
    task = await start(limiter.acquire())
    await clock.sleep(0.2)
    await task
    assert events == [
        ("granted", 0.0, 0.0),
        ("rejected", 0.0, 0.0),
        ("rejected", 0.0, 0.0),
        ("granted", 0.2, 0.2),
    ]
    limiter.on_event = None
    assert not limiter.try_acquire_nowait()
    assert len(events) == 4


async def test_decorators(clock: ManualClock) -> None:
    limiter = make(clock, capacity=3)
    calls: list[int] = []

    @limiter
    async def one(x: int) -> int:
        calls.append(x)
        return x * 2

    @limiter.limit(tokens=2)
    async def two() -> None:
        calls.append(-1)

    assert await one(21) == 42
    await two()
    assert limiter.available_nowait() == 0
    assert one.__name__ == "one"
    with pytest.raises(TypeError, match="not an async function"):
        limiter(lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tokens": 0}, ValueError, "tokens must be >= 1"),
        ({"tokens": -3}, ValueError, "tokens must be >= 1"),
        ({"tokens": True}, TypeError, "not bool"),
        ({"tokens": 1.5}, TypeError, "not float"),
        ({"tokens": 6}, ValueError, "exceeds the capacity 5"),
        ({"timeout": -1}, ValueError, "timeout must be a finite number of seconds >= 0"),
        ({"timeout": math.nan}, ValueError, "timeout must be"),
        ({"timeout": "1"}, TypeError, "timeout must be a number of seconds"),
        ({"priority": "high"}, TypeError, "priority must be an int"),
        ({"priority": 1.0}, TypeError, "priority must be an int"),
    ],
)
async def test_bad_arguments_raise_at_once(
    clock: ManualClock, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    limiter = make(clock)
    with pytest.raises(error, match=match):
        await limiter.acquire(**kwargs)  # type: ignore[arg-type]
    assert limiter.statistics().waiting == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 5), ValueError),
        ((-5, 5), ValueError),
        ((math.inf, 5), ValueError),
        ((math.nan, 5), ValueError),
        ((5, 0), ValueError),
        ((5, -1), ValueError),
        ((5, 2.5), TypeError),
        ((5, True), TypeError),
        (("lots", 5), ValueError),
    ],
)
def test_bad_construction_raises(args: tuple[object, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        TokenBucket(*args)  # type: ignore[arg-type]


def test_infinite_timeout_means_no_timeout(clock: ManualClock) -> None:
    async def main() -> bool:
        return await make(clock).acquire(timeout=math.inf)

    assert asyncio.run(main())


def test_created_outside_a_loop_and_moves_between_loops() -> None:
    limiter = TokenBucket(1000, 1)

    async def use() -> None:
        for _ in range(3):
            await limiter.acquire()

    asyncio.run(use())
    asyncio.run(use())  # a new loop, nobody waiting: fine
    assert limiter.statistics().granted == 6


def test_waiting_in_two_loops_at_once_is_refused() -> None:
    clock = ManualClock()
    limiter = make(clock, capacity=1)
    limiter.try_acquire_nowait()
    other = asyncio.new_event_loop()
    try:
        task = other.create_task(limiter.acquire())
        other.run_until_complete(asyncio.sleep(0))

        async def second() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                await limiter.acquire()

        asyncio.run(second())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            other.run_until_complete(task)
    finally:
        other.close()


async def test_repr_shows_live_state(clock: ManualClock) -> None:
    limiter = make(clock, name="api")
    await limiter.acquire(3)
    assert repr(limiter) == "<TokenBucket 'api' 5/s capacity=5 tokens=2 waiting=0>"
    assert limiter.full_in_nowait() == pytest.approx(0.6)


async def test_seed_compatible_class(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(rate=5, capacity=5, clock=clock)
    async with limiter:
        pass
    assert await limiter.acquire(2) is True
    assert limiter.tokens == 2


async def test_a_listener_that_raises_never_strands_a_waiter(clock: ManualClock) -> None:
    def bad_listener(event: object) -> None:
        raise RuntimeError("listener bug")

    limiter = make(clock, capacity=1, on_event=bad_listener)
    await limiter.acquire()
    task = await start(limiter.acquire())
    await clock.sleep(0.2)
    assert task.done()
    assert await task is True
    assert limiter.statistics().waiting == 0


async def test_huge_timeout_means_no_timeout_and_leaves_no_orphan(clock: ManualClock) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    task = await start(limiter.acquire(timeout=1e300))
    await clock.sleep(0.2)
    assert await task is True
    assert limiter.statistics().granted == 2


async def test_a_refused_set_rate_changes_nothing(clock: ManualClock) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    for capacity in (0, "5"):
        with pytest.raises((ValueError, TypeError)):
            limiter.set_rate_nowait("1000/s", capacity)  # type: ignore[arg-type]
    assert limiter.rate == Rate(5)
    await clock.sleep(0.2)
    assert limiter.try_acquire_nowait()


def test_initial_of_the_wrong_type_is_a_type_error() -> None:
    for initial in ("3", 2.0, True):
        with pytest.raises(TypeError, match="initial must be an int"):
            TokenBucket(5, 5, initial=initial)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial must be an int from 0 to capacity=5"):
        TokenBucket(5, 5, initial=6)


# -- regressions found while writing the contract ------------------------------------------


def test_waiters_of_a_closed_event_loop_are_abandoned_and_cost_nothing() -> None:
    """A loop closed while a task still waited (never cancelled) used to leave the dead
    waiter queued: the next try spent a token on it and raised "Event loop is closed", and
    another loop was refused for "waiters in another event loop"."""
    limiter = TokenBucket("1/s", 1)
    loop = asyncio.new_event_loop()
    stranded: list[asyncio.Future[bool]] = []

    async def queue_one() -> None:
        await limiter.acquire()
        stranded.append(asyncio.ensure_future(limiter.acquire()))  # waits, forever
        await asyncio.sleep(0)

    loop.run_until_complete(queue_one())
    assert limiter.statistics().waiting == 1
    loop.close()  # the waiting task is never cancelled, never run again

    async def later() -> None:
        await asyncio.sleep(1.0)  # the token the dead waiter was due comes back
        assert await limiter.try_acquire()  # not spent on the dead waiter
        await limiter.acquire(timeout=2)  # another loop is served

    asyncio.run(later())
    stats = limiter.statistics()
    assert (stats.waiting, stats.cancelled, stats.granted) == (0, 1, 3)


async def test_a_waiter_cancelled_in_the_tick_its_deadline_fires_counts_as_cancelled(
    clock: ManualClock,
) -> None:
    limiter = make(clock, capacity=1)
    await limiter.acquire()
    task = await start(limiter.acquire(timeout=1.0))  # queued, due at 0.2 s
    limiter.set_rate_nowait("1/minute")  # now due in a minute: the deadline comes first
    # Cancel the task, then let its deadline fire before its handler runs.
    task.cancel()
    clock.advance(1.0)
    await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = limiter.statistics()
    assert (stats.cancelled, stats.timed_out, stats.waiting) == (1, 0, 0)


async def test_an_unawaited_reservation_that_times_out_logs_nothing(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    limiter = make(clock, capacity=1)
    await limiter.acquire()
    reservation = limiter.reserve_nowait(timeout=1.0)  # queued, due at 0.2 s
    limiter.set_rate_nowait("1/minute")  # now due in a minute
    await clock.sleep(2.0)  # its deadline passes with nobody awaiting it
    assert reservation.cancelled
    del reservation
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
    assert limiter.statistics().timed_out == 1


@pytest.mark.parametrize("form", ["acquire", "async with"])
@pytest.mark.parametrize("rate", [5, Rate(7, per=3)])  # whole ns per token, and not
async def test_fast_path_stays_shut_after_a_long_idle(
    clock: ManualClock, rate: Rate, form: str
) -> None:
    # After a long idle the bucket's tat lies far behind now: ``tat - now`` is hugely
    # negative, and the shut fast path must still refuse to grant past a listener, a closed
    # limiter or a waiter.
    events: list[str] = []
    limiter = make(clock, rate, capacity=1, on_event=lambda e: events.append(e.kind))

    async def one() -> bool:
        if form == "acquire":
            return await limiter.acquire()
        async with limiter as entered:
            return entered is limiter

    clock.advance(10**6)
    assert await one()
    assert events == ["granted"]
    limiter.on_event = None
    clock.advance(10**6)
    assert await one()
    rec = Recorder(clock, limiter)
    rec.spawn("waiter")  # waits for the next token
    await asyncio.sleep(0)
    clock._set(clock.now_ns() + 10**15)  # a jump past its timer, which has not run yet
    late = await start(one())
    assert not late.done()  # the newcomer queues behind the waiter, due as it is
    await clock.sleep(0)
    assert rec.grants and not late.done()  # the waiter first, then one token an interval
    await clock.sleep(1)
    assert await late
    limiter.close()
    clock.advance(10**6)
    with pytest.raises(LimiterClosed):
        await one()
