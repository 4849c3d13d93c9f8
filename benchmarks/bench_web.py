"""Benchmark the web front doors: added server CPU per request, against bare and the peer.

    .venv-bench/bin/python benchmarks/bench_web.py            # everything (a few minutes)
    .venv-bench/bin/python benchmarks/bench_web.py --quick    # fewer requests and keys
    .venv-bench/bin/python benchmarks/bench_web.py --only routes
    .venv-bench/bin/python benchmarks/bench_web.py --only wsgi  # Flask and Django (_wsgi_bench.py)

One function per front door (``bench_middleware``, ``bench_routes``, ...), each serving its
variants (bare, ours, the peer's) from one server process and driving them in interleaved
rounds; ``SECTIONS`` lists them.

1. ASGI middleware (``middleware``). The same minimal Starlette endpoint is served by
   uvicorn (h11, all variants in one server process, each on its own port): bare; behind
   ``RateLimitMiddleware`` (one bucket per client address); the same with ``RateLimit``
   headers on every response; and behind slowapi's pure ASGI middleware with the same
   limit (1,000,000/minute per client, so every request is accepted: the accepted path is
   what is measured; each limiting variant is first checked to refuse at 3/minute). A
   raw-socket HTTP/1.1 client with keep-alive connections drives each in turn, rounds
   interleaved and rotated. Two figures:
   - the *request path*: inside the server, the median time from a request entering the
     app to reaching the router (a stopwatch on either side of the middleware), minus the
     same with no middleware. Medians shrug off the preemptions of a shared machine;
   - the server process's user CPU per request (``getrusage``, reported over a pipe),
     paired with bare round by round, with its quartiles: the end-to-end cost, but noisy
     when other work shares the cores.
   And, for reference, the same apps called in-process with no server at all.
2. Route limits in FastAPI (``routes``): one endpoint, bare; with a dependency that does
   nothing (the floor of any ``Depends``); with ``@route_limit``; with
   ``Depends(limiter.depends(...))``; with fastapi-limiter's ``Depends(RateLimiter(...))``
   (the like-for-like peer of a dependency); with slowapi's ``@limiter.limit`` (the peer of
   the decorator). The request path
   (inside the server, the median time from a request entering the app to the endpoint's
   body, minus bare's), the server CPU per request over bare, paired by round (medians,
   quartiles), and in-process timings.
3. Keyed limiter (``keyed``). 1,000,000 distinct keys touched once each (sync and asyncio),
   bytes per live key (tracemalloc), memory after the keys go idle, and an attacker sending
   endless new keys against ``max_keys``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, NamedTuple

from _common import Check, write_checks

VARIANTS = ("bare", "ratekeeper", "ratekeeper+headers", "slowapi")
LIMIT = "1000000/minute"


# -- the servers -------------------------------------------------------------------------------


class Stopwatch:
    """The CPU time each request spends from entering the app to reaching the router.

    CPU time of the server's thread (``thread_time``), so that the preemptions of a loaded
    machine do not count; nothing on this path suspends, so it is this request's own.

    ``Outer`` wraps the whole app and notes the entry time in the scope; ``Inner`` sits
    just inside the middleware under test and adds the time elapsed. With no middleware in
    between (bare) this measures the two stopwatches and Starlette's error middleware; the
    difference is the request path of the middleware, measured inside the running server.
    """

    def __init__(self) -> None:
        self.samples: list[int] = []  # ns per request

    def outer(self, app: Any) -> Any:
        async def timed(scope: Any, receive: Any, send: Any) -> None:
            scope["bench.t0"] = time.thread_time_ns()
            await app(scope, receive, send)

        return timed

    def inner(self, app: Any) -> Any:
        async def timed(scope: Any, receive: Any, send: Any) -> None:
            self.samples.append(time.thread_time_ns() - scope["bench.t0"])
            await app(scope, receive, send)

        return timed


def build_middleware_app(variant: str, limit: str = LIMIT, watch: Stopwatch | None = None) -> Any:
    """The ``middleware`` section's app: a Starlette endpoint behind the variant's middleware."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    if watch is not None:
        app.add_middleware(watch.inner)  # the first added is the innermost
    if variant.startswith("ratekeeper"):
        from ratekeeper._keyed import KeyedLimiter
        from ratekeeper.integrations.asgi import RateLimitMiddleware

        count = int(limit.split("/", maxsplit=1)[0])
        app.add_middleware(
            RateLimitMiddleware,
            limiter=KeyedLimiter(limit, count),
            headers=variant.endswith("headers"),
        )
    elif variant == "slowapi":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIASGIMiddleware
        from slowapi.util import get_remote_address

        limiter = Limiter(key_func=get_remote_address, default_limits=[limit])
        app.state.limiter = limiter
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
        app.add_middleware(SlowAPIASGIMiddleware)
    elif variant != "bare":
        raise SystemExit(f"unknown variant {variant!r}")
    return app if watch is None else watch.outer(app)


