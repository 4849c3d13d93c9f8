"""Clocks: where limiters read the time and how they arm their one timer.

A clock gives integer nanoseconds of a monotonic time line, arms a callback at such a time in
an event loop (asyncio limiters), and lets a thread sleep until such a time unless woken
(thread limiters). ``MonotonicClock`` is the default; ``LoopClock`` follows the running event
loop's own time, for virtual-time loops such as ``looptime``; ``ratekeeper.testing.ManualClock``
moves only when a test moves it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "Clock",
    "LoopClock",
    "MonotonicClock",
    "Timer",
    "WakeLock",
    "following_wall",
    "wall_clock",
]


class Timer(Protocol):
    """An armed callback that can be called off."""

    def cancel(self) -> None: ...


class WakeLock(Protocol):
    """What a waiting thread blocks on: a ``threading.Lock`` that a waker releases."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...


class Clock(Protocol):
    """The time source and timer service a limiter runs on."""

    def now_ns(self) -> int:
        """Return the current time in integer nanoseconds (monotonic)."""
        ...

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when_ns: int, callback: Callable[[], None]
    ) -> Timer:
        """Run ``callback`` in ``loop`` at ``when_ns`` (or soon after)."""
        ...

    def wait(self, lock: WakeLock, until_ns: int | None) -> bool:
        """Block the calling thread until ``lock`` is released or ``until_ns`` passes.

        Return True if woken through the lock (which is then held again).
        """
        ...


class MonotonicClock:
    """``time.monotonic_ns``: the clock of asyncio's default event loop and of threads."""

    __slots__ = ()

    now_ns = staticmethod(time.monotonic_ns)

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when_ns: int, callback: Callable[[], None]
    ) -> Timer:
        """Arm ``callback`` relative to now, so any loop's own time base works."""
        # loop.call_later, written out: one frame less on every re-arm under saturation.
        return loop.call_at(loop.time() + max(0, when_ns - time.monotonic_ns()) / 1e9, callback)

    def wait(self, lock: WakeLock, until_ns: int | None) -> bool:
        """Block on ``lock`` until it is released or ``until_ns`` passes."""
        if until_ns is None:
            return lock.acquire()
        # Capped at what the platform accepts; the caller's loop simply waits again.
        timeout = min(max(0, until_ns - time.monotonic_ns()) / 1e9, threading.TIMEOUT_MAX)
        return lock.acquire(True, timeout)

    def __repr__(self) -> str:
        return "MonotonicClock()"


class LoopClock:
    """The running event loop's ``time()``: use it with virtual-time loops (``looptime``).

    Asyncio limiters only; reading it outside a running loop raises RuntimeError.
    """

    __slots__ = ()

    def now_ns(self) -> int:
        """Return the running loop's time in ns."""
        return round(asyncio.get_running_loop().time() * 1e9)

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when_ns: int, callback: Callable[[], None]
    ) -> Timer:
        """Arm ``callback`` at the loop time ``when_ns``."""
        return loop.call_at(when_ns / 1e9, callback)

    def wait(self, lock: WakeLock, until_ns: int | None) -> bool:
        """Not supported: threads have no event loop to read."""
        raise TypeError("LoopClock serves asyncio limiters only; threads use MonotonicClock")

    def __repr__(self) -> str:
        return "LoopClock()"


MONOTONIC = MonotonicClock()


def wall_clock(clock: object) -> Callable[[], int]:
    """Return the wall clock (ns since the Unix epoch, UTC) that goes with ``clock``: its
    ``wall_ns`` if it has one (``ManualClock`` does), else ``time.time_ns``."""
    wall: Callable[[], int] = getattr(clock, "wall_ns", time.time_ns)
    return wall


def following_wall(
    target: Any, now_ns: Callable[[], int], wall_ns: Callable[[], int], offset_ns: int = 0
) -> Callable[[], int]:
    """Return the reading of ``now_ns`` a limiter uses: ``now_ns`` itself, or, if ``target``
    holds fixed windows, a reading that first realigns them with the wall clock each time a
    boundary has passed (one wall reading per window, none in between).

    The fixed windows start where ``wall_ns() + offset_ns`` is a multiple of their length
    (``offset_ns``: e.g. -5 hours for windows from midnight at UTC-5). Realigns them once now.
    """
    realign = getattr(target, "realign", None)
    if realign is None:
        return now_ns
    first = now_ns()
    due: int | None = realign(first, first - wall_ns() - offset_ns)
    if due is None:
        return now_ns
    next_at: int = due

    def aligned_now_ns() -> int:
        nonlocal next_at
        now = now_ns()
        if now >= next_at:
            next_at = realign(now, now - wall_ns() - offset_ns)
        return now

    return aligned_now_ns
