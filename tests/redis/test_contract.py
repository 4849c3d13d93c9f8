"""The Redis limiters against ``ratekeeper.contract``: reservations, names, set_rate.

Real server (the fixtures of conftest.py); wall-clock waits are a few tens of ms.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from ratekeeper import LimiterClosed
from ratekeeper.redis import (
    RedisCompositeLimiter,
    RedisTokenBucket,
    SyncRedisCompositeLimiter,
    SyncRedisTokenBucket,
)

# -- reservations: cancel after the holder resumed gives nothing back ---------------------


async def test_cancel_after_await_gives_nothing_back(async_client: Any, key: str) -> None:
    # The pattern `try: await r; act() finally: r.cancel()` must not hand used tokens back.
    bucket = RedisTokenBucket(async_client, key, "10/s", 2)
    first, second = await bucket.reserve(), await bucket.reserve()
    await first
    await second
    first.cancel()
    second.cancel()
    assert first.granted and second.granted and not first.cancelled
    await asyncio.sleep(0.01)  # a refund would go out with the next batch
    assert not await bucket.try_acquire()
    assert bucket.statistics().cancelled == 0


def test_sync_cancel_after_wait_gives_nothing_back(sync_client: redis.Redis, key: str) -> None:
    bucket = SyncRedisTokenBucket(sync_client, key, "10/s", 2)
    first, second = bucket.reserve(), bucket.reserve()
    first.wait()
    second.wait()
    first.cancel()
    second.cancel()
    assert first.granted and second.granted and not second.cancelled
    assert not bucket.try_acquire()


async def test_a_grant_never_awaited_can_still_be_cancelled(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "10/s", 2)
    reservation = await bucket.reserve(2)
    assert reservation.delay == 0 and reservation.granted
    reservation.cancel()
    assert reservation.cancelled and not reservation.granted
    await asyncio.sleep(0.01)
    assert await bucket.try_acquire(2)
    with pytest.raises(LimiterClosed):
        await reservation


def test_sync_a_grant_never_waited_on_can_still_be_cancelled(
    sync_client: redis.Redis, key: str
) -> None:
    bucket = SyncRedisTokenBucket(sync_client, key, "10/s", 2)
    reservation = bucket.reserve(2)
    reservation.cancel()
    assert reservation.cancelled and not reservation.granted
    assert bucket.try_acquire(2)
    with pytest.raises(LimiterClosed):
        reservation.wait()


async def test_cancel_of_a_sleeper_after_it_woke_gives_nothing_back(
    async_client: Any, key: str
) -> None:
    bucket = RedisTokenBucket(async_client, key, "50/s", 1)
    await bucket.acquire()
    reservation = await bucket.reserve()
    assert reservation.delay > 0
    await reservation  # slept ~20 ms, now in use
    reservation.cancel()
    await asyncio.sleep(0.005)
    assert bucket.statistics().refunded_tokens == 0


async def test_reserve_takes_timeout_on_every_redis_limiter(
    async_client: Any, sync_client: redis.Redis, key: str
) -> None:
    from ratekeeper import AcquireTimeout

    bucket = RedisTokenBucket(async_client, key, "1/s", 1)
    composite = RedisCompositeLimiter(async_client, key + "c", {"a": "1/s"})
    sync_bucket = SyncRedisTokenBucket(sync_client, key + "s", "1/s", 1)
    sync_composite = SyncRedisCompositeLimiter(sync_client, key + "sc", {"a": "1/s"})
    for limiter in (bucket, composite):
        await limiter.reserve()
        with pytest.raises(AcquireTimeout):
            await limiter.reserve(timeout=0.1)
    for blocking in (sync_bucket, sync_composite):
        blocking.reserve()
        with pytest.raises(AcquireTimeout):
            blocking.reserve(timeout=0.1)
