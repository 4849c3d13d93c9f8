"""The Redis limiters' API against a real server: the verbs, order, cancellation, errors.

Wall-clock waits here are short (tens of ms) and the assertions tolerant of late wakeups.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from ratekeeper import AcquireTimeout, BackendUnavailable, LimiterClosed, RateKeeperError
from ratekeeper.redis import (
    Limit,
    RedisCompositeLimiter,
    RedisReservation,
    RedisStatistics,
    RedisTokenBucket,
    SyncRedisCompositeLimiter,
    SyncRedisTokenBucket,
)

# -- asyncio: the verbs ------------------------------------------------------------------


async def test_a_burst_is_granted_then_refused(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "10/s", 3)
    assert [await bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    stats = bucket.statistics()
    assert isinstance(stats, RedisStatistics)
    assert (stats.granted, stats.rejected, stats.server_requests) == (3, 1, 4)
    assert 0 < await bucket.available() < 0.5  # refilling at 10/s since the burst


async def test_acquire_reserves_then_sleeps_once(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "20/s", 1)
    await bucket.acquire()
    start = time.monotonic()
    await bucket.acquire()  # 50 ms at the server's rate
    assert 0.045 <= time.monotonic() - start < 0.5
    stats = bucket.statistics()
    assert stats.server_requests == 2  # one round trip each: no polling
    assert stats.max_wait == pytest.approx(0.05, abs=0.01)


async def test_a_timeout_that_cannot_be_met_is_refused_at_once_consuming_nothing(
    async_client: Any, key: str
) -> None:
    bucket = RedisTokenBucket(async_client, key, "1/s", 2)
    await bucket.acquire(2)
    start = time.monotonic()
    with pytest.raises(AcquireTimeout) as info:
        await bucket.acquire(timeout=0.5)
    assert time.monotonic() - start < 0.2
    assert info.value.retry_after == pytest.approx(1.0, abs=0.05)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, RateKeeperError)
    # Nothing was reserved: one token is due in about 1 s, as before.
    assert await bucket.full_in() == pytest.approx(2.0, abs=0.1)


async def test_reserve_gives_the_delay_and_cancel_gives_the_tokens_back(
    async_client: Any, key: str
) -> None:
    bucket = RedisTokenBucket(async_client, key, "10/s", 1)
    first = await bucket.reserve()
    assert isinstance(first, RedisReservation) and first.delay == 0
    second = await bucket.reserve()
    assert 0.07 <= second.delay <= 0.1  # less by the time between the calls (a loaded host)
    second.cancel()
    assert second.cancelled
    await asyncio.sleep(0.01)  # the refund goes out with the next batch
    third = await bucket.reserve()
    # The cancelled slot came back: the third waits for it (0.1 s after the first, less the
    # time the calls took on a loaded host), not for the next one (0.2 s after the first).
    assert 0 < third.delay <= 0.1
    with pytest.raises(AcquireTimeout):
        await bucket.reserve(timeout=0.05)


async def test_a_caller_cancelled_while_sleeping_gives_its_tokens_back(
    async_client: Any, key: str
) -> None:
    bucket = RedisTokenBucket(async_client, key, "5/s", 1)
    await bucket.acquire()
    task = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.05)
    assert bucket.statistics().waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    stats = bucket.statistics()
    assert (stats.cancelled, stats.waiting) == (1, 0)
    assert stats.refunded_tokens == pytest.approx(1.0)
    assert await bucket.full_in() == pytest.approx(0.15, abs=0.03)  # only the first token


async def test_concurrent_callers_share_round_trips_and_are_served_in_arrival_order(
    async_client: Any, key: str
) -> None:
    bucket = RedisTokenBucket(async_client, key, "1000/s", 1)
    reservations = await asyncio.gather(*(bucket.reserve() for _ in range(50)))
    stats = bucket.statistics()
    assert stats.server_requests == 50
    assert stats.round_trips <= 5
    delays = [r.delay for r in reservations]
    assert delays == sorted(delays)  # arrival order is service order
    assert delays[-1] == pytest.approx(0.049, abs=0.002)
    for r in reservations:
        r.cancel()


async def test_charge_puts_the_bucket_in_debt_and_refund_settles_it(
    async_client: Any, key: str
) -> None:
    bucket = RedisTokenBucket(async_client, key, "10/s", 5)
    await bucket.charge(8)
    assert await bucket.available() == pytest.approx(-3, abs=0.3)  # real clock: 30 ms slack
    assert not await bucket.try_acquire()
    # In debt with no slot booked ahead, the caller's word is taken: the tokens go back.
    assert await bucket.refund(4) == pytest.approx(4, abs=0.01)
    assert await bucket.available() == pytest.approx(1, abs=0.3)
    # Once a sleeper is promised a slot ahead, tokens given back without a mark might be
    # its own: none go back.
    reservation = await bucket.reserve(3)
    assert reservation.delay > 0
    assert await bucket.refund(2) == 0
    reservation.cancel()
    bucket2 = RedisTokenBucket(async_client, key + "-2", "10/s", 5)
    assert await bucket2.try_acquire(4)
    assert await bucket2.refund(3) == pytest.approx(3, abs=0.01)
    assert await bucket2.refund(100) <= 1  # never above the capacity


async def test_take_refunds_on_error_and_sugar_works(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "10/s", 2)
    with pytest.raises(KeyError):
        async with bucket.take(2, refund_on_error=True):
            raise KeyError("the call failed")
    await asyncio.sleep(0.01)
    assert await bucket.available() == pytest.approx(2, abs=0.01)

    async with bucket:
        pass

    @bucket
    async def call(x: int) -> int:
        return x * 2

    assert await call(4) == 8
    assert bucket.statistics().granted == 3
    with pytest.raises(TypeError, match="not an async function"):
        bucket(lambda: None)  # type: ignore[arg-type,return-value]


async def test_close_wakes_sleepers_and_refuses_later_calls(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "2/s", 1)
    await bucket.acquire()
    task = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.05)
    bucket.close()
    with pytest.raises(LimiterClosed):
        await task
    with pytest.raises(LimiterClosed):
        await bucket.acquire()
    assert bucket.closed and "closed" in repr(bucket)
    await asyncio.sleep(0.01)
    assert bucket.statistics().refunded_tokens == pytest.approx(1.0)


async def test_the_key_is_prefixed_and_expires(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "100/s", 2, prefix="app:")
    await bucket.acquire(2)
    assert bucket.key == f"app:{key}"
    assert 0 < await async_client.pttl(f"app:{key}") <= 21
    assert repr(bucket).startswith(f"<RedisTokenBucket 'app:{key}' 100/s capacity=2")


@pytest.mark.parametrize("ticks", range(6))
async def test_race_callers_cancelled_around_their_batch_lose_no_tokens(
    async_client: Any, key: str, ticks: int
) -> None:
    # One call goes alone; three more queue behind it and go as a batch. Cancelled after
    # `ticks` loop iterations (before the batch is built, while it is out, or after), each
    # either sent nothing or gives back what the batch granted it.
    bucket = RedisTokenBucket(async_client, key, "1/minute", 5)
    first = asyncio.create_task(bucket.try_acquire())
    racers = [asyncio.create_task(bucket.acquire()) for _ in range(3)]
    for _ in range(ticks):
        await asyncio.sleep(0)
    for task in racers:
        task.cancel()
    assert await first
    results = await asyncio.gather(*racers, return_exceptions=True)
    await asyncio.sleep(0.05)  # refunds go out with the next batch
    finished = sum(r is True for r in results)  # those that completed before the cancel
    assert await bucket.available() == pytest.approx(5 - 1 - finished, abs=0.01)


async def test_a_client_that_decodes_responses_works_too(redis_url: str, key: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    bucket = RedisTokenBucket(client, key, "10/s", 2)
    assert [await bucket.try_acquire() for _ in range(3)] == [True, True, False]
    await client.aclose()


# -- asyncio: composites ---------------------------------------------------------------------


async def test_a_composite_is_all_or_nothing(async_client: Any, key: str) -> None:
    limits = RedisCompositeLimiter(
        async_client,
        key,
        {"requests": Limit("60/minute", 3, weight=1), "tokens": Limit("1000/minute", 1000)},
    )
    assert await limits.try_acquire(400)
    assert await limits.try_acquire(500)
    before = await limits.available()
    assert not await limits.try_acquire(200)  # tokens would run out: nothing taken
    after = await limits.available()
    # Nothing taken: only the refill in between, however long a loaded machine took (a
    # taken request or 200 tokens would show as a drop of 1 or 200).
    assert after["requests"] >= before["requests"] - 0.01
    assert after["tokens"] >= before["tokens"] - 0.1
    assert await limits.try_acquire(50)
    assert not await limits.try_acquire(1)  # 3 requests used
    await limits.charge({"tokens": 100})  # the last call cost more than estimated
    assert (await limits.available())["tokens"] == pytest.approx(-50, abs=1)
    # A refund settles the limits whose weight is None; in debt, with no slot booked
    # ahead, the caller's word is taken.
    refunded = await limits.refund(30)
    assert refunded["requests"] == 0.0
    assert refunded["tokens"] == pytest.approx(30, abs=0.01)
    # Both keys share the hash tag, so they live in one cluster slot.
    keys = sorted(k.decode() for k in await async_client.keys(f"ratekeeper:{{{key}}}:*"))
    assert keys == [f"ratekeeper:{{{key}}}:requests", f"ratekeeper:{{{key}}}:tokens"]


async def test_a_composite_waits_for_its_slowest_limit(async_client: Any, key: str) -> None:
    limits = RedisCompositeLimiter(
        async_client, key, {"a": Limit("20/s", 1), "b": Limit("10/s", 1)}
    )
    await limits.acquire()
    reservation = await limits.reserve()
    assert 0.07 <= reservation.delay <= 0.1  # less by the time between the calls
    with pytest.raises(AcquireTimeout):
        await limits.acquire(timeout=0.05)
    with pytest.raises(ValueError, match="no limit named"):
        await limits.acquire({"c": 1})


# -- errors ----------------------------------------------------------------------------------


async def test_bad_arguments_raise_naming_the_problem(async_client: Any) -> None:
    with pytest.raises(ValueError, match="bad Redis URL"):
        RedisTokenBucket("http://nope", "k", "5/s")
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        RedisTokenBucket(redis.Redis(), "k", "5/s")
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        SyncRedisTokenBucket(async_client, "k", "5/s")
    with pytest.raises(ValueError, match="socket_timeout"):
        SyncRedisTokenBucket(redis.Redis(socket_timeout=None), "k", "5/s")
    with pytest.raises(ValueError, match="on_failure"):
        RedisTokenBucket(async_client, "k", "5/s", on_failure="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fallback_share"):
        RedisTokenBucket(async_client, "k", "5/s", on_failure="fallback")
    with pytest.raises(ValueError, match="non-empty"):
        RedisTokenBucket(async_client, "", "5/s")
    with pytest.raises(ValueError, match="cannot read the rate"):
        RedisTokenBucket(async_client, "k", "fast")
    bucket = RedisTokenBucket(async_client, "k", "5/s", 5)
    with pytest.raises(ValueError, match="exceeds the capacity"):
        await bucket.acquire(6)


@pytest.mark.parametrize("on_failure", ["closed", "open"])
async def test_a_wrong_type_at_the_key_is_a_clear_error_whatever_the_policy(
    async_client: Any, key: str, on_failure: Any
) -> None:
    await async_client.lpush(f"ratekeeper:{key}", "not a bucket")
    bucket = RedisTokenBucket(async_client, key, "5/s", on_failure=on_failure)
    with pytest.raises(BackendUnavailable, match=rf"ratekeeper:{key}.*not a ratekeeper bucket"):
        await bucket.acquire()


async def test_a_server_that_refuses_scripts_is_named(async_client: Any, redis_url: str) -> None:
    user = "noscript-user"
    await async_client.execute_command(
        "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-@scripting"
    )
    try:
        url = redis_url.replace("redis://", f"redis://{user}:pw@")
        bucket = RedisTokenBucket(url, "k", "5/s", on_failure="open")
        with pytest.raises(BackendUnavailable, match="refuses this user the script"):
            await bucket.acquire()
        await bucket.aclose()
    finally:
        await async_client.execute_command("ACL", "DELUSER", user)


# -- blocking twins ------------------------------------------------------------------------------


def test_sync_bucket_has_the_same_verbs(sync_client: redis.Redis, key: str) -> None:
    # 5/s: an interval of 0.2 s, so that a stall of the test process up to 0.1 s changes
    # nothing below.
    bucket = SyncRedisTokenBucket(sync_client, key, "5/s", 2)
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
    start = time.monotonic()
    bucket.acquire()
    assert 0.05 <= time.monotonic() - start < 1.0
    with pytest.raises(AcquireTimeout):
        bucket.acquire(timeout=0.01)
    reservation = bucket.reserve()
    assert 0.1 < reservation.delay <= 0.2
    reservation.cancel()
    bucket.charge(3)
    assert bucket.available() < 0
    assert bucket.refund(1) == 0  # in debt: without a mark nothing goes back
    with bucket.take(1):
        pass

    @bucket.limit(1)
    def work() -> str:
        return "done"

    assert work() == "done"
    assert bucket.statistics().server_requests >= 9


def test_sync_threads_share_one_limit(sync_client: redis.Redis, key: str) -> None:
    bucket = SyncRedisTokenBucket(sync_client, key, "100/s", 5)
    stamps: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + 0.5

    def worker() -> None:
        while True:
            try:
                bucket.acquire(timeout=end - time.monotonic())
            except (AcquireTimeout, ValueError):
                return
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every grant's slot is at most `end` (its timeout ends there), counted when the thread
    # returns, however late it wakes. Eight threads on per-thread limits would make 8x.
    granted = len(stamps)
    ideal = 5 + 100 * (end - start)
    assert granted <= ideal + 2  # (+ the script's latency past a timeout read locally)
    assert granted >= 0.6 * ideal  # the shared rate is used, not starved (a loaded machine)


def test_sync_threads_share_round_trips(sync_client: redis.Redis, key: str) -> None:
    bucket = SyncRedisTokenBucket(sync_client, key, 10**6, 10**5)

    def worker() -> None:
        for _ in range(50):
            assert bucket.try_acquire()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = bucket.statistics()
    assert stats.server_requests == stats.granted == 800
    assert stats.round_trips < 0.7 * stats.server_requests  # coalesced


def test_sync_close_wakes_a_sleeping_thread(sync_client: redis.Redis, key: str) -> None:
    bucket = SyncRedisTokenBucket(sync_client, key, "1/s", 1)
    bucket.acquire()
    errors: list[BaseException] = []

    def sleeper() -> None:
        try:
            bucket.acquire()
        except LimiterClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.05)
    bucket.close()
    thread.join(2)
    assert len(errors) == 1 and not thread.is_alive()
    assert bucket.statistics().cancelled == 1


def test_sync_composite(sync_client: redis.Redis, key: str) -> None:
    limits = SyncRedisCompositeLimiter(
        sync_client, key, {"requests": Limit("10/s", 2, weight=1), "tokens": "100/s"}
    )
    assert limits.try_acquire(60)
    assert not limits.try_acquire(60)
    assert limits.try_acquire(40)
    assert not limits.try_acquire(1)
    assert set(limits.available()) == {"requests", "tokens"}
    limits.charge({"requests": 1})
    assert limits.refund({"tokens": 10})["tokens"] == pytest.approx(10, abs=0.5)


async def test_a_limiter_made_from_a_url_leaves_nothing_behind(redis_url: str, key: str) -> None:
    import gc
    import weakref

    bucket = RedisTokenBucket(redis_url, key, "10/s")
    assert await bucket.try_acquire()
    client = weakref.ref(bucket._client)
    await bucket.aclose()
    del bucket
    gc.collect()
    assert client() is None  # no registry keeps the client (and its pool) alive
