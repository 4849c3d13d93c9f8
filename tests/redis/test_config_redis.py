"""limiter() / sync_limiter() with a real Valkey: the URL names the server, it decides."""

from __future__ import annotations

import redis

from ratekeeper import Limit, limiter, sync_limiter

from .conftest import Server, free_port


def _as(scheme: str, redis_url: str) -> str:
    return scheme + redis_url.removeprefix("redis")


async def test_two_limiters_from_one_url_and_key_share_the_bucket(
    redis_url: str, sync_client: redis.Redis, key: str
) -> None:
    storage = _as("valkey", redis_url) + "?prefix=cfg:&timeout=2"
    first = limiter("5/minute", storage=storage, key=key)
    second = limiter("5/minute", storage=storage, key=key)
    try:
        granted = [await first.try_acquire() for _ in range(3)]
        granted += [await second.try_acquire() for _ in range(2)]
        assert granted == [True] * 5
        assert not await first.try_acquire()
        assert not await second.try_acquire()
        assert sync_client.exists(f"cfg:{key}")  # decided at the server, under the prefix
    finally:
        await first.aclose()
        await second.aclose()
    assert first.closed


async def test_an_async_composite_from_a_url(redis_url: str, key: str) -> None:
    limits = limiter(
        {"requests": Limit("10/s", 2, weight=1), "tokens": ("100/minute", 100)},
        storage=redis_url,
        key=key,
    )
    try:
        assert await limits.try_acquire(60)
        assert not await limits.try_acquire(60)
        await limits.acquire(40)
    finally:
        await limits.aclose()


def test_sync_limiters_from_one_url_share_the_bucket(
    redis_url: str, sync_client: redis.Redis, key: str
) -> None:
    storage = redis_url + "?timeout=2"
    first = sync_limiter("2/minute", storage=storage, key=key)
    second = sync_limiter("2/minute", storage=_as("valkey", redis_url), key=key)
    try:
        assert first.try_acquire()
        assert second.acquire(timeout=0)
        assert not first.try_acquire()
        assert not second.try_acquire()
        assert sync_client.exists(f"ratekeeper:{key}")
        limits = sync_limiter({"a": "1/minute", "b": ("10/minute", 10)}, storage=storage, key=key)
        assert limits.try_acquire({"a": 1, "b": 10})
        assert not limits.try_acquire({"b": 1})
        limits.close()
    finally:
        first.close()
        second.close()


async def test_on_failure_from_the_url_applies_when_the_server_is_down(key: str) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0?timeout=0.2&retry_interval=60"
    opened = limiter("1/minute", storage=down + "&on_failure=open", key=key)
    fallback = sync_limiter(
        "1/minute", storage=down + "&on_failure=fallback&fallback_share=1", key=key
    )
    try:
        assert await opened.try_acquire()
        assert await opened.try_acquire()  # let through: nothing decides
        assert fallback.try_acquire()
        assert not fallback.try_acquire()  # the local stand-in at the full rate
    finally:
        await opened.aclose()
        fallback.close()


async def test_a_cluster_url(cluster_nodes: list[Server], key: str) -> None:
    storage = f"redis+cluster://127.0.0.1:{cluster_nodes[0].port}?timeout=2"
    first = limiter("1/minute", 2, storage=storage, key=key)
    second = limiter(
        "1/minute", 2, storage="valkey+cluster" + storage.removeprefix("redis+cluster"), key=key
    )
    try:
        assert await first.try_acquire()
        assert await second.try_acquire()
        assert not await first.try_acquire()
        limits = limiter(
            {"a": ("1/minute", 10), "b": ("1/minute", 10)}, storage=storage, key=key + "-c"
        )
        assert await limits.try_acquire(10)
        assert not await limits.try_acquire(1)
        await limits.aclose()
    finally:
        await first.aclose()
        await second.aclose()


def test_a_sync_cluster_url(cluster_nodes: list[Server], key: str) -> None:
    storage = f"valkey+cluster://127.0.0.1:{cluster_nodes[1].port}?timeout=2"
    first = sync_limiter("1/minute", 1, storage=storage, key=key)
    second = sync_limiter("1/minute", 1, storage=storage, key=key)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        limits = sync_limiter({"a": ("1/minute", 1)}, storage=storage, key=key + "-c")
        assert limits.try_acquire()
        assert not limits.try_acquire()
        limits.close()
    finally:
        first.close()
        second.close()