ROUTE_VARIANTS = (
    "bare",
    "noop-depends",
    "route_limit",
    "depends",
    "fastapi-limiter",
    "slowapi-limit",
)
"""``noop-depends``: a FastAPI dependency that does nothing, the floor of any ``Depends``;
``fastapi-limiter``: fastapi-limiter's ``Depends(RateLimiter(...))`` (pyrate-limiter in
memory), the peer of ``depends``; ``slowapi-limit``: slowapi's decorator, the peer of
``route_limit`` (and the peer last, as the in-process table expects)."""


def build_routes_app(variant: str, limit: str = LIMIT, watch: Stopwatch | None = None) -> Any:
    """The ``routes`` section's app: one FastAPI endpoint, limited by the variant's route form.

    Every variant's endpoint takes the request (slowapi's decorator needs it) and returns
    the same response; the limits count per client address, with no headers on accepted
    responses (both libraries' default).
    """
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import PlainTextResponse

    app = FastAPI(openapi_url=None)

    async def hello(request: Request) -> PlainTextResponse:
        if watch is not None:  # the request path: from entering the app to the endpoint
            watch.samples.append(time.thread_time_ns() - request.scope["bench.t0"])
        return PlainTextResponse("hello")

    hello.__annotations__["request"] = Request  # a class, not the string: FastAPI injects it

    async def noop(request: Request) -> None:
        return None

    noop.__annotations__["request"] = Request
    if variant == "bare":
        app.get("/")(hello)
    elif variant == "noop-depends":
        app.get("/", dependencies=[Depends(noop)])(hello)
    elif variant in ("route_limit", "depends"):
        from ratekeeper.integrations.starlette import (
            RateLimitExceeded,
            RouteLimiter,
            rate_limit_exceeded_handler,
        )

        limiter = RouteLimiter()
        app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)
        if variant == "route_limit":
            app.get("/")(limiter.route_limit(limit)(hello))
        else:
            app.get("/", dependencies=[Depends(limiter.depends(limit))])(hello)
    elif variant == "fastapi-limiter":
        from fastapi_limiter.depends import RateLimiter
        from pyrate_limiter import Duration, Limiter, Rate

        count, _, period = limit.partition("/")
        duration = {"minute": Duration.MINUTE, "second": Duration.SECOND}[period]
        peer = RateLimiter(limiter=Limiter(Rate(int(count), duration)))
        app.get("/", dependencies=[Depends(peer)])(hello)
    elif variant == "slowapi-limit":
        from slowapi import Limiter, _rate_limit_exceeded_handler
        from slowapi.errors import RateLimitExceeded as SlowAPIExceeded
        from slowapi.util import get_remote_address

        slow = Limiter(key_func=get_remote_address)
        app.state.limiter = slow
        app.add_exception_handler(SlowAPIExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
        app.get("/")(slow.limit(limit)(hello))
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    return app if watch is None else watch.outer(app)


class Section(NamedTuple):
    """A front door's benchmark: its variants (bare first, the peer last) and their app."""

    variants: tuple[str, ...]
    build: Callable[[str, str, Stopwatch | None], Any]


SECTIONS: dict[str, Section] = {
    "middleware": Section(VARIANTS, build_middleware_app),
    "routes": Section(ROUTE_VARIANTS, build_routes_app),
}


def serve(section: str, variants: list[str], ports: list[int], limit: str) -> None:
    """Serve each variant on its port, all in this one process and event loop.

    One process for all, so that what differs between the variants is the middleware and
    nothing else (not the memory layout, not the hash seed of a separate process).
    """
    import threading

    import uvicorn

    watches = {variant: Stopwatch() for variant in variants}

    def report() -> None:
        # Each line the parent writes is answered with this process's user and total CPU
        # seconds (microsecond resolution; /proc counts in 10 ms ticks) and the stopwatches.
        for _ in sys.stdin:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            times = {v: len(w.samples) for v, w in watches.items()}
            print(
                json.dumps([usage.ru_utime, usage.ru_utime + usage.ru_stime, times]),
                flush=True,
            )
            if sys.stdin.readline().strip() == "samples":  # the parent wants them all
                print(json.dumps({v: w.samples for v, w in watches.items()}), flush=True)

    threading.Thread(target=report, daemon=True).start()
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                SECTIONS[section].build(variant, limit, watches[variant]),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                http="h11",
                loop="asyncio",
            )
        )
        for variant, port in zip(variants, ports, strict=True)
    ]

    async def all_servers() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(all_servers())


