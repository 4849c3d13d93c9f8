"""Limiters inherited by a child of ``os.fork()`` work there and never deadlock.

Threads keep the limiters busy in the parent while it forks, so that a lock is often held
(and waiters queued) at the instant of the fork: before the limiters reset themselves in
the child, most such children hung for ever on the inherited lock. Each child must use the
limiter within a deadline; a child still running then is killed and the test fails.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from ratekeeper import (
    AcquireTimeout,
    Limit,
    SyncCompositeLimiter,
    SyncKeyedLimiter,
    SyncTokenBucket,
    TokenBucket,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")

FORKS = 12
CHILD_DEADLINE = 10.0  # seconds; a working child needs milliseconds


@contextmanager
def busy(work: Callable[[], object], threads: int = 4) -> Iterator[None]:
    """Run ``work`` in a loop in ``threads`` threads until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with suppress(AcquireTimeout):
                work()

    pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in pool:
            thread.join(10)


def slow_listener(event: object) -> None:
    time.sleep(0.0002)  # releases the GIL while the limiter's lock is held


def fork_while_held(obj: Any, use: Callable[[], bool]) -> int:
    """Return ``run_in_child(use)`` forked while another thread holds ``obj``'s locks for
    0.2 s (the fork waits a moment for them, up to a grace period)."""
    locks = obj._fork_locks()
    holding = threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        time.sleep(0.2)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    try:
        return run_in_child(use)
    finally:
        holder.join()


def run_in_child(use: Callable[[], bool]) -> int:
    """Fork; the child runs ``use`` and exits 0 if it returned True. Return the exit status
    (-1 if the child did not finish within the deadline: it is then killed)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = 0 if use() else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + CHILD_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def fork_while_busy(work: Callable[[], object], use: Callable[[], bool]) -> list[int]:
    with busy(work):
        time.sleep(0.05)
        return [run_in_child(use) for _ in range(FORKS)]


def test_a_token_bucket_busy_in_threads_survives_fork() -> None:
    # A listener doing I/O (a log line, say) runs under the limiter's lock: before the
    # limiters reset themselves in the child, about two forks in three then hung.
    limiter = SyncTokenBucket("2000/s", 5, on_event=slow_listener)

    def work() -> None:
        limiter.try_acquire()
        limiter.acquire(timeout=0.01)

    codes = fork_while_busy(
        work, lambda: limiter.acquire(timeout=2) and limiter.statistics().waiting == 0
    )
    assert codes == [0] * FORKS
    assert limiter.acquire(timeout=2)  # and the parent goes on


def test_a_composite_busy_in_threads_survives_fork() -> None:
    limiter = SyncCompositeLimiter(
        {"requests": Limit("2000/s", 5, weight=1), "tokens": "4000/s"}, on_event=slow_listener
    )
    codes = fork_while_busy(
        lambda: limiter.acquire(2, timeout=0.05), lambda: limiter.acquire(1, timeout=2)
    )
    assert codes == [0] * FORKS


def test_a_keyed_limiter_busy_in_threads_survives_fork() -> None:
    limiter = SyncKeyedLimiter("2000/s", 5)
    codes = fork_while_busy(
        lambda: limiter.acquire(f"k{threading.get_ident() % 3}", timeout=0.05),
        lambda: limiter.acquire("k0", timeout=2) and limiter.acquire("new", timeout=2),
    )
    assert codes == [0] * FORKS


def test_the_child_starts_from_the_parents_state_and_then_diverges() -> None:
    limiter = SyncTokenBucket("1/minute", 3)
    assert limiter.try_acquire()
    # The child sees the 2 tokens left at the fork, takes them, and is then refused...
    assert run_in_child(lambda: limiter.try_acquire(2) and not limiter.try_acquire()) == 0
    # ...while the parent still has its own 2.
    assert limiter.try_acquire(2)


def test_a_reservation_queued_at_the_fork_is_withdrawn_in_the_child() -> None:
    limiter = SyncTokenBucket("100/s", 1)
    assert limiter.try_acquire()
    reservation = limiter.reserve()  # queued: its slot is 10 ms away

    def child() -> bool:
        try:
            reservation.wait()
        except Exception as exc:
            return "closed" in str(exc) or "cancelled" in str(exc)
        return False

    assert run_in_child(child) == 0
    reservation.wait()  # the parent's is untouched


def test_the_multiprocessing_fork_start_method() -> None:
    limiter = SyncTokenBucket("2000/s", 5)
    context = multiprocessing.get_context("fork")
    with busy(lambda: limiter.acquire(timeout=0.05)):
        time.sleep(0.05)
        for _ in range(4):
            process = context.Process(target=_child_target, args=(limiter,))
            process.start()
            process.join(CHILD_DEADLINE)
            if process.is_alive():
                process.kill()
                process.join()
            assert process.exitcode == 0


def _child_target(limiter: SyncTokenBucket) -> None:
    if not limiter.acquire(timeout=2):
        raise SystemExit(2)


async def test_an_asyncio_bucket_with_waiters_in_the_parents_loop_serves_a_new_loop() -> None:
    limiter = TokenBucket("50/s", 1)
    assert await limiter.acquire()
    waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert limiter.statistics().waiting == 3

    def child() -> bool:
        async def main() -> bool:
            return await asyncio.wait_for(limiter.acquire(), 2)

        return asyncio.run(main())

    assert run_in_child(child) == 0
    await asyncio.gather(*waiters)  # the parent's waiters are served as before


def test_a_lock_held_by_another_thread_at_the_fork_is_renewed_in_the_child() -> None:
    """Each limiter's locks, held by a thread while the parent forks (the fork waits a
    moment for them): the child gets new ones and the limiter works there."""
    bucket = SyncTokenBucket("100/s", 5)
    composite = SyncCompositeLimiter({"a": "100/s", "b": "50/s"})
    keyed = SyncKeyedLimiter("100/s", 5)
    store = keyed._backend
    for obj, use in (
        (bucket, lambda: bucket.acquire(timeout=1)),
        (composite, lambda: composite.acquire(timeout=1)),
        (keyed, lambda: keyed.acquire("k", timeout=1) and keyed.statistics().waiting == 0),
        (store, lambda: keyed.try_acquire("other")),
    ):
        assert obj._fork_locks()
        assert fork_while_held(obj, use) == 0, obj
