"""Window limiters for asyncio and threads: the same adapters as the token buckets, over
the sliding log (``_window.py``) or the fixed window's counter (``_fixed.py``) instead of GCRA.

Nothing is decided here: the FIFO queue, timeouts, reservations, refunds and statistics are
the scheduler's; waiting is the asyncio or thread adapter's. Only construction and the
window's own reading (``window``) are new.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._asyncio import _AsyncLimiter
from ._clock import MONOTONIC, Clock, following_wall, wall_clock
from ._gcra import signed_seconds_to_ns
from ._rate import Rate, RateLike
from ._scheduler import FixedScheduler, Listener, WindowScheduler
from ._threading import _SyncSingle

__all__ = ["FixedWindow", "SlidingWindow", "SyncFixedWindow", "SyncSlidingWindow"]


class _Window:
    """What every window limiter adds to its scheduler: construction and reading."""

    __slots__ = ()

    if TYPE_CHECKING:
        _span: int

        _now_ns: Callable[[], int]

        def _init_adapter(
            self, clock: Clock, name: str | None, on_event: Listener | None
        ) -> None: ...

        def _init_scheduler(self, rate: Rate, capacity: int, now_ns: int) -> None: ...

    def _init_window(
        self,
        rate: RateLike,
        capacity: int | None,
        clock: Clock | None,
        name: str | None,
        on_event: Listener | None,
    ) -> Clock:
        """Set the limiter up; return its clock."""
        rate = Rate.of(rate)
        clock = MONOTONIC if clock is None else clock
        capacity = rate.default_capacity if capacity is None else capacity
        self._init_scheduler(rate, capacity, clock.now_ns())
        self._init_adapter(clock, name, on_event)
        return clock

    @property
    def window(self) -> float:
        """The window's length in seconds: ``capacity`` tokens at ``rate``."""
        return self._span / 1e9


class _Sliding(_Window, WindowScheduler):
    __slots__ = ()

    def __init__(
        self,
        rate: RateLike,
        capacity: int | None = None,
        *,
        clock: Clock | None = None,
        name: str | None = None,
        on_event: Listener | None = None,
    ) -> None:
        self._init_window(rate, capacity, clock, name, on_event)

    def _init_scheduler(self, rate: Rate, capacity: int, now_ns: int) -> None:
        WindowScheduler.__init__(self, rate, capacity, now_ns)


class _Fixed(_Window, FixedScheduler):
    __slots__ = ()

    def __init__(
        self,
        rate: RateLike,
        capacity: int | None = None,
        *,
        utc_offset: float = 0,
        wall: Callable[[], int] | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        on_event: Listener | None = None,
    ) -> None:
        offset_ns = signed_seconds_to_ns(utc_offset, "utc_offset")
        if wall is not None and not callable(wall):
            raise TypeError(f"wall must be a callable returning ns since the epoch, not {wall!r}")
        clock = self._init_window(rate, capacity, clock, name, on_event)
        # Aligned to ``wall`` and the offset rather than the clock's wall clock (UTC).
        wall = wall_clock(clock) if wall is None else wall
        self._now_ns = following_wall(self, clock.now_ns, wall, offset_ns)

    def _init_scheduler(self, rate: Rate, capacity: int, now_ns: int) -> None:
        FixedScheduler.__init__(self, rate, capacity, now_ns)


