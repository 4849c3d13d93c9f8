"""The sliding window on a real server: ``window.lua`` against the core's ``SlidingLog`` (the
same decisions from the same times), and the guarantee (no window of length T ever holds
more than N) over every pair of the grants the server recorded.

Times are given to the script in whole microseconds through its test-only ``now`` argument,
and to ``SlidingLog`` as the same instants in ns, with a window of whole microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratekeeper import AcquireTimeout, BackendUnavailable, LimiterClosed, Rate
from ratekeeper._window import SlidingLog
from ratekeeper.redis import RedisSlidingWindow, SyncRedisSlidingWindow
from ratekeeper.redis._window import WINDOW_SCRIPT

from .._window_check import assert_no_window_over

T0 = 1_700_000_000_000_000  # us: a realistic server time

# Hypothesis against the server: each example is a few round trips.
ON_SERVER = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Window:
    """The script on one key, driven at given times, beside the core at the same times."""

    def __init__(self, client: redis.Redis, key: str, capacity: int, span_us: int) -> None:
        self.script = client.register_script(WINDOW_SCRIPT)
        self.key = key
        self.conf = [str(capacity), str(span_us)]
        self.core = SlidingLog(Rate(capacity, per=span_us / 1e6), capacity)
        assert self.core.window_ns == span_us * 1000

    def call(self, now_us: int, op: str, *numbers: int) -> list[int]:
        reply = self.script([self.key], [str(now_us), *self.conf, op, *map(str, numbers)])
        values = list(map(int, reply.split()))
        assert values[0] == now_us
        return values[1:]


def core_reserve(core: SlidingLog, now_ns: int, tokens: int, max_wait_ns: int) -> list[int]:
    wait = core.wait_ns(now_ns, tokens)
    if max_wait_ns >= 0 and wait > max_wait_ns:
        return [0, wait, 0]
    return [1, wait, core._commit_units(now_ns + wait, tokens)]


def test_a_burst_then_each_waits_for_the_oldest_to_slide_out(
    sync_client: redis.Redis, key: str
) -> None:
    w = Window(sync_client, key, 3, 1_000_000)
    assert [w.call(T0 + i * 100_000, "R", 1, -1) for i in range(3)] == [
        [1, 0, T0],
        [1, 0, T0 + 100_000],
        [1, 0, T0 + 200_000],
    ]
    assert w.call(T0 + 300_000, "R", 1, 0) == [0, 700_000, 0]  # refused: nothing changed
    assert w.call(T0 + 300_000, "R", 1, -1) == [1, 700_000, T0 + 1_000_000]  # booked ahead
    assert w.call(T0 + 300_000, "S") == [4, 1_700_000]  # the booking counts, as the core's
    assert w.call(T0 + 300_000, "F", 1, T0 + 1_000_000) == [1]  # withdrawn by its mark
    assert w.call(T0 + 300_000, "F", 5, -1) == [3]  # plain: the oldest first, at most all
    assert sync_client.llen(key) == 0


def test_a_charge_past_n_keeps_at_most_n_plus_one_elements(
    sync_client: redis.Redis, key: str
) -> None:
    w = Window(sync_client, key, 4, 1_000_000)
    w.call(T0, "C", 3)
    w.call(T0 + 10, "C", 5)
    assert sync_client.llen(key) == 5  # 4 tokens and one run of the 4 older ones
    assert w.call(T0 + 10, "S") == [8, 1_000_000]
    assert w.call(T0 + 20, "R", 1, -1) == [1, 1_000_000 - 10, T0 + 1_000_010]


def ops(kinds: list[str]) -> st.SearchStrategy[list[tuple[int, str, int, int]]]:
    return st.lists(
        st.tuples(
            st.integers(0, 400_000),  # us before the step
            st.sampled_from(kinds),
            st.integers(1, 4),
            st.integers(0, 2_000_000),
        ),
        max_size=50,
    )


@ON_SERVER
@given(steps=ops(["R", "R", "R", "try", "C", "F", "Fmark", "S"]), capacity=st.integers(1, 5))
def test_the_script_decides_as_the_core(
    sync_client: redis.Redis, steps: list[tuple[int, str, int, int]], capacity: int
) -> None:
    run(sync_client, steps, capacity)


@ON_SERVER
@given(steps=ops(["R", "R", "R", "try", "C", "Fmark", "S"]), capacity=st.integers(1, 5))
def test_the_script_never_puts_more_than_n_in_any_window(
    sync_client: redis.Redis, steps: list[tuple[int, str, int, int]], capacity: int
) -> None:
    """Every pair of the grants the server recorded, charges waited off, withdrawn grants
    gone (by their marks)."""
    grants = run(sync_client, steps, capacity)
    assert_no_window_over(grants, capacity, 1_000_000)


def run(
    sync_client: redis.Redis, ops: list[tuple[int, str, int, int]], capacity: int
) -> list[tuple[int, int, bool]]:
    """Drive the script and the core through ``ops``, comparing every answer; return the
    grants and charges that stand: (time us, tokens, is_grant)."""
    key = f"ratekeeper:test:window:{id(ops)}:{len(ops)}:{capacity}"
    sync_client.delete(key)
    span_us = 1_000_000
    w = Window(sync_client, key, capacity, span_us)
    core = w.core
    now = T0
    grants: list[list[int]] = []  # [time us, tokens, is_grant]
    for delay, op, tokens, choice in ops:
        now += delay
        ns = now * 1000
        if op in ("R", "try"):
            size = min(tokens, capacity)
            max_wait = 0 if op == "try" else (-1 if choice % 3 == 0 else choice)
            got = w.call(now, "R", size, max_wait)
            want = core_reserve(core, ns, size, -1 if max_wait < 0 else max_wait * 1000)
            assert got == [want[0], want[1] // 1000, want[2] // 1000]
            if got[0]:
                grants.append([got[2], size, 1])
        elif op == "C":
            got = w.call(now, "C", tokens)
            assert got == [core.charge_at(ns, tokens) // 1000]
            grants.append([got[0], tokens, 0])
        elif op == "F":
            assert w.call(now, "F", tokens, -1) == [int(core.refund_at(ns, tokens))]
        elif op == "Fmark" and any(g[1] for g in grants):
            standing = [g for g in grants if g[1]]
            grant = standing[choice % len(standing)]
            back = w.call(now, "F", grant[1], grant[0])
            assert back == [int(core.refund_at(ns, grant[1], grant[0] * 1000))]
            # A grant given back by its mark leaves the log; one older than the window is
            # forgotten (nothing goes back), and none of its tokens was given to another.
            grant[1] -= back[0]
        else:
            held, left = w.call(now, "S")
            assert held == capacity - core.tokens_at(ns)
            assert left == core.full_in_ns(ns) // 1000
        assert sync_client.llen(key) <= capacity + 1
    sync_client.delete(key)
    return [(t, n, bool(g)) for t, n, g in grants if n > 0]


# -- the limiters, on the server's clock ----------------------------------------------------


def test_the_key_expires_within_a_quarter_window_after_its_newest_token_leaves(
    sync_client: redis.Redis, redis_url: str
) -> None:
    """The script sets the TTL only when the newest token moves to another quarter window:
    the key must never expire while its newest token is in the window, nor linger more
    than a quarter window after it has left. Checked after each call, on the server's clock
    (TIME, PTTL and the newest token read in one transaction)."""
    limiter = SyncRedisSlidingWindow(redis_url, "test:window:ttl", "4 per 0.2 seconds")
    limiter.refund(100)
    span_us = 200_000
    checked = 0
    for i in range(60):
        if i % 7 == 3:
            limiter.acquire()  # sometimes booked ahead: a newest token in the future
        else:
            limiter.try_acquire()
        pipe = sync_client.pipeline(transaction=True)
        pipe.lrange(limiter.key, 0, 1).pttl(limiter.key).time()
        top, ttl_ms, (seconds, micros) = pipe.execute()
        now_us = seconds * 1_000_000 + micros
        if top:
            expires_us = now_us + ttl_ms * 1000
            # The newest plain token, after the debt's run "t*c" if that is first.
            newest = max(int(element.split(b"*")[0]) for element in top)
            assert newest + span_us <= expires_us + 1000  # PTTL counts whole ms
            assert expires_us <= newest + span_us + span_us // 4 + 3000
            checked += 1
        time.sleep(0.011)
    limiter.close()
    assert checked >= 50


def test_the_script_is_loaded_again_after_script_flush(
    sync_client: redis.Redis, redis_url: str
) -> None:
    limiter = SyncRedisSlidingWindow(redis_url, "test:window:flush", "3/s")
    limiter.refund(10)
    assert limiter.try_acquire()
    sync_client.script_flush()
    assert limiter.try_acquire()
    assert limiter.statistics().backend_errors == 0
    limiter.close()


async def test_the_async_script_is_loaded_again_after_script_flush(
    async_client: Any, redis_url: str
) -> None:
    limiter = RedisSlidingWindow(redis_url, "test:window:flush-async", "3/s")
    await limiter.refund(10)
    assert await limiter.try_acquire()
    await async_client.script_flush()
    reservation = await limiter.reserve()
    reservation.cancel()  # its refund is sent by the next call, on a flushed server too
    await async_client.script_flush()
    assert await limiter.try_acquire()
    stats = limiter.statistics()
    assert (stats.backend_errors, stats.refunded_tokens) == (0, 1)
    await limiter.aclose()


async def test_concurrent_callers_never_put_more_than_n_in_any_window(redis_url: str) -> None:
    """Many tasks, each acquiring, sometimes cancelling: the grants the server recorded
    (the reservations' marks, server time) never hold more than N in any window of T."""
    limiter = RedisSlidingWindow(redis_url, "test:window:concurrent", "5 per 0.2 seconds")
    await limiter.refund(100)  # a fresh window
    marks = await reserve_concurrently(limiter)
    assert len(marks) >= 30
    assert_no_window_over(marks, 5, 200_000)


async def reserve_concurrently(limiter: Any) -> list[tuple[int, int, bool]]:
    """Reserve from 8 tasks, 6 times each, 1 or 2 tokens, cancelling some before use; close
    the limiter; return (mark, tokens, True) for each grant used."""
    marks: list[tuple[int, int, bool]] = []

    async def caller(i: int) -> None:
        for j in range(6):
            tokens = 1 + (i + j) % 2
            reservation = await limiter.reserve(tokens)
            if (i + j) % 5 == 0:
                reservation.cancel()  # given back before use: it must not count
                continue
            await reservation
            marks.append((reservation._mark, tokens, True))

    try:
        await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(8))), 30)
    finally:
        await limiter.aclose()
    return marks


