"""Redis Cluster: three masters started by the tests, the redis-py cluster clients."""

from __future__ import annotations

import asyncio

import redis
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot  # type: ignore[attr-defined]

from ratekeeper.redis import (
    Limit,
    RedisCompositeLimiter,
    RedisTokenBucket,
    SyncRedisCompositeLimiter,
    SyncRedisTokenBucket,
)

from .conftest import Server


async def test_limits_on_a_three_master_cluster(cluster_nodes: list[Server], key: str) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_nodes[0].port, socket_timeout=2)
    try:
        limits = RedisCompositeLimiter(
            client,
            key,
            {"requests": Limit("10/s", 2, weight=1), "tokens": Limit("1000/s", 1000)},
        )
        # The composite's keys share one slot (hash tag), so one script call decides it.
        assert len({key_slot(s.key.encode()) for s in limits._specs}) == 1
        assert await limits.try_acquire(600)
        assert not await limits.try_acquire(600)
        assert await limits.try_acquire(400)
        assert not await limits.try_acquire(1)

        # Buckets on many slots, called together: the batch is split per slot, each part
        # decided on its master.
        buckets = [RedisTokenBucket(client, f"{key}-{i}", "1/s", 1) for i in range(30)]
        assert all(await asyncio.gather(*(b.try_acquire() for b in buckets)))
        assert not any(await asyncio.gather(*(b.try_acquire() for b in buckets)))
        used = 0
        for server in cluster_nodes:
            node = redis.Redis(port=server.port, socket_timeout=2)
            used += node.dbsize() > 0
            node.close()
        assert used == 3  # every master holds some of the buckets

        reservation = await buckets[0].reserve()
        assert 0 < reservation.delay <= 1.0  # refilling since its first token
    finally:
        await client.aclose()


def test_sync_limits_on_a_three_master_cluster(cluster_nodes: list[Server], key: str) -> None:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster_nodes[1].port, socket_timeout=2)
    try:
        # Rates slow enough that no token comes back between the calls, however loaded the
        # machine (at 100/s one did, after 10 ms).
        limits = SyncRedisCompositeLimiter(
            client, key, {"requests": Limit("1/minute", 1, weight=1), "tokens": "100/minute"}
        )
        assert limits.try_acquire(50)
        assert not limits.try_acquire(10)
        bucket = SyncRedisTokenBucket(client, key + "-b", "2/minute", 2)
        assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
    finally:
        client.close()
