"""One application function, typed against the contract, on memory and on Redis.

Moving to Redis must not change what a call means: the same function, given a
``TokenBucket`` and then a ``RedisTokenBucket`` (and the blocking and composite twins),
makes the same decisions call by call. And mypy (with ``truthy-bool``, as the docs say
to enable it) rejects the mistake that used to switch limiting off silently.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from ratekeeper import (
    AcquireTimeout,
    CompositeLimiter,
    SyncCompositeLimiter,
    SyncTokenBucket,
    TokenBucket,
)
from ratekeeper.contract import AsyncBucket, AsyncComposite, SyncBucket, SyncComposite
from ratekeeper.redis import (
    RedisCompositeLimiter,
    RedisTokenBucket,
    SyncRedisCompositeLimiter,
    SyncRedisTokenBucket,
)

from .conftest import redis_url

__all__ = ["redis_url"]


async def application(limiter: AsyncBucket) -> list[object]:
    """A caller's whole use of a limiter: tries, a reservation, settling, a timeout."""
    trace: list[object] = []
    for _ in range(4):
        trace.append(await limiter.try_acquire())
    trace.append(round(await limiter.available(), 3))
    trace.append(round(await limiter.refund(2), 3))
    trace.append(await limiter.try_acquire(2))
    await limiter.charge(1)
    trace.append(round(await limiter.available(), 3))
    try:
        await limiter.acquire(timeout=1.0)
    except AcquireTimeout as exc:
        trace.append(("timeout", round(exc.retry_after or 0)))
    reservation = await limiter.reserve(timeout=None)
    trace.append(round(reservation.delay))
    reservation.cancel()
    trace.append(round(await limiter.full_in()))
    stats = limiter.statistics()
    trace.append((stats.granted, stats.rejected))
    return trace


def sync_application(limiter: SyncBucket) -> list[object]:
    trace: list[object] = []
    for _ in range(4):
        trace.append(limiter.try_acquire())
    trace.append(round(limiter.available(), 3))
    trace.append(round(limiter.refund(2), 3))
    trace.append(limiter.try_acquire(2))
    limiter.charge(1)
    trace.append(round(limiter.available(), 3))
    try:
        limiter.acquire(timeout=1.0)
    except AcquireTimeout as exc:
        trace.append(("timeout", round(exc.retry_after or 0)))
    reservation = limiter.reserve(timeout=None)
    trace.append(round(reservation.delay))
    reservation.cancel()
    trace.append(round(limiter.full_in()))
    stats = limiter.statistics()
    trace.append((stats.granted, stats.rejected))
    return trace


async def llm_call(limits: AsyncComposite, estimate: int, used: int) -> list[object]:
    """The requests/min + tokens/min recipe: estimate, call, settle."""
    trace: list[object] = [await limits.try_acquire({"requests": 1, "tokens": estimate})]
    if not trace[0]:
        pass  # refused: nothing to settle
    elif used > estimate:
        await limits.charge({"tokens": used - estimate})
    elif used < estimate:
        trace.append(
            {k: round(v) for k, v in (await limits.refund({"tokens": estimate - used})).items()}
        )
    trace.append({k: round(v) for k, v in (await limits.available()).items()})
    return trace


def sync_llm_call(limits: SyncComposite, estimate: int, used: int) -> list[object]:
    trace: list[object] = [limits.try_acquire({"requests": 1, "tokens": estimate})]
    if not trace[0]:
        pass  # refused: nothing to settle
    elif used > estimate:
        limits.charge({"tokens": used - estimate})
    elif used < estimate:
        trace.append({k: round(v) for k, v in limits.refund({"tokens": estimate - used}).items()})
    trace.append({k: round(v) for k, v in limits.available().items()})
    return trace


LIMITS = {"requests": ("3/day", 3), "tokens": ("6000/day", 6000)}
CALLS = [(1500, 1000), (1500, 2500), (2000, 2000), (1000, 500), (500, 100)]


def fresh() -> str:
    return f"app-{uuid.uuid4().hex[:12]}"


async def test_the_same_function_decides_the_same_on_memory_and_redis(redis_url: str) -> None:
    memory = await application(TokenBucket("1/minute", 3))
    redis = RedisTokenBucket(redis_url, fresh(), "1/minute", 3)
    try:
        assert await application(redis) == memory
    finally:
        await redis.aclose()
    assert memory[:4] == [True, True, True, False]  # the trace is about something


def test_the_blocking_twins_decide_the_same(redis_url: str) -> None:
    memory = sync_application(SyncTokenBucket("1/minute", 3))
    redis = SyncRedisTokenBucket(redis_url, fresh(), "1/minute", 3)
    try:
        assert sync_application(redis) == memory
    finally:
        redis.close()


async def test_the_llm_recipe_decides_the_same_on_memory_and_redis(redis_url: str) -> None:
    memory_limits = CompositeLimiter(LIMITS)
    redis_limits = RedisCompositeLimiter(redis_url, fresh(), LIMITS)
    try:
        for estimate, used in CALLS:
            assert await llm_call(redis_limits, estimate, used) == await llm_call(
                memory_limits, estimate, used
            )
    finally:
        await redis_limits.aclose()
    sync_memory = SyncCompositeLimiter(LIMITS)
    sync_redis = SyncRedisCompositeLimiter(redis_url, fresh(), LIMITS)
    try:
        for estimate, used in CALLS:
            assert sync_llm_call(sync_redis, *(estimate, used)) == sync_llm_call(
                sync_memory, estimate, used
            )
    finally:
        sync_redis.close()


MISTAKE = """
from ratekeeper.contract import AsyncBucket

async def handler(limiter: AsyncBucket) -> str:
    if limiter.try_acquire():  # forgot the await: always true
        return "ok"
    return "busy"
"""

RIGHT = """
from ratekeeper.contract import AsyncBucket

async def handler(limiter: AsyncBucket) -> str:
    if await limiter.try_acquire():
        return "ok"
    return "busy"
"""


MYPY = (sys.executable, "-m", "mypy", "--strict", "--no-incremental")


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"app_{uuid.uuid4().hex[:8]}.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run(
        [*MYPY, "--enable-error-code", "truthy-bool", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_mypy_rejects_a_coroutine_used_as_a_condition(tmp_path: Path) -> None:
    wrong = _mypy(tmp_path, MISTAKE)
    assert wrong.returncode == 1, wrong.stdout
    assert "truthy-bool" in wrong.stdout or "unused-coroutine" in wrong.stdout, wrong.stdout
    right = _mypy(tmp_path, RIGHT)
    assert right.returncode == 0, right.stdout
