"""Several processes share one limit through the server: never over, hardly under.

Each worker process (``_worker.py``) runs callers that acquire one token at a time until a
common end, and reports the real wall-clock time at which each was let through. A caller is
let through no earlier than its slot at the server, so for every window that opens at the
start, the grants counted in it are at most what the bucket allows: ``capacity + rate*t``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("_worker.py")


def run_workers(
    url: str, key: str, *, rate: float, capacity: int, duration: float, skews: list[float]
) -> tuple[float, float, list[dict[str, Any]]]:
    start = time.time() + 2.5  # time for every process to start and connect
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                url,
                key,
                str(rate),
                str(capacity),
                repr(start),
                str(duration),
                "16",
                str(skew),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for skew in skews
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration + 30)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert time.time() > start, "the workers took too long to start"
    return start, start + duration, results


def check_envelope(
    results: list[dict[str, Any]], start: float, end: float, rate: float, capacity: int
) -> tuple[int, float]:
    """Assert the bound on every window [start, t]; return (granted in time, ideal)."""
    times = sorted(t for r in results for t in r["grants"] if t <= end)
    assert times and times[0] >= start
    for count, t in enumerate(times, 1):
        # +1: the clocks are read at microsecond resolution at both ends
        assert count <= capacity + rate * (t - start) + 1, (count, t - start)
    for r in results:  # no polling: one server request per acquire (+1 to connect)
        assert r["requests"] <= r["granted"] + 16 + 1
    return len(times), capacity + rate * (end - start)


def test_four_processes_share_one_limit_exactly(redis_url: str, key: str) -> None:
    rate, capacity, duration = 200.0, 20, 3.0
    start, end, results = run_workers(
        redis_url, key, rate=rate, capacity=capacity, duration=duration, skews=[0, 0, 0, 0]
    )
    granted, ideal = check_envelope(results, start, end, rate, capacity)
    print(f"4 processes: granted {granted} of capacity + rate*t = {ideal:.0f}")
    # Most of it was used (the envelope above is the exact bound; this one only says
    # the processes were not held back, and a loaded machine delays their own wake-ups:
    # 80% was measured with seven test runs sharing two cores).
    assert granted >= 0.7 * ideal, (granted, ideal)
    assert all(len(r["grants"]) > 0.1 * ideal for r in results)  # each process got a share


def test_processes_with_skewed_clocks_share_one_correct_limit(redis_url: str, key: str) -> None:
    # One process an hour ahead, one an hour behind: the limit is kept by the server's
    # clock alone, so it holds exactly as if their clocks agreed.
    rate, capacity, duration = 100.0, 10, 1.5
    start, end, results = run_workers(
        redis_url, key, rate=rate, capacity=capacity, duration=duration, skews=[3600, -3600]
    )
    granted, ideal = check_envelope(results, start, end, rate, capacity)
    print(f"skewed clocks: granted {granted} of capacity + rate*t = {ideal:.0f}")
    assert granted >= 0.97 * ideal, (granted, ideal)
    assert all(len(r["grants"]) > 0.2 * ideal for r in results)
