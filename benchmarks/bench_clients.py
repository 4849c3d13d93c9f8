"""Benchmark the client integrations: the cost each adds per request to its bare client.

    .venv-bench/bin/python benchmarks/bench_clients.py            # about half a minute
    .venv-bench/bin/python benchmarks/bench_clients.py --quick    # fewer rounds and requests

A minimal HTTP/1.1 server runs in a child process on a loopback port (raw asyncio, keep-alive,
a fixed answer: as cheap as a server gets, so that the clients' own costs show). Each client
sends one request at a time, over one kept-alive connection:

- ``bare``: the client alone (``httpx.AsyncClient``, ``httpx.Client``, ``requests.Session``,
  ``aiohttp.ClientSession``);
- ``limited``: the same through ratekeeper's adapter (``RateLimitTransport``,
  ``SyncRateLimitTransport``, ``RateLimitAdapter``, ``RateLimitMiddleware``) with a limit so
  high that nobody waits: what is measured is the bookkeeping on every request;
- ``limited+headers``: the same, the server now answering with OpenAI's six quota headers
  (the ``bare`` figure for this path is measured too), which the adapter parses every time.

Rounds are interleaved (every variant once per round, the order rotated each round); the
figures are medians over rounds of the mean time per request, and the added cost is the
median of the per-round differences with the bare client on the same path (paired, so load
that moves during the run cancels out). Two clocks: the client process's CPU time per
request (what the adapter costs; preemption by other work on the machine does not count)
and the wall time (what a caller waits; noisy on a shared machine). And, for reference, the
httpx transports on a mock transport (no network at all): the pure cost of the adapter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import requests

from ratekeeper.integrations.aiohttp import RateLimitMiddleware
from ratekeeper.integrations.httpx import RateLimitTransport, SyncRateLimitTransport
from ratekeeper.integrations.requests import RateLimitAdapter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, source, table

RATE = 1e9  # requests/s: nobody ever waits
QUOTA = (
    "x-ratelimit-limit-requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\n"
    "x-ratelimit-reset-requests: 6ms\r\nx-ratelimit-limit-tokens: 2000000\r\n"
    "x-ratelimit-remaining-tokens: 1999000\r\nx-ratelimit-reset-tokens: 30ms\r\n"
)
SERVER = f"""
import asyncio, socket, sys
PLAIN = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\ncontent-type: text/plain\\r\\n\\r\\nok"
QUOTA = PLAIN.replace(b"\\r\\n\\r\\n", b"\\r\\n" + {QUOTA!r}.encode() + b"\\r\\n")
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(QUOTA if b" /h " in head.split(b"\\r\\n", 1)[0] + b" " else PLAIN)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(64)
    server = await asyncio.start_server(handle, sock=sock)
    print(sock.getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    return process, f"http://127.0.0.1:{port}"


Runner = Callable[[str, int], Awaitable[tuple[float, float]]]  # (url, n) -> (wall, cpu) s


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def per_request(start: tuple[float, float], n: int) -> tuple[float, float]:
    wall, cpu = clocks()
    return (wall - start[0]) / n, (cpu - start[1]) / n


def sync_runner(send: Callable[[str], object]) -> Runner:
    async def run(url: str, n: int) -> tuple[float, float]:
        send(url)  # warm: the connection is open before the clock starts
        start = clocks()
        for _ in range(n):
            send(url)
        return per_request(start, n)

    return run


def async_runner(send: Callable[[str], Awaitable[object]]) -> Runner:
    async def run(url: str, n: int) -> tuple[float, float]:
        await send(url)
        start = clocks()
        for _ in range(n):
            await send(url)
        return per_request(start, n)

    return run


async def clients(closers: list[Callable[[], Awaitable[object]]]) -> dict[str, dict[str, Runner]]:
    """Return {client: {"bare": runner, "limited": runner}}; each runner owns one session,
    whose closing is added to ``closers``."""
    found: dict[str, dict[str, Runner]] = {}

    def httpx_sync(transport: httpx.BaseTransport | None) -> Runner:
        client = httpx.Client(transport=transport) if transport else httpx.Client()
        return sync_runner(lambda url: client.get(url).content)

    def httpx_async(transport: httpx.AsyncBaseTransport | None) -> Runner:
        client = httpx.AsyncClient(transport=transport) if transport else httpx.AsyncClient()
        closers.append(client.aclose)

        async def send(url: str) -> bytes:
            return (await client.get(url)).content

        return async_runner(send)

    def with_requests(adapter: requests.adapters.HTTPAdapter | None) -> Runner:
        session = requests.Session()
        if adapter is not None:
            session.mount("http://", adapter)
        return sync_runner(lambda url: session.get(url).content)

    def with_aiohttp(middleware: RateLimitMiddleware | None) -> Runner:
        session = aiohttp.ClientSession(middlewares=(middleware,) if middleware else ())
        closers.append(session.close)

        async def send(url: str) -> bytes:
            async with session.get(url) as response:
                return await response.read()

        return async_runner(send)

    found["httpx (async)"] = {
        "bare": httpx_async(None),
        "limited": httpx_async(RateLimitTransport(rate=RATE)),
    }
    found["httpx (sync)"] = {
        "bare": httpx_sync(None),
        "limited": httpx_sync(SyncRateLimitTransport(rate=RATE)),
    }
    found["requests"] = {
        "bare": with_requests(None),
        "limited": with_requests(RateLimitAdapter(rate=RATE)),
    }
    found["aiohttp"] = {
        "bare": with_aiohttp(None),
        "limited": with_aiohttp(RateLimitMiddleware(rate=RATE)),
    }
    return found


async def measure(
    base: str, rounds: int, n: int
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    closers: list[Callable[[], Awaitable[object]]] = []
    runners = await clients(closers)
    variants = [
        (name, kind, path)
        for name in runners
        for kind in ("bare", "limited")
        for path in ("/", "/h")
    ]
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in runners}
    for r in range(rounds):
        turn = variants[r % len(variants) :] + variants[: r % len(variants)]
        for name, kind, path in turn:
            figures = await runners[name][kind](base + path, n)
            samples[name].setdefault(f"{kind} {path}", []).append(figures)
    for close in closers:
        await close()
    return samples


def mock_overhead(n: int, rounds: int) -> dict[str, float]:
    """Return the median CPU µs per request of the httpx sync transport on a mock, bare and
    limited (no network: the adapter's own cost)."""
    handler = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    headers = [tuple(line.split(": ")) for line in QUOTA.strip().split("\r\n")]
    quota = httpx.MockTransport(lambda request: httpx.Response(200, headers=headers))  # type: ignore[arg-type]
    clients = {
        "bare": httpx.Client(transport=handler),
        "limited": httpx.Client(transport=SyncRateLimitTransport(handler, rate=RATE)),
        "bare+headers": httpx.Client(transport=quota),
        "limited+headers": httpx.Client(transport=SyncRateLimitTransport(quota, rate=RATE)),
    }
    results: dict[str, list[float]] = {name: [] for name in clients}
    for r in range(rounds):
        names = list(clients)
        for name in names[r % 4 :] + names[: r % 4]:
            client = clients[name]
            client.get("http://x/")
            start = time.process_time()
            for _ in range(n):
                client.get("http://x/")
            results[name].append((time.process_time() - start) / n * 1e6)
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    args = parser.parse_args()
    rounds, n = (3, 100) if args.quick else (9, 400)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"bench_clients: ratekeeper {source(root)}; {machine()}")
    print(f"{rounds} interleaved rounds of {n} sequential requests per variant, loopback\n")
    process, base = start_server()
    try:
        samples = asyncio.run(measure(base, rounds, n))
    finally:
        process.terminate()
        process.wait(10)
    rows = []
    for name, found in samples.items():
        for path, label in (("/", "limited"), ("/h", "limited+headers")):
            bare, limited = found[f"bare {path}"], found[f"limited {path}"]
            row = [name, label]
            for i in (1, 0):  # CPU, then wall
                a = [s[i] * 1e6 for s in bare]
                b = [s[i] * 1e6 for s in limited]
                added = statistics.median(y - x for x, y in zip(a, b, strict=True))
                row += [f"{statistics.median(a):.1f}", f"{statistics.median(b):.1f}"]
                row += [f"{added:+.1f}"]
            rows.append(row)
    print("Per request, µs: the client process's CPU time, then wall time (medians over rounds;")
    print("added: median of the paired per-round differences)")
    headers = ["client", "variant", "cpu bare", "cpu adapter", "cpu added"]
    print(table([*headers, "wall bare", "wall adapter", "wall added"], rows))
    mock = mock_overhead(n * 5, rounds)
    print("\nhttpx sync transport on a mock transport (no network), CPU µs per request")
    print(
        table(
            ["response", "bare", "with adapter", "added"],
            [
                [
                    "plain",
                    f"{mock['bare']:.1f}",
                    f"{mock['limited']:.1f}",
                    f"{mock['limited'] - mock['bare']:+.1f}",
                ],
                [
                    "OpenAI quota headers",
                    f"{mock['bare+headers']:.1f}",
                    f"{mock['limited+headers']:.1f}",
                    f"{mock['limited+headers'] - mock['bare+headers']:+.1f}",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
