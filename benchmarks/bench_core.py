"""The core benchmark: ratekeeper's limiters beside asyncio.Semaphore and aiolimiter.

    .venv-bench/bin/python benchmarks/bench_core.py            # full run, about 3 minutes
    .venv-bench/bin/python benchmarks/bench_core.py --quick    # smoke run, about 30 seconds
    .venv-bench/bin/python benchmarks/bench_core.py --json results.json --only 2,5 --strict

``--json FILE`` also writes every figure and check as JSON; ``--only`` picks sections;
``--strict`` exits with status 1 when a target fails (by default only a crash does).

Five sections, each a table of medians and ratios and a list of targets (issue #2) marked
PASS or FAIL:

1. uncontended ``await acquire()`` against an asyncio.Semaphore pair (both forms) and
   aiolimiter, interleaved in one process;
2. saturated throughput: 1,000 and 10,000 tasks looping on one limiter at 50,000 tokens/s,
   capacity 500: achieved rate, CPU per grant, peak memory, fairness;
3. precision: one task at 1,000/s, capacity 1: achieved rate and interval deviation;
4. SyncTokenBucket under 4 threads: try_acquire decisions/s and false refusals, and blocking
   acquire at a saturated rate;
5. memory of 10,000 waiting tasks.

Every run is a fresh interpreter (``--worker JOB``), so one run's heap, threads and peak RSS
do not leak into the next; section 1's candidates share one, interleaved. The machine is
shared and noisy: read the medians and the ratios (both sides measured in the same run), not
single times.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    Check,
    WorkerFailed,
    finite,
    jain,
    machine,
    median,
    peak_rss_bytes,
    quantile,
    rss_bytes,
    run_worker,
    source,
    table,
)
from ratekeeper import LimiterClosed, Rate, SyncTokenBucket, TokenBucket

# The saturated scenario of issue #2, and how aiolimiter models the same rate and burst:
# AsyncLimiter(max_rate, time_period) allows bursts of max_rate and refills at
# max_rate/time_period per second, so (500, 0.01) is 50,000/s with a burst of 500.
SAT_RATE = 50_000
SAT_CAPACITY = 500
SAT_AIOLIMITER = (SAT_CAPACITY, SAT_CAPACITY / SAT_RATE)
# Precision: 1,000/s, capacity 1; aiolimiter (1, 0.001) is the same.
PREC_RATE = 1_000
PREC_CAPACITY = 1
PREC_AIOLIMITER = (PREC_CAPACITY, PREC_CAPACITY / PREC_RATE)
# "Tokens always available": a token per nanosecond and a bucket of a billion.
PLENTY = 10**9
MEMORY_WAITERS = 10_000
THREADS = 4

MB = 1_000_000  # figures in MB are 10^6 bytes


@dataclass(frozen=True)
class Profile:
    """How long and how often each section measures."""

    name: str
    unc_calls: int  # calls per timed batch
    unc_repeats: int  # batches per candidate
    sat_tasks: tuple[int, ...]
    sat_repeats: int
    sat_warmup: float  # seconds before the window (the initial burst and task start-up)
    sat_window: float
    sat_trace_window: float  # the separate tracemalloc run
    prec_repeats: int
    prec_seconds: float
    try_repeats: int
    try_seconds: float
    exhaust_capacity: int
    blk_rates: tuple[tuple[int, int], ...]  # (rate, capacity)
    blk_repeats: int
    blk_warmup: float
    blk_window: float


FULL = Profile(
    name="full",
    unc_calls=40_000,
    unc_repeats=30,
    sat_tasks=(1_000, 10_000),
    sat_repeats=5,
    sat_warmup=1.0,
    sat_window=3.0,
    sat_trace_window=1.0,
    prec_repeats=5,
    prec_seconds=3.0,
    try_repeats=5,
    try_seconds=1.0,
    exhaust_capacity=200_000,
    blk_rates=((1_000, 10), (10_000, 100), (SAT_RATE, SAT_CAPACITY)),
    blk_repeats=3,
    blk_warmup=0.5,
    blk_window=2.0,
)
QUICK = Profile(
    name="quick",
    unc_calls=10_000,
    unc_repeats=7,
    sat_tasks=(1_000, 10_000),
    sat_repeats=1,
    sat_warmup=0.5,
    sat_window=1.0,
    sat_trace_window=0.5,
    prec_repeats=1,
    prec_seconds=1.0,
    try_repeats=1,
    try_seconds=0.3,
    exhaust_capacity=50_000,
    blk_rates=((1_000, 10), (10_000, 100), (SAT_RATE, SAT_CAPACITY)),
    blk_repeats=1,
    blk_warmup=0.3,
    blk_window=0.7,
)


def _fmt(value: float, spec: str) -> str:
    """Format a figure, or '-' when there is none (no grants: nan or infinity)."""
    return format(value, spec) if math.isfinite(value) else "-"


def _finite_median(values: list[float]) -> float:
    """Return the median of the finite values (runs without grants have none); nan if none."""
    return median([v for v in values if v is not None and math.isfinite(v)])


def _aiolimiter(max_rate: float, time_period: float) -> Any:
    from aiolimiter import AsyncLimiter

    return AsyncLimiter(max_rate, time_period)


class FloorLimiter:
    """The least an asyncio limiter can do: a FIFO of futures, one timer, float GCRA.

    No validation, cancellation handling, statistics or exact arithmetic: a reference for
    how much of the cost per grant is asyncio's own (a future, a wake-up, a task step).
    """

    def __init__(self, rate: float, capacity: int) -> None:
        self.interval = 1 / rate
        self.burst = capacity / rate
        self.tat = 0.0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self) -> bool:
        loop = self.loop = asyncio.get_running_loop()
        if not self.waiters:
            now = loop.time()
            tat = max(self.tat, now) + self.interval
            if tat - now <= self.burst:
                self.tat = tat
                return True
        future = loop.create_future()
        self.waiters.append(future)
        if self.timer is None:
            self.timer = loop.call_at(self.tat + self.interval - self.burst, self._release)
        await future
        return True

    def _release(self) -> None:
        assert self.loop is not None
        self.timer = None
        now = self.loop.time()
        waiters = self.waiters
        while waiters:
            due = self.tat + self.interval - self.burst
            if due > now:
                break
            future = waiters.popleft()
            if not future.done():
                # Granted at its due time, but never before now minus one interval less 1 ns:
                # the same credit for a late timer as ratekeeper gives, no catch-up burst.
                at = max(due, now - self.interval + 1e-9)
                self.tat = max(self.tat, at) + self.interval
                future.set_result(None)
        if waiters:
            due = self.tat + self.interval - self.burst
            self.timer = self.loop.call_at(due, self._release)


def _saturated_limiter(impl: str) -> Any:
    if impl == "ratekeeper":
        return TokenBucket(SAT_RATE, SAT_CAPACITY)
    if impl == "aiolimiter":
        return _aiolimiter(*SAT_AIOLIMITER)
    return FloorLimiter(SAT_RATE, SAT_CAPACITY)


# ============================================================================================
# Workers: each runs in a fresh interpreter (``--worker JOB``) and returns plain data.
# ============================================================================================


_ONE = 1
_ZERO = 0


class _Reference:
    """Coroutines with acquire()'s signature that grant without any arithmetic."""

    __slots__ = ("_now_ns",)

    def __init__(self) -> None:
        self._now_ns = time.monotonic_ns

    async def signature(
        self, tokens: int = 1, *, timeout: float | None = None, priority: int = 0
    ) -> bool:
        return True

    async def clock_read(
        self, tokens: int = 1, *, timeout: float | None = None, priority: int = 0
    ) -> bool:
        if tokens is _ONE and timeout is None and priority is _ZERO:
            self._now_ns()
            return True
        return False


