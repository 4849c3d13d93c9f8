"""The fixed window on a real server: ``fixed.lua`` against the core's ``FixedCounter`` (the
same decisions and marks from the same times), the guarantee (no window aligned to the
server's clock holds more than N) over the grants the server made, the key's expiry at the
boundary, and the limiters on the server's clock.

Times are given to the script in whole microseconds through its test-only ``now`` argument,
and to ``FixedCounter`` as the same instants in ns, with a window of whole microseconds and
the offset as the skew.
"""

from __future__ import annotations

import threading

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from ratekeeper import AcquireTimeout, Rate
from ratekeeper._fixed import FixedCounter
from ratekeeper.redis import RedisFixedWindow, SyncRedisFixedWindow
from ratekeeper.redis._window import FIXED_SCRIPT

from .._window_check import assert_no_fixed_window_over
from .test_window import ON_SERVER, T0, core_reserve, ops, reserve_concurrently

S_US = 1_000_000


class Fixed:
    """The script on one key, driven at given times, beside the core at the same times."""

    def __init__(
        self, client: redis.Redis, key: str, capacity: int, span_us: int, offset_us: int = 0
    ) -> None:
        self.script = client.register_script(FIXED_SCRIPT)
        self.key = key
        self.conf = [str(capacity), str(span_us), str(offset_us)]
        self.core = FixedCounter(
            Rate(capacity, per=span_us / 1e6), capacity, T0 * 1000, -offset_us * 1000
        )
        assert self.core.window_ns == span_us * 1000

    def call(self, now_us: int, op: str, *numbers: int) -> list[int]:
        reply = self.script([self.key], [str(now_us), *self.conf, op, *map(str, numbers)])
        values = list(map(int, reply.split()))
        assert values[0] == now_us
        return values[1:]


def test_n_per_window_then_the_next_boundary_and_the_key_expires_there(
    sync_client: redis.Redis, key: str
) -> None:
    w = Fixed(sync_client, key, 3, S_US)  # T0 is a whole second
    assert [w.call(T0 + i * 100_000, "R", 1, -1)[:2] for i in range(3)] == [[1, 0]] * 3
    window = T0 // S_US
    assert sync_client.hgetall(key) == {
        b"k": str(window).encode(),
        b"c": b"3",
        b"l": f"{S_US} 3".encode(),
    }
    # The boundary, at T0 + 1 s: set by the first grant (at T0, rounded up to the next ms);
    # the later grants in the window leave it.
    assert 0 < sync_client.pttl(key) <= 1001
    assert w.call(T0 + 300_000, "R", 1, 0) == [0, 700_000, 0]  # refused: nothing changed
    assert w.call(T0 + 300_000, "R", 1, -1) == [1, 700_000, window + 1]  # booked ahead
    assert w.call(T0 + 300_000, "S") == [1, 1_700_000]  # the booked window's count
    assert w.call(T0 + 300_000, "F", 1, window + 1) == [1]  # withdrawn by its mark
    assert w.call(T0 + 400_000, "R", 1, -1) == [1, 600_000, window + 1]  # still not now
    assert w.call(T0 + 1_000_000, "F", 5, window) == [0]  # an ended window's mark: nothing


def test_a_charge_past_n_is_carried_and_the_key_lives_until_it_is_paid(
    sync_client: redis.Redis, key: str
) -> None:
    w = Fixed(sync_client, key, 2, S_US, offset_us=250_000)
    w.call(T0, "C", 5)  # the window of T0 - 0.25 s to T0 + 0.75 s
    assert w.call(T0, "S") == [5, 2_750_000]  # two windows pay 4, the third starts empty
    assert 2000 < sync_client.pttl(key) <= 2751
    assert w.call(T0 + 1_000_000, "S") == [3, 1_750_000]  # the next window starts at 3


def test_a_new_limit_keeps_the_count_in_the_window_of_now_as_the_core(
    sync_client: redis.Redis, key: str
) -> None:
    w = Fixed(sync_client, key, 4, S_US)
    w.call(T0 + 100_000, "R", 3, -1)
    w.core.try_take((T0 + 100_000) * 1000, 3)
    seen = []
    for capacity, span_us, now in (
        (2, S_US, T0 + 200_000),  # 3 counted against 2
        (10, 2 * S_US, T0 + 300_000),
        (1, 500_000, T0 + 400_000),  # three windows of 0.5 s to pay
        (4, S_US, T0 + 1_200_000),
    ):
        w.conf = [str(capacity), str(span_us), "0"]
        w.core.reconfigure(now * 1000, Rate(capacity, per=span_us / 1e6), capacity)
        seen.append(w.call(now, "S"))
        assert seen[-1] == [
            capacity - w.core.tokens_at(now * 1000),
            w.core.full_in_ns(now * 1000) // 1000,
        ]
    assert seen == [[3, 1_800_000], [3, 1_700_000], [3, 1_100_000], [1, 800_000]]


@ON_SERVER
@given(
    steps=ops(["R", "R", "R", "try", "C", "F", "Fmark", "S"]),
    capacity=st.integers(1, 5),
    offset_us=st.sampled_from([0, 1, 250_000, -999_999]),
)
def test_the_script_decides_as_the_core(
    sync_client: redis.Redis,
    steps: list[tuple[int, str, int, int]],
    capacity: int,
    offset_us: int,
) -> None:
    run(sync_client, steps, capacity, offset_us)


