"""Window limiters for asyncio and threads: the same adapters as the token buckets, over
the sliding log (``_window.py``) instead of GCRA.

Nothing is decided here: the FIFO queue, timeouts, reservations, refunds and statistics are
the scheduler's; waiting is the asyncio or thread adapter's. Only construction and the
window's own reading (``window``) are new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._asyncio import _AsyncLimiter
from ._clock import MONOTONIC, Clock
from ._rate import Rate, RateLike
from ._scheduler import Listener, WindowScheduler
from ._threading import _SyncSingle

__all__ = ["SlidingWindow", "SyncSlidingWindow"]


class _Window(WindowScheduler):
    """What both window limiters add to the scheduler: construction and reading."""

    __slots__ = ()

    if TYPE_CHECKING:

        def _init_adapter(
            self, clock: Clock, name: str | None, on_event: Listener | None
        ) -> None: ...

    def __init__(
        self,
        rate: RateLike,
        capacity: int | None = None,
        *,
        clock: Clock | None = None,
        name: str | None = None,
        on_event: Listener | None = None,
    ) -> None:
        rate = Rate.of(rate)
        clock = MONOTONIC if clock is None else clock
        capacity = rate.default_capacity if capacity is None else capacity
        WindowScheduler.__init__(self, rate, capacity, clock.now_ns())
        self._init_adapter(clock, name, on_event)

    @property
    def window(self) -> float:
        """The window's length in seconds: ``capacity`` tokens at ``rate``."""
        return self._span / 1e9


class SlidingWindow(_AsyncLimiter[float], _Window):
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

    async def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity). Shorthand for ``set_rate_nowait``."""
        self.set_rate_nowait(rate, capacity)

    def set_rate_nowait(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity; default: unchanged) now.

        The tokens in the window keep their times and count against the new capacity over
        the new window. Waiters keep their order and are re-planned. Raises ValueError if a
        queued request asks for more than the new capacity.
        """
        self.change_limit(self._now_ns(), Rate.of(rate), capacity)
        self._replan()


class SyncSlidingWindow(_SyncSingle, _Window):
    """The thread-safe, blocking twin of SlidingWindow (same verbs, same guarantee)."""

    __slots__ = ("__weakref__", "_clock", "_closed", "_lock", "_now_ns")
