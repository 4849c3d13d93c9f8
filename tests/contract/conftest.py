"""The implementations the contract suite runs on, and a driver that calls either family.

Every scenario in ``test_contract.py`` runs once per implementation: in memory and on a
real Valkey server, asyncio and blocking, one limit, a composite, and one key of a keyed
limiter (``for_key``); each as a token bucket and, where the implementation has them, as a
sliding window of the same rate and capacity (at most ``capacity`` in any window of
``capacity / rate``) and as a fixed window (at most ``capacity`` in each window of that
length, aligned here to the limiter's creation so that a real-time scenario never meets a
boundary by chance). A composite (and a keyed limiter) is tested through its limit
``"main"`` (the scenario's rate and capacity) beside a generous second limit (a bucket)
that never decides; an int cost takes that many tokens of each. Where a bucket and a window
rightly answer differently, the scenario states each answer (``Driver.expect``).

The blocking limiters are driven from worker threads (``asyncio.to_thread``), so one
scenario body, written with ``await``, holds both families to the same answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ratekeeper import (
    CompositeLimiter,
    FixedWindow,
    KeyedLimiter,
    Limit,
    MonotonicClock,
    Rate,
    SlidingWindow,
    SyncCompositeLimiter,
    SyncFixedWindow,
    SyncKeyedLimiter,
    SyncSlidingWindow,
    SyncTokenBucket,
    TokenBucket,
)
from ratekeeper._window import window_ns

from .._redis_fixtures import redis_url

__all__ = ["Driver", "redis_url"]

SIDE = ("1000/s", 1000)  # the composite's second limit: never the one that decides
# The server's answer may take long on a loaded machine; the suite is about what calls mean,
# not about timeouts (tests/redis and tests/faults are).
TIMEOUT = 5.0


class StartClock(MonotonicClock):
    """The monotonic clock, with a wall clock that reads 0 when it is made: fixed windows
    then start with the limiter that reads it."""

    __slots__ = ("_start",)

    def __init__(self) -> None:
        self._start = time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.monotonic_ns() - self._start


@dataclass(frozen=True)
class Impl:
    name: str
    is_async: bool
    form: str  # "bucket", "composite" or "keyed" (one key of a keyed limiter)
    redis: bool
    kind: str = "bucket"  # of the limit under test: "bucket", "sliding" or "fixed"

    @property
    def composite(self) -> bool:
        """Costs and tokens by limit name (a composite, or a keyed limiter's key)."""
        return self.form != "bucket"

    @property
    def keyed(self) -> bool:
        return self.form == "keyed"

    @property
    def window(self) -> bool:
        """The limit under test is a window (sliding or fixed)."""
        return self.kind != "bucket"

    def make(self, url: str | None, rate: str, capacity: int) -> Any:
        limits = {"main": Limit(rate, capacity, kind=self.kind), "side": Limit(*SIDE)}
        key = f"contract-{uuid.uuid4().hex[:12]}"
        if self.keyed:
            return self._keyed(url, key, limits)
        if not self.redis:
            clock = StartClock()
            if self.composite:
                cls = CompositeLimiter if self.is_async else SyncCompositeLimiter
                return cls(limits, clock=clock)
            if self.kind == "fixed":
                return (FixedWindow if self.is_async else SyncFixedWindow)(
                    rate, capacity, clock=clock
                )
            if self.window:
                return (SlidingWindow if self.is_async else SyncSlidingWindow)(rate, capacity)
            return (TokenBucket if self.is_async else SyncTokenBucket)(rate, capacity)
        from ratekeeper.redis import (
            RedisCompositeLimiter,
            RedisFixedWindow,
            RedisSlidingWindow,
            RedisTokenBucket,
            SyncRedisCompositeLimiter,
            SyncRedisFixedWindow,
            SyncRedisSlidingWindow,
            SyncRedisTokenBucket,
        )

        if self.kind == "fixed":  # aligned to its creation by an offset (the same machine)
            fixed = RedisFixedWindow if self.is_async else SyncRedisFixedWindow
            span_us = -(-window_ns(Rate.of(rate), capacity) // 1000)
            offset = -(time.time_ns() // 1000 % span_us) / 1e6
            return fixed(url, key, rate, capacity, utc_offset=offset, timeout=TIMEOUT)
        if self.window:  # one window per key (no Redis composite holds a window)
            window = RedisSlidingWindow if self.is_async else SyncRedisSlidingWindow
            return window(url, key, rate, capacity, timeout=TIMEOUT)

        if self.composite:
            cls = RedisCompositeLimiter if self.is_async else SyncRedisCompositeLimiter
            return cls(url, key, limits, timeout=TIMEOUT)
        cls = RedisTokenBucket if self.is_async else SyncRedisTokenBucket
        return cls(url, key, rate, capacity, timeout=TIMEOUT)

    def _keyed(self, url: str | None, key: str, limits: dict[str, Limit]) -> Any:
        if not self.redis:
            return (KeyedLimiter if self.is_async else SyncKeyedLimiter)(limits=limits).for_key(key)
        from ratekeeper.redis import RedisKeyedBackend, SyncRedisKeyedBackend

        if self.is_async:
            return KeyedLimiter(backend=RedisKeyedBackend(url, limits, timeout=TIMEOUT)).for_key(
                key
            )
        return SyncKeyedLimiter(
            backend=SyncRedisKeyedBackend(url, limits, timeout=TIMEOUT)
        ).for_key(key)


IMPLS = (
    [
        Impl(f"{where}-{family}-{form}", family == "async", form, where == "redis")
        for where in ("memory", "redis")
        for family in ("async", "sync")
        for form in ("bucket", "composite", "keyed")
    ]
    + [
        Impl(
            f"{where}-{family}-{form}-window", family == "async", form, where == "redis", "sliding"
        )
        for where, forms in (("memory", ("bucket", "composite")), ("redis", ("bucket",)))
        for family in ("async", "sync")
        for form in forms
    ]
    + [
        Impl(f"{where}-{family}-{form}-fixed", family == "async", form, where == "redis", "fixed")
        for where, forms in (("memory", ("bucket", "composite")), ("redis", ("bucket",)))
        for family in ("async", "sync")
        for form in forms
    ]
)


class Driver:
    """One limiter under test, called the same way whichever family it is of."""

    def __init__(self, impl: Impl, url: str | None) -> None:
        self.impl = impl
        self._url = url
        self._made: list[Any] = []

    def make(self, rate: str = "10/s", capacity: int = 2) -> Any:
        """Return a new limiter of this implementation (a fresh key on Redis)."""
        limiter = self.impl.make(self._url, rate, capacity)
        self._made.append(limiter)
        return limiter

    async def call(self, limiter: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``limiter.method``: awaited (asyncio) or in a worker thread (blocking)."""
        bound = getattr(limiter, method)
        if self.impl.is_async:
            return await bound(*args, **kwargs)
        return await asyncio.to_thread(bound, *args, **kwargs)

    async def wait(self, reservation: Any) -> None:
        if self.impl.is_async:
            await reservation
        else:
            await asyncio.to_thread(reservation.wait)

    @contextlib.asynccontextmanager
    async def take(self, limiter: Any, *args: Any, **kwargs: Any) -> AsyncIterator[None]:
        manager = limiter.take(*args, **kwargs)
        if self.impl.is_async:
            async with manager:
                yield
            return
        await asyncio.to_thread(manager.__enter__)
        try:
            yield
        except BaseException as exc:
            manager.__exit__(type(exc), exc, exc.__traceback__)
            raise
        manager.__exit__(None, None, None)

    async def decorated_calls(self, decorator: Callable[[Any], Any], calls: int) -> list[int]:
        """Decorate a function with ``decorator``, call it ``calls`` times; return the calls
        that ran (each raises AcquireTimeout or returns its index)."""
        if self.impl.is_async:

            async def work_async(i: int) -> int:
                return i

            limited_async = decorator(work_async)
            return [await limited_async(i) for i in range(calls)]

        def work(i: int) -> int:
            return i

        limited = decorator(work)
        return [await asyncio.to_thread(limited, i) for i in range(calls)]

    def expect(self, *, bucket: Any, window: Any, fixed: Any = None) -> Any:
        """Return the answer the limit under test must give: a bucket's, a sliding
        window's, or a fixed window's (by default the sliding window's)."""
        if self.impl.kind == "fixed" and fixed is not None:
            return fixed
        return window if self.impl.window else bucket

    def main(self, tokens: Any) -> float:
        """The tokens of the limit under test (a composite reports them per limit)."""
        return float(tokens["main"]) if isinstance(tokens, dict) else float(tokens)

    async def close_all(self) -> None:
        for limiter in self._made:
            if self.impl.is_async:
                await limiter.aclose()
            else:
                limiter.close()
            if self.impl.keyed:  # the view is closed; now its keyed limiter and backend
                keyed = limiter._limiter
                keyed.close()
                if self.impl.redis:
                    closing = keyed.backend.aclose if self.impl.is_async else keyed.backend.close
                    if self.impl.is_async:
                        await closing()
                    else:
                        closing()


@pytest.fixture(params=IMPLS, ids=[impl.name for impl in IMPLS])
async def driver(request: pytest.FixtureRequest) -> AsyncIterator[Driver]:
    impl: Impl = request.param
    url = request.getfixturevalue("redis_url") if impl.redis else None
    drv = Driver(impl, url)
    yield drv
    await drv.close_all()
