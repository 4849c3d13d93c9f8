"""Late timers: the exact rate is kept, and never more than capacity passes at one instant.

The limiters' one timer (asyncio's, or a thread's timed wait) always fires a little after the
head waiter's due time, by up to a millisecond on Linux's asyncio loop. A waiter it releases
is accounted at its due time, as if the timer had been on time, so the rate stays exact; the
credit reaches back less than one interval (one interval less one ns) and never before the
grant ahead. What holds at the instants the grants are made (one instant: one ns reading):

- at most ``capacity`` tokens at one instant (a waiter that would pass it goes 1 ns later);
- in any window of length T, fewer than capacity + rate x T + 1 tokens (the worst excess
  over the envelope is below one token);
- lateness below the credit costs no rate at all: the bucket is charged exactly as on time.

A sliding window (alone or in a composite) is credited nothing: its grants are recorded when
they are made, and its window rule holds exactly. Virtual time throughout: the clocks below
fire every timer late by a given schedule.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper import CompositeLimiter, Limit, Rate, SlidingWindow, SyncTokenBucket, TokenBucket
from ratekeeper._clock import Timer, WakeLock
from ratekeeper._scheduler import CompositeScheduler, Scheduler, Waiter
from ratekeeper.testing import ManualClock

from ._window_check import assert_no_window_over

MS = 1_000_000


class LateClock(ManualClock):
    """A manual clock whose timers fire late: by ``late`` ns, or by each of a sequence in turn.

    With ``auto_advance`` (threads), a timed wait returns as late too.
    """

    def __init__(self, late: int | Sequence[int], *, auto_advance: bool = False) -> None:
        super().__init__(auto_advance=auto_advance)
        self._late = itertools.cycle([late] if isinstance(late, int) else late)

    def call_at(
        self, loop: asyncio.AbstractEventLoop | None, when_ns: int, callback: Callable[[], None]
    ) -> Timer:
        return super().call_at(loop, when_ns + next(self._late), callback)

    def wait(self, lock: WakeLock, until_ns: int | None) -> bool:
        return super().wait(lock, None if until_ns is None else until_ns + next(self._late))


def worst_excess(grants: list[tuple[int, int]], capacity: int, rate: Rate) -> Fraction:
    """Return the most tokens any window [t_i, t_j] of the grants (time ns, tokens) holds
    beyond capacity + rate x (t_j - t_i), exactly."""
    interval = Fraction(rate.ns_per_token)
    worst = Fraction(-capacity)
    lowest: Fraction | None = None
    before = 0  # tokens granted before this one
    for at, tokens in sorted(grants):
        start = before - at / interval  # a window opening at this grant
        lowest = start if lowest is None or start < lowest else lowest
        before += tokens
        worst = max(worst, before - at / interval - lowest - capacity)
    return worst


def most_at_one_instant(grants: list[tuple[int, int]]) -> int:
    """Return the most tokens granted at one instant (one ns reading)."""
    held: Counter[int] = Counter()
    for at, tokens in grants:
        held[at] += tokens
    return max(held.values())


def test_the_excess_checker_sees_a_burst() -> None:
    rate = Rate(1000)
    assert worst_excess([(0, 1), (MS, 1), (2 * MS, 1)], 1, rate) == 0
    assert worst_excess([(0, 1), (0, 1)], 1, rate) == 1
    assert worst_excess([(0, 1), (MS // 2, 1)], 1, rate) == Fraction(1, 2)
    assert most_at_one_instant([(0, 2), (1, 1), (1, 1)]) == 2


# -- the pure schedulers ---------------------------------------------------------------------


def _waiters(scheduler: Scheduler | CompositeScheduler, costs: list[object]) -> list[Waiter]:
    waiters = [Waiter(scheduler._check(cost), 0) for cost in costs]
    for waiter in waiters:
        scheduler.enqueue(waiter, 0)
    return waiters


def test_a_timer_late_by_more_than_an_interval_grants_one_then_the_next_a_ns_later() -> None:
    # 1,000/s, capacity 1, empty: the head is due at 1 ms, the next at 2 ms. A timer firing
    # at 2.5 ms grants the head there, accounted 1 ms less 1 ns earlier: the next is due
    # 1 ns later, not at the same instant (which would be two at once), and not 1 ms later
    # (which would lose the rate).
    scheduler = Scheduler(Rate(1000), 1, 0, initial=0)
    _waiters(scheduler, [1, 1, 1])
    assert len(scheduler.release_due(2 * MS + MS // 2)) == 1
    assert scheduler.head_due_ns() == 2 * MS + MS // 2 + 1
    assert scheduler.release_due(2 * MS + MS // 2) == []  # the same instant: nothing more
    assert len(scheduler.release_due(2 * MS + MS // 2 + 1)) == 1
    assert scheduler.head_due_ns() == 3 * MS + MS // 2 + 1  # one interval on


def test_a_timer_late_by_less_than_an_interval_costs_no_rate() -> None:
    scheduler = Scheduler(Rate(1000), 1, 0, initial=0)
    _waiters(scheduler, [1, 1, 1])
    assert len(scheduler.release_due(MS + 999_999)) == 1  # due at 1 ms: 1 ms less 1 ns late
    assert scheduler.head_due_ns() == 2 * MS  # as if the timer had been on time
    assert len(scheduler.release_due(2 * MS)) == 1


def test_a_late_timer_on_a_composite_is_credited_below_its_fastest_interval() -> None:
    scheduler = CompositeScheduler({"fast": ("1000/s", 1), "slow": ("10/s", 3)}, 0)
    scheduler._commit_units(0, scheduler._check({"fast": 1, "slow": 3}))  # both empty
    _waiters(scheduler, [{"fast": 1}, {"fast": 1}, {"fast": 1}, {"slow": 1}])
    granted = scheduler.release_due(5 * MS)  # "fast" due at 1 ms, then 2 ms: late by 4 ms
    assert [w.tokens for w in granted] == [scheduler._check({"fast": 1})]
    assert scheduler.head_due_ns() == 5 * MS + 1
    assert len(scheduler.release_due(5 * MS + 1)) == 1
    assert scheduler.head_due_ns() == 6 * MS + 1
    assert len(scheduler.release_due(6 * MS + 1)) == 1
    # "slow" refills one token per 100 ms: due at 100 ms, granted late, alone.
    assert len(scheduler.release_due(150 * MS)) == 1
    assert scheduler.head() is None


def _drive(
    scheduler: Scheduler, costs: list[int], lateness: list[int], listener: bool
) -> list[tuple[int, int]]:
    """Release ``costs`` (queued at 0), each timer firing late by the next of ``lateness``
    (cycled); return the grants (time ns, tokens)."""
    if listener:
        scheduler.on_event = lambda event: None  # the generic loop
    _waiters(scheduler, list(costs))
    grants: list[tuple[int, int]] = []
    late = itertools.cycle(lateness)
    now = 0
    while (due := scheduler.head_due_ns()) is not None:
        now = max(now, due + next(late))
        grants += [(now, w.tokens) for w in scheduler.release_due(now)]
    return grants


RATES = [Rate(1000), Rate(3), Rate(7, per=60), Rate(50_000), Rate(6, per=0.7)]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    rate=st.sampled_from(RATES),
    capacity=st.integers(1, 5),
    initial=st.integers(0, 5),
    costs=st.lists(st.integers(1, 5), min_size=1, max_size=40),
    lateness=st.lists(st.floats(0, 4), min_size=1, max_size=8),
    listener=st.booleans(),
)
def test_late_timers_never_pass_capacity_at_one_instant_nor_the_envelope_by_a_token(
    *,
    rate: Rate,
    capacity: int,
    initial: int,
    costs: list[int],
    lateness: list[float],
    listener: bool,
) -> None:
    interval = Fraction(rate.ns_per_token)
    costs = [min(cost, capacity) for cost in costs]
    late = [int(interval * Fraction(x)) for x in lateness]  # up to 4 intervals late
    scheduler = Scheduler(rate, capacity, 0, initial=min(initial, capacity))
    grants = _drive(scheduler, costs, late, listener)
    assert sorted(tokens for _, tokens in grants) == sorted(costs)
    assert most_at_one_instant(grants) <= capacity
    assert worst_excess(grants, capacity, rate) < 1
    # Lateness the credit covers costs nothing: the bucket ends charged as if on time.
    on_time = Scheduler(rate, capacity, 0, initial=min(initial, capacity))
    _drive(on_time, costs, [0], listener)
    if max(late) < interval:
        assert scheduler._tat == on_time._tat
    else:
        assert scheduler._tat >= on_time._tat


# -- the limiters ----------------------------------------------------------------------------


async def _saturate(
    limiter: object, clock: ManualClock, tasks: int, seconds: float, cost: object = 1
) -> list[int]:
    """Run ``tasks`` tasks acquiring ``cost`` in a loop; return the grant instants (ns)."""
    stamps: list[int] = []

    async def worker() -> None:
        while True:
            await limiter.acquire(cost)  # type: ignore[attr-defined]
            stamps.append(clock.now_ns())

    runners = [asyncio.ensure_future(worker()) for _ in range(tasks)]
    await clock.sleep(seconds)
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    return stamps


async def test_jittery_timers_below_an_interval_keep_the_exact_rate_at_capacity_one() -> None:
    # Lateness as epoll gives it: anything up to a millisecond, at 1,000/s.
    clock = LateClock([300_000, 999_999, 0, 640_000, 999_000, 50_000])
    limiter = TokenBucket(1000, 1, clock=clock)
    stamps = await _saturate(limiter, clock, tasks=3, seconds=1.0)
    grants = [(t, 1) for t in stamps]
    assert most_at_one_instant(grants) == 1
    assert 0 < worst_excess(grants, 1, Rate(1000)) < 1
    # The first token at once, then one a millisecond, each granted late but accounted on
    # time: after 1 s, exactly 1,000 granted (the 1,001st is due at 1 s, its timer late).
    assert len(stamps) == 1000
    assert limiter.statistics().granted == 1000


async def test_timers_later_than_an_interval_grant_one_at_an_instant() -> None:
    clock = LateClock(late=MS + MS // 2)  # every timer 1.5 ms late, at 1,000/s
    limiter = TokenBucket(1000, 1, clock=clock)
    stamps = await _saturate(limiter, clock, tasks=3, seconds=1.0)
    grants = [(t, 1) for t in stamps]
    assert most_at_one_instant(grants) == 1
    assert worst_excess(grants, 1, Rate(1000)) < 1
    # The price of lateness beyond the credit: each grant waits for its (late) timer, 1.5 ms
    # after the one before it (plus the ns that keeps two grants off one instant).
    gaps = {b - a for a, b in itertools.pairwise(stamps[1:])}  # after the first token
    assert gaps == {MS + MS // 2 + 1}


async def test_a_capacity_that_covers_the_lateness_keeps_the_exact_rate() -> None:
    clock = LateClock(late=MS)  # 1 ms late, at 50,000/s: 50 tokens; capacity 500 covers it
    limiter = TokenBucket(50_000, 500, clock=clock)
    stamps = await _saturate(limiter, clock, tasks=1000, seconds=0.5)
    grants = [(t, 1) for t in stamps]
    assert most_at_one_instant(grants) <= 500
    assert worst_excess(grants, 500, Rate(50_000)) < 1
    start = [t for t in stamps if t >= 100 * MS]  # after the first burst and the ramp
    granted = sum(1 for t in start if t < 400 * MS)
    assert abs(granted - 50_000 * 0.3) <= 500  # the exact rate, within one bucket


async def test_late_timers_keep_a_composite_within_every_limit() -> None:
    clock = LateClock([3 * MS, 400_000, 0, 2 * MS])
    limiter = CompositeLimiter({"fast": ("1000/s", 1), "slow": ("200/s", 2)}, clock=clock)
    stamps = await _saturate(limiter, clock, tasks=4, seconds=0.5, cost={"fast": 1, "slow": 1})
    grants = [(t, 1) for t in stamps]
    assert most_at_one_instant(grants) == 1  # the smaller capacity
    assert worst_excess(grants, 1, Rate(1000)) < 1
    assert worst_excess(grants, 2, Rate(200)) < 1


async def test_late_timers_credit_nothing_to_a_sliding_window() -> None:
    # A window records a grant when it is made: late timers keep its rule exactly, alone or
    # in a composite beside a bucket.
    lateness = [MS + MS // 2, 300_000, 0]
    clock = LateClock(lateness)
    window = SlidingWindow(1000, 2, clock=clock)
    stamps = await _saturate(window, clock, tasks=3, seconds=0.5)
    assert_no_window_over([(t, 1, True) for t in stamps], 2, 2 * MS)
    clock = LateClock(lateness)
    composite = CompositeLimiter(
        {"bucket": ("1000/s", 1), "window": Limit("500/s", 2, kind="sliding")}, clock=clock
    )
    stamps = await _saturate(composite, clock, tasks=3, seconds=0.5)
    assert_no_window_over([(t, 1, True) for t in stamps], 2, 4 * MS)
    assert most_at_one_instant([(t, 1) for t in stamps]) == 1
    assert worst_excess([(t, 1) for t in stamps], 1, Rate(1000)) < 1


def test_late_wake_ups_of_a_blocked_thread_keep_the_exact_rate() -> None:
    clock = LateClock([700_000, 0, 999_999, 200_000], auto_advance=True)
    limiter = SyncTokenBucket(1000, 1, clock=clock)
    stamps: list[int] = []

    def worker() -> None:
        for _ in range(500):
            limiter.acquire()
            stamps.append(clock.now_ns())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    grants = [(t, 1) for t in stamps]
    assert most_at_one_instant(grants) == 1
    assert worst_excess(grants, 1, Rate(1000)) < 1
    # 500 grants from a full bucket: the first at once, the 500th due at 499 ms, granted
    # late; the bucket is charged exactly as on time.
    assert 499 * MS <= stamps[-1] < 500 * MS
    assert limiter._tat == 500 * MS
