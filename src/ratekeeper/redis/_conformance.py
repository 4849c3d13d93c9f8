"""Static proof that the Redis limiters honour ``ratekeeper.contract``: checked by mypy only.

Nothing here runs: each function assigns a Redis class to the Protocol it must satisfy, so
``mypy --strict src`` fails the moment a method, parameter name or return type drifts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..contract import (
        AsyncBucket,
        AsyncComposite,
        AsyncReservation,
        SyncBucket,
        SyncComposite,
        SyncReservation,
    )
    from ._async import RedisCompositeLimiter, RedisReservation, RedisTokenBucket
    from ._sync import SyncRedisCompositeLimiter, SyncRedisReservation, SyncRedisTokenBucket

    def _async_bucket(limiter: RedisTokenBucket) -> AsyncBucket:
        return limiter

    def _async_composite(limiter: RedisCompositeLimiter) -> AsyncComposite:
        return limiter

    def _sync_bucket(limiter: SyncRedisTokenBucket) -> SyncBucket:
        return limiter

    def _sync_composite(limiter: SyncRedisCompositeLimiter) -> SyncComposite:
        return limiter

    def _async_reservation(reservation: RedisReservation) -> AsyncReservation:
        return reservation

    def _sync_reservation(reservation: SyncRedisReservation) -> SyncReservation:
        return reservation
