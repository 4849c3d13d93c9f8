"""Celery tasks limited across every worker, through one limit on Redis/Valkey.

Celery's own ``rate_limit`` is per worker process: ten workers at ``"10/m"`` make 100/m. A
task whose base is ``SharedRateLimitTask`` takes its tokens from one limit at the server, so
the rate holds however many workers and processes run it::

    app = Celery("app", broker="redis://localhost:6379/0")

    @app.task(base=SharedRateLimitTask, shared_rate_limit="10/s")
    def send_email(to: str) -> None: ...

Options, as task options (``@app.task(..., option=value)``) or class attributes of a
subclass:

- ``shared_rate_limit`` (required): the rate, ``"10/s"``, ``"100/minute"`` or a ``Rate``.
- ``shared_rate_capacity``: the burst (default: the rate's count).
- ``shared_rate_storage``: the Redis/Valkey URL (``redis://``, ``rediss://``, ``valkey://``,
  their ``+cluster`` forms, with the limiter's options in the query; see
  ``ratekeeper.sync_limiter``). Default: ``app.conf.ratekeeper_storage``, else the broker
  URL when it names Redis or Valkey.
- ``shared_rate_key``: the limit's key at the server (default: the task's name); tasks that
  name the same key share one limit.
- ``shared_rate_mode``: ``"wait"`` (default) blocks the worker process until the tokens are
  granted (FIFO at the server, at most ``shared_rate_timeout`` seconds, then
  ``AcquireTimeout``); ``"retry"`` never blocks: a task that cannot run now is retried with
  ``countdown`` = the limiter's ``retry_after``, freeing the worker meanwhile (these retries
  do not count against ``max_retries``).
- ``shared_rate_cost``: tokens per run (default 1).

Each worker process makes its own Redis client on its first run (after the fork), so the
prefork pool is safe. A run that raises keeps its tokens: the work may have been done.
"""

from __future__ import annotations

import os
from typing import Any

try:
    import celery  # type: ignore[import-untyped]
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.celery needs celery: pip install 'ratekeeper[celery]'",
        name="celery",
    ) from exc

from .._config import sync_limiter
from .._errors import AcquireTimeout
from .._rate import RateLike
from ..contract import SyncBucket

__all__ = ["SharedRateLimitTask"]

_MODES = ("wait", "retry")
_SCHEMES = ("redis", "rediss", "valkey", "valkeys")


class SharedRateLimitTask(celery.Task):  # type: ignore[misc]
    """A Celery task base that takes tokens from a shared limit before each run (see the
    module). Raises ValueError at the first run for a missing rate, an unknown mode or no
    Redis storage to use; AcquireTimeout in wait mode past ``shared_rate_timeout``."""

    abstract = True
    shared_rate_limit: RateLike | None = None
    shared_rate_capacity: int | None = None
    shared_rate_storage: str | None = None
    shared_rate_key: str | None = None
    shared_rate_mode: str = "wait"
    shared_rate_timeout: float | None = None
    shared_rate_cost: int = 1
    _shared_limiter: tuple[int, SyncBucket] | None = None

    def shared_limiter(self) -> SyncBucket:
        """Return this process's limiter for the task, made on first use in each process."""
        made = self._shared_limiter
        if made is not None and made[0] == os.getpid():
            return made[1]
        if self.shared_rate_limit is None:
            raise ValueError(f"task {self.name}: set shared_rate_limit, e.g. '10/s'")
        if self.shared_rate_mode not in _MODES:
            raise ValueError(
                f"task {self.name}: shared_rate_mode must be one of {_MODES}, "
                f"not {self.shared_rate_mode!r}"
            )
        limiter = sync_limiter(
            self.shared_rate_limit,
            self.shared_rate_capacity,
            storage=self._storage(),
            key=self.shared_rate_key or self.name,
        )
        self._shared_limiter = (os.getpid(), limiter)
        return limiter

    def _storage(self) -> str:
        storage = self.shared_rate_storage or self.app.conf.get("ratekeeper_storage")
        if storage:
            return str(storage)
        broker = str(self.app.conf.broker_url or "")
        scheme = broker.partition(":")[0]
        if scheme.partition("+")[0] in _SCHEMES:
            return broker
        raise ValueError(
            f"task {self.name}: set shared_rate_storage (or app.conf.ratekeeper_storage) to a "
            f"Redis or Valkey URL; a {scheme!r} broker cannot hold the limit"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Take the run's tokens (waiting, or retrying later), then run the task."""
        limiter = self.shared_limiter()
        if self.shared_rate_mode == "wait":
            limiter.acquire(self.shared_rate_cost, timeout=self.shared_rate_timeout)
        else:
            try:
                limiter.acquire(self.shared_rate_cost, timeout=0)
            except AcquireTimeout as exc:
                countdown = exc.retry_after or 0.0
                raise self.retry(countdown=countdown, max_retries=_unlimited(self)) from exc
        return super().__call__(*args, **kwargs)


def _unlimited(task: celery.Task) -> int | None:
    """Return a max_retries that lets one more rate-limit retry through.

    Rate-limit retries are not failures: each raises the ceiling by one so that they never
    use up the task's own ``max_retries``.
    """
    max_retries = task.max_retries
    if max_retries is None:
        return None
    return int(max_retries) + int(task.request.retries or 0) + 1
