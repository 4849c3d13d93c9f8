"""The sliding window: the pure log as tables of steps, and the guarantee (no window of
length T ever holds more than N) proved over every pair of grants on virtual time, through
the real limiters, under random arrivals, sizes, timeouts, cancellations and refunds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratekeeper import (
    AcquireTimeout,
    CompositeLimiter,
    Limit,
    Rate,
    SlidingWindow,
    SyncCompositeLimiter,
    SyncSlidingWindow,
)
from ratekeeper._window import SlidingLog
from ratekeeper.testing import ManualClock

from ._window_check import assert_no_window_over

S = 1_000_000_000
MS = 1_000_000


def log(rate: str = "3/s", capacity: int | None = None) -> SlidingLog:
    rate_ = Rate.parse(rate)
    return SlidingLog(rate_, rate_.default_capacity if capacity is None else capacity)


# -- the pure log, step by step ----------------------------------------------------------


def test_n_tokens_then_each_waits_for_the_oldest_to_slide_out() -> None:
    w = log("3/s")  # at most 3 in any second
    for t in (0, 100 * MS, 200 * MS):
        assert w.wait_ns(t, 1) == 0
        w.try_take(t, 1)
    assert w.wait_ns(300 * MS, 1) == 700 * MS  # the token of t=0 leaves the window at 1 s
    assert not w.try_take(999_999_999, 1)
    assert w.try_take(S, 1)  # exactly T later: no window holds both
    assert w.wait_ns(S, 2) == 200 * MS  # two together: when the second oldest (0.2 s) leaves
    assert w.held_times() == [100 * MS, 200 * MS, S]


def test_a_request_waits_for_its_own_size_to_slide_out() -> None:
    w = log("10/s")
    w.charge_at(0, 4)
    w.charge_at(500 * MS, 6)
    assert w.tokens_at(600 * MS) == 0
    assert w.wait_ns(600 * MS, 4) == 400 * MS  # the four of t=0
    assert w.wait_ns(600 * MS, 5) == 900 * MS  # and one of t=0.5
    assert w.tokens_at(S) == 4
    assert w.full_in_ns(S) == 500 * MS


def test_the_plan_behind_a_queue_counts_whole_windows() -> None:
    w = log("2/s")
    w.try_take(0, 2)
    # 2 ahead, then 1: the ahead go at 1 s, ours when the first of them slides out, at 2 s.
    assert w.wait_ns(0, 1, ahead=2) == 2 * S
    assert w.wait_ns(0, 1, ahead=1) == S
    assert w.wait_ns(0, 2, ahead=4) == 3 * S


def test_a_charge_past_n_is_debt_that_later_callers_wait_off() -> None:
    w = log("2/s")
    w.charge_at(0, 5)
    assert w.tokens_at(0) == -3
    assert len(w._times) - w._lo <= 2  # at most N timestamps, whatever the debt
    assert w.wait_ns(500 * MS, 1) == 500 * MS
    assert w.try_take(S, 2)  # every charged token slid out together
    assert w.tokens_at(S) == 0


def test_refund_of_a_known_grant_removes_it_and_a_plain_refund_the_oldest() -> None:
    w = log("3/s")
    first = w._commit_units(0, 1)
    second = w._commit_units(100 * MS, 1)
    w._commit_units(200 * MS, 1)
    assert w.refund_at(300 * MS, 1, second) == 1.0
    assert w.held_times() == [0, 200 * MS]
    assert w.refund_at(300 * MS, 1) == 1.0  # plain: the oldest goes
    assert w.held_times() == [200 * MS]
    assert w.refund_at(300 * MS, 1, first) == 0.0  # already gone: nothing else goes
    assert w.refund_at(S + 200 * MS, 1) == 0.0  # slid out: nothing to give back
    assert w.held_times() == []


def test_refund_never_returns_more_than_the_window_holds() -> None:
    w = log("3/s")
    w._commit_units(0, 2)
    assert w.refund_at(0, 5) == 2.0
    assert w.tokens_at(0) == 3


def test_refund_of_a_grant_counted_in_the_debt() -> None:
    w = log("2/s")
    mark = w._commit_units(0, 2)
    w.charge_at(100 * MS, 2)  # the grant's tokens are now older than the N newest
    assert w.refund_at(100 * MS, 2, mark) == 2.0
    assert w.tokens_at(100 * MS) == 0


def test_grants_are_recorded_in_time_order_even_if_asked_earlier() -> None:
    w = log("3/s")
    w._commit_units(500 * MS, 1)
    assert w._commit_units(100 * MS, 1) == 500 * MS  # never before the newest
    assert w.held_times() == [500 * MS, 500 * MS]


def test_reconfigure_keeps_the_tokens_at_their_times() -> None:
    w = log("4/s")
    w.try_take(0, 3)
    w.reconfigure(0, Rate.parse("2/s"), 2)
    assert w.tokens_at(0) == -1  # 3 held against a capacity of 2
    assert w.wait_ns(0, 1) == S
    w.reconfigure(0, Rate.parse("10 per 2 seconds"), 10)
    assert w.tokens_at(0) == 7
    assert w.window_ns == 2 * S


def test_memory_stays_bounded_by_n_runs() -> None:
    w = log("5/s")
    for i in range(10_000):
        w.charge_at(i * 10 * MS, 1)
        assert len(w._times) - w._lo <= 5
        assert len(w._times) <= 2 * 5 + 66  # live runs plus the compaction slack
    w.try_take(10**6 * S, 1)
    assert w.held_times() == [10**6 * S]


@pytest.mark.parametrize(("rate", "capacity", "window"), [("100/minute", None, 60.0)])
def test_the_window_is_capacity_tokens_at_the_rate(
    rate: str, capacity: int | None, window: float
) -> None:
    assert SlidingWindow(rate, capacity).window == window
    assert SlidingWindow("1/s", 10).window == 10.0
    assert SyncSlidingWindow("1.5/s").window == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="kind"):
        Limit("1/s", kind="leaky")


# -- the guarantee, through the limiters, on virtual time --------------------------------

OPS = st.lists(
    st.tuples(
        st.integers(0, 400),  # ms before the step
        st.sampled_from(
            ["acquire", "acquire", "timeout", "try", "reserve", "cancel", "refund", "take_fail"]
        ),
        st.integers(1, 3),  # tokens
        st.integers(0, 1000),  # a choice: timeout in ms, which task to cancel, ...
    ),
    max_size=40,
)


async def run_scenario(
    limiter: Any,
    clock: ManualClock,
    ops: list[tuple[int, str, int, int]],
    window_ns: int,
    current: Callable[[int, int], bool] | None = None,
) -> list[tuple[int, int, bool]]:
    """Drive ``limiter`` through ``ops``; return what really stands: (time, tokens, True)
    for every grant not withdrawn, less what its holder vouched unused.

    A refund is vouched for a grant still counted: ``current(now_ns, grant_ns)``, by default
    one less than ``window_ns`` old (a fixed window counts the grants of its own window)."""
    standing: list[list[int]] = []  # [time ns, tokens]
    tasks: list[asyncio.Task[None]] = []

    async def acquire(tokens: int, timeout: float | None) -> None:
        with contextlib.suppress(AcquireTimeout):
            await limiter.acquire(tokens, timeout=timeout)
            standing.append([clock.now_ns(), tokens])

    for delay, op, tokens, choice in ops:
        await clock.sleep(delay / 1000)
        if op in ("acquire", "timeout"):
            timeout = choice / 1000 if op == "timeout" else None
            tasks.append(asyncio.ensure_future(acquire(tokens, timeout)))
            await asyncio.sleep(0)
        elif op == "try":
            if await limiter.try_acquire(tokens):
                standing.append([clock.now_ns(), tokens])
        elif op == "reserve":
            with contextlib.suppress(AcquireTimeout):
                reservation = await limiter.reserve(tokens, timeout=choice / 1000)
                if choice % 2:
                    reservation.cancel()  # withdrawn before use: it must not count
                else:
                    tasks.append(asyncio.ensure_future(_use(reservation, clock, standing, tokens)))
                    await asyncio.sleep(0)
        elif op == "cancel":
            live = [t for t in tasks if not t.done()]
            if live:
                live[choice % len(live)].cancel()
                await asyncio.sleep(0)
        elif op == "refund":
            # Its holder vouches that ``tokens`` of its grant went unused: a grant still in
            # the window (one that slid out is forgotten; its refund would be someone else's).
            now = clock.now_ns()
            own = [
                g
                for g in standing
                if g[1] >= tokens and (current(now, g[0]) if current else now - g[0] < window_ns)
            ]
            if own:
                grant = own[choice % len(own)]
                await limiter.refund(tokens)
                grant[1] -= tokens
        elif op == "take_fail":
            with contextlib.suppress(RuntimeError, AcquireTimeout):
                async with limiter.take(tokens, refund_on_error=True, timeout=0):
                    raise RuntimeError("the call failed: its tokens go back")
    await clock.sleep(60)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return [(t, n, True) for t, n in standing if n]


async def _use(reservation: Any, clock: ManualClock, standing: list[list[int]], n: int) -> None:
    await reservation
    standing.append([clock.now_ns(), n])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_no_window_ever_holds_more_than_n(ops: list[tuple[int, str, int, int]]) -> None:
    async def main() -> list[tuple[int, int, bool]]:
        clock = ManualClock()
        limiter = SlidingWindow("3/s", clock=clock)
        try:
            return await run_scenario(limiter, clock, ops, S)
        finally:
            limiter.close()

    assert_no_window_over(asyncio.run(main()), 3, S)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_a_window_in_a_composite_keeps_its_guarantee(ops: list[tuple[int, str, int, int]]) -> None:
    """Beside a token bucket that sometimes decides, all or nothing, in one FIFO queue."""

    async def main() -> list[tuple[int, int, bool]]:
        clock = ManualClock()
        limiter = CompositeLimiter(
            {"window": Limit("4 per 2 seconds", kind="sliding"), "bucket": Limit("3/s", 3)},
            clock=clock,
        )
        try:
            return await run_scenario(limiter, clock, ops, 2 * S)
        finally:
            limiter.close()

    assert_no_window_over(asyncio.run(main()), 4, 2 * S)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 500), st.sampled_from(["try", "charge"]), st.integers(1, 4)),
        max_size=40,
    )
)
def test_charges_are_waited_off_by_every_later_grant(steps: list[tuple[int, str, int]]) -> None:
    clock = ManualClock()
    assert_no_window_over(run_charges(SyncSlidingWindow("4/s", clock=clock), clock, steps), 4, S)


def run_charges(
    limiter: Any, clock: ManualClock, steps: list[tuple[int, str, int]]
) -> list[tuple[int, int, bool]]:
    """Drive a blocking ``limiter`` through tries and charges; return (time, tokens, is a
    grant) for each that went."""
    records: list[tuple[int, int, bool]] = []
    for delay, op, tokens in steps:
        clock.advance(delay / 1000)
        if op == "charge":
            limiter.charge(tokens)
            records.append((clock.now_ns(), tokens, False))
        elif limiter.try_acquire(tokens):
            records.append((clock.now_ns(), tokens, True))
    return records


def test_a_full_window_serves_its_queue_in_order_once_per_window() -> None:
    clock = ManualClock()
    served = asyncio.run(
        serve_queue(
            lambda: SlidingWindow("2/s", clock=clock),
            clock,
            (("a", 2), ("big", 2), ("small", 1), ("last", 1)),
            (2, 2, 0.5),  # refused at once: the plan says 1 s
        )
    )
    assert served == [("a", 0.0), ("big", 1.0), ("small", 2.0), ("last", 2.0)]


async def serve_queue(
    make: Callable[[], Any],
    clock: ManualClock,
    requests: tuple[tuple[str, int], ...],
    refused: tuple[int, int, float],
) -> list[tuple[str, float]]:
    """Queue ``requests`` (name, tokens) on the limiter ``make`` returns; return (name,
    grant time) in grant order. Then take ``refused[0]`` tokens and check that
    ``refused[1]`` more within ``refused[2]`` s are refused at once."""
    limiter = make()
    served: list[tuple[str, float]] = []

    async def go(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        served.append((name, clock.time()))

    tasks = [asyncio.ensure_future(go(name, n)) for name, n in requests]
    await clock.sleep(5)
    await asyncio.gather(*tasks)
    await limiter.acquire(refused[0])
    with pytest.raises(AcquireTimeout):
        await limiter.acquire(refused[1], timeout=refused[2])
    assert limiter.statistics().rejected == 1
    return served


def test_a_composite_of_a_window_and_a_bucket_takes_both_or_neither() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncCompositeLimiter(
        {"rpm": Limit("2/minute", kind="sliding"), "tpm": Limit("100/minute")}, clock=clock
    )
    assert limiter.limits["rpm"].kind == "sliding"
    assert limiter.try_acquire({"rpm": 1, "tpm": 60})
    assert not limiter.try_acquire({"rpm": 1, "tpm": 60})  # the bucket refuses: nothing taken
    assert limiter.available() == {"rpm": 1.0, "tpm": 40.0}
    assert limiter.try_acquire({"rpm": 1, "tpm": 10})
    assert not limiter.try_acquire({"rpm": 1})  # the window refuses
    limiter.acquire({"rpm": 1})
    assert clock.time() == 60.0  # when the first grant slid out of the window
    assert "kind=sliding" in str(limiter.limits["rpm"])


def test_limiters_without_windows_refuse_a_window_limit_by_name() -> None:
    from ratekeeper import KeyedLimiter

    with pytest.raises(ValueError, match="'rpm': kind='sliding' is not supported here"):
        KeyedLimiter(limits={"rpm": Limit("1/s", kind="sliding")})


def test_a_grant_after_the_live_runs_were_given_back_during_a_debt_counts() -> None:
    """The race the differential test against the server found: tokens moved into the debt
    count, the run they came from given back by its mark, then a new grant: it must count
    (it was numbered before the first live token and so lost)."""
    w = log("1/s")
    w._commit_units(0, 1)
    mark = w._commit_units(S, 1)  # booked ahead: the token of 0 is now debt
    w.charge_at(0, 1)  # recorded with the booking (never before the newest): more debt
    assert w.refund_at(0, 1, mark) == 1.0
    w._commit_units(2 * S, 1)
    assert w.tokens_at(2 * S) == 0


def test_settling_never_forgets_a_token_for_a_booking_that_may_be_withdrawn() -> None:
    """A booking ahead makes older tokens irrelevant only while it stands: they must not be
    dropped for it (the server's differential test found the burst this opened)."""
    w = log("1/s")
    w._commit_units(0, 1)
    mark = w._commit_units(S, 1)
    assert w.refund_at(0, 1, mark) == 1.0  # the booking is withdrawn
    assert w.wait_ns(0, 1) == S  # the token of 0 still holds the window until 1 s
