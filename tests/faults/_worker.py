"""One process of the fault suite: callers acquiring from one shared limit until the end.

Run as ``python -m tests.faults._worker CONFIG`` (CONFIG: one JSON object, see
``harness.Scenario.worker_config``). Writes one JSON object to the file CONFIG["out"]: the
wall-clock times at which callers were let through, the longest call, when the limiter
counted backend errors (sampled every 10 ms), and its counters.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ratekeeper import AcquireTimeout, BackendUnavailable, Limit
from ratekeeper.redis import (
    RedisKeyedBackend,
    RedisTokenBucket,
    SyncRedisKeyedBackend,
    SyncRedisTokenBucket,
)


class Record:
    """What the callers saw, shared by them (one event loop, or threads under a lock)."""

    def __init__(self) -> None:
        self.grants: list[float] = []
        self.longest = 0.0
        self.failures = 0
        self.error_times: list[float] = []
        self.lock = threading.Lock()

    def call(self, started: float, slot: float | None, failed: bool) -> None:
        now = time.time()
        with self.lock:
            if slot is not None:
                self.grants.append(slot)
            self.failures += failed
            self.longest = max(self.longest, now - started)


def options(config: dict[str, Any]) -> dict[str, Any]:
    share = config["share"] if config["policy"] == "fallback" else None
    return {
        "timeout": config["timeout"],
        "retry_interval": config["retry_interval"],
        "on_failure": config["policy"],
        "fallback_share": share,
    }


def sample_errors(stats: Any, record: Record, end: float) -> None:
    """Note when the backend error count grows (every 10 ms), in a thread of its own."""
    seen = 0
    while time.time() < end + 0.5:
        errors = stats().backend_errors
        if errors > seen:
            seen = errors
            record.error_times.append(time.time())
        time.sleep(0.01)


def make(config: dict[str, Any], sync: bool) -> tuple[Any, Any, Any]:
    """Return (decide, statistics, close) of the limiter the config names.

    ``decide(timeout)`` reserves one token (a coroutine for asyncio) and returns the wait
    until its slot, in seconds; it raises AcquireTimeout when refused. The callers record
    each grant at its slot (when decided, plus the wait), not when their sleep ends: on a
    loaded machine a late wake-up would bunch grants up that the limiter spread out.
    """
    rate, capacity, key = config["rate"], config["capacity"], config["key"]
    limits = {"default": Limit(rate, capacity)}
    if config["keyed"]:
        backend: Any = (SyncRedisKeyedBackend if sync else RedisKeyedBackend)(
            config["url"], limits, **options(config)
        )

        def verdict(v: Any) -> float:
            if not v.granted:
                raise AcquireTimeout("refused", v.wait_ns / 1e9)
            return float(v.wait_ns) / 1e9

        if sync:
            decide: Any = lambda t: verdict(backend.reserve(key, (1,), int(t * 1e9)))  # noqa: E731
        else:

            async def decide(t: float) -> float:
                return verdict(await backend.reserve(key, (1,), int(t * 1e9)))

        return decide, backend.statistics, backend.close if sync else backend.aclose
    bucket: Any = (SyncRedisTokenBucket if sync else RedisTokenBucket)(
        config["url"], key, rate, capacity, **options(config)
    )
    if sync:
        decide = lambda t: bucket.reserve(timeout=t).delay  # noqa: E731
    else:

        async def decide(t: float) -> float:
            return float((await bucket.reserve(timeout=t)).delay)

    return decide, bucket.statistics, bucket.close if sync else bucket.aclose


def ready(config: dict[str, Any]) -> float:
    """Say this process is ready, then wait for the common start time (a barrier: on a
    loaded machine processes take very different times to start)."""
    go = Path(config["go"])
    Path(config["out"] + ".ready").touch()
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no start time came")
        time.sleep(0.005)
    return float(go.read_text())


async def run_async(config: dict[str, Any], record: Record) -> Any:
    decide, stats, close = make(config, sync=False)
    start = ready(config)
    end = start + config["duration"]
    await asyncio.sleep(max(0.0, start - time.time()))
    threading.Thread(target=sample_errors, args=(stats, record, end), daemon=True).start()

    async def caller() -> None:
        while (left := end - time.time()) > 0:
            started = time.time()
            try:
                delay = await decide(min(left, config["acquire_timeout"]))
            except AcquireTimeout:
                record.call(started, None, False)
            except BackendUnavailable:
                record.call(started, None, True)
                await asyncio.sleep(0.01)
            else:
                slot = time.time() + delay
                await asyncio.sleep(delay)
                record.call(started, slot, False)
                await asyncio.sleep(0.001)  # the work the grant was for

    await asyncio.gather(*(caller() for _ in range(config["tasks"])))
    result = stats()
    await close()
    return result


def run_sync(config: dict[str, Any], record: Record) -> Any:
    decide, stats, close = make(config, sync=True)
    start = ready(config)
    end = start + config["duration"]
    time.sleep(max(0.0, start - time.time()))
    threading.Thread(target=sample_errors, args=(stats, record, end), daemon=True).start()

    def caller() -> None:
        while (left := end - time.time()) > 0:
            started = time.time()
            try:
                delay = decide(min(left, config["acquire_timeout"]))
            except AcquireTimeout:
                record.call(started, None, False)
            except BackendUnavailable:
                record.call(started, None, True)
                time.sleep(0.01)
            else:
                slot = time.time() + delay
                time.sleep(delay)
                record.call(started, slot, False)
                time.sleep(0.001)  # the work the grant was for

    threads = [threading.Thread(target=caller) for _ in range(config["tasks"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = stats()
    close()
    return result


def main(argv: list[str]) -> None:
    config = json.loads(argv[0])
    record = Record()
    if config["front"] == "sync":
        stats = run_sync(config, record)
    else:
        if config["front"] == "uvloop":
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        stats = asyncio.run(run_async(config, record))
    Path(config["out"]).write_text(
        json.dumps(
            {
                "grants": record.grants,
                "longest": record.longest,
                "failures": record.failures,
                "error_times": record.error_times,
                "fallback_grants": stats.fallback_grants,
                "failed_open": stats.failed_open,
                "backend_errors": stats.backend_errors,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
