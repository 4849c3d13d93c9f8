"""Tools for testing code that uses ratekeeper, deterministically and without sleeping.

``ManualClock`` is a clock that moves only when the test moves it. Give it to a limiter
(``TokenBucket(..., clock=clock)``) and drive time yourself::

    clock = ManualClock()
    limiter = TokenBucket("5/s", 5, clock=clock)
    task = asyncio.create_task(use(limiter))
    await clock.sleep(1.0)        # one virtual second passes; waiters due in it are granted

For thread limiters, ``ManualClock(auto_advance=True)`` jumps forward whenever a thread would
sleep, so single-threaded blocking code runs in virtual time at full speed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable

from ._clock import Timer, WakeLock
from ._gcra import seconds_to_ns, signed_seconds_to_ns

__all__ = ["ManualClock"]


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "loop", "when_ns")

    def __init__(
        self, when_ns: int, callback: Callable[[], None], loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self.when_ns = when_ns
        self.callback = callback
        self.loop = loop
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that stands still until ``advance()`` or ``sleep()`` moves it.

    Timers armed on it fire, in time order, as it moves past them. Times are integer ns; the
    public methods take seconds.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = False) -> None:
        self._now = seconds_to_ns(start, "start")
        self._wall_offset = 0  # wall_ns() - now_ns(): moved by step_wall()
        self._timers: list[tuple[int, int, _ManualTimer]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._moved = threading.Condition(self._lock)
        self.auto_advance = auto_advance

    def now_ns(self) -> int:
        """Return the clock's time in ns."""
        return self._now

    def time(self) -> float:
        """Return the clock's time in seconds."""
        return self._now / 1e9

    def wall_ns(self) -> int:
        """Return the wall clock that goes with it, in ns since the Unix epoch (UTC).

        It moves with the clock, and starts equal to it: ``ManualClock(start=86400)`` is
        1970-01-02 00:00 UTC, so fixed windows align with whole multiples of their length.
        ``step_wall()`` moves it alone, as NTP steps a real wall clock.
        """
        return self._now + self._wall_offset

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock alone by ``seconds`` (negative: back), as NTP may."""
        self._wall_offset += signed_seconds_to_ns(seconds, "seconds")

    def call_at(
        self, loop: asyncio.AbstractEventLoop | None, when_ns: int, callback: Callable[[], None]
    ) -> Timer:
        """Arm ``callback`` to run when the clock reaches ``when_ns``."""
        timer = _ManualTimer(when_ns, callback, loop)
        with self._lock:
            heapq.heappush(self._timers, (when_ns, next(self._seq), timer))
        return timer

    def _pop_due(self, until_ns: int) -> _ManualTimer | None:
        with self._lock:
            while self._timers and self._timers[0][0] <= until_ns:
                when, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    self._now = max(self._now, when)
                    return timer
            return None

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, firing due timers in order on the way.

        Callbacks run synchronously here; asyncio tasks they wake run when the loop next
        runs. In asyncio tests prefer ``await clock.sleep(seconds)``.
        """
        target = self._now + seconds_to_ns(seconds, "seconds")
        while (timer := self._pop_due(target)) is not None:
            timer.callback()
        self._set(target)

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass while the event loop runs.

        Between timers, tasks that are ready run until they block again, so a task that
        is granted and immediately asks again is served within the same call.
        """
        target = self._now + seconds_to_ns(seconds, "seconds")
        await _settle()
        while (timer := self._pop_due(target)) is not None:
            timer.callback()
            await _settle()
        self._set(target)
        await _settle()

    def _set(self, target_ns: int) -> None:
        with self._lock:
            self._now = max(self._now, target_ns)
            self._moved.notify_all()

    def wait(self, lock: WakeLock, until_ns: int | None) -> bool:
        """Block a thread until ``lock`` is released, or the clock passes ``until_ns``."""
        if until_ns is not None and self.auto_advance:
            if lock.acquire(False):
                return True
            self._set(until_ns)
            return lock.acquire(False)
        while True:
            if lock.acquire(True, 0.001):
                return True
            if until_ns is not None and self._now >= until_ns:
                return False

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now / 1e9:.9f}s)"


async def _settle(rounds: int = 8) -> None:
    """Yield to the event loop a few times so that every ready task runs until it blocks."""
    for _ in range(rounds):
        await asyncio.sleep(0)
