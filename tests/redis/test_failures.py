"""Failures against real servers: killed, frozen, restarted, flushed, or never there.

Each test that harms a server has one of its own (``own_server``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from ratekeeper import BackendUnavailable
from ratekeeper.redis import RedisTokenBucket, SyncRedisTokenBucket

from .conftest import Server, free_port

FAST = {"timeout": 0.2, "retry_interval": 0.1}


async def test_fail_closed_raises_quickly_and_recovers_without_restart(
    own_server: Server, key: str
) -> None:
    bucket = RedisTokenBucket(own_server.url, key, "100/s", 5, **FAST)
    assert await bucket.try_acquire()
    own_server.kill()
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=rf"127\.0\.0\.1:{own_server.port}.*unreachable"):
        await bucket.acquire()
    with pytest.raises(BackendUnavailable, match="failed a moment ago"):
        await bucket.acquire()  # within retry_interval: refused without a round trip
    assert time.monotonic() - start < 0.5
    own_server.start()  # same port, empty: the script must be loaded again
    await asyncio.sleep(0.15)
    assert await bucket.try_acquire()
    stats = bucket.statistics()
    assert stats.backend_errors == 2 and stats.granted == 2
    await bucket.aclose()


async def test_fail_open_lets_calls_through_and_counts_them(own_server: Server, key: str) -> None:
    bucket = RedisTokenBucket(own_server.url, key, "1/s", 1, on_failure="open", **FAST)
    assert await bucket.try_acquire()
    assert not await bucket.try_acquire()
    own_server.kill()
    assert all([await bucket.try_acquire() for _ in range(5)])
    await bucket.acquire(timeout=0)
    stats = bucket.statistics()
    assert stats.failed_open == 6 and stats.backend_errors == 6
    own_server.start()
    await asyncio.sleep(0.15)
    assert await bucket.try_acquire()  # a fresh server: a full bucket
    assert not await bucket.try_acquire()  # and the limit holds again
    await bucket.aclose()


async def test_fallback_limits_locally_at_its_share_then_hands_back(
    own_server: Server, key: str
) -> None:
    bucket = RedisTokenBucket(
        own_server.url, key, "10/s", 10, on_failure="fallback", fallback_share=0.5, **FAST
    )
    assert await bucket.try_acquire()
    own_server.kill()
    granted = [await bucket.try_acquire() for _ in range(8)]
    assert granted == [True] * 5 + [False] * 3  # half the capacity, locally
    start = time.monotonic()
    await bucket.acquire()  # waits locally at half the rate: 0.2 s per token
    assert 0.15 < time.monotonic() - start < 0.5
    assert bucket.statistics().fallback_grants == 6
    own_server.start()
    await asyncio.sleep(0.15)
    # Back on the (restarted, empty) server, the bucket is first padded to what the fallback
    # still counts as taken, scaled from this process's half to the whole limit (5 / 0.5:
    # the capacity), plus 50 ms for the others to come back: no burst on top of the local
    # grants, and then the rate again (a token 150 ms after the return, one per 100 ms).
    assert not await bucket.try_acquire()
    assert bucket.statistics().fallback_grants == 6  # decided at the server again
    await asyncio.sleep(0.35)
    assert 1 <= [await bucket.try_acquire() for _ in range(10)].count(True) <= 6  # not 10
    await bucket.aclose()


async def test_a_frozen_server_times_out_within_the_timeout(own_server: Server, key: str) -> None:
    bucket = RedisTokenBucket(own_server.url, key, "100/s", 5, **FAST)
    assert await bucket.try_acquire()
    own_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"did not answer within the timeout of 0\.2s"):
            await bucket.acquire()
        assert time.monotonic() - start < 0.4
    finally:
        own_server.resume()
    await asyncio.sleep(0.15)
    assert await bucket.try_acquire()
    await bucket.aclose()


async def test_race_a_frozen_server_fails_every_caller_of_a_batch_within_the_timeout(
    own_server: Server, key: str
) -> None:
    bucket = RedisTokenBucket(own_server.url, key, "1000/s", 100, **FAST)
    assert await bucket.try_acquire()
    own_server.pause()
    try:
        start = time.monotonic()
        results = await asyncio.gather(
            *(bucket.acquire() for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        assert time.monotonic() - start < 0.5  # the watchdog: 0.2 s, checked every 0.05 s
    finally:
        own_server.resume()
    await asyncio.sleep(0.15)
    assert all(await asyncio.gather(*(bucket.try_acquire() for _ in range(5))))
    await bucket.aclose()


async def test_an_unreachable_server_is_named() -> None:
    port = free_port()
    bucket = RedisTokenBucket(f"redis://127.0.0.1:{port}", "k", "5/s", **FAST)
    with pytest.raises(BackendUnavailable, match=rf"127\.0\.0\.1:{port} is unreachable"):
        await bucket.try_acquire()
    await bucket.aclose()


async def test_the_script_is_reloaded_after_script_flush(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "100/s", 5)
    assert await bucket.try_acquire()
    await async_client.script_flush()
    assert await bucket.try_acquire()
    # A batch after the flush too (the batched path goes through the same script object).
    await async_client.script_flush()
    assert all(await asyncio.gather(*(bucket.try_acquire() for _ in range(3))))
    assert bucket.statistics().backend_errors == 0


async def test_a_server_restart_with_a_client_passed_in(own_server: Server, key: str) -> None:
    client = redis.asyncio.Redis.from_url(own_server.url, socket_timeout=1)
    bucket = RedisTokenBucket(client, key, "100/s", 3, timeout=0.5, retry_interval=0.05)
    assert await bucket.try_acquire()
    own_server.restart()
    deadline = time.monotonic() + 3
    while True:  # the client's own retries may take a call or two to reconnect
        try:
            assert await bucket.try_acquire()
            break
        except BackendUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.06)
    await client.aclose()


def test_sync_fail_closed_then_open(own_server: Server, key: str) -> None:
    closed = SyncRedisTokenBucket(own_server.url, key, "100/s", 5, **FAST)
    opened = SyncRedisTokenBucket(own_server.url, key, "100/s", 5, on_failure="open", **FAST)
    assert closed.try_acquire() and opened.try_acquire()
    own_server.kill()
    with pytest.raises(BackendUnavailable, match="unreachable"):
        closed.acquire()
    assert opened.try_acquire() and opened.statistics().failed_open == 1
    own_server.start()
    time.sleep(0.15)
    assert closed.try_acquire()
    closed.close()
    opened.close()


async def test_a_flushed_key_starts_at_the_slots_this_process_booked(
    own_server: Server, key: str
) -> None:
    """State loss: sleepers' booked slots are not added on top of a fresh full bucket."""
    bucket = RedisTokenBucket(own_server.url, key, "10/s", 2, **FAST)
    blocking = SyncRedisTokenBucket(own_server.url, key + "-sync", "10/s", 2, **FAST)
    reservations = [await bucket.reserve() for _ in range(4)]
    held = [blocking.reserve() for _ in range(4)]
    assert [round(r.delay, 1) for r in reservations] == [0.0, 0.0, 0.1, 0.2]
    assert held[-1].delay > 0.15
    with redis.Redis(port=own_server.port) as admin:
        admin.flushall()
    # The latest slot booked lies 0.2 s ahead: the bucket restarts there, empty, as it was.
    assert not await bucket.try_acquire()
    assert not blocking.try_acquire()
    await asyncio.sleep(0.3)
    assert await bucket.try_acquire()  # and refills from there
    await bucket.aclose()
    blocking.close()


