"""One process of the fault suite: callers acquiring from one shared limit until the end.

Run as ``python -m tests.faults._worker CONFIG OUT`` (CONFIG: one JSON object, see
``harness.Scenario.worker_config``). Writes one JSON object to the file OUT: the wall-clock
times at which callers were let through, the longest call, when the limiter counted backend
errors (sampled every 10 ms), and its counters.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ratekeeper import AcquireTimeout, BackendUnavailable, KeyedLimiter, Limit, SyncKeyedLimiter
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

    def call(self, started: float, granted: bool, failed: bool) -> None:
        now = time.time()
        with self.lock:
            if granted:
                self.grants.append(now)
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
    """Return (acquire(timeout), statistics, close) of the limiter the config names."""
    rate, capacity, key = config["rate"], config["capacity"], config["key"]
    limits = {"default": Limit(rate, capacity)}
    if config["keyed"]:
        backend_type = SyncRedisKeyedBackend if sync else RedisKeyedBackend
        backend: Any = backend_type(config["url"], limits, **options(config))
        keyed: Any = (SyncKeyedLimiter if sync else KeyedLimiter)(backend=backend)
        close = backend.close if sync else backend.aclose
        return (lambda t: keyed.acquire(key, timeout=t)), backend.statistics, close
    bucket_type = SyncRedisTokenBucket if sync else RedisTokenBucket
    bucket: Any = bucket_type(config["url"], key, rate, capacity, **options(config))
    close = bucket.close if sync else bucket.aclose
    return (lambda t: bucket.acquire(timeout=t)), bucket.statistics, close


async def run_async(config: dict[str, Any], record: Record) -> Any:
    acquire, stats, close = make(config, sync=False)
    end = config["start"] + config["duration"]
    await asyncio.sleep(max(0.0, config["start"] - time.time()))
    threading.Thread(target=sample_errors, args=(stats, record, end), daemon=True).start()

    async def caller() -> None:
        while (left := end - time.time()) > 0:
            started = time.time()
            try:
                await acquire(min(left, config["acquire_timeout"]))
            except AcquireTimeout:
                record.call(started, False, False)
            except BackendUnavailable:
                record.call(started, False, True)
                await asyncio.sleep(0.01)
            else:
                record.call(started, True, False)

    await asyncio.gather(*(caller() for _ in range(config["tasks"])))
    result = stats()
    await close()
    return result


def run_sync(config: dict[str, Any], record: Record) -> Any:
    acquire, stats, close = make(config, sync=True)
    end = config["start"] + config["duration"]
    time.sleep(max(0.0, config["start"] - time.time()))
    threading.Thread(target=sample_errors, args=(stats, record, end), daemon=True).start()

    def caller() -> None:
        while (left := end - time.time()) > 0:
            started = time.time()
            try:
                acquire(min(left, config["acquire_timeout"]))
            except AcquireTimeout:
                record.call(started, False, False)
            except BackendUnavailable:
                record.call(started, False, True)
                time.sleep(0.01)
            else:
                record.call(started, True, False)

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
    Path(argv[1]).write_text(
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