class Servers:
    """The variants, each on its own port, served by one process."""

    def __init__(self, section: str, variants: tuple[str, ...], limit: str = LIMIT) -> None:
        self.ports: dict[str, int] = {}
        for variant in variants:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.ports[variant] = sock.getsockname()[1]
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                section,
                ",".join(variants),
                ",".join(str(port) for port in self.ports.values()),
                limit,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError("the servers did not start") from None
                    time.sleep(0.05)

    def readings(self, samples: bool = False) -> tuple[float, float, dict[str, Any]]:
        """Return the server's (user, user + system) CPU seconds and its stopwatches.

        The stopwatches are sample counts, or with ``samples`` every sample (ns).
        """
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("?\n" + ("samples\n" if samples else "-\n"))
        self.process.stdin.flush()
        user, total, watches = json.loads(self.process.stdout.readline())
        if samples:
            watches = json.loads(self.process.stdout.readline())
        return user, total, watches

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# -- the load ----------------------------------------------------------------------------------


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def drive(port: int, requests: int, connections: int) -> list[int]:
    """Send ``requests`` keep-alive GETs over ``connections`` connections; return statuses."""
    statuses: list[int] = []

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(count):
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                statuses.append(int(head[9:12]))
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
        finally:
            writer.close()

    share = requests // connections
    await asyncio.gather(*(connection(share) for _ in range(connections)))
    return statuses


def check_the_limit_applies(section: str, variant: str) -> None:
    """Make sure each limiting variant really limits (with 3/minute): no free lunch."""
    servers = Servers(section, (variant,), "3/minute")
    try:
        statuses = asyncio.run(drive(servers.ports[variant], 5, 1))
    finally:
        servers.stop()
    if statuses != [200, 200, 200, 429, 429]:
        raise SystemExit(f"{section} {variant} does not limit as configured: {statuses}")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


class Measured(NamedTuple):
    """Per variant, one figure per round: user CPU, user+system CPU (us/request), requests/s;
    and every stopwatch sample (ns)."""

    cpu: dict[str, list[float]]
    total: dict[str, list[float]]
    wall: dict[str, list[float]]
    inside: dict[str, list[float]]


