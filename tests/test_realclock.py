"""A few tests on the real clock, with generous tolerances (the machine is noisy)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ratekeeper import LoopClock, Rate, SyncTokenBucket, TokenBucket
from ratekeeper._demo import run_demo


async def test_ten_thousand_concurrent_waiters_all_served_in_order() -> None:
    limiter = TokenBucket(40_000, 100)
    order: list[int] = []

    async def one(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    start = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10_000))), 30)
    elapsed = time.monotonic() - start
    assert order == list(range(10_000))
    ideal = (10_000 - 100) / 40_000
    assert elapsed >= ideal * 0.98  # never faster than the limit (no burst)
    assert elapsed < ideal + 5  # and not stuck
    assert limiter.statistics().waiting == 0


def test_seed_scenario_on_the_real_clock() -> None:
    result = run_demo(Rate(5), 5, 20, 0.1, tolerance=0.25)
    assert result.ok, result


def test_threads_on_the_real_clock_stay_within_the_envelope() -> None:
    limiter = SyncTokenBucket(500, 10)
    grants: list[float] = []

    def worker() -> None:
        for _ in range(50):
            limiter.acquire()
            grants.append(time.monotonic())

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(grants) == 200
    elapsed = max(grants) - start
    assert elapsed >= (200 - 10) / 500 * 0.98
    assert elapsed < 5


@pytest.mark.looptime
async def test_looptime_virtual_time_with_loop_clock() -> None:
    # LoopClock follows a virtual-time loop; 20 tasks at 5/s take 3 virtual seconds at once.
    limiter = TokenBucket(5, 5, clock=LoopClock())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    starts: list[float] = []

    async def process() -> None:
        async with limiter:
            starts.append(loop.time() - t0)
            await asyncio.sleep(0.1)

    await asyncio.gather(*(process() for _ in range(20)))
    assert starts == pytest.approx([max(0, i - 4) * 0.2 for i in range(20)], abs=1e-3)