@pytest.mark.parametrize("first", ["async", "sync"])
async def test_a_flushed_key_keeps_the_slots_another_process_booked(
    own_server: Server, key: str, first: str
) -> None:
    """State loss with two processes: the one that calls first after the loss booked
    nothing itself, but its last reply showed the other's sleepers' slots; the bucket comes
    back empty at the last of them, not full on top of them (before: a full burst)."""
    sleepers = RedisTokenBucket(own_server.url, key, "10/s", 2, **FAST)
    if first == "async":
        other: Any = RedisTokenBucket(own_server.url, key, "10/s", 2, **FAST)
        try_acquire: Any = other.try_acquire
        reserve: Any = other.reserve
    else:
        other = SyncRedisTokenBucket(own_server.url, key, "10/s", 2, **FAST)

        async def try_acquire() -> bool:
            return bool(other.try_acquire())

        async def reserve() -> Any:
            return other.reserve()

    assert await try_acquire() and await try_acquire()  # the burst
    held = [await sleepers.reserve() for _ in range(3)]  # slots 0.1, 0.2, 0.3 s ahead
    assert [round(r.delay, 1) for r in held] == [0.1, 0.2, 0.3]
    assert not await try_acquire()  # refused: the reply shows the slots booked ahead
    with redis.Redis(port=own_server.port) as admin:
        admin.flushall()
    started = time.monotonic()
    after = await reserve()  # the first call after the loss
    elapsed = time.monotonic() - started
    # Its slot comes one interval after the sleepers' last one, as without the loss.
    assert after.delay + elapsed >= held[-1].delay + 0.1 - 0.02
    assert not await try_acquire()
    await sleepers.aclose()
    if first == "async":
        await other.aclose()
    else:
        other.close()
