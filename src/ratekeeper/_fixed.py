"""The arithmetic of the fixed window: at most N tokens in each window aligned to the clock.

Pure: no clock reads, no I/O, no asyncio, no threads. Every method takes the time as an
argument (``now_ns``, integer nanoseconds of the limiter's monotonic clock) and offers the
hooks of ``Gcra`` and ``SlidingLog``, so the FIFO queue in ``_scheduler.py`` serves it
unchanged.

Windows. Window k covers the times t with ``(t - skew) // T == k``, where T is the window's
length (``capacity * interval``, as for a sliding window: ``"1000/day"`` is 1000 per day) and
``skew`` maps the limiter's clock onto the wall clock: ``skew = now_ns - wall_ns`` at one
reading, so window k starts at the wall time ``k * T`` since the Unix epoch (in UTC, or
shifted by an offset the adapter folds into the wall reading). The adapter reads the wall
clock once per window (``realign``); the core only ever sees the skew.

State. The index of the current window and the tokens counted in it: two integers, whatever
N is. A count above N is debt (a ``charge``): window k + 1 starts at ``count - N`` rather
than 0, so the debt is paid off by the windows that follow, N per window.

The rule it keeps: the tokens granted in one window sum to at most N, minus the debt carried
into it. A request of n tokens goes at once if it fits in the current window, else at the
start of the first window where it fits (``(count + n - 1) // N`` windows on). Up to 2N can
pass across a boundary (N at its end, N after it): that is what a fixed window promises.

Settling.
- ``charge`` counts tokens in the current window, past N if need be (debt).
- A refund of a known grant (its mark is its window's index) takes its tokens off the count
  while that window is current; once it has ended, nothing goes back.
- A plain refund (no mark) takes up to n off the current window's count: the caller vouches
  that n of its tokens in this window went unused.
- Grants are counted in the window of the time they are made (``_late_credit`` is 0: the
  queue credits no slack to a late timer). A grant booked ahead of now (a composite whose other
  limit makes it wait) is counted in the window it will be used in; until that window starts
  nothing else is granted (the earlier window's own count is gone), which is never too many.

Wall clock steps. ``realign`` takes a new skew at a boundary: a step forward past a boundary
starts the next window early (N more, early); a step back is taken only once it no longer
puts ``now`` in a window already ended, so a window is never counted twice: until then the
boundaries stay where they were.
"""

from __future__ import annotations

from ._rate import Rate
from ._window import WindowLength

__all__ = ["FixedCounter"]

# The "no lower bound" time for plans made without a clock reading (the queue's head).
_BEFORE_ALL = -(1 << 62)


