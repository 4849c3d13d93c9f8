"""A timer that fires late is not credited: the grants keep the exact envelope when made.

The limiters' one timer (asyncio's, or a thread's timed wait) always fires a little after the
head waiter's due time, by up to a millisecond on Linux's asyncio loop. A waiter is granted
when the timer fires, and the bucket is charged from that instant: so at any instant at most
``capacity`` tokens are granted, and in any window of length T at most capacity + rate x T.
A late timer costs rate only when the bucket would have been full by then; a capacity that
covers the lateness keeps the exact rate. Virtual time throughout: the clocks below fire
every timer exactly ``late`` after its due time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from fractions import Fraction

from ratekeeper import CompositeLimiter, Rate, TokenBucket
from ratekeeper._clock import Timer
from ratekeeper._scheduler import CompositeScheduler, Scheduler, Waiter
from ratekeeper.testing import ManualClock

from ._model import check_envelope

MS = 1_000_000


class LateClock(ManualClock):
    """A manual clock whose timers fire ``late`` ns after the time they were armed for."""

    def __init__(self, late: int) -> None:
        super().__init__()
        self.late = late

    def call_at(
        self, loop: asyncio.AbstractEventLoop | None, when_ns: int, callback: Callable[[], None]
    ) -> Timer:
        return super().call_at(loop, when_ns + self.late, callback)


def _waiters(scheduler: Scheduler | CompositeScheduler, costs: list[object]) -> list[Waiter]:
    waiters = [Waiter(scheduler._check(cost), 0) for cost in costs]
    for waiter in waiters:
        scheduler.enqueue(waiter, 0)
    return waiters


def test_a_timer_late_by_more_than_an_interval_grants_capacity_not_one_more() -> None:
    # 1,000/s, capacity 1, empty: the head is due at 1 ms, the next at 2 ms. A timer firing
    # at 2.5 ms once granted both there (the first credited back to 1.5 ms): two at once.
    scheduler = Scheduler(Rate(1000), 1, 0, initial=0)
    _waiters(scheduler, [1, 1, 1])
    assert len(scheduler.release_due(2 * MS + MS // 2)) == 1
    assert scheduler.head_due_ns() == 3 * MS + MS // 2  # one interval after the grant
    assert len(scheduler.release_due(3 * MS + MS // 2)) == 1


def test_a_late_timer_is_not_credited_on_any_limit_of_a_composite() -> None:
    scheduler = CompositeScheduler({"fast": ("1000/s", 1), "slow": ("10/s", 3)}, 0)
    scheduler._commit_units(0, scheduler._check({"fast": 1, "slow": 3}))  # both empty
    _waiters(scheduler, [{"fast": 1}, {"fast": 1}, {"slow": 1}])
    granted = scheduler.release_due(5 * MS)  # "fast" due at 1 ms, then 2 ms: late by 4 ms
    assert [w.tokens for w in granted] == [scheduler._check({"fast": 1})]
    assert scheduler.release_due(6 * MS)[0].tokens == scheduler._check({"fast": 1})
    # "slow" refills one token per 100 ms: due at 100 ms, granted late, alone.
    assert len(scheduler.release_due(150 * MS)) == 1
    assert scheduler.head() is None


async def _saturate(
    limiter: TokenBucket, clock: ManualClock, tasks: int, seconds: float
) -> list[int]:
    """Run ``tasks`` tasks acquiring one token in a loop; return the grant instants (ns)."""
    stamps: list[int] = []

    async def worker() -> None:
        while True:
            await limiter.acquire()
            stamps.append(clock.now_ns())

    runners = [asyncio.ensure_future(worker()) for _ in range(tasks)]
    await clock.sleep(seconds)
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    return stamps


def _envelope_holds(stamps: list[int], rate: Rate, capacity: int) -> None:
    log = [("grant", i, t, t, 1) for i, t in enumerate(stamps)]
    check_envelope(log, capacity, Fraction(rate.ns_per_token))


async def test_late_timers_at_capacity_one_never_grant_two_at_once() -> None:
    clock = LateClock(late=MS + MS // 2)  # every timer 1.5 ms late, at 1,000/s
    limiter = TokenBucket(1000, 1, clock=clock)
    stamps = await _saturate(limiter, clock, tasks=3, seconds=1.0)
    assert len(set(stamps)) == len(stamps)  # no two grants at one instant
    _envelope_holds(stamps, Rate(1000), 1)
    # The price: each grant waits its interval plus the lateness (2.5 ms here).
    gaps = {b - a for a, b in itertools.pairwise(stamps[1:])}  # after the first burst
    assert gaps == {2 * MS + MS // 2}


async def test_a_capacity_that_covers_the_lateness_keeps_the_exact_rate() -> None:
    clock = LateClock(late=MS)  # 1 ms late, at 50,000/s: 50 tokens; capacity 500 covers it
    limiter = TokenBucket(50_000, 500, clock=clock)
    stamps = await _saturate(limiter, clock, tasks=1000, seconds=0.5)
    _envelope_holds(stamps, Rate(50_000), 500)
    start = [t for t in stamps if t >= 100 * MS]  # after the first burst and the ramp
    granted = sum(1 for t in start if t < 400 * MS)
    assert abs(granted - 50_000 * 0.3) <= 500  # the exact rate, within one bucket


async def test_late_timers_keep_a_composite_within_every_limit() -> None:
    clock = LateClock(late=3 * MS)
    limiter = CompositeLimiter({"fast": ("1000/s", 1), "slow": ("200/s", 2)}, clock=clock)
    stamps: list[int] = []

    async def worker() -> None:
        while True:
            await limiter.acquire({"fast": 1, "slow": 1})
            stamps.append(clock.now_ns())

    runners = [asyncio.ensure_future(worker()) for _ in range(4)]
    await clock.sleep(0.5)
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    _envelope_holds(stamps, Rate(1000), 1)
    _envelope_holds(stamps, Rate(200), 2)