@ON_SERVER
@given(steps=ops(["R", "R", "R", "try", "C", "Fmark", "S"]), capacity=st.integers(1, 5))
def test_the_script_never_puts_more_than_n_in_a_window(
    sync_client: redis.Redis, steps: list[tuple[int, str, int, int]], capacity: int
) -> None:
    """Every grant the server made, at the time it is used, charges carried, withdrawn
    grants gone (by their marks)."""
    grants = run(sync_client, steps, capacity, 0)
    assert_no_fixed_window_over(grants, capacity, S_US)


def run(
    sync_client: redis.Redis, ops: list[tuple[int, str, int, int]], capacity: int, offset_us: int
) -> list[tuple[int, int, bool]]:
    """Drive the script and the core through ``ops``, comparing every answer (marks
    included); return the grants and charges that stand: (time us, tokens, is_grant)."""
    key = f"ratekeeper:test:fixed:{id(ops)}:{len(ops)}:{capacity}:{offset_us}"
    sync_client.delete(key)
    w = Fixed(sync_client, key, capacity, S_US, offset_us)
    core = w.core
    now = T0
    grants: list[list[int]] = []  # [time us, tokens, is_grant, mark]
    for delay, op, tokens, choice in ops:
        now += delay
        ns = now * 1000
        if op in ("R", "try"):
            size = min(tokens, capacity)
            max_wait = 0 if op == "try" else (-1 if choice % 3 == 0 else choice)
            got = w.call(now, "R", size, max_wait)
            want = core_reserve(core, ns, size, -1 if max_wait < 0 else max_wait * 1000)
            assert got == [want[0], want[1] // 1000, want[2]]
            if got[0]:
                grants.append([now + got[1], size, 1, got[2]])
        elif op == "C":
            got = w.call(now, "C", tokens)
            assert got == [core.charge_at(ns, tokens)]
            # Counted in the window counted in: now's, or a later one booked ahead.
            grants.append([max(now, got[0] * S_US - offset_us), tokens, 0, got[0]])
        elif op == "F":
            assert w.call(now, "F", tokens, -1) == [int(core.refund_at(ns, tokens))]
        elif op == "Fmark" and any(g[1] for g in grants):
            standing = [g for g in grants if g[1]]
            grant = standing[choice % len(standing)]
            back = w.call(now, "F", grant[1], grant[3])
            assert back == [int(core.refund_at(ns, grant[1], grant[3]))]
            grant[1] -= back[0]
        else:
            count, left = w.call(now, "S")
            assert count == capacity - core.tokens_at(ns)
            assert left == core.full_in_ns(ns) // 1000
        assert sync_client.pttl(key) != -1  # never a key without an expiry
    sync_client.delete(key)
    return [(t, n, bool(g)) for t, n, g, _ in grants if n > 0]


# -- the limiters, on the server's clock ----------------------------------------------------


def _server_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * S_US + int(micros)


async def test_concurrent_callers_never_put_more_than_n_in_a_window(
    redis_url: str, sync_client: redis.Redis, key: str
) -> None:
    """Many tasks, each acquiring, sometimes cancelling: the grants, at the server times
    they were used, never put more than N in a window aligned to the server's clock."""
    limiter = RedisFixedWindow(redis_url, key, "5 per 0.2 seconds")
    # The window a grant counted in is its mark: the server's window number.
    used = [(mark * 200_000, n, True) for mark, n, _ in await reserve_concurrently(limiter)]
    assert len(used) >= 30
    assert_no_fixed_window_over(used, 5, 200_000)
    # The marks are the server's windows: the last one is now's or just before it.
    assert max(t for t, _, _ in used) // 200_000 <= _server_us(sync_client) // 200_000


def test_threads_share_one_window_and_the_boundary_is_the_servers(
    redis_url: str, sync_client: redis.Redis, key: str
) -> None:
    limiter = SyncRedisFixedWindow(redis_url, key, "4 per 0.2 seconds")
    marks: list[int] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(4):
            reservation = limiter.reserve(1)
            reservation.wait()
            with lock:
                marks.append(reservation._mark)

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    limiter.close()
    assert len(marks) == 20
    assert max(marks.count(m) for m in set(marks)) <= 4
    assert limiter.window == 0.2


def test_a_day_window_resets_at_midnight_by_the_servers_clock(
    sync_client: redis.Redis, key: str
) -> None:
    limiter = SyncRedisFixedWindow(sync_client, key, "2/day")
    assert limiter.try_acquire(2)
    with pytest.raises(AcquireTimeout):
        limiter.acquire(timeout=1)
    now = _server_us(sync_client)
    midnight = (now // (86_400 * S_US) + 1) * 86_400 * S_US
    assert limiter.full_in() == pytest.approx((midnight - now) / 1e6, abs=1)
    assert 0 < sync_client.pttl(f"ratekeeper:{key}") <= (midnight - now) // 1000 + 1
    shifted = SyncRedisFixedWindow(sync_client, key + "x", "2/day", utc_offset=3600)
    assert shifted.try_acquire(2)
    local_midnight = ((now + 3600 * S_US) // (86_400 * S_US) + 1) * 86_400 * S_US - 3600 * S_US
    assert shifted.full_in() == pytest.approx((local_midnight - now) / 1e6, abs=1)
    with pytest.raises(TypeError, match="utc_offset"):
        SyncRedisFixedWindow(sync_client, key, "1/s", utc_offset="+01:00")  # type: ignore[arg-type]