class FixedCounter(WindowLength):
    """The state of one fixed window and the decisions on it, in integer ns."""

    __slots__ = ("_capacity", "_count", "_granted", "_index", "_rate", "_shift", "_skew", "_span")

    kind = "fixed"
    # What the queue reads (see _scheduler.Queue): time in plain ns.
    _scale = 1

    def __init__(self, rate: Rate, capacity: int, now_ns: int = 0, skew_ns: int = 0) -> None:
        self._count = 0  # tokens counted in window _index (above the capacity: debt)
        self._granted = 0  # tokens granted or charged since creation (never decreases)
        self._skew = skew_ns
        # Refund marks are ``_index + _shift``: a change of length renumbers the windows, and
        # the shift keeps every later mark above every earlier one.
        self._shift = 0
        self._configure(rate, capacity)
        self._index = self._index_of(now_ns)

    # -- windows -------------------------------------------------------------------------

    def _index_of(self, t: int) -> int:
        """Return the index of the window holding time ``t`` (ns)."""
        return (t - self._skew) // self._span

    def start_ns(self, index: int) -> int:
        """Return when (ns, on the limiter's clock) window ``index`` starts."""
        return index * self._span + self._skew

    def _current(self, now_ns: int) -> int:
        """Return the window a decision at ``now_ns`` counts in: now's, or a later one
        already counted in (booked ahead, or the clock ran back)."""
        index = self._index_of(now_ns)
        return index if index > self._index else self._index

    def _used(self, index: int) -> int:
        """Return the tokens counted in window ``index`` (>= the current one): the count,
        less N per window since, never below 0."""
        used = self._count - (index - self._index) * self._capacity
        return used if used > 0 else 0

    def _prune(self, now_ns: int) -> None:
        """Drop the windows ended by ``now_ns``: move to its window (never back), carrying
        any debt."""
        index = self._index_of(now_ns)
        if index > self._index:
            self._count = self._used(index)
            self._index = index

    def realign(self, now_ns: int, skew_ns: int) -> int:
        """Take a new wall-clock skew at ``now_ns``; return when (ns) to realign next (the
        next boundary).

        Taken unless it would put ``now_ns`` in a window already ended once anything was
        counted (the wall clock stepped back across a boundary): then the boundaries stay
        until it no longer does.
        """
        index = (now_ns - skew_ns) // self._span
        if index < self._index:
            if self._granted:  # keep the boundaries: the window of now has ended
                return self.start_ns(self._index_of(now_ns) + 1)
            self._index = index  # nothing counted yet: nothing to count twice
        self._skew = skew_ns
        self._prune(now_ns)
        return self.start_ns(index + 1)

    # -- reading -------------------------------------------------------------------------

    def tokens_at(self, now_ns: int) -> float:
        """Return the tokens that could go at ``now_ns`` (negative while in debt)."""
        return float(self._capacity - self._used(self._current(now_ns)))

    def full_in_ns(self, now_ns: int) -> int:
        """Return ns until a window starts that holds nothing (0 when this one is empty)."""
        index = self._current(now_ns)
        used = self._used(index)
        if not used:
            return 0
        return self.start_ns(index - (-used // self._capacity)) - now_ns

    def resets_in_ns(self, now_ns: int) -> int:
        """Return ns until the next boundary after ``now_ns``."""
        return self.start_ns(self._index_of(now_ns) + 1) - now_ns

    # -- deciding ------------------------------------------------------------------------

    def due_ns(self, tokens: int, now_ns: int = _BEFORE_ALL) -> int:
        """Return when (ns) the next ``tokens`` (a queue's, then ours) can all have gone,
        none before ``now_ns``.

        Exact for one request (tokens <= N): now if it fits in the current window, else the
        start of the first window where it does. A lower bound for several queued ones (a
        request never straddles two windows, so lumpy sizes can leave room unused).
        """
        index = self._current(now_ns)
        later = (self._used(index) + tokens - 1) // self._capacity
        if not later and index == self._index_of(now_ns):
            return now_ns
        due = self.start_ns(index + later)
        return due if due > now_ns else now_ns

    def _commit_units(self, at: int, tokens: int) -> int:
        """Count ``tokens`` in the window of ``at`` (ns; or the current one if later);
        return the mark (the window's number)."""
        self._prune(at)
        self._count += tokens
        self._granted += tokens
        return self._index + self._shift

    def _idle_mark(self) -> int:
        """Return the refund mark of a grant of nothing (a composite's untouched limit)."""
        return self._index + self._shift

    def _book(self, slot: int) -> None:
        """Do nothing: a grant booked ahead is counted in its window already."""

    def charge_at(self, now_ns: int, tokens: int) -> int:
        """Count ``tokens`` now even past N (debt); return the mark."""
        return self._commit_units(now_ns, tokens)

    def refund_at(self, now_ns: int, tokens: int, mark: int | None = None) -> float:
        """Give back up to ``tokens`` of the current window; return how many went back.

        With ``mark`` (the grant's window) nothing goes back once that window has ended.
        """
        self._prune(now_ns)
        if mark is not None and mark != self._index + self._shift:
            return 0.0
        returned = min(tokens, self._count)
        self._count -= returned
        return float(returned)

    def reconfigure(self, now_ns: int, rate: Rate, capacity: int) -> None:
        """Change N and T at ``now_ns``; the tokens counted now stay counted in the window
        that holds ``now_ns`` under the new length (a grant made before the change can then
        be given back only by a plain refund)."""
        self._prune(now_ns)
        self._configure(rate, capacity)
        last = self._index + self._shift
        self._index = self._index_of(now_ns)
        self._shift = last + 1 - self._index

    def describe(self, now_ns: int) -> str:
        """Return 'RATE capacity=N window=Ts tokens=T resets_in=Rs' for repr()."""
        return (
            f"{self._rate} capacity={self._capacity} window={self._span / 1e9:g}s "
            f"tokens={self.tokens_at(now_ns):.3g} resets_in={self.resets_in_ns(now_ns) / 1e9:g}s"
        )
