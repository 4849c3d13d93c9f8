"""Several limits in one string at a real server: the Redis composites and keyed backends."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from ratekeeper import KeyedLimiter, Limit, limiter, sync_limiter
from ratekeeper.redis import (
    RedisCompositeLimiter,
    RedisKeyedBackend,
    SyncRedisCompositeLimiter,
    SyncRedisKeyedBackend,
)

LIMITS = {"second": Limit("2/s"), "hour": Limit("3/hour")}


async def test_redis_composites_take_the_string(
    async_client: Any, sync_client: redis.Redis, key: str
) -> None:
    composite = RedisCompositeLimiter(async_client, key, "2/s;3/hour")
    assert composite.limits == LIMITS
    assert [await composite.try_acquire() for _ in range(3)] == [True, True, False]
    available = await composite.available()
    assert available == {"second": pytest.approx(0, abs=0.1), "hour": pytest.approx(1, abs=0.01)}
    # The blocking twin, given the same string, shares the same limits at the server.
    twin = SyncRedisCompositeLimiter(sync_client, key, "2 per second | 3 per hour")
    assert twin.limits == LIMITS
    assert twin.available()["hour"] == pytest.approx(1, abs=0.01)
    twin.close()
    await composite.aclose()


async def test_redis_keyed_backends_take_the_string(redis_url: str) -> None:
    prefix = f"rs-{uuid.uuid4().hex[:8]}:"
    backend = RedisKeyedBackend(redis_url, "2/s,3/hour", prefix=prefix)
    keyed = KeyedLimiter(backend=backend)
    assert keyed.limits == LIMITS
    assert [await keyed.try_acquire("a") for _ in range(3)] == [True, True, False]
    assert await keyed.try_acquire("b")
    keyed.close()
    await backend.aclose()
    blocking = SyncRedisKeyedBackend(redis_url, "2/s;3/hour", prefix=prefix)
    assert blocking.limits == LIMITS
    blocking.close()


async def test_limiter_builds_the_redis_composite_from_parse_many(redis_url: str, key: str) -> None:
    composite = limiter(Limit.parse_many("2/s;3/hour"), storage=redis_url, key=key)
    assert isinstance(composite, RedisCompositeLimiter)
    assert composite.limits == LIMITS
    await composite.aclose()
    blocking = sync_limiter(Limit.parse_many("2/s;3/hour"), storage=redis_url, key=key)
    assert isinstance(blocking, SyncRedisCompositeLimiter)
    blocking.close()
    with pytest.raises(ValueError, match=r"limiter\(Limit.parse_many\('10/hour;100/day'\)\)"):
        limiter("2/s;3/hour", storage=redis_url, key=key)
