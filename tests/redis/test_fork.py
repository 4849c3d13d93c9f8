"""The Redis limiters inherited by a child of ``os.fork()``, used there against a real server.

The child must get its own connections (sharing the parent's sockets would mix up the two
processes' replies), nothing the parent had in flight or queued, and the same limit: the
key at the server is shared by parent and child as by any two processes.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from redis.asyncio.cluster import RedisCluster

from ratekeeper import Limit, SyncKeyedLimiter
from ratekeeper.redis import RedisTokenBucket, SyncRedisKeyedBackend, SyncRedisTokenBucket

from ..test_fork import FORKS, busy, fork_while_held, run_in_child
from .conftest import Server

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def test_a_blocking_bucket_busy_in_threads_works_in_forked_children(
    redis_url: str, key: str
) -> None:
    limiter = SyncRedisTokenBucket(redis_url, key, "2000/s", 5, timeout=2)
    with busy(lambda: limiter.acquire(timeout=0.05), threads=6):
        time.sleep(0.05)
        codes = [run_in_child(lambda: limiter.acquire(timeout=2)) for _ in range(FORKS)]
    assert codes == [0] * FORKS
    assert limiter.acquire(timeout=2)
    limiter.close()


def test_the_dispatchers_lock_held_at_the_fork_is_renewed(redis_url: str, key: str) -> None:
    limiter = SyncRedisTokenBucket(redis_url, key, "100/s", 5, timeout=2)
    backend = SyncRedisKeyedBackend(redis_url, {"default": Limit("100/s", 5)}, timeout=2)
    keyed = SyncKeyedLimiter(backend=backend)
    for obj in (limiter, limiter._dispatcher, backend):
        use = lambda: limiter.acquire(timeout=2) and keyed.acquire("k", timeout=2)  # noqa: E731
        assert fork_while_held(obj, use) == 0, obj
    limiter.close()
    backend.close()


async def check_a_child_has_its_own_connections_and_the_same_limit(
    limiter: RedisTokenBucket,
) -> None:
    """Fork while the parent's connection is open; the child takes the 3 tokens left of 4
    while the parent keeps reading on its own connection."""
    assert await limiter.try_acquire()  # the parent's connection is open now

    def child() -> bool:
        async def main() -> bool:
            got = [await limiter.try_acquire() for _ in range(4)]
            return got == [True, True, True, False]

        return asyncio.run(main())

    pid = os.fork()
    if pid == 0:
        os._exit(0 if child() else 2)
    readings = []
    deadline = time.monotonic() + 10
    while not (done := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
        readings.append(await limiter.available())
    if not done[0]:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] and os.waitstatus_to_exitcode(done[1]) == 0
    assert readings and all(0 <= r < 3.1 for r in readings)  # replies of its own
    assert not await limiter.try_acquire()  # the child took the rest: one limit at the server


async def test_an_asyncio_bucket_in_a_child_has_its_own_connections_and_the_same_limit(
    redis_url: str, key: str
) -> None:
    limiter = RedisTokenBucket(redis_url, key, "1/minute", 4, timeout=2)
    await check_a_child_has_its_own_connections_and_the_same_limit(limiter)
    await limiter.aclose()


async def test_an_asyncio_bucket_on_a_cluster_client_passed_in_works_in_a_child(
    cluster_nodes: list[Server], key: str
) -> None:
    # Before, the child used the parent's cluster connections (bound to the parent's loop,
    # their replies read by two processes): it failed or hung.
    client = RedisCluster(host="127.0.0.1", port=cluster_nodes[0].port, socket_timeout=2)
    limiter = RedisTokenBucket(client, key, "1/minute", 4, timeout=2)
    await check_a_child_has_its_own_connections_and_the_same_limit(limiter)
    await limiter.aclose()
    await client.aclose()