def test_threads_never_put_more_than_n_in_any_window(redis_url: str) -> None:
    limiter = SyncRedisSlidingWindow(redis_url, "test:window:threads", "4 per 0.2 seconds")
    limiter.refund(100)
    marks: list[tuple[int, int, bool]] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(5):
            reservation = limiter.reserve(1)
            reservation.wait()
            with lock:
                marks.append((reservation._mark, 1, True))

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    limiter.close()
    assert len(marks) == 30
    assert_no_window_over(marks, 4, 200_000)


async def test_a_timeout_is_refused_at_once_and_close_wakes_sleepers(redis_url: str) -> None:
    limiter = RedisSlidingWindow(redis_url, "test:window:close", "1/s")
    await limiter.refund(10)
    assert await limiter.try_acquire()
    with pytest.raises(AcquireTimeout) as caught:
        await limiter.acquire(timeout=0.1)
    assert caught.value.retry_after == pytest.approx(1.0, abs=0.1)
    sleeper = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0.05)
    limiter.close()
    with pytest.raises(LimiterClosed):
        await sleeper
    await limiter.aclose()
    assert "RedisSlidingWindow" in repr(limiter) and "closed" in repr(limiter)


async def test_a_dead_server_fails_closed() -> None:
    limiter = RedisSlidingWindow("redis://127.0.0.1:1/0", "k", "1/s", timeout=0.2)
    with pytest.raises(BackendUnavailable):
        await limiter.try_acquire()
    assert limiter.statistics().backend_errors == 1
    with contextlib.suppress(Exception):
        await limiter.aclose()