def job_uncontended(calls: int, repeats: int) -> dict[str, Any]:
    """Time batches of uncontended acquires of every candidate, interleaved."""
    return asyncio.run(_uncontended(calls, repeats))


async def _uncontended(calls: int, repeats: int) -> dict[str, Any]:
    limiter = TokenBucket(Rate(PLENTY), PLENTY)
    sem = asyncio.Semaphore(1)
    leaky = _aiolimiter(PLENTY, 1)
    # The thread's CPU time: nothing here waits, so that is the work, without the time the
    # shared machine's other processes take the core away (which wall time would count).
    clock = time.thread_time_ns

    # Every candidate has the same loop; the acquire is bound to a local where the form allows.
    async def rk_acquire(n: int) -> int:
        acquire = limiter.acquire
        start = clock()
        for _ in range(n):
            await acquire()
        return clock() - start

    async def rk_with(n: int) -> int:
        start = clock()
        for _ in range(n):
            async with limiter:
                pass
        return clock() - start

    async def sem_with(n: int) -> int:
        start = clock()
        for _ in range(n):
            async with sem:
                pass
        return clock() - start

    async def sem_pair(n: int) -> int:
        acquire, release = sem.acquire, sem.release
        start = clock()
        for _ in range(n):
            await acquire()
            release()
        return clock() - start

    async def al_acquire(n: int) -> int:
        acquire = leaky.acquire
        start = clock()
        for _ in range(n):
            await acquire()
        return clock() - start

    async def noop() -> bool:
        return True

    async def bare(n: int) -> int:
        start = clock()
        for _ in range(n):
            await noop()
        return clock() - start

    # What the floor leaves out, in two steps: acquire()'s signature (a bound method with
    # its defaults checked), then the one clock read no limiter can skip.
    reference = _Reference()

    async def ref_signature(n: int) -> int:
        acquire = reference.signature
        start = clock()
        for _ in range(n):
            await acquire()
        return clock() - start

    async def ref_clock(n: int) -> int:
        acquire = reference.clock_read
        start = clock()
        for _ in range(n):
            await acquire()
        return clock() - start

    candidates: list[tuple[str, Callable[[int], Coroutine[Any, Any, int]]]] = [
        ("rk_acquire", rk_acquire),
        ("rk_with", rk_with),
        ("sem_with", sem_with),
        ("sem_pair", sem_pair),
        ("al_acquire", al_acquire),
        ("noop", bare),
        ("ref_signature", ref_signature),
        ("ref_clock", ref_clock),
    ]
    samples: dict[str, list[float]] = {key: [] for key, _ in candidates}
    gc.collect()
    gc.disable()  # as timeit does: a collection would land in one candidate's batch
    try:
        for _, run in candidates:  # warm-up
            await run(max(calls // 10, 1))
        for rep in range(repeats):
            # Rotate the order so that every candidate takes every position equally often.
            shift = rep % len(candidates)
            for key, run in candidates[shift:] + candidates[:shift]:
                samples[key].append(await run(calls) / calls)
    finally:
        gc.enable()
    stats = limiter.statistics()
    return {
        "calls": calls,
        "repeats": repeats,
        "ns_per_call": samples,
        # Every call took the fast path: nothing ever waited.
        "never_waited": stats.waiting == 0 and stats.max_wait == 0.0,
    }


def job_saturated(
    impl: str, tasks: int, warmup: float, window: float, trace: bool
) -> dict[str, Any]:
    """Run ``tasks`` tasks acquiring forever; measure the window after the warm-up."""
    return asyncio.run(_saturated(impl, tasks, warmup, window, trace))


async def _saturated(
    impl: str, tasks: int, warmup: float, window: float, trace: bool
) -> dict[str, Any]:
    gc.collect()
    if trace:
        tracemalloc.start()
    rss_before = rss_bytes()
    acquire = _saturated_limiter(impl).acquire
    counts = [0] * tasks

    async def worker(i: int) -> None:
        while True:
            await acquire()
            counts[i] += 1

    lags: list[float] = []

    async def heartbeat() -> None:
        # How late a 20 ms sleep wakes: the loop's own backlog, or the machine stalling us.
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.02)
            lags.append(time.perf_counter() - start - 0.02)

    runners = [asyncio.create_task(worker(i)) for i in range(tasks)]
    await asyncio.sleep(warmup)
    runners.append(asyncio.create_task(heartbeat()))
    before = counts.copy()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(window)
    after = counts.copy()
    wall1, cpu1 = time.perf_counter(), time.process_time()
    peak_rss = peak_rss_bytes()
    traced_peak = tracemalloc.get_traced_memory()[1] if trace else None
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    per_task = [a - b for a, b in zip(after, before, strict=True)]
    grants = sum(per_task)
    elapsed = wall1 - wall0
    return {
        "impl": impl,
        "tasks": tasks,
        "window_s": elapsed,
        "grants": grants,
        "achieved_per_s": grants / elapsed,
        "achieved_ratio": grants / elapsed / SAT_RATE,
        "cpu_us_per_grant": (cpu1 - cpu0) / grants * 1e6 if grants else float("inf"),
        "cpu_share": (cpu1 - cpu0) / elapsed,
        "jain": jain(per_task),
        "max_loop_lag_ms": max(lags, default=0.0) * 1e3,
        "min_per_task": min(per_task),
        "max_per_task": max(per_task),
        "peak_rss_delta_bytes": max(peak_rss - rss_before, 0),
        "traced_peak_bytes": traced_peak,
    }


def job_precision(impl: str, seconds: float) -> dict[str, Any]:
    """One task acquiring in a loop at 1,000/s, capacity 1; time every grant."""
    return asyncio.run(_precision(impl, seconds))


async def _precision(impl: str, seconds: float) -> dict[str, Any]:
    limiter: Any = (
        TokenBucket(PREC_RATE, PREC_CAPACITY)
        if impl == "ratekeeper"
        else _aiolimiter(*PREC_AIOLIMITER)
    )
    acquire = limiter.acquire
    clock = time.monotonic_ns
    for _ in range(20):  # warm-up: the initial burst, first timers
        await acquire()
    cpu0 = time.process_time()
    stamps = [clock()]
    end = stamps[0] + int(seconds * 1e9)
    while stamps[-1] < end:
        await acquire()
        stamps.append(clock())
    cpu1 = time.process_time()
    interval_ns = 1e9 / PREC_RATE
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    deviation_us = [abs(iv - interval_ns) / 1e3 for iv in intervals]
    elapsed = (stamps[-1] - stamps[0]) / 1e9
    # The envelope: in any window [t_i, t_j], grants j-i+1 <= capacity + rate*(t_j - t_i).
    # One pass: the largest (j - rate*t_j) - min_{i<=j}(i - rate*t_i) + 1 - capacity.
    excess = 0.0
    lowest = float("inf")
    for j, stamp in enumerate(stamps):
        here = j - PREC_RATE * stamp / 1e9
        lowest = min(lowest, here)
        excess = max(excess, here - lowest + 1 - PREC_CAPACITY)
    return {
        "impl": impl,
        "grants": len(intervals),
        "achieved_per_s": len(intervals) / elapsed,
        "achieved_ratio": len(intervals) / elapsed / PREC_RATE,
        "mean_interval_us": sum(intervals) / len(intervals) / 1e3,
        "dev_p50_us": quantile(deviation_us, 0.5),
        "dev_p99_us": quantile(deviation_us, 0.99),
        "dev_max_us": max(deviation_us),
        # Catch-up grants: a grant less than half an interval after the one before.
        "short_share": sum(iv < interval_ns / 2 for iv in intervals) / len(intervals),
        "envelope_excess_tokens": excess,
        "cpu_share": (cpu1 - cpu0) / elapsed,
    }


def job_try(threads: int, seconds: float) -> dict[str, Any]:
    """``threads`` threads call try_acquire on a limiter that always has tokens."""
    limiter = SyncTokenBucket(Rate(PLENTY), PLENTY)
    results: list[tuple[int, int]] = [(0, 0)] * threads
    barrier = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        try_acquire = limiter.try_acquire
        granted = refused = 0
        barrier.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(500):
                if try_acquire():
                    granted += 1
                else:
                    refused += 1
        results[i] = (granted, refused)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    granted = sum(g for g, _ in results)
    refused = sum(r for _, r in results)
    stats = limiter.statistics()
    return {
        "threads": threads,
        "decisions": granted + refused,
        "decisions_per_s": (granted + refused) / elapsed,
        "false_refusals": refused,  # tokens were always there: every refusal is false
        "stats_agree": stats.granted == granted and stats.rejected == refused,
    }


def job_exhaust(threads: int, capacity: int) -> dict[str, Any]:
    """``threads`` threads race for exactly ``capacity`` tokens that never come back."""
    limiter = SyncTokenBucket(Rate(1, per=86_400), capacity)  # one token a day: none return
    tries_each = 2 * capacity // threads
    results: list[tuple[int, int]] = [(0, 0)] * threads
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        try_acquire = limiter.try_acquire
        granted = 0
        late = 0  # grants after this thread's own first refusal: that refusal was false
        refused_once = False
        barrier.wait()
        for _ in range(tries_each):
            if try_acquire():
                granted += 1
                late += refused_once
            else:
                refused_once = True
        results[i] = (granted, late)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    granted = sum(g for g, _ in results)
    return {
        "capacity": capacity,
        "tries": tries_each * threads,
        "granted": granted,
        "grants_after_a_refusal": sum(late for _, late in results),
    }


def job_blocking(
    rate: int, capacity: int, threads: int, warmup: float, window: float
) -> dict[str, Any]:
    """``threads`` threads loop on a blocking acquire(); measure the window after warm-up."""
    limiter = SyncTokenBucket(rate, capacity)
    counts = [0] * threads
    errors: list[str] = []
    stop = threading.Event()

    def run(i: int) -> None:
        acquire = limiter.acquire
        try:
            while not stop.is_set():
                acquire()
                counts[i] += 1
        except LimiterClosed:
            pass
        except Exception as exc:  # reported, and fails the check
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(warmup)
    before = counts.copy()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    time.sleep(window)
    after = counts.copy()
    wall1, cpu1 = time.perf_counter(), time.process_time()
    errors_in_window = len(errors)
    stop.set()
    try:
        limiter.close()
    except Exception as exc:  # reported, and fails the check
        errors.append(f"close(): {type(exc).__name__}: {exc}")
    for w in workers:
        w.join(timeout=2.0)
    per_thread = [a - b for a, b in zip(after, before, strict=True)]
    grants = sum(per_thread)
    elapsed = wall1 - wall0
    return {
        "rate": rate,
        "capacity": capacity,
        "threads": threads,
        "achieved_ratio": grants / elapsed / rate,
        "cpu_us_per_grant": (cpu1 - cpu0) / grants * 1e6 if grants else float("inf"),
        "jain": jain(per_thread) if grants else float("nan"),
        "errors": errors,
        "errors_in_window": errors_in_window,
        "hung_threads": sum(w.is_alive() for w in workers),
    }


def job_memory(impl: str, waiters: int, caller: bool) -> dict[str, Any]:
    """Park ``waiters`` tasks on an empty limiter; measure the Python heap they take.

    Each task runs the limiter's acquire coroutine itself, or (``caller``) a coroutine of the
    caller's that awaits it, as application code would.
    """
    return asyncio.run(_memory(impl, waiters, caller))


async def _memory(impl: str, waiters: int, caller: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    wait: Callable[[], Coroutine[Any, Any, Any]]
    if impl == "ratekeeper":
        # One token an hour and none now: every acquire queues.
        wait = TokenBucket(Rate(1, per=3600), 1, initial=0).acquire
    elif impl == "aiolimiter":
        leaky = _aiolimiter(1, 3600)
        await leaky.acquire()  # empty it
        wait = leaky.acquire
    elif impl == "semaphore":
        wait = asyncio.Semaphore(0).acquire
    else:  # the floor: a task parked on one shared future, with no per-waiter state
        shared = loop.create_future()

        async def park() -> None:
            await shared

        wait = park

    async def calling() -> None:
        await wait()

    tasks = [asyncio.create_task(calling() if caller else wait()) for _ in range(waiters)]
    for _ in range(3):
        await asyncio.sleep(0)
    current, peak = tracemalloc.get_traced_memory()
    parked = sum(not t.done() for t in tasks)
    tracemalloc.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "impl": impl,
        "waiters": waiters,
        "caller": caller,
        "parked": parked,
        "total_bytes": current - base,
        "peak_bytes": peak - base,
    }


JOBS: dict[str, Callable[..., dict[str, Any]]] = {
    "uncontended": job_uncontended,
    "saturated": job_saturated,
    "precision": job_precision,
    "try": job_try,
    "exhaust": job_exhaust,
    "blocking": job_blocking,
    "memory": job_memory,
}


# ============================================================================================
# Sections: run the workers, print the tables, collect the checks.
# ============================================================================================


class Bench:
    """Runs the sections of one profile and keeps what they found."""

    def __init__(self, profile: Profile, progress: bool) -> None:
        self.profile = profile
        self.progress = progress
        self.checks: list[Check] = []
        self.results: dict[str, Any] = {}

    def job(self, kind: str, timeout: float, **args: Any) -> dict[str, Any]:
        if self.progress:
            shown = " ".join(f"{k}={v}" for k, v in args.items())
            print(f"  ... {kind} {shown}", file=sys.stderr, flush=True)
        return run_worker(__file__, {"kind": kind, "args": args}, timeout)

    def check(
        self,
        section: str,
        name: str,
        value: float,
        shown: str,
        *,
        target: str,
        ok: bool,
        headline: bool = False,
    ) -> Check:
        item = Check(section, name, value, shown, target, ok, headline)
        self.checks.append(item)
        return item

    @staticmethod
    def print_checks(checks: list[Check]) -> None:
        rows = [(c.name, c.shown, c.target, c.verdict) for c in checks]
        print()
        print(table(("target", "measured", "required", "result"), rows, align="lrll"))

    # -- 1 -----------------------------------------------------------------------------------

    def uncontended(self) -> None:
        p = self.profile
        print("\n1. Uncontended acquire (tokens always there): ns per call")
        print(
            f"  {p.unc_repeats} batches of {p.unc_calls:,} calls per candidate, candidates "
            "interleaved (order rotated each repeat)\n"
            "  in one event loop, gc off during batches. Per call = batch CPU time (the "
            "thread's) / calls; nothing is subtracted\n"
            "  (every candidate runs the same loop). Ratios: median of the per-repeat ratios."
        )
        data = self.job("uncontended", 300, calls=p.unc_calls, repeats=p.unc_repeats)
        self.results["uncontended"] = data
        samples: dict[str, list[float]] = data["ns_per_call"]
        ours = samples["rk_acquire"]

        def ratio(key: str) -> float:  # ratekeeper acquire / candidate, paired per repeat
            return median([a / b for a, b in zip(ours, samples[key], strict=True)])

        labels = {
            "rk_acquire": "ratekeeper   await limiter.acquire()",
            "rk_with": "ratekeeper   async with limiter:",
            "sem_with": "Semaphore    async with sem:",
            "sem_pair": "Semaphore    await sem.acquire(); sem.release()",
            "al_acquire": "aiolimiter   await limiter.acquire()",
            "noop": "(floor)      await noop()  [a coroutine that does not suspend]",
            "ref_signature": "(floor + signature)  await f()  [acquire()'s arguments]",
            "ref_clock": "(floor + signature + clock read)  [the least a limiter does]",
        }
        rows = []
        for key, label in labels.items():
            xs = samples[key]
            rows.append(
                (
                    label,
                    f"{median(xs):.0f}",
                    f"{quantile(xs, 0.25):.0f}-{quantile(xs, 0.75):.0f}",
                    f"{ratio(key):.2f}x",
                )
            )
        print()
        print(table(("candidate", "median ns", "p25-p75 ns", "acquire()/this"), rows))
        floor = ratio("noop")
        base = samples["noop"]

        def share(key: str) -> float:  # a reference row / the floor, paired per repeat
            return median([a / b for a, b in zip(samples[key], base, strict=True)])

        print(
            f"  What the ratio to the floor is made of: signature {share('ref_signature'):.2f}x, "
            f"+ one clock read {share('ref_clock'):.2f}x, + the bucket's arithmetic and "
            f"statistics {floor:.2f}x"
        )
        checks = [
            self.check(
                "uncontended",
                "acquire() / floor (await of a coroutine that does not suspend)",
                floor,
                f"{floor:.2f}x",
                target="<= 1.30x",
                ok=floor <= 1.3,
                headline=True,
            ),
            self.check(
                "uncontended",
                "acquire() / Semaphore `async with`",
                ratio("sem_with"),
                f"{ratio('sem_with'):.2f}x",
                target="<= 0.60x",
                ok=ratio("sem_with") <= 0.6,
            ),
            self.check(
                "uncontended",
                "acquire() / Semaphore acquire()+release()",
                ratio("sem_pair"),
                f"{ratio('sem_pair'):.2f}x",
                target="<= 0.60x",
                ok=ratio("sem_pair") <= 0.6,
            ),
            self.check(
                "uncontended",
                "aiolimiter acquire() / acquire()",
                1 / ratio("al_acquire"),
                f"{1 / ratio('al_acquire'):.2f}x",
                target=">= 2.00x",
                ok=1 / ratio("al_acquire") >= 2.0,
            ),
            self.check(
                "uncontended",
                "every call took the fast path",
                float(data["never_waited"]),
                "yes" if data["never_waited"] else "no",
                target="yes",
                ok=bool(data["never_waited"]),
            ),
        ]
        self.print_checks(checks)

    # -- 2 -----------------------------------------------------------------------------------

    def saturated(self) -> None:
        p = self.profile
        print(
            f"\n2. Saturated: N tasks each acquiring 1 token in a loop, {SAT_RATE:,} tokens/s, "
            f"capacity {SAT_CAPACITY}"
        )
        print(
            f"  ratekeeper TokenBucket({SAT_RATE}, {SAT_CAPACITY}); aiolimiter "
            f"AsyncLimiter(max_rate={SAT_AIOLIMITER[0]}, time_period={SAT_AIOLIMITER[1]:g}) "
            "(same rate, same burst).\n"
            f"  Each run: a fresh process, {p.sat_warmup:g} s warm-up, then a "
            f"{p.sat_window:g} s window; {p.sat_repeats} runs per row, interleaved; medians.\n"
            "  achieved = grants in window / window / configured rate; CPU = process_time / "
            "grants;\n"
            "  fairness = Jain's index of per-task grants in the window; max lag = how late a "
            "20 ms heartbeat\n"
            "  sleep woke at worst (the loop's backlog, or the machine stalling the process); "
            "peak RSS = ru_maxrss\n"
            "  - RSS before the limiter and tasks were made; peak heap = tracemalloc peak in a "
            f"separate {p.sat_trace_window:g} s run\n"
            "  (MB = 10^6 B).\n"
            "  (floor) = the least an asyncio limiter can do (a deque of futures, one timer, no "
            "checks):\n"
            "  what asyncio itself costs per grant, for reference."
        )
        impls = ("ratekeeper", "aiolimiter", "floor")
        traced_impls = ("ratekeeper", "aiolimiter")
        labels = {"ratekeeper": "ratekeeper", "aiolimiter": "aiolimiter", "floor": "(floor)"}
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {
            (i, n): [] for i in impls for n in p.sat_tasks
        }
        for rep in range(p.sat_repeats):
            for n in p.sat_tasks:
                for impl in impls[rep % 3 :] + impls[: rep % 3]:
                    runs[impl, n].append(
                        self.job(
                            "saturated",
                            p.sat_warmup + p.sat_window + 120,
                            impl=impl,
                            tasks=n,
                            warmup=p.sat_warmup,
                            window=p.sat_window,
                            trace=False,
                        )
                    )
        traced: dict[tuple[str, int], dict[str, Any]] = {}
        for n in p.sat_tasks:
            for impl in traced_impls:
                traced[impl, n] = self.job(
                    "saturated",
                    p.sat_warmup + p.sat_trace_window + 180,
                    impl=impl,
                    tasks=n,
                    warmup=p.sat_warmup,
                    window=p.sat_trace_window,
                    trace=True,
                )
        self.results["saturated"] = {
            "runs": {f"{i}/{n}": r for (i, n), r in runs.items()},
            "traced": {f"{i}/{n}": r for (i, n), r in traced.items()},
            "aiolimiter_config": {
                "max_rate": SAT_AIOLIMITER[0],
                "time_period": SAT_AIOLIMITER[1],
            },
        }

        def med(impl: str, n: int, key: str) -> float:
            return median([r[key] for r in runs[impl, n]])

        def cpu_ratio(n: int, other: str = "aiolimiter", impl: str = "ratekeeper") -> float:
            """``impl``'s CPU per grant / ``other``'s, paired per repeat (same round)."""
            pairs = zip(runs[impl, n], runs[other, n], strict=True)
            return median([a["cpu_us_per_grant"] / b["cpu_us_per_grant"] for a, b in pairs])

        rows = []
        for n in p.sat_tasks:
            for impl in impls:
                heap = traced[impl, n]["traced_peak_bytes"] / MB if impl in traced_impls else None
                rows.append(
                    (
                        labels[impl],
                        f"{n:,}",
                        f"{med(impl, n, 'achieved_per_s'):,.0f}",
                        f"{med(impl, n, 'achieved_ratio') * 100:.2f}%",
                        f"{med(impl, n, 'cpu_us_per_grant'):.2f}",
                        "" if impl == "floor" else f"{cpu_ratio(n, 'floor', impl):.2f}x",
                        f"{med(impl, n, 'cpu_share') * 100:.0f}%",
                        f"{med(impl, n, 'jain'):.3f}",
                        f"{med(impl, n, 'min_per_task'):.0f}-{med(impl, n, 'max_per_task'):.0f}",
                        f"{med(impl, n, 'max_loop_lag_ms'):.1f}",
                        f"{med(impl, n, 'peak_rss_delta_bytes') / MB:.1f}",
                        "" if heap is None else f"{heap:.1f}",
                    )
                )
        print()
        print(
            table(
                (
                    "limiter",
                    "tasks",
                    "grants/s",
                    "achieved",
                    "CPU us/grant",
                    "/ floor",
                    "CPU",
                    "fairness",
                    "grants/task",
                    "max lag ms",
                    "peak RSS MB",
                    "peak heap MB",
                ),
                rows,
            )
        )
        checks = []
        for n in p.sat_tasks:
            achieved = med("ratekeeper", n, "achieved_ratio")
            cpu = med("ratekeeper", n, "cpu_us_per_grant")
            fair = med("ratekeeper", n, "jain")
            ratio = cpu_ratio(n)
            floor = cpu_ratio(n, "floor")
            # The case (10,000 tasks) is the headline; 1,000 tasks is context.
            headline = n == max(p.sat_tasks)
            checks += [
                self.check(
                    "saturated",
                    f"{n:,} tasks: CPU per grant / floor's (FIFO of futures, one timer)",
                    floor,
                    f"{floor:.2f}x",
                    target="<= 1.30x",
                    ok=floor <= 1.3,
                    headline=headline,
                ),
                self.check(
                    "saturated",
                    f"{n:,} tasks: achieved / configured",
                    achieved,
                    f"{achieved * 100:.2f}%",
                    target=">= 99.5%",
                    ok=achieved >= 0.995,
                    headline=headline,
                ),
                self.check(
                    "saturated",
                    f"{n:,} tasks: CPU per grant",
                    cpu,
                    f"{cpu:.2f} us",
                    target="<= 5 us",
                    ok=cpu <= 5.0,
                ),
                self.check(
                    "saturated",
                    f"{n:,} tasks: CPU per grant / aiolimiter's",
                    ratio,
                    f"{ratio:.2f}x",
                    target="<= 0.25x",
                    ok=ratio <= 0.25,
                ),
                self.check(
                    "saturated",
                    f"{n:,} tasks: fairness (Jain)",
                    fair,
                    f"{fair:.3f}",
                    target=">= 0.995",
                    ok=fair >= 0.995,
                    headline=headline,
                ),
            ]
        self.print_checks(checks)

    # -- 3 -----------------------------------------------------------------------------------

    def precision(self) -> None:
        p = self.profile
        print(
            f"\n3. Precision: one task acquiring in a loop at {PREC_RATE:,}/s, capacity "
            f"{PREC_CAPACITY}, default event loop"
        )
        print(
            f"  ratekeeper TokenBucket({PREC_RATE}, {PREC_CAPACITY}); aiolimiter "
            f"AsyncLimiter({PREC_AIOLIMITER[0]}, {PREC_AIOLIMITER[1]:g}). Each run: a fresh "
            f"process, 20 warm-up grants,\n"
            f"  then {p.prec_seconds:g} s timed with time.monotonic_ns() after each grant; "
            f"{p.prec_repeats} runs per row, interleaved; medians.\n"
            "  deviation = |interval - 1 ms|; '< 0.5 ms' = share of intervals under half the "
            "nominal one (catch-up\n"
            "  grants after a late wake-up); envelope excess = most grants in any window "
            "beyond capacity + rate*T\n"
            "  (from the observed times, which include wake-up jitter); CPU = process_time "
            "/ wall time."
        )
        impls = ("ratekeeper", "aiolimiter")
        runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
        for rep in range(p.prec_repeats):
            for impl in impls if rep % 2 == 0 else impls[::-1]:
                runs[impl].append(
                    self.job("precision", p.prec_seconds + 60, impl=impl, seconds=p.prec_seconds)
                )
        self.results["precision"] = runs

        def med(impl: str, key: str) -> float:
            return median([r[key] for r in runs[impl]])

        rows = [
            (
                impl,
                f"{med(impl, 'achieved_per_s'):.1f}",
                f"{med(impl, 'achieved_ratio') * 100:.2f}%",
                f"{med(impl, 'mean_interval_us'):.1f}",
                f"{med(impl, 'dev_p50_us'):.1f}",
                f"{med(impl, 'dev_p99_us'):.1f}",
                f"{med(impl, 'short_share') * 100:.1f}%",
                f"{med(impl, 'envelope_excess_tokens'):.3f}",
                f"{med(impl, 'cpu_share') * 100:.1f}%",
            )
            for impl in impls
        ]
        print()
        print(
            table(
                (
                    "limiter",
                    "grants/s",
                    "achieved",
                    "mean interval us",
                    "p50 dev us",
                    "p99 dev us",
                    "< 0.5 ms",
                    "envelope excess",
                    "CPU",
                ),
                rows,
            )
        )
        achieved = med("ratekeeper", "achieved_ratio")
        excess = max(r["envelope_excess_tokens"] for r in runs["ratekeeper"])
        cpu = med("ratekeeper", "cpu_share")
        checks = [
            self.check(
                "precision",
                "achieved / configured",
                achieved,
                f"{achieved * 100:.2f}%",
                target=">= 99%",
                ok=achieved >= 0.99,
                headline=True,
            ),
            self.check(
                "precision",
                "envelope excess (worst run)",
                excess,
                f"{excess:.3f} tokens",
                target="< 1 token",
                ok=excess < 1.0,
                headline=True,
            ),
            self.check(
                "precision",
                "no spinning: CPU while waiting",
                cpu,
                f"{cpu * 100:.1f}%",
                target="<= 20% of a core",
                ok=cpu <= 0.2,
            ),
        ]
        self.print_checks(checks)

    # -- 4 -----------------------------------------------------------------------------------

    def threads(self) -> None:
        p = self.profile
        print(f"\n4. Thread-safe limiter (SyncTokenBucket), {THREADS} threads")
        print(
            f"  try_acquire(): a limiter that always has tokens ({PLENTY:,}/s, capacity "
            f"{PLENTY:,}), {p.try_seconds:g} s per run,\n"
            f"  {p.try_repeats} runs, medians; every refusal there is a false one. Exhaustion: "
            f"{THREADS} threads race for\n"
            f"  {p.exhaust_capacity:,} tokens that never come back (1/day), trying "
            "2x that many times in all.\n"
            "  Blocking acquire(): threads loop on acquire() at the rate shown; "
            f"{p.blk_warmup:g} s warm-up, {p.blk_window:g} s window, "
            f"{p.blk_repeats} runs, medians."
        )
        single: list[dict[str, Any]] = []
        multi: list[dict[str, Any]] = []
        for _ in range(p.try_repeats):
            single.append(self.job("try", p.try_seconds + 60, threads=1, seconds=p.try_seconds))
            multi.append(
                self.job("try", p.try_seconds + 60, threads=THREADS, seconds=p.try_seconds)
            )
        exhaust = self.job("exhaust", 120, threads=THREADS, capacity=p.exhaust_capacity)
        blocking: dict[tuple[int, int], list[dict[str, Any]]] = {r: [] for r in p.blk_rates}
        for _ in range(p.blk_repeats):
            for rate, capacity in p.blk_rates:
                blocking[rate, capacity].append(
                    self.job(
                        "blocking",
                        p.blk_warmup + p.blk_window + 60,
                        rate=rate,
                        capacity=capacity,
                        threads=THREADS,
                        warmup=p.blk_warmup,
                        window=p.blk_window,
                    )
                )
        self.results["threads"] = {
            "try_1_thread": single,
            f"try_{THREADS}_threads": multi,
            "exhaust": exhaust,
            "blocking": {f"{r}/s capacity {c}": v for (r, c), v in blocking.items()},
        }
        one = median([r["decisions_per_s"] for r in single])
        many = median([r["decisions_per_s"] for r in multi])
        false_refusals = sum(r["false_refusals"] for r in single + multi)
        agree = all(r["stats_agree"] for r in single + multi)

        def spread(runs: list[dict[str, Any]]) -> str:
            values = [r["decisions_per_s"] for r in runs]
            return f"{min(values):,.0f}-{max(values):,.0f}"

        rows = [
            ("try_acquire, 1 thread", f"{one:,.0f}", spread(single), "", ""),
            (
                f"try_acquire, {THREADS} threads",
                f"{many:,.0f}",
                spread(multi),
                f"{sum(r['false_refusals'] for r in multi)}",
                "yes" if all(r["stats_agree"] for r in multi) else "NO",
            ),
        ]
        print()
        print(
            table(
                ("run", "decisions/s", "min-max of runs", "false refusals", "statistics() agree"),
                rows,
            )
        )
        rows = [
            (
                f"exhaustion race, {THREADS} threads",
                f"{exhaust['capacity']:,}",
                f"{exhaust['tries']:,}",
                f"{exhaust['granted']:,}",
                f"{exhaust['grants_after_a_refusal']}",
            )
        ]
        print()
        print(table(("run", "capacity", "tries", "granted", "granted after a refusal"), rows))
        rows = []
        for (rate, capacity), results in blocking.items():
            errors = [e for r in results for e in r["errors"]]
            rows.append(
                (
                    f"{rate:,}/s, capacity {capacity}",
                    f"{median([r['achieved_ratio'] for r in results]) * 100:.2f}%",
                    f"{min(r['achieved_ratio'] for r in results) * 100:.2f}%",
                    _fmt(_finite_median([r["cpu_us_per_grant"] for r in results]), ".1f"),
                    _fmt(_finite_median([r["jain"] for r in results]), ".3f"),
                    f"{len(errors)}",
                    f"{sum(r['hung_threads'] for r in results)}",
                )
            )
        print()
        print(
            table(
                (
                    f"blocking acquire(), {THREADS} threads",
                    "achieved",
                    "worst run",
                    "CPU us/grant",
                    "fairness",
                    "exceptions",
                    "hung threads",
                ),
                rows,
            )
        )
        distinct = sorted({e for rs in blocking.values() for r in rs for e in r["errors"]})
        for error in distinct[:5]:
            print(f"  exception raised in a thread: {error}")
        checks = [
            self.check(
                "threads",
                f"try_acquire decisions/s, {THREADS} threads",
                many,
                f"{many:,.0f}/s",
                target=">= 300,000/s",
                ok=many >= 300_000,
            ),
            self.check(
                "threads",
                "false refusals (tokens always there)",
                false_refusals,
                f"{false_refusals}",
                target="0",
                ok=false_refusals == 0 and agree,
            ),
            self.check(
                "threads",
                "exhaustion race: granted == capacity",
                exhaust["granted"],
                f"{exhaust['granted']:,}",
                target=f"{exhaust['capacity']:,}",
                ok=exhaust["granted"] == exhaust["capacity"]
                and exhaust["grants_after_a_refusal"] == 0,
            ),
        ]
        for (rate, _), results in blocking.items():
            achieved = median([r["achieved_ratio"] for r in results])
            failures = sum(len(r["errors"]) + r["hung_threads"] for r in results)
            checks.append(
                self.check(
                    "threads",
                    f"blocking {rate:,}/s: achieved / configured",
                    achieved,
                    f"{achieved * 100:.2f}%",
                    target=">= 99% (as sec. 3)",
                    ok=achieved >= 0.99,
                )
            )
            checks.append(
                self.check(
                    "threads",
                    f"blocking {rate:,}/s: exceptions or hangs",
                    failures,
                    f"{failures}",
                    target="0",
                    ok=failures == 0,
                )
            )
        self.print_checks(checks)

    # -- 5 -----------------------------------------------------------------------------------

    def memory(self) -> None:
        n = MEMORY_WAITERS
        print(f"\n5. Memory: {n:,} tasks waiting on an empty limiter")
        print(
            "  tracemalloc, a fresh process per figure: the Python heap taken by making the "
            "limiter and parking\n"
            "  the tasks, tasks and coroutines included. Each task runs acquire() itself "
            "(create_task(limiter.acquire()));\n"
            "  '+ caller' wraps it in a one-line coroutine, as application code would. "
            "Limiter's share = total -\n"
            "  the floor row (a task parked on one shared future: no per-waiter state). "
            "MB = 10^6 B."
        )
        impls = {
            "ratekeeper": "ratekeeper TokenBucket",
            "aiolimiter": "aiolimiter AsyncLimiter",
            "semaphore": "asyncio.Semaphore(0)",
            "floor": "(floor) await shared_future",
        }
        data = {
            (impl, caller): self.job("memory", 120, impl=impl, waiters=n, caller=caller)
            for caller in (False, True)
            for impl in impls
        }
        self.results["memory"] = {
            f"{impl}{' + caller' if caller else ''}": v for (impl, caller), v in data.items()
        }
        floor = data["floor", False]["total_bytes"]
        rows = [
            (
                label,
                f"{data[impl, False]['parked']:,}",
                f"{data[impl, False]['total_bytes'] / MB:.2f}",
                f"{data[impl, False]['total_bytes'] / n:,.0f}",
                f"{(data[impl, False]['total_bytes'] - floor) / n:,.0f}",
                f"{data[impl, True]['total_bytes'] / MB:.2f}",
            )
            for impl, label in impls.items()
        ]
        print()
        print(
            table(
                (
                    "waiting on",
                    "parked",
                    "total MB",
                    "bytes/waiter",
                    "limiter's share B",
                    "+ caller MB",
                ),
                rows,
            )
        )
        ours = data["ratekeeper", False]
        checks = [
            self.check(
                "memory",
                f"{n:,} waiters: total heap",
                ours["total_bytes"],
                f"{ours['total_bytes'] / MB:.2f} MB",
                target="< 15 MB",
                ok=ours["total_bytes"] < 15 * MB and ours["parked"] == n,
            )
        ]
        self.print_checks(checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (about 30 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if a target fails"
    )
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help="run only these sections, e.g. 1,3 (default: all)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(JOBS[job["kind"]](**job["args"])))
        return 0

    profile = QUICK if args.quick else FULL
    # Progress lines go to stderr on a terminal, or when `ratekeeper bench` runs the script.
    progress = sys.stderr.isatty() or os.environ.get("RATEKEEPER_BENCH_PROGRESS") == "1"
    bench = Bench(profile, progress=progress)
    info = machine()
    started = time.perf_counter()
    print(f"ratekeeper core benchmark ({profile.name} run)")
    print(
        f"  {info['python']} on {info['platform']} {info['machine']}, nproc={info['nproc']} "
        f"(cpu_count={info['cpu_count']}), load average {info['loadavg_1_5_15']}"
    )
    info["source"] = source(str(Path(__file__).resolve().parent.parent))
    print(f"  ratekeeper {info['ratekeeper']} ({info['source']}), aiolimiter {info['aiolimiter']}")
    print("  command: python benchmarks/bench_core.py" + (" --quick" if args.quick else ""))
    sections: dict[str, Callable[[], None]] = {
        "1": bench.uncontended,
        "2": bench.saturated,
        "3": bench.precision,
        "4": bench.threads,
        "5": bench.memory,
    }
    chosen = args.only.split(",") if args.only else list(sections)
    for key in chosen:
        try:
            sections[key.strip()]()
        except WorkerFailed as exc:
            print(f"\n  ERROR: a measurement failed: {exc}")
            bench.check(f"section {key}", "section ran", 0, "crashed", "runs", False)
        sys.stdout.flush()

    failed = [c for c in bench.checks if not c.ok]
    elapsed = time.perf_counter() - started
    print(
        f"\nSummary: {len(bench.checks) - len(failed)} of {len(bench.checks)} targets pass "
        f"({elapsed:.0f} s)"
    )
    for c in failed:
        print(f"  FAIL  [{c.section}] {c.name}: {c.shown} (required {c.target})")
    if args.json:
        info["loadavg_end"] = machine()["loadavg_1_5_15"]
        payload = {
            "profile": profile.__dict__,
            "machine": info,
            "elapsed_s": elapsed,
            "checks": [c.as_dict() for c in bench.checks],
            "results": bench.results,
        }
        with open(args.json, "w") as f:
            json.dump(finite(payload), f, indent=2, default=str)
        print(f"  figures written to {args.json}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
