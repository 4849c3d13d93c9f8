"""The arithmetic of the sliding window: at most N tokens in any window of length T.

Pure: no clock reads, no I/O, no asyncio, no threads. Every method takes the time as an
argument (``now_ns``, integer nanoseconds of some monotonic clock), as ``Gcra`` does, and
offers the same hooks, so the FIFO queue in ``_scheduler.py`` serves it unchanged.

Semantics (a sliding log). A grant of n tokens at time t counts in every window that contains
t: two grants at t1 <= t2 share a window iff ``t2 - t1 < T``. The rule it keeps: for any two
grants i <= j (sorted by time) with ``t_j - t_i < T``, the tokens of grants i..j sum to at
most N. So tokens granted at t may go again at ``t + T`` and not a nanosecond earlier. The
parameters come from a rate and a capacity as for a bucket: N is the capacity and T is the
time the rate takes to earn it (``capacity * interval``): ``"100/minute"`` is 100 in any
minute.

The log. Tokens are kept as runs (time, count) in two ``array('q')``: one run per grant time,
for the tokens still in the window, at most N of them. Older tokens can only exist while
the log is in debt (a ``charge`` past N); they are kept as one count (``_older``) at the
time of the newest of them, which is never earlier than their own: while the debt stands
they decide nothing (N newer tokens do), and should refunds bring them back into play they
count as late as that, never earlier. So the memory is at most N runs (two int64 each, plus
a compaction slack of as many again, reclaimed as they expire) whatever the debt, and fewer
when grants are larger than one token; every decision is one binary search.

Deciding. The N most recent tokens' times, ascending, are the window's slots s_0..s_{N-1}
(``None`` for a slot never used or expired). The next token can go at ``s_0 + T``; n tokens
together at ``s_{n-1} + T``; with k tokens queued ahead (granted first, each as early as it
can), the plan is ``max(now, s_j + T) + r*T`` for ``r, j = divmod(k + n - 1, N)``: exact for
the head, a lower bound behind lumpy waiters (as the composite's plan is).

Settling.
- ``charge`` records tokens now, past N if need be (debt); later callers wait until the
  window has slid past them.
- A refund of a known grant (by its mark: its grant time) removes its tokens from the log, if
  they are still in the window; a grant that has slid out returns nothing.
- A plain refund of n (no mark: the caller vouches that n of its tokens went unused) removes
  the n *oldest* tokens still in the window. Removing the newest could hide a token really
  used later by someone else; the oldest are the ones that would have left first, so what the
  log counts never drops below what was really used in any window still to come.
- Grants are recorded at the time they are made, never earlier: the queue credits no slack
  to a late timer here (``_late_credit`` is 0), or a late grant would count as an earlier one.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING

from ._gcra import LimitState, check_capacity
from ._rate import MAX_TOKENS, Rate

__all__ = ["SlidingLog", "WindowLength", "window_ns"]

# The "no lower bound" time for plans made without a clock reading (the queue's head).
_BEFORE_ALL = -(1 << 62)

# Compact the log when this many dead slots lie before the live ones (and they outnumber them).
_COMPACT = 64


def window_ns(rate: Rate, capacity: int) -> int:
    """Return the window length T (ns) of ``capacity`` tokens at ``rate``, rounded up.

    Raises ValueError when it exceeds 2**62 ns (about 146 years).
    """
    span = capacity * rate.ns_per_token
    ns = -(-span.numerator // span.denominator)
    if ns > 1 << 62:
        raise ValueError(
            f"a window of capacity={capacity} at {rate} lasts {ns / 1e9:.3g}s; windows are "
            "limited to 2**62 ns (about 146 years)"
        )
    return ns


class WindowLength(LimitState):
    """What every window's arithmetic keeps: N (the capacity) and T (``_span``, in ns)."""

    if TYPE_CHECKING:
        _span: int
    else:
        __slots__ = ()

    def _configure(self, rate: Rate, capacity: int) -> None:
        check_capacity(capacity)
        span = window_ns(rate, capacity)  # before any field changes: a refusal changes nothing
        self._rate = rate
        self._capacity = capacity
        self._span = span

    @property
    def window_ns(self) -> int:
        """The window's length T in ns."""
        return self._span

    def _late_credit(self) -> int:
        """Return 0: a window counts a grant when it is made, however late its timer fired
        (counted earlier, a late grant could share a window with grants it never met)."""
        return 0

    if TYPE_CHECKING:

        def _prune(self, now_ns: int) -> None: ...
        def due_ns(self, tokens: int, now_ns: int = ...) -> int: ...
        def _commit_units(self, at: int, tokens: int) -> int: ...

    def wait_ns(self, now_ns: int, tokens: int, ahead: int = 0) -> int:
        """Return ns until ``ahead + tokens`` tokens can have been granted.

        Drops what has left the window first (every grant is planned by this, so the state
        is kept short here).
        """
        self._prune(now_ns)
        return self.due_ns(ahead + tokens, now_ns) - now_ns

    def try_take(self, now_ns: int, tokens: int) -> bool:
        """Take ``tokens`` if they fit at ``now_ns``; return whether they were taken."""
        if self.wait_ns(now_ns, tokens):
            return False
        self._commit_units(now_ns, tokens)
        return True