class _AsyncWindow(_AsyncLimiter[float]):
    """What an asyncio window adds: ``set_rate`` (a window has no fast paths to keep)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def change_limit(self, now_ns: int, rate: Rate, capacity: int | None) -> None: ...

    async def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity). Shorthand for ``set_rate_nowait``."""
        self.set_rate_nowait(rate, capacity)

    def set_rate_nowait(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity; default: unchanged) now.

        The tokens in the window keep counting (a sliding window keeps their times; a
        fixed one counts them in the window that holds now under the new length). Waiters
        keep their order and are re-planned. Raises ValueError if a queued request asks for
        more than the new capacity.
        """
        self.change_limit(self._now_ns(), Rate.of(rate), capacity)
        self._replan()


class SlidingWindow(_AsyncWindow, _Sliding):
    """An asyncio limiter that never lets more than ``capacity`` tokens go in any window.

    ``SlidingWindow("100/minute")``: at most 100 in any 60 s, whenever the window starts.
    Give a ``capacity`` to choose the window: ``SlidingWindow("1/s", 10)`` is 10 in any 10 s.
    A token bucket of the same rate and capacity lets up to twice the capacity through in
    one window (a full bucket, then its refill); use a window when a server counts that way.

    The verbs are TokenBucket's (``acquire``, ``try_acquire``, ``reserve``, ``take``,
    ``refund``, ``charge``, decorators, ``statistics``, ``close``), with its FIFO order,
    priorities, timeouts refused at once when they cannot be met, and cancellation safety.
    For a window, ``charge(n)`` records n tokens now even past the capacity (later callers
    wait until the window has slid past them), a withdrawn grant leaves the window, and
    ``refund(n)`` removes the n oldest tokens still in the window. ``available()`` is the
    capacity minus the tokens in the window now; ``full_in()`` is the time until it is empty.

    Raises ValueError/TypeError at once for a rate, capacity, token count, priority or
    timeout that is not allowed, naming the value.
    """

    __slots__ = ("__weakref__", "_clock", "_closed", "_loop", "_now_ns", "_timer", "_timer_when")


class SyncSlidingWindow(_SyncSingle, _Sliding):
    """The thread-safe, blocking twin of SlidingWindow (same verbs, same guarantee)."""

    __slots__ = ("__weakref__", "_clock", "_closed", "_lock", "_now_ns")


class FixedWindow(_AsyncWindow, _Fixed):
    """An asyncio limiter that lets at most ``capacity`` tokens go in each window aligned to
    the wall clock: ``FixedWindow("1000/day")`` is 1000 per calendar day, from 00:00 UTC.

    Window k starts at ``k * T`` seconds after the Unix epoch (T: ``capacity / rate``, so
    ``"100/hour"`` resets at each full hour, ``"10/minute"`` at each full minute), or at
    ``k * T - utc_offset`` for windows that start at local midnight (``utc_offset=-5*3600``
    for UTC-5). The wall clock is ``wall`` (a callable returning ns since the epoch), by
    default the clock's ``wall_ns`` if it has one (``ManualClock``) or ``time.time_ns``; it
    is read once per window, and waiting runs on the monotonic ``clock``.

    A fixed window counts per window only: up to twice the capacity can go across a
    boundary (the capacity just before it, the capacity just after). Put it next to a
    ``kind="sliding"`` limit in a CompositeLimiter when that matters. A step of the wall
    clock (NTP) moves the boundaries at the next one; a step back never reopens a window
    that has ended.

    The verbs are TokenBucket's, with its FIFO order, priorities, timeouts refused at once
    when they cannot be met, and cancellation safety. ``charge(n)`` counts n now even past
    the capacity (debt carried into the next windows), a grant withdrawn while its window
    is current leaves the count, ``refund(n)`` takes n off the current window's count.
    ``available()`` is what the current window has left; ``full_in()`` the time until a
    window starts empty; ``resets_in()`` the time until the next boundary.

    Raises ValueError/TypeError at once for a rate, capacity, offset, token count,
    priority or timeout that is not allowed, naming the value.
    """

    __slots__ = ("__weakref__", "_clock", "_closed", "_loop", "_now_ns", "_timer", "_timer_when")

    def resets_in(self) -> float:
        """Return seconds until the current window ends (the next boundary)."""
        return self.resets_in_ns(self._now_ns()) / 1e9


class SyncFixedWindow(_SyncSingle, _Fixed):
    """The thread-safe, blocking twin of FixedWindow (same verbs, same guarantee)."""

    __slots__ = ("__weakref__", "_clock", "_closed", "_lock", "_now_ns")

    def resets_in(self) -> float:
        """Return seconds until the current window ends (the next boundary)."""
        with self._lock:
            return self.resets_in_ns(self._now_ns()) / 1e9
