"""One client process of the distributed tests: hammers one shared limit, prints its grants.

Run as ``python _worker.py URL KEY RATE CAPACITY START DURATION TASKS SKEW``. ``START`` is
a wall-clock time (the real one); ``SKEW`` seconds are added to every clock this process
reads (time.time, time.monotonic, ... and so the event loop's), as if its clock were wrong.
It prints one JSON line: the real wall-clock times at which its callers were let through.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

real_time = time.time


def skew_clocks(seconds: float) -> None:
    """Shift every clock of this process by ``seconds`` (wall and monotonic alike)."""
    if not seconds:
        return
    ns = int(seconds * 1e9)
    for name in ("time", "monotonic", "perf_counter"):
        original = getattr(time, name)
        setattr(time, name, lambda original=original: original() + seconds)
        original_ns = getattr(time, name + "_ns")
        setattr(time, name + "_ns", lambda original_ns=original_ns: original_ns() + ns)


async def main(argv: list[str]) -> None:
    url, key, rate, capacity, start, duration, tasks, skew = argv
    skew_clocks(float(skew))
    from ratekeeper import AcquireTimeout
    from ratekeeper.redis import RedisTokenBucket

    bucket = RedisTokenBucket(url, key, float(rate), int(capacity), timeout=5)
    await bucket.available()  # connect and load the script before the start
    end = float(start) + float(duration)
    await asyncio.sleep(max(0.0, float(start) - real_time()))
    grants: list[float] = []

    async def caller() -> None:
        while (remaining := end - real_time()) > 0:
            try:
                await bucket.acquire(timeout=remaining)
            except AcquireTimeout:
                return
            grants.append(real_time())

    await asyncio.gather(*(caller() for _ in range(int(tasks))))
    stats = bucket.statistics()
    await bucket.aclose()
    print(
        json.dumps(
            {
                "grants": grants,
                "requests": stats.server_requests,
                "round_trips": stats.round_trips,
                "granted": stats.granted,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