class SlidingLog(WindowLength):
    """The state of one sliding window and the decisions on it, in integer ns."""

    __slots__ = (
        "_base",
        "_capacity",
        "_ends",
        "_granted",
        "_lo",
        "_older",
        "_older_at",
        "_rate",
        "_span",
        "_times",
    )

    kind = "sliding"
    # What the queue reads (see _scheduler.Queue): time in plain ns.
    _scale = 1

    def __init__(self, rate: Rate, capacity: int, now_ns: int = 0) -> None:
        # Runs of tokens granted at one time: run r holds the tokens numbered
        # _ends[r-1].._ends[r]-1 (numbers count every token ever logged) at _times[r]. The
        # live runs are those from _lo; the first live token is number _base (a plain
        # refund or the debt may have taken the first run's oldest tokens).
        self._times = array("q")
        self._ends = array("q")
        self._lo = 0
        self._base = 0
        self._older = 0  # tokens older than the runs (debt only), counted at _older_at
        self._older_at = 0
        self._granted = 0  # tokens granted or charged since creation (never decreases)
        self._configure(rate, capacity)

    # -- reading -------------------------------------------------------------------------

    def _live(self) -> int:
        """Return the tokens in the live runs."""
        ends = self._ends
        return ends[-1] - self._base if len(ends) > self._lo else 0

    def _held(self, now_ns: int) -> int:
        """Return the tokens counted in the window that ends at ``now_ns``."""
        start = now_ns - self._span
        times = self._times
        first = bisect_right(times, start, self._lo)
        if first == self._lo:
            held = self._live()
        elif first < len(times):
            held = self._ends[-1] - self._ends[first - 1]
        else:
            held = 0
        if self._older and self._older_at > start:
            held += self._older
        return held

    def tokens_at(self, now_ns: int) -> float:
        """Return the tokens that could go at ``now_ns`` (negative while in debt)."""
        return float(self._capacity - self._held(now_ns))

    def _newest(self) -> int | None:
        """Return the time of the newest token counted, or None if there is none."""
        times = self._times
        if len(times) > self._lo:
            return times[-1]
        return self._older_at if self._older else None

    def full_in_ns(self, now_ns: int) -> int:
        """Return ns until the window holds nothing (0 when it is empty)."""
        newest = self._newest()
        if newest is None:
            return 0
        left = newest + self._span - now_ns
        return left if left > 0 else 0

    def held_times(self) -> list[int]:
        """Return the times (ns) of the tokens in the log, oldest first (for tests)."""
        out = [self._older_at] * self._older
        previous = self._base
        for index in range(self._lo, len(self._times)):
            out += [self._times[index]] * (self._ends[index] - previous)
            previous = self._ends[index]
        return out

    # -- deciding ------------------------------------------------------------------------

    def _slot(self, index: int) -> int | None:
        """Return the time of slot ``index`` (0: the oldest of the N most recent tokens), or
        None if that slot is free."""
        at = self._older + self._live() - self._capacity + index
        if at < 0:
            return None
        if at < self._older:
            return self._older_at
        number = self._base + at - self._older
        return self._times[bisect_right(self._ends, number, self._lo)]

    def due_ns(self, tokens: int, now_ns: int = _BEFORE_ALL) -> int:
        """Return when (ns) the next ``tokens`` (a queue's, then ours) can all have gone,
        none before ``now_ns``.

        Exact for one request (tokens <= N); a lower bound for several queued ones.
        """
        rounds, index = divmod(tokens - 1, self._capacity)
        due = self._newest()
        if due is None or now_ns > due:
            due = now_ns
        slot = self._slot(index)
        if slot is not None and slot + self._span > due:
            due = slot + self._span
        return due + rounds * self._span

    def _prune(self, now_ns: int) -> None:
        """Drop the tokens that have slid out of the window ending at ``now_ns``.

        Only ever at the time of a decision, never at a later one (say, a booking's): a
        token dropped because a booking ahead made it irrelevant would be missed once that
        booking is withdrawn.
        """
        start = now_ns - self._span
        if self._older and self._older_at <= start:
            self._older = 0
        times = self._times
        lo = self._lo
        if lo < len(times) and times[lo] <= start:
            lo = bisect_right(times, start, lo)
            if self._ends[lo - 1] > self._base:
                self._base = self._ends[lo - 1]
            self._lo = lo
        self._compact()

    def _compact(self) -> None:
        """Drop the dead runs before the live ones once they outnumber them."""
        times = self._times
        lo = self._lo
        if lo > _COMPACT and lo > len(times) - lo:
            # Renumber from the first live token, so the numbers stay small.
            ends = self._ends
            del times[:lo]
            del ends[:lo]
            base = self._base
            for index in range(len(ends)):
                ends[index] -= base
            self._base = 0
            self._lo = 0

    def _commit_units(self, at: int, tokens: int) -> int:
        """Record ``tokens`` at ``at`` (ns; never before the newest token); return the mark
        (the grant time, which a refund of this grant uses to find its tokens)."""
        newest = self._newest()
        if newest is not None and at < newest:
            at = newest
        times = self._times
        ends = self._ends
        if len(times) > self._lo and times[-1] == at:
            ends[-1] += tokens
        else:
            times.append(at)
            # The next number follows the live runs, or the first live token if none is left.
            ends.append((ends[-1] if len(ends) > self._lo else self._base) + tokens)
        self._granted += tokens
        over = ends[-1] - self._base - self._capacity
        if over > 0:
            self._to_older(over)
        return at

    def _to_older(self, count: int) -> None:
        """Move the ``count`` oldest tokens of the runs into the older count (debt)."""
        base = self._base + count
        ends = self._ends
        self._older_at = self._times[bisect_right(ends, base - 1, self._lo)]
        self._older += count
        self._base = base
        self._lo = bisect_right(ends, base, self._lo)
        self._compact()

    def _idle_mark(self) -> int:
        """Return the refund mark of a grant of nothing (a composite's untouched limit)."""
        return 0

    def _book(self, slot: int) -> None:
        """Do nothing: a grant recorded ahead of now is in the log, which no refund of
        other grants can hand out again (the composite books its buckets' slots)."""

    def charge_at(self, now_ns: int, tokens: int) -> int:
        """Record ``tokens`` now even past N (debt); return the mark."""
        self._prune(now_ns)
        return self._commit_units(now_ns, tokens)

    def refund_at(self, now_ns: int, tokens: int, mark: int | None = None) -> float:
        """Give back up to ``tokens`` still in the window; return how many went back.

        With ``mark`` (the grant's time) the grant's own tokens leave the log, if they are
        still in the window. Without, the ``tokens`` oldest tokens in the window leave it
        (see the module's docstring for why the oldest).
        """
        self._prune(now_ns)
        if mark is None:
            returned = min(tokens, self._older)
            self._older -= returned
            take = min(tokens - returned, self._live())
            if take:
                base = self._base + take
                ends = self._ends
                self._base = base
                self._lo = bisect_right(ends, base, self._lo)
            return float(returned + take)
        returned = self._remove_run(mark, tokens)
        if returned < tokens and self._older and mark <= self._older_at:
            extra = min(tokens - returned, self._older)
            self._older -= extra
            returned += extra
        return float(returned)

    def _remove_run(self, at: int, tokens: int) -> int:
        """Remove up to ``tokens`` of the run at time ``at``; return how many went."""
        times = self._times
        ends = self._ends
        lo = self._lo
        run = bisect_left(times, at, lo)
        if run == len(times) or times[run] != at:
            return 0
        start = self._base if run == lo else ends[run - 1]
        taken = min(tokens, ends[run] - start)
        if taken == ends[run] - start:
            del times[run]
            del ends[run]
        else:
            ends[run] -= taken
            run += 1
        for index in range(run, len(ends)):
            ends[index] -= taken
        return taken

    def reconfigure(self, now_ns: int, rate: Rate, capacity: int) -> None:
        """Change N and T at ``now_ns``; the tokens in the log keep their times.

        A smaller N keeps the newest N in the runs and counts the rest as older (debt).
        """
        self._configure(rate, capacity)
        self._prune(now_ns)
        over = self._live() - capacity
        if over > 0:
            self._to_older(over)

    def describe(self, now_ns: int) -> str:
        """Return 'RATE capacity=N window=Ts tokens=T' for repr()."""
        return (
            f"{self._rate} capacity={self._capacity} window={self._span / 1e9:g}s "
            f"tokens={self.tokens_at(now_ns):.3g}"
        )


assert MAX_TOKENS < 1 << 62  # a slot index and the token counts fit in the array's int64
