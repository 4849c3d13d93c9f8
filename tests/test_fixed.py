"""The fixed window: the pure counter as tables of steps, alignment to the wall clock (UTC,
an offset, NTP steps), and the guarantee (no window aligned to the clock ever holds more than
N) checked over every grant on virtual time, through the real limiters, under random
arrivals, sizes, timeouts, cancellations and refunds."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratekeeper import (
    CompositeLimiter,
    FixedWindow,
    Limit,
    Rate,
    SyncCompositeLimiter,
    SyncFixedWindow,
)
from ratekeeper._fixed import FixedCounter
from ratekeeper.testing import ManualClock

from ._window_check import assert_no_fixed_window_over, assert_no_window_over
from .test_window import OPS, run_charges, run_scenario, serve_queue

S = 1_000_000_000
MS = 1_000_000
DAY = 86_400


def counter(rate: str = "3/s", capacity: int | None = None, skew: int = 0) -> FixedCounter:
    rate_ = Rate.parse(rate)
    cap = rate_.default_capacity if capacity is None else capacity
    return FixedCounter(rate_, cap, 0, skew)


def utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


# -- the pure counter, step by step ------------------------------------------------------


def test_n_per_window_then_the_next_boundary() -> None:
    w = counter("3/s")
    for t in (100 * MS, 200 * MS, 300 * MS):
        assert w.wait_ns(t, 1) == 0
        assert w.try_take(t, 1)
    assert w.wait_ns(400 * MS, 1) == 600 * MS  # the next window starts at 1 s
    assert not w.try_take(999_999_999, 1)
    assert w.try_take(S, 3)  # a new window: all three at once (2N across the boundary)
    assert w.tokens_at(S) == 0
    assert w.full_in_ns(S + 500 * MS) == 500 * MS
    assert w.resets_in_ns(S + 500 * MS) == 500 * MS


def test_a_request_that_does_not_fit_waits_whole_windows_and_never_straddles() -> None:
    w = counter("4/s")
    w.try_take(0, 3)
    assert w.wait_ns(0, 2) == S  # 1 left now: both go in the next window, not one now
    assert w.wait_ns(0, 1) == 0
    # Planned behind a queue: 3 counted + 6 ahead + 2 need three windows, a lower bound.
    assert w.wait_ns(0, 2, ahead=6) == 2 * S


def test_a_charge_past_n_is_debt_carried_into_the_next_windows() -> None:
    w = counter("2/s")
    w.charge_at(0, 5)
    assert w.tokens_at(0) == -3
    assert w.tokens_at(S) == -1  # the next window starts 3 - 2 = 1 in debt
    assert w.tokens_at(2 * S) == 1
    assert w.wait_ns(0, 1) == 2 * S
    assert w.full_in_ns(0) == 3 * S
    assert not w.try_take(S, 1)
    assert w.try_take(2 * S, 1)
    assert w.tokens_at(5 * S) == 2  # an idle stretch forgets everything


def test_refund_of_a_known_grant_counts_only_while_its_window_is_current() -> None:
    w = counter("3/s")
    first = w._commit_units(0, 2)
    assert w.refund_at(500 * MS, 1, first) == 1.0
    assert w.tokens_at(500 * MS) == 2
    w._commit_units(S, 2)
    assert w.refund_at(S, 1, first) == 0.0  # its window has ended: nothing goes back
    assert w.refund_at(S, 5) == 2.0  # plain: off the current count, never below zero
    assert w.tokens_at(S) == 3


def test_a_grant_booked_ahead_counts_in_its_window_and_holds_back_the_current() -> None:
    w = counter("2/s")
    w.try_take(0, 1)
    mark = w._commit_units(S + 100 * MS, 2)  # a composite's reservation for the next window
    assert w.wait_ns(500 * MS, 1) == 1500 * MS  # nothing now: the current count is gone
    assert w.refund_at(500 * MS, 2, mark) == 2.0  # withdrawn before use
    assert w.wait_ns(500 * MS, 1) == 500 * MS  # its window, now empty, when it starts


def test_reconfigure_keeps_the_count_and_renumbers_the_marks() -> None:
    w = counter("4/s")
    mark = w._commit_units(0, 3)
    w.reconfigure(0, Rate.parse("2/s"), 2)
    assert w.tokens_at(0) == -1  # 3 counted against a capacity of 2
    assert w.refund_at(0, 1, mark) == 0.0  # a mark from before the change: not honoured
    w.reconfigure(0, Rate.parse("10 per 2 seconds"), 10)
    assert w.window_ns == 2 * S
    assert w.tokens_at(S) == 7  # the window of now is 0-2 s under the new length
    assert w.refund_at(S, 1, w._commit_units(S, 1)) == 1.0


def test_a_clock_that_runs_back_never_reopens_a_window() -> None:
    w = counter("2/s")
    w.try_take(S, 2)
    assert w.wait_ns(500 * MS, 1) == 1500 * MS  # counted at 1 s: window 1 stays current
    assert w.tokens_at(500 * MS) == 0


def test_realign_follows_forward_steps_and_back_steps_only_when_safe() -> None:
    w = counter("2/s")
    assert w.realign(0, 0) == S
    w.try_take(900 * MS, 2)
    # The wall clock stepped 200 ms forward: the window of 1-2 s started at 0.8 s.
    assert w.realign(900 * MS, -200 * MS) == 1800 * MS
    assert w.try_take(900 * MS, 2)
    # Stepped 500 ms back: now is in a window already ended; the boundaries stay.
    assert w.realign(1000 * MS, 300 * MS) == 1800 * MS
    assert not w.try_take(1000 * MS, 1)
    # At the old boundary, the new reading puts it in the window still counting: taken.
    assert w.realign(1800 * MS, 300 * MS) == 2300 * MS
    assert w.wait_ns(1800 * MS, 1) == 500 * MS


# -- alignment to the wall clock ---------------------------------------------------------


def test_a_day_window_resets_at_midnight_utc_whatever_the_monotonic_clock() -> None:
    clock = ManualClock(start=5.0)  # monotonic: 5 s since some boot
    epoch = 1_700_000_000 * S  # 2023-11-14 22:13:20 UTC
    limiter = SyncFixedWindow("2/day", wall=lambda: epoch + clock.now_ns(), clock=clock)
    assert limiter.window == DAY
    limiter.acquire(2)
    reservation = limiter.reserve()
    granted_at = utc(epoch + clock.now_ns() + round(reservation.delay * 1e9))
    assert granted_at == dt.datetime(2023, 11, 15, tzinfo=dt.UTC)
    assert limiter.resets_in() == pytest.approx(reservation.delay)


def test_an_offset_moves_the_boundaries_to_local_midnight() -> None:
    clock = ManualClock(start=DAY + 3600.0)  # 1970-01-02 01:00 UTC
    limiter = SyncFixedWindow("1/day", utc_offset=-5 * 3600, clock=clock)
    assert limiter.try_acquire()
    assert limiter.resets_in() == 4 * 3600  # midnight at UTC-5 is 05:00 UTC
    clock.advance(4 * 3600)
    assert limiter.try_acquire()


@pytest.mark.parametrize(("rate", "every"), [("60/minute", 60), ("5/hour", 3600), ("9/day", DAY)])
def test_windows_start_at_whole_periods_of_utc(rate: str, every: int) -> None:
    clock = ManualClock(start=10 * DAY + 1234.5)
    limiter = SyncFixedWindow(rate, clock=clock)
    left = limiter.resets_in()
    assert 0 < left <= every
    assert (clock.time() + left) % every == 0


def test_the_wall_clock_is_read_once_per_window_and_steps_take_effect_at_a_boundary() -> None:
    clock = ManualClock(auto_advance=True)
    reads = []

    def wall() -> int:
        reads.append(clock.now_ns())
        return clock.wall_ns()

    limiter = SyncFixedWindow("2/s", wall=wall, clock=clock)
    for _ in range(6):
        limiter.acquire()
    assert clock.time() == 2.0
    assert reads == [0, S, 2 * S]  # creation, then each boundary
    clock.step_wall(0.5)  # NTP: half a second forward, seen at the next boundary (3 s)
    times = []
    for _ in range(3):
        limiter.acquire()
        times.append(clock.time())
    assert times == [3.0, 3.0, 3.5]  # window 3 (of the new reading) ends at 3.5 s
    clock.step_wall(-2)  # two seconds back: window 3 would come again
    for _ in range(2):
        limiter.acquire()
    assert clock.time() == 4.5  # the boundaries stay: window 3 is never counted twice
    assert reads == [0, S, 2 * S, 3 * S, 3 * S + S // 2, 4 * S + S // 2]


# -- the guarantee, through the limiters, on virtual time --------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_no_fixed_window_ever_holds_more_than_n(ops: list[tuple[int, str, int, int]]) -> None:
    async def main() -> list[tuple[int, int, bool]]:
        clock = ManualClock()
        limiter = FixedWindow("3/s", clock=clock)
        try:
            return await run_scenario(limiter, clock, ops, S, lambda now, t: now // S == t // S)
        finally:
            limiter.close()

    assert_no_fixed_window_over(asyncio.run(main()), 3, S)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_a_fixed_window_beside_a_sliding_one_keeps_both_guarantees(
    ops: list[tuple[int, str, int, int]],
) -> None:
    """The combination the docs recommend: per calendar window, and never 2N across a
    boundary; with a bucket that sometimes decides, all or nothing, in one FIFO queue."""

    async def main() -> list[tuple[int, int, bool]]:
        clock = ManualClock()
        limiter = CompositeLimiter(
            {
                "fixed": Limit("6 per 2 seconds", kind="fixed"),
                "sliding": Limit("4/s", kind="sliding"),
                "bucket": Limit("5/s", 3),
            },
            clock=clock,
        )
        try:
            # A refund is vouched for a grant still counted by both windows.
            def current(now: int, t: int) -> bool:
                return now // (2 * S) == t // (2 * S) and now - t < S

            return await run_scenario(limiter, clock, ops, S, current)
        finally:
            limiter.close()

    grants = asyncio.run(main())
    assert_no_fixed_window_over(grants, 6, 2 * S)
    assert_no_window_over(grants, 4, S)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 700), st.sampled_from(["try", "charge"]), st.integers(1, 4)),
        max_size=40,
    )
)
def test_charges_are_paid_off_by_the_windows_that_follow(steps: list[tuple[int, str, int]]) -> None:
    clock = ManualClock()
    records = run_charges(SyncFixedWindow("4/s", clock=clock), clock, steps)
    assert_no_fixed_window_over(records, 4, S)


def test_a_full_window_serves_its_queue_in_order_at_each_boundary() -> None:
    clock = ManualClock(start=0.25)
    served = asyncio.run(
        serve_queue(
            lambda: FixedWindow("2/s", clock=clock),
            clock,
            (("a", 1), ("big", 2), ("small", 1), ("last", 1)),
            (2, 1, 0.5),  # refused at once: the plan says 0.75 s
        )
    )
    # "a" at once; "big" does not fit beside it and waits for 1 s (FIFO: "small" waits
    # behind it though it would fit), then "small" and "last" share the window of 2 s.
    assert served == [("a", 0.25), ("big", 1.0), ("small", 2.0), ("last", 2.0)]


def test_a_composite_with_a_fixed_window_takes_all_or_nothing() -> None:
    clock = ManualClock(start=30.0, auto_advance=True)
    limiter = SyncCompositeLimiter(
        {"rpd": Limit("2/minute", kind="fixed"), "tpm": Limit("100/minute")}, clock=clock
    )
    assert limiter.limits["rpd"].kind == "fixed"
    assert "kind=fixed" in str(limiter.limits["rpd"])
    assert limiter.try_acquire({"rpd": 1, "tpm": 60})
    assert not limiter.try_acquire({"rpd": 1, "tpm": 60})  # the bucket refuses: nothing taken
    assert limiter.available() == {"rpd": 1.0, "tpm": 40.0}
    assert limiter.try_acquire({"rpd": 1})
    limiter.acquire({"rpd": 1})
    assert clock.time() == 60.0  # the next whole minute of UTC


def test_bad_arguments_are_refused_with_typed_errors() -> None:
    with pytest.raises(TypeError, match="utc_offset"):
        FixedWindow("1/s", utc_offset="+01:00")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="utc_offset"):
        SyncFixedWindow("1/s", utc_offset=float("nan"))
    with pytest.raises(TypeError, match="wall"):
        SyncFixedWindow("1/s", wall=123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        SyncFixedWindow("1/s", 0)


def test_repr_shows_the_count_and_the_next_reset() -> None:
    clock = ManualClock(start=0.5)
    limiter = SyncFixedWindow("4/s", clock=clock)
    limiter.acquire(3)
    assert repr(limiter) == (
        "<SyncFixedWindow 4/s capacity=4 window=1s tokens=1 resets_in=0.5s waiting=0>"
    )
    assert limiter.full_in() == 0.5
