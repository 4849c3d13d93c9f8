"""The Celery app the Celery test runs in a real worker: two tasks under one shared limit each
(wait mode and retry mode), recording the wall-clock time of every run in Redis.

Configured from the environment the test sets: ``RK_CELERY_URL`` (broker, backend and limit
storage), ``RK_CELERY_RATE``, ``RK_CELERY_PREFIX`` (queue and keys, unique per test).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from ratekeeper.integrations.celery import SharedRateLimitTask

URL = os.environ.get("RK_CELERY_URL", "redis://127.0.0.1:6379/0")
RATE = os.environ.get("RK_CELERY_RATE", "20/s")
PREFIX = os.environ.get("RK_CELERY_PREFIX", "rk-celery")

app = Celery("ratekeeper_test", broker=URL, backend=URL)
app.conf.update(
    task_default_queue=PREFIX,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    ratekeeper_storage=URL,
)
_clients: dict[int, redis.Redis] = {}


def record(mode: str) -> None:
    now = time.time()
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = redis.Redis.from_url(URL)
    client.rpush(f"{PREFIX}:runs:{mode}", f"{now!r} {os.getpid()}")


@app.task(
    base=SharedRateLimitTask,
    shared_rate_limit=RATE,
    shared_rate_capacity=1,
    shared_rate_key=f"{PREFIX}:wait",
)
def tick_wait() -> None:
    record("wait")


@app.task(
    base=SharedRateLimitTask,
    shared_rate_limit=RATE,
    shared_rate_capacity=1,
    shared_rate_key=f"{PREFIX}:retry",
    shared_rate_mode="retry",
    max_retries=0,
)
def tick_retry() -> None:
    record("retry")