def measure(section: str, requests: int, rounds: int, connections: int) -> Measured:
    """Serve a section's variants from one process; drive them in interleaved, rotated rounds."""
    variants = SECTIONS[section].variants
    for variant in variants[1:]:
        if not variant.startswith("noop"):
            check_the_limit_applies(section, variant)
    servers = Servers(section, variants)
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    total: dict[str, list[float]] = {v: [] for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for port in servers.ports.values():  # warm up
            asyncio.run(drive(port, 500, connections))
        order = list(variants)
        for _ in range(rounds):
            order = order[1:] + order[:1]  # each variant takes each place in turn
            for variant in order:
                user, both, _ = servers.readings()
                start = time.perf_counter()
                statuses = asyncio.run(drive(servers.ports[variant], requests, connections))
                elapsed = time.perf_counter() - start
                user_after, both_after, _ = servers.readings()
                if set(statuses) != {200}:
                    raise SystemExit(f"{variant}: unexpected statuses {set(statuses)}")
                cpu[variant].append((user_after - user) / len(statuses) * 1e6)
                total[variant].append((both_after - both) / len(statuses) * 1e6)
                wall[variant].append(len(statuses) / elapsed)
        inside = {v: [float(x) for x in xs] for v, xs in servers.readings(True)[2].items()}
    finally:
        servers.stop()
    return Measured(cpu, total, wall, inside)


def paired_over_bare(measured: Measured, variant: str) -> tuple[float, float, float]:
    """Return the quartiles of a variant's user CPU per request minus bare's, round by round."""
    diffs = [a - b for a, b in zip(measured.cpu[variant], measured.cpu["bare"], strict=True)]
    return quartiles(diffs)


def quarter_of_peer(section: str, name: str, ours: float, peer: float, headline: bool) -> Check:
    """The target of every front door: its added cost at most a quarter of the peer's."""
    ratio = ours / peer
    return Check(
        section,
        name,
        ratio,
        f"{ours:+.1f} us vs {peer:+.1f} us: {ratio:.2f} of the peer's",
        "<= 0.25",
        ratio <= 0.25,
        headline=headline,
    )


def bench_middleware(requests: int, rounds: int, connections: int) -> list[Check]:
    print(
        f"\n## Middleware overhead under uvicorn (h11) + Starlette: {requests} requests x "
        f"{rounds} rounds per server, {connections} keep-alive connections, limit {LIMIT} "
        "per client\n"
    )
    measured = measure("middleware", requests, rounds, connections)
    cpu, total, wall, inside = measured
    base = statistics.median(cpu["bare"])
    base_inside = statistics.median(inside["bare"])
    print(
        "| server | user CPU us/request | user+system us/request | requests/s "
        "| request path, entry to router: median us | added by the middleware |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    added: dict[str, float] = {}
    for variant in VARIANTS:
        path = statistics.median(inside[variant]) / 1000
        if variant == "bare":
            extra = "-"
        else:
            added[variant] = path - base_inside / 1000
            extra = f"{added[variant]:+.1f} us ({added[variant] / base * 100:.1f}%)"
        print(
            f"| {variant} | {statistics.median(cpu[variant]):.1f} "
            f"| {statistics.median(total[variant]):.1f} | {statistics.median(wall[variant]):,.0f} "
            f"| {path:.1f} | {extra} |"
        )
    for variant in VARIANTS[1:]:
        q1, q2, q3 = paired_over_bare(measured, variant)
        print(
            f"\n{variant}: user CPU over bare, paired by round: median {q2:+.1f} us "
            f"({q2 / base * 100:+.1f}%), quartiles [{q1:+.1f}, {q3:+.1f}] (machine noise)",
            end="",
        )
    print(
        f"\n\nratekeeper's request path adds {added['ratekeeper']:.1f} us: "
        f"{added['ratekeeper'] / base * 100:.1f}% of the bare endpoint's {base:.0f} us of CPU "
        f"per request; slowapi's adds {added['slowapi']:.1f} us "
        f"({added['slowapi'] / base * 100:.1f}%), a ratio of "
        f"{added['ratekeeper'] / added['slowapi']:.2f}. (Percentages are of bare's user CPU "
        "per request; +headers also formats and sends two headers on the way out, which the "
        "request path does not include: see its CPU column.)"
    )
    bench_in_process("middleware")
    return [
        quarter_of_peer(
            "web",
            "RateLimitMiddleware's request path vs slowapi's middleware",
            added["ratekeeper"],
            added["slowapi"],
            headline=True,
        )
    ]


def bench_routes(requests: int, rounds: int, connections: int) -> list[Check]:
    print(
        f"\n## Route limits under uvicorn (h11) + FastAPI: {requests} requests x {rounds} "
        f"rounds per server, {connections} keep-alive connections, limit {LIMIT} per client\n"
    )
    measured = measure("routes", requests, rounds, connections)
    base = statistics.median(measured.cpu["bare"])
    base_path = statistics.median(measured.inside["bare"]) / 1000
    print(
        "| FastAPI endpoint | user CPU us/request | CPU added over bare, paired by round: "
        "median [quartiles] | request path, app entry to endpoint: median us | added |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    added: dict[str, float] = {}  # request path, us
    cpu_added: dict[str, float] = {}
    for variant in ROUTE_VARIANTS:
        path = statistics.median(measured.inside[variant]) / 1000
        if variant == "bare":
            extra = path_extra = "-"
        else:
            q1, cpu_added[variant], q3 = paired_over_bare(measured, variant)
            extra = f"{cpu_added[variant]:+.1f} us [{q1:+.1f}, {q3:+.1f}]"
            added[variant] = path - base_path
            path_extra = f"{added[variant]:+.1f} us"
        print(
            f"| {variant} | {statistics.median(measured.cpu[variant]):.1f} | {extra} "
            f"| {path:.1f} | {path_extra} |"
        )
    peer = added["slowapi-limit"]
    dep_peer = added["fastapi-limiter"]
    floor = added["noop-depends"]
    for ours, theirs in (
        ("route_limit", "slowapi-limit"),
        ("depends", "fastapi-limiter"),
        ("depends", "slowapi-limit"),
    ):
        print(
            f"\n{ours}: its request path adds {added[ours]:.1f} us ({added[ours] / base * 100:.1f}%"
            f" of bare's {base:.0f} us of CPU per request), {theirs} {added[theirs]:.1f} us: a "
            f"ratio of {added[ours] / added[theirs]:.2f} (server CPU, paired: "
            f"{cpu_added[ours]:+.1f} us vs {cpu_added[theirs]:+.1f} us, "
            f"{cpu_added[ours] / cpu_added[theirs]:.2f})",
            end="",
        )
    print(
        f"\n(any FastAPI dependency, even one doing nothing, adds {floor:.1f} us, "
        f"{floor / peer:.2f} of slowapi's decorator: depends beyond that floor adds "
        f"{added['depends'] - floor:.1f} us, {(added['depends'] - floor) / peer:.2f} of "
        f"slowapi's; fastapi-limiter beyond it {dep_peer - floor:.1f} us)"
    )
    bench_in_process("routes")
    return [
        quarter_of_peer(
            "web",
            "FastAPI @route_limit's request path vs slowapi's @limiter.limit",
            added["route_limit"],
            peer,
            headline=True,
        ),
        quarter_of_peer(
            "web",
            "FastAPI Depends(limiter.depends)'s request path vs fastapi-limiter's Depends",
            added["depends"],
            dep_peer,
            headline=False,  # below 1/4 is out of reach for any dependency: see docs/fastapi.md
        ),
        quarter_of_peer(
            "web",
            "FastAPI Depends(limiter.depends)'s request path vs slowapi's @limiter.limit",
            added["depends"],
            peer,
            headline=False,
        ),
    ]


def bench_in_process(section: str, calls: int = 1000, rounds: int = 25) -> None:
    """Time the same apps called directly as ASGI (no server, no sockets), in one loop.

    CPU time of this process (``process_time``: other processes' preemptions do not count)
    per block of ``calls`` requests, the variants interleaved and rotated round by round;
    the added cost is the median over rounds of each variant minus bare in that round.
    """
    print(
        f"\n## The same apps called in-process, no server ({rounds} interleaved rounds of "
        f"{calls:,} calls, process CPU time)\n"
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    variants = SECTIONS[section].variants
    per_call: dict[str, list[float]] = {v: [] for v in variants}

    async def run_all() -> None:
        apps = {v: SECTIONS[section].build(v, LIMIT, None) for v in variants}
        for app in apps.values():  # warm up
            for _ in range(calls):
                await app(dict(scope), receive, send)
        order = list(variants)
        for _ in range(rounds):
            order = order[1:] + order[:1]
            for variant in order:
                app = apps[variant]
                start = time.process_time_ns()
                for _ in range(calls):
                    await app(dict(scope), receive, send)
                per_call[variant].append((time.process_time_ns() - start) / calls / 1000)

    asyncio.run(run_all())
    bare = per_call["bare"]
    added: dict[str, float] = {}
    print("| app | CPU us/request (median) | added over bare, paired: median [quartiles] |")
    print("| --- | ---: | ---: |")
    for variant in variants:
        extra = "-"
        if variant != "bare":
            diffs = [a - b for a, b in zip(per_call[variant], bare, strict=True)]
            q1, added[variant], q3 = quartiles(diffs)
            extra = f"{added[variant]:+.1f} us [{q1:+.1f}, {q3:+.1f}]"
        print(f"| {variant} | {statistics.median(per_call[variant]):.1f} | {extra} |")
    peer = variants[-1]
    for variant in variants[1:-1]:
        print(
            f"\nin process, {variant} adds {added[variant] / added[peer]:.2f} of what {peer} adds",
            end="",
        )
    if "fastapi-limiter" in added:
        print(
            f"\nin process, depends adds {added['depends'] / added['fastapi-limiter']:.2f} of "
            "what fastapi-limiter (a dependency too) adds",
            end="",
        )
    if "noop-depends" in added:
        beyond = added["depends"] - added["noop-depends"]
        print(
            f"\nin process, depends beyond FastAPI's no-op dependency adds {beyond:.1f} us, "
            f"{beyond / added[peer]:.2f} of what {peer} adds",
            end="",
        )
    print()


# -- the keyed limiter -------------------------------------------------------------------------


def timed(function: Callable[[], object]) -> float:
    """Return the CPU seconds ``function()`` takes (the process's: a loaded machine's other
    work does not count)."""
    gc.collect()
    start = time.process_time()
    function()
    return time.process_time() - start


def bytes_when_used_again(keys: list[str]) -> float:
    """Return the worst bytes per live key while every key is used again and again.

    On a manual clock each key is used every 3 s at 10/minute (a token refills in 6 s, so no
    bucket is ever full and every key stays live) for four rounds: the keys go into the
    store, the generations rotate, and each key used again moves to the new generation while
    the old one's dict is still allocated. Everything the store holds counts (its dicts, the
    states, the emptied generation until it is released), sampled every 10,000 calls.
    """
    from ratekeeper._keyed import SyncKeyedLimiter
    from ratekeeper.testing import ManualClock

    n = len(keys)
    clock = ManualClock()
    step = 3.0 * 1000 / n
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    limiter = SyncKeyedLimiter("10/minute", 10, max_keys=2 * n, clock=clock)
    store = limiter.backend
    take = limiter.try_acquire
    worst = 0.0
    for _ in range(4):
        for i, key in enumerate(keys):
            if i % 1000 == 0:
                clock.advance(step)
                if i % 10_000 == 0 and len(store) == n:  # type: ignore[arg-type]
                    worst = max(worst, (tracemalloc.get_traced_memory()[0] - base) / n)
            take(key)
    tracemalloc.stop()
    return worst


def bench_keyed(n: int) -> list[Check]:
    from ratekeeper._keyed import KeyedLimiter, SyncKeyedLimiter
    from ratekeeper.testing import ManualClock

    print(f"\n## Keyed limiter in memory: {n:,} distinct keys, each touched once\n")
    keys = [f"user:{i:07d}" for i in range(n)]
    key_bytes = sum(sys.getsizeof(k) for k in keys)

    def sync_run() -> None:
        limiter = SyncKeyedLimiter("10/minute", 10, max_keys=n)
        take = limiter.try_acquire
        for key in keys:
            take(key)

    async def async_loop() -> None:
        limiter = KeyedLimiter("10/minute", 10, max_keys=n)
        take = limiter.try_acquire
        for key in keys:
            await take(key)

    async def admit_loop() -> None:
        limiter = KeyedLimiter("10/minute", 10, max_keys=n)
        admit = limiter.admit
        for key in keys:
            await admit(key)

    start = time.monotonic_ns()

    def floor_run() -> dict[str, int]:
        # The floor: one int per key in a plain dict (no lock, no clock, no limit).
        state: dict[str, int] = {}
        tat = start
        for key in keys:
            state[key] = tat + 6_000_000_000
        return state

    runs: list[tuple[str, Callable[[], object]]] = [
        ("(floor) dict[key] = int", floor_run),
        ("SyncKeyedLimiter.try_acquire", sync_run),
        ("await KeyedLimiter.try_acquire", lambda: asyncio.run(async_loop())),
        ("await KeyedLimiter.admit (Verdict)", lambda: asyncio.run(admit_loop())),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for rep in range(5):  # interleaved, order rotated; medians
        for name, run in runs[rep % len(runs) :] + runs[: rep % len(runs)]:
            times[name].append(timed(run))
    print("| operation | CPU seconds (median of 5) | ns/key | / floor |")
    print("| --- | ---: | ---: | ---: |")
    floor_s = statistics.median(times["(floor) dict[key] = int"])
    for name, _ in runs:
        taken = statistics.median(times[name])
        print(f"| {name} | {taken:.2f} | {taken / n * 1e9:,.0f} | {taken / floor_s:.1f}x |")
    new_keys = statistics.median(times["SyncKeyedLimiter.try_acquire"]) * 1_000_000 / n

    # The floor's memory: the same keys, one int each, in a plain dict.
    gc.collect()
    tracemalloc.start()
    floor_base = tracemalloc.get_traced_memory()[0]
    floor_state = floor_run()
    floor_live = tracemalloc.get_traced_memory()[0] - floor_base
    tracemalloc.stop()
    del floor_state

    # Memory, on a manual clock so that "idle" is exact.
    clock = ManualClock()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    limiter = SyncKeyedLimiter("10/minute", 10, max_keys=n, clock=clock)
    for key in keys:
        limiter.try_acquire(key)
    live = tracemalloc.get_traced_memory()[0] - base
    clock.advance(6.0)  # every bucket is full again
    for i in range(1000):  # calls go on: each drops up to 256 idle keys on its way
        limiter.try_acquire(f"later:{i}")
    after_calls = len(limiter.backend)  # type: ignore[arg-type]
    dropped = limiter.sweep()
    idle = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(
        f"\nmemory: {live / n:.0f} bytes per live key held by the limiter, "
        f"{(live + key_bytes) / n:.0f} with the key strings (here {key_bytes / n:.0f} bytes "
        f"each, the caller's); {live / 2**20:.0f} MiB for {n:,} keys; floor (a dict of "
        f"ints): {floor_live / n:.0f} bytes per key ({live / floor_live:.2f}x)"
    )
    print(
        f"idle: 1,000 later calls left {after_calls:,} keys; sweep() dropped {dropped:,} more; "
        f"memory then {idle / 2**10:.0f} KiB ({idle / live * 100:.2f}% of live)"
    )
    used_again = bytes_when_used_again(keys)
    print(
        f"used again: the same {n:,} keys each every 3 s (a token refills in 6 s, so none is "
        f"ever full) across a rotation of the generations: at worst {used_again:.0f} bytes per "
        f"live key ({used_again / (floor_live / n):.2f}x the floor), sampled every 10,000 calls"
    )

    # An attacker: endless new keys against max_keys.
    bound = n // 10
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    attacked = SyncKeyedLimiter("1/minute", 1, max_keys=bound, clock=ManualClock())
    peak_keys = 0
    for i, key in enumerate(keys):
        attacked.try_acquire(key)
        if i % 1000 == 0:
            peak_keys = max(peak_keys, len(attacked.backend))  # type: ignore[arg-type]
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    stats = attacked.statistics()
    print(
        f"attacker: {n:,} new keys against max_keys={bound:,}: at most {peak_keys:,} live keys, "
        f"{used / 2**20:.0f} MiB, {stats.evicted:,} evicted (keys unused since the last rotation "
        "first)"
    )
    worst = max(live / n, used_again)
    return [
        Check(
            "keyed",
            "bytes per live key (tracemalloc, key strings excluded; the worse of new keys and "
            "keys used again)",
            worst,
            f"{worst:.0f} B (new keys {live / n:.0f} B; floor {floor_live / n:.0f} B)",
            "<= 100 B",
            worst <= 100,
            headline=True,
        ),
        Check(
            "keyed",
            "1,000,000 new keys, SyncKeyedLimiter.try_acquire",
            new_keys,
            f"{new_keys:.2f} s" + ("" if n == 1_000_000 else f" (scaled from {n:,})"),
            "< 1 s",
            new_keys < 1.0,
            headline=True,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and keys")
    parser.add_argument(
        "--serve",
        nargs=4,
        metavar=("SECTION", "VARIANTS", "PORTS", "LIMIT"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--only", choices=(*SECTIONS, "keyed", "wsgi"), help="run one part")
    parser.add_argument("--json", metavar="FILE", help="also write the targets as JSON")
    args = parser.parse_args()
    if args.serve:
        section, variants, ports, limit = args.serve
        serve(section, variants.split(","), [int(p) for p in ports.split(",")], limit)
        return
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    load = (
        {"requests": 1000, "rounds": 4, "connections": 4}
        if args.quick
        else {"requests": 2000, "rounds": 30, "connections": 4}
    )
    checks: list[Check] = []
    if args.only in (None, "wsgi"):
        from _wsgi_bench import bench_wsgi

        checks += bench_wsgi(args.quick)
    for name, bench in (("middleware", bench_middleware), ("routes", bench_routes)):
        if args.only in (None, name):
            checks += bench(**load)
    if args.only in (None, "keyed"):
        checks += bench_keyed(100_000 if args.quick else 1_000_000)
    if args.json:
        write_checks(args.json, "bench_web.py", checks)


if __name__ == "__main__":
    main()
