"""What a child made by ``os.fork()`` inherits of the live limiters, made usable there.

``fork()`` copies one thread, the one that called it. A lock that another thread held at that
instant stays held for ever in the child, and the waiters of the other threads are still in
the child's queues with no thread behind them. Every object holding such per-process state
registers here (``track``). Just before a fork, the forking thread takes each registered
object's locks (briefly: no limiter holds its lock while anyone sleeps), so the child copies
a consistent state, never half an update; just after, the parent lets them go, and in the
child each object resets what belongs to the parent's threads, event loops and sockets
(``_after_fork``): new locks, no waiters, no call in flight.

What the child keeps is the state at the instant of the fork: an in-memory limiter starts
from the parent's balance and then diverges (parent and child are two limiters from then
on); a Redis limiter keeps deciding at the server with the same key, so the limit stays
shared.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

__all__ = ["ForkAware", "track"]

_GRACE = 1.0
"""Seconds the forking thread waits for one lock before forking without it (a lock held
by the forking thread itself, say from inside an event listener: the child then gets a new
lock and the state as it was)."""


class ForkAware(Protocol):
    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        """Return the locks to hold across the fork (none: an empty tuple)."""

    def _after_fork(self) -> None:
        """Reset the per-process state in the child: new locks, no other thread's waiters."""


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_registry = threading.Lock()
_held: list[threading.Lock] = []


def track(obj: ForkAware) -> None:
    """Register ``obj`` so that it is reset in a forked child (kept by weak reference)."""
    with _registry:
        _live.add(obj)


def _before() -> None:
    _registry.acquire()
    for obj in list(_live):
        for lock in obj._fork_locks():
            if lock.acquire(timeout=_GRACE):
                _held.append(lock)


def _after_in_parent() -> None:
    for lock in reversed(_held):
        lock.release()
    _held.clear()
    _registry.release()


def _after_in_child() -> None:
    global _registry
    _held.clear()  # the child's objects get new locks; the held ones are dropped with them
    _registry = threading.Lock()
    for obj in list(_live):
        try:
            obj._after_fork()
        except Exception:  # one object's failure must not leave the others unreset
            logging.getLogger("ratekeeper").exception("resetting %r after fork failed", obj)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
