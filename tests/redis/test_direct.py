"""The direct path: a plain client's calls packed once and sent on a pooled connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio

from ratekeeper.redis import RedisTokenBucket, SyncRedisTokenBucket
from ratekeeper.redis._common import pack_command

from .conftest import Server


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    connection = redis.Connection()  # packs without connecting
    parts = ("EVALSHA", "ab" * 20, 2, "ratekeeper:clé", "", 10**15, b"\x00raw\r\n", 3.5, "x" * 9000)
    packed = b"".join(connection.pack_command(*parts))
    assert pack_command(connection.encoder.encode, parts) == packed


async def test_a_client_class_that_overrides_evalsha_has_its_override_called(
    redis_url: str, key: str
) -> None:
    seen: list[Any] = []

    class Traced(redis.asyncio.Redis):
        def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            seen.append(keys_and_args[0])
            return super().evalsha(sha, numkeys, *keys_and_args)

    client = Traced.from_url(redis_url)
    bucket = RedisTokenBucket(client, key, "5/s", 5)
    assert await bucket.try_acquire() and await bucket.acquire()  # the scripts are loaded
    seen.clear()
    assert await bucket.try_acquire() and await bucket.acquire()
    assert seen == [bucket.key, bucket.key]
    await client.aclose()


def test_a_sync_client_class_that_overrides_evalsha_has_its_override_called(
    redis_url: str, key: str
) -> None:
    seen: list[Any] = []

    class Traced(redis.Redis):
        def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            seen.append(keys_and_args[0])
            return super().evalsha(sha, numkeys, *keys_and_args)

    client = Traced.from_url(redis_url, socket_timeout=5)
    bucket = SyncRedisTokenBucket(client, key, "5/s", 5)
    assert bucket.try_acquire() and bucket.acquire()  # the scripts are loaded
    seen.clear()
    assert bucket.try_acquire() and bucket.acquire()
    assert seen == [bucket.key, bucket.key]
    client.close()


def test_a_sync_call_goes_on_after_script_flush_and_a_dropped_connection(
    redis_url: str, key: str
) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    bucket = SyncRedisTokenBucket(client, key, "1/minute", 2)
    assert bucket.try_acquire()
    client.script_flush()
    client.connection_pool.disconnect()  # the next call reconnects
    assert [bucket.try_acquire(), bucket.try_acquire()] == [True, False]
    assert bucket.statistics().backend_errors == 0
    client.close()


async def test_race_a_call_cancelled_before_its_reply_leaves_no_reply_for_the_next(
    own_server: Server, key: str
) -> None:
    """The cancelled call's connection is dropped: its reply, sent once the server wakes,
    is never read as the answer to a later call on the same pool."""
    client = redis.asyncio.Redis.from_url(own_server.url, socket_timeout=5)
    first = RedisTokenBucket(client, key + ":a", "1/minute", 1, timeout=5)
    second = RedisTokenBucket(client, key + ":b", "1/minute", 1, timeout=5)
    assert await first.try_acquire()
    assert await second.available() == 1.0
    own_server.pause()
    try:
        call = asyncio.ensure_future(first.try_acquire())
        await asyncio.sleep(0.1)  # sent; the reply waits for the server
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        own_server.resume()
    # A stale reply (first's refusal) read for second's call would give [False, True].
    assert [await second.try_acquire(), await second.try_acquire()] == [True, False]
    await client.aclose()


async def test_a_pool_that_wants_a_command_name_is_given_one(redis_url: str, key: str) -> None:
    """redis-py before 5.3 requires ``get_connection(command_name)``; later ones warn."""
    names: list[str] = []

    class OldPool(redis.asyncio.ConnectionPool):
        async def get_connection(self, command_name, *keys, **options):  # type: ignore[no-untyped-def]
            names.append(command_name)
            return await super().get_connection()

    client = redis.asyncio.Redis(connection_pool=OldPool.from_url(redis_url))
    bucket = RedisTokenBucket(client, key, "5/s", 5)
    assert await bucket.try_acquire() and await bucket.acquire()
    assert names and set(names) == {"EVALSHA"}
    await client.aclose()
