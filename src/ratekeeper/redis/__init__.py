"""Distributed limits on Redis/Valkey: one limit shared by many processes and machines.

``RedisTokenBucket`` (asyncio, on ``redis.asyncio``) and ``SyncRedisTokenBucket`` (threads,
on ``redis.Redis``) have the in-memory limiters' API; ``RedisCompositeLimiter`` and
``SyncRedisCompositeLimiter`` check several limits on one key together, all or nothing.
``RedisKeyedBackend`` and ``SyncRedisKeyedBackend`` give ``KeyedLimiter`` and
``SyncKeyedLimiter`` per-key limits kept at the server (``KeyedLimiter(backend=...)``).
Every decision is one atomic Lua script (``gcra.lua``) timed by the server's clock, in the
same exact integer arithmetic as the core. ``RedisSlidingWindow`` and
``SyncRedisSlidingWindow`` keep an exact sliding window at the server (``window.lua``);
``RedisFixedWindow`` and ``SyncRedisFixedWindow`` a fixed window aligned to the server's
clock in UTC (``fixed.lua``).
Needs ``pip install 'ratekeeper[redis]'``.
"""

try:
    import redis as _redis  # noqa: F401
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.redis needs the redis client: pip install 'ratekeeper[redis]'",
        name="redis",
    ) from exc

from ._async import RedisCompositeLimiter, RedisReservation, RedisTokenBucket
from ._common import Limit, OnFailure, RedisStatistics
from ._keyed import RedisKeyedBackend, SyncRedisKeyedBackend
from ._sync import SyncRedisCompositeLimiter, SyncRedisReservation, SyncRedisTokenBucket
from ._window import (
    RedisFixedWindow,
    RedisSlidingWindow,
    RedisWindowReservation,
    SyncRedisFixedWindow,
    SyncRedisSlidingWindow,
    SyncRedisWindowReservation,
)

__all__ = [
    "Limit",
    "OnFailure",
    "RedisCompositeLimiter",
    "RedisFixedWindow",
    "RedisKeyedBackend",
    "RedisReservation",
    "RedisSlidingWindow",
    "RedisStatistics",
    "RedisTokenBucket",
    "RedisWindowReservation",
    "SyncRedisCompositeLimiter",
    "SyncRedisFixedWindow",
    "SyncRedisKeyedBackend",
    "SyncRedisReservation",
    "SyncRedisSlidingWindow",
    "SyncRedisTokenBucket",
    "SyncRedisWindowReservation",
]
