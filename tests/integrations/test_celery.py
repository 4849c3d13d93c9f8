"""A real Celery worker (prefork, three processes) on a real Valkey broker: one shared rate for
every process, not one per process."""

from __future__ import annotations

import importlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).parents[2]
RATE = 20  # per second, shared; the three processes would make 60 with Celery's own limit
RUNS = 120  # six seconds of work at the shared rate


# One worker run per mode: in one run, the retry mode's re-queued tasks (all due at the same
# instant) would hold the processes the waiting tasks need to keep their slots booked ahead.
@pytest.mark.parametrize("mode", ["wait", "retry"])
def test_one_rate_shared_by_every_worker_process(
    mode: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"rk-celery-{uuid.uuid4().hex[:8]}"
    env = {"RK_CELERY_URL": redis_url, "RK_CELERY_RATE": f"{RATE}/s", "RK_CELERY_PREFIX": prefix}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("tests.integrations._celery_app", None)
    tasks = importlib.import_module("tests.integrations._celery_app")
    task = tasks.tick_wait if mode == "wait" else tasks.tick_retry
    for _ in range(RUNS):
        task.delay()
    client = redis.Redis.from_url(redis_url)
    command = "-m celery -A tests.integrations._celery_app worker -c 3 -P prefork -l warning"
    command += " --without-gossip --without-mingle --without-heartbeat"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    worker = subprocess.Popen(
        [sys.executable, *command.split(), "-n", f"{prefix}@%h"],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and worker.poll() is None:
            if client.llen(f"{prefix}:runs:{mode}") >= RUNS:
                break
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            output, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
    runs = [entry.split() for entry in client.lrange(f"{prefix}:runs:{mode}", 0, -1)]
    assert len(runs) == RUNS, (mode, len(runs), output[-3000:])
    assert len({pid for _, pid in runs}) >= 2  # the work was spread over the processes
    times = sorted(float(stamp) for stamp, _ in runs)
    # Capacity 1: one grant, then one every 1/RATE s. The slope of the grant times
    # (least squares) is the achieved rate, robust to one late wake-up at either end.
    rate = 1 / statistics.linear_regression(range(RUNS), times).slope
    # No second of the run held more than the shared rate allows (RATE + 1 runs span a
    # whole second at the server; the times are taken in the workers, after waking, so
    # allow for a late wake-up on a loaded machine; three times the rate would be 0.33 s).
    for first, last in zip(times, times[RATE:], strict=False):
        assert last - first >= 1.0 - 0.25, (mode, first, last)
    if mode == "wait":
        # The processes keep slots booked ahead at the server: the shared rate, within 1%.
        assert rate == pytest.approx(RATE, rel=0.01), rate
    else:
        # A refused task is re-queued for when a token is due; it may come back late.
        assert RATE * 0.3 < rate <= RATE * 1.01, rate
