"""Who goes next: the FIFO, priority-classed queue of waiters on top of the GCRA arithmetic.

Pure like the arithmetic: no clock reads, no I/O, no asyncio, no threads. The asyncio and
thread limiters differ only in how a waiter waits and how the single timer is armed; the
decisions about order, timing, timeouts and statistics are all made here, once.

Order. Waiters are served strictly in arrival order within a priority class, and a class is
served only when every higher class is empty. A newcomer never overtakes a waiter of its own
or a higher class, even when tokens are free (no barging), so a large request is never starved
by a stream of small ones. What strict order costs: a large request at the head holds back
smaller ones behind it that would fit now, and sustained load in a higher class starves the
lower classes for as long as it lasts.

Timing. Only the head waiter has a due time; the adapter arms one timer for it. When the timer
fires, every waiter due by then is granted, and a timer that fires late is credited with the
time it lost: each waiter is accounted at its due time, not at the moment the timer fired, so
a saturated limiter keeps its exact rate however late its timers wake. The credit reaches back
less than one token's interval (one interval less one ns, see ``Gcra._late_credit``) and never
before the grant ahead. So the grants made at any one instant (one reading of the ns clock)
are accounted within less than an interval of each other, and the GCRA rule (n tokens
accounted within a span S: n <= capacity + rate x S) bounds what the grants do at the
instants they are made: never more than ``capacity`` tokens at one instant, and in any window
of length T fewer than capacity + rate x T + 1. A waiter that would pass capacity at this
instant is due one ns later, so the adapter's timer fires again at once and grants it at a
later instant, still accounted at its due time. Lateness costs rate only beyond what the
credit and the bucket cover (capacity intervals, less one ns).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._fixed import FixedCounter
from ._gcra import CompositeGcra, Cost, Gcra, LimitsLike, check_tokens
from ._rate import Rate
from ._window import SlidingLog

__all__ = [
    "GRANTED",
    "QUEUED",
    "REMOVED",
    "WAIT_BUCKETS",
    "CompositeScheduler",
    "Event",
    "FixedScheduler",
    "Listener",
    "Queue",
    "Scheduler",
    "Statistics",
    "Waiter",
    "WindowScheduler",
]

QUEUED, GRANTED, REMOVED = 0, 1, 2

_log = logging.getLogger("ratekeeper")

# Upper bounds (seconds) of the wait-time histogram kept by every limiter (+inf is implied).
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS_NS = tuple(round(b * 1e9) for b in WAIT_BUCKETS)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a limiter did, for logging and tracing.

    ``kind`` is one of "granted", "rejected", "timed_out", "cancelled", "charged",
    "refunded". ``time`` is the limiter clock's reading in seconds; ``wait`` is how long the
    caller waited (0.0 for an immediate grant or a refusal); ``tokens`` is the amount
    (for "refunded", the tokens that actually went back, which may be fractional).
    """

    kind: str
    time: float
    tokens: float
    wait: float
    limiter: str | None


Listener = Callable[[Event], None]


class Waiter:
    """One queued request: how many tokens, its class, and the adapter's payload."""

    __slots__ = ("enqueued_ns", "mark", "priority", "state", "tokens")

    def __init__(self, tokens: Any, priority: int) -> None:
        # Subclasses with more fields assign these themselves: a super() call per queued
        # request is measurable under saturation.
        self.tokens = tokens
        self.priority = priority
        self.state = QUEUED
        self.enqueued_ns = 0
        self.mark: Any = 0  # refund mark, set when granted

    def abandoned(self) -> bool:
        """Return True if nobody will take this grant any more (adapters override)."""
        return False


@dataclass(frozen=True)
class Statistics:
    """A snapshot of what a limiter has done. Wait times are in seconds."""

    granted: int
    """Acquisitions granted (immediately or after waiting)."""
    granted_tokens: int
    """Tokens granted or charged, including any refunded later."""
    rejected: int
    """Requests refused at once: a failed try, or a timeout that could not be met."""
    timed_out: int
    """Waiters whose timeout passed while they were queued."""
    cancelled: int
    """Waiters cancelled while queued, or after their grant (their tokens went back)."""
    waiting: int
    """Waiters queued now."""
    waiting_tokens: int
    """Tokens those waiters ask for."""
    refunded_tokens: float
    """Tokens given back (by refund, cancellation or a failed ``take`` block)."""
    total_wait: float
    """Sum of the waits of granted waiters."""
    max_wait: float
    """Longest wait of a granted waiter."""
    wait_histogram: tuple[tuple[float, int], ...] = ()
    """Cumulative counts of grants by wait: ((upper bound s, grants waiting <= it), ...),
    bounds as in WAIT_BUCKETS, then (inf, all grants). Immediate grants count as 0 s."""

    @property
    def mean_wait(self) -> float:
        """Mean wait over all grants, immediate ones included."""
        return self.total_wait / self.granted if self.granted else 0.0


# The queue's fields; each concrete scheduler declares them (slots of two bases cannot mix).
QUEUE_SLOTS = (
    "_cancelled",
    "_levels",
    "_listener",
    "_max_wait_ns",
    "_name",
    "_queues",
    "_refunded",
    "_rejected",
    "_timed_out",
    "_total_wait_ns",
    "_wait_counts",
    "_waiting",
)


class TakeBlock:
    """What both adapters' ``take()`` context managers hold: the request, and the refund
    mark of its grant (set on entry)."""

    __slots__ = ("_limiter", "_mark", "_priority", "_refund_on_error", "_timeout", "_tokens")

    def __init__(
        self,
        limiter: Any,
        tokens: Any,
        refund_on_error: bool,
        timeout: float | None,
        priority: int,
    ) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._refund_on_error = refund_on_error
        self._timeout = timeout
        self._priority = priority
        self._mark: Any = 0

    def _refunds(self, exc_type: type[BaseException] | None) -> bool:
        """Return True if a block ending with ``exc_type`` gives its tokens back."""
        return self._refund_on_error and exc_type is not None and issubclass(exc_type, Exception)


class QueuedReservation:
    """What both adapters' reservations share: a grant made at once (``waiter`` None, its
    refund ``mark`` kept) or a place in the queue, and whether it was withdrawn or spent.

    A reservation is spent once its holder resumed from waiting for it: the tokens are in
    use, and withdrawing it then gives nothing back.
    """

    __slots__ = ("_limiter", "_mark", "_spent", "_waiter", "_withdrawn", "delay", "tokens")

    def __init__(
        self, limiter: Any, tokens: Any, mark: Any, waiter: Waiter | None, delay: float
    ) -> None:
        self._limiter = limiter
        self._mark = mark
        self._waiter = waiter
        self._withdrawn = False
        self._spent = False
        self.tokens = tokens
        self.delay = delay

    @property
    def granted(self) -> bool:
        """True once the tokens are granted (at once, or when the wait is over)."""
        if self._withdrawn:
            return False
        return self._waiter is None or self._waiter.state == GRANTED

    @property
    def cancelled(self) -> bool:
        """True after cancel(), a timeout or close()."""
        waiter = self._waiter
        return self._withdrawn or (waiter is not None and waiter.state not in (QUEUED, GRANTED))

    def _withdraw(self, now_ns: int) -> bool:
        """Mark it withdrawn and undo it in the scheduler: dequeue it, or give a grant back;
        return False if there was nothing to do (withdrawn or spent already)."""
        if self._withdrawn or self._spent:
            return False
        self._withdrawn = True
        waiter = self._waiter
        if waiter is None:
            self._limiter.withdraw_grant(now_ns, self.tokens, self._mark)
        else:
            self._limiter.cancel(waiter, now_ns)
        return True

    def __repr__(self) -> str:
        state = "granted" if self.granted else "cancelled" if self.cancelled else "queued"
        return f"<{type(self).__name__} tokens={self.tokens} delay={self.delay:.6f}s {state}>"


class Queue:
    """The queue and its bookkeeping, over any arithmetic that provides the hooks below.

    ``Scheduler`` puts it on one Gcra (a request's cost is an int), ``CompositeScheduler``
    on a CompositeGcra (a cost is a tuple, one amount per limit). Costs are opaque here:
    they are only added up (ints, or ``Cost`` tuples that add limit by limit), compared
    through the arithmetic, and committed.
    """

    if not TYPE_CHECKING:  # the concrete schedulers declare QUEUE_SLOTS
        __slots__ = ()

    if TYPE_CHECKING:
        # Provided by the arithmetic class beside this one (Gcra or CompositeGcra), which
        # comes after Queue in the method order: real definitions here would shadow it.
        _scale: int

        def _late_credit(self) -> int: ...
        def wait_ns(self, now_ns: int, tokens: Any, ahead: Any = ...) -> int: ...
        def _commit_units(self, at: int, tokens: Any) -> Any: ...
        def refund_at(self, now_ns: int, tokens: Any, mark: Any = None) -> Any: ...
        def charge_at(self, now_ns: int, tokens: Any) -> Any: ...
        def full_in_ns(self, now_ns: int) -> int: ...
        def describe(self, now_ns: int) -> str: ...

    # Hooks on costs, provided by each concrete scheduler.
    def _head_due_units(self, tokens: Any) -> int:
        """Return when (units) ``tokens`` could go at the head of the queue."""
        raise NotImplementedError

    def _zero(self) -> Any:
        raise NotImplementedError

    def _check(self, tokens: Any) -> Any:
        """Validate a request's cost; return it in the arithmetic's form."""
        raise NotImplementedError

    def _check_amount(self, tokens: Any) -> Any:
        """Validate an amount to refund or charge (may exceed capacity)."""
        raise NotImplementedError

    def _cost_text(self, tokens: Any) -> str:
        """Describe a cost in an error message."""
        return f"{tokens} token(s)"

    def _largest_queued(self, index: int | None = None) -> int:
        """Return the largest queued cost (on limit ``index`` of a composite)."""
        return max(
            (
                w.tokens if index is None else w.tokens[index]
                for entry in self._queues.values()
                for w in entry[0]
                if w.state == QUEUED
            ),
            default=0,
        )

    @staticmethod
    def _size(tokens: Any) -> int:
        """Return a cost as one number (for statistics and events)."""
        raise NotImplementedError

    def _count_grant(self, tokens: Any) -> None:
        raise NotImplementedError

    def _count_charge(self, tokens: Any) -> None:
        raise NotImplementedError

    def _grant_totals(self) -> tuple[int, int]:
        """Return (grants, tokens granted or charged)."""
        raise NotImplementedError

    def _init_queue(self) -> None:
        # priority -> [deque of waiters (removed ones skipped lazily), live count, live cost]
        self._queues: dict[int, list[Any]] = {}
        self._levels: list[int] = []  # priorities with live waiters, highest first
        self._waiting = 0
        self._rejected = 0
        self._timed_out = 0
        self._cancelled = 0
        self._refunded = 0.0
        self._total_wait_ns = 0
        self._max_wait_ns = 0
        self._wait_counts = [0] * (len(_WAIT_BUCKETS_NS) + 1)  # waited grants per bucket
        self._listener: Listener | None = None
        self._name: str | None = None

    # -- events --------------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        """The limiter's name (in repr, events and metrics labels), or None."""
        return self._name

    @property
    def on_event(self) -> Listener | None:
        """The callback that receives an Event for each grant, refusal, timeout, etc."""
        return self._listener

    @on_event.setter
    def on_event(self, listener: Listener | None) -> None:
        if listener is not None and not callable(listener):
            raise TypeError(f"on_event must be callable or None, not {listener!r}")
        self._listener = listener
        self._listener_changed()

    def _listener_changed(self) -> None:
        """Let an adapter turn its fast path off while someone listens (hook)."""

    def _emit(self, kind: str, now_ns: int, tokens: float, wait_ns: int = 0) -> None:
        listener = self._listener
        if listener is not None:
            # A listener runs inside a decision: if it raised, a grant could be left half
            # done (committed, never woken). Its errors are logged, never propagated.
            try:
                listener(Event(kind, now_ns / 1e9, tokens, wait_ns / 1e9, self._name))
            except Exception:
                _log.exception("on_event listener of %r raised; the decision stands", self)

    # -- planning ------------------------------------------------------------------------

    def _tokens_ahead(self, priority: int) -> Any:
        """Cost queued in classes served before or with ``priority`` (0 if none)."""
        if not self._waiting:
            return 0
        ahead = self._zero()
        for level in self._levels:
            if level < priority:
                break
            ahead = ahead + self._queues[level][2]
        return ahead

    def plan(self, now_ns: int, tokens: Any, priority: int) -> tuple[int, Any]:
        """Return (ns until a newcomer would be granted, cost queued ahead of it).

        It may be granted now only if the wait is 0 and nothing is ahead (no barging, even
        when tokens are free). The wait assumes those ahead go as early as they can.
        """
        ahead = self._tokens_ahead(priority)
        if not ahead:
            return self.wait_ns(now_ns, tokens), 0
        return self.wait_ns(now_ns, tokens, ahead), ahead

    def grant_now(self, now_ns: int, tokens: Any) -> Any:
        """Grant a newcomer that ``plan`` found may go now; return its refund mark."""
        self._count_grant(tokens)
        if self._listener is not None:
            self._emit("granted", now_ns, self._size(tokens))
        return self._commit_units(now_ns * self._scale, tokens)

    def enqueue(self, waiter: Waiter, now_ns: int) -> bool:
        """Queue ``waiter``; return True if it became the head (the timer must be re-armed)."""
        waiter.enqueued_ns = now_ns
        priority = waiter.priority
        entry = self._queues.get(priority)
        if entry is None:
            entry = self._queues[priority] = [deque(), 0, self._zero()]
            self._levels.append(priority)
            self._levels.sort(reverse=True)
        entry[0].append(waiter)
        entry[1] += 1
        entry[2] += waiter.tokens
        self._waiting += 1
        return bool(self._levels[0] == priority and entry[1] == 1)

    def charge_now(self, now_ns: int, tokens: Any) -> Any:
        """Charge ``tokens`` (debt allowed); counted in granted tokens, not in grants."""
        self._count_charge(tokens)
        self._emit("charged", now_ns, self._size(tokens))
        return self.charge_at(now_ns, tokens)

    def reject(self, now_ns: int = 0, tokens: Any = 0) -> None:
        """Count a request refused at once."""
        self._rejected += 1
        self._emit("rejected", now_ns, self._size(tokens) if tokens else 0)

    # -- the head ------------------------------------------------------------------------

    def head(self) -> Waiter | None:
        """Return the live waiter that is served next, dropping removed ones on the way."""
        while self._levels:
            queue: deque[Waiter] = self._queues[self._levels[0]][0]
            while queue:
                waiter = queue[0]
                if waiter.state == QUEUED:
                    return waiter
                queue.popleft()
            # Unreachable while the live count is right; kept so a bug cannot spin.
            del self._queues[self._levels.pop(0)]  # pragma: no cover
        return None

    def head_due_ns(self) -> int | None:
        """Return when (ns) the head may be granted, or None if nobody waits."""
        waiter = self.head()
        if waiter is None:
            return None
        return -(-self._head_due_units(waiter.tokens) // self._scale)

    def release_due(self, now_ns: int) -> list[Waiter]:
        """Grant every waiter, in order, whose tokens are due by ``now_ns``; return them.

        Each is accounted at its due time, however late ``now_ns`` is, but never more than
        the late credit before now (less than one interval: at most capacity tokens at one
        instant) nor before the grant ahead (a waiter held back by the one ahead, on another
        limit of a composite, was not late: crediting it would open a burst there).
        """
        granted: list[Waiter] = []
        now = now_ns * self._scale
        floor = now - self._late_credit()
        counts = self._wait_counts
        while (waiter := self.head()) is not None:
            if waiter.abandoned():
                self.remove(waiter)
                self._cancelled += 1
                continue
            tokens = waiter.tokens
            due = self._head_due_units(tokens)
            if due > now:
                break
            self._queues[waiter.priority][0].popleft()  # it is the head: drop it now
            self._unlink(waiter)
            waiter.state = GRANTED
            if due > floor:
                floor = due
            waiter.mark = self._commit_units(floor, tokens)
            waited = now_ns - waiter.enqueued_ns
            if waited < 0:
                waited = 0  # granted at its due time, a hair before the clock got there
            self._count_grant(tokens)
            self._total_wait_ns += waited
            if waited > self._max_wait_ns:
                self._max_wait_ns = waited
            counts[bisect_left(_WAIT_BUCKETS_NS, waited)] += 1
            if self._listener is not None:
                self._emit("granted", now_ns, self._size(tokens), waited)
            granted.append(waiter)
        return granted

    # -- leaving the queue ---------------------------------------------------------------

    def _unlink(self, waiter: Waiter) -> None:
        """Take a live waiter out of the counts (its deque slot is dropped lazily)."""
        entry = self._queues[waiter.priority]
        entry[1] -= 1
        entry[2] -= waiter.tokens
        self._waiting -= 1
        if entry[1] == 0:
            del self._queues[waiter.priority]
            self._levels.remove(waiter.priority)

    def remove(self, waiter: Waiter) -> bool:
        """Take a queued waiter out (it consumed nothing); return True if it was the head."""
        if waiter.state != QUEUED:
            return False
        was_head = self.head() is waiter
        self._unlink(waiter)
        waiter.state = REMOVED
        return was_head

    def cancel(self, waiter: Waiter, now_ns: int) -> bool:
        """Withdraw a waiter: dequeue it, or refund its grant; return True if the plan changed."""
        if waiter.state == QUEUED:
            self._cancelled += 1
            self._emit("cancelled", now_ns, self._size(waiter.tokens), now_ns - waiter.enqueued_ns)
            return self.remove(waiter)
        if waiter.state == GRANTED:
            waiter.state = REMOVED
            self.withdraw_grant(now_ns, waiter.tokens, waiter.mark, now_ns - waiter.enqueued_ns)
            return True
        return False

    def withdraw_grant(self, now_ns: int, tokens: Any, mark: Any, waited_ns: int = 0) -> None:
        """Count a grant as cancelled and give its tokens back as far as that is correct."""
        self._cancelled += 1
        self._emit("cancelled", now_ns, self._size(tokens), waited_ns)
        self.give_back(now_ns, tokens, mark)

    def time_out(self, waiter: Waiter, now_ns: int = 0) -> bool:
        """Withdraw a queued waiter whose timeout passed; return True if it was the head."""
        if waiter.state != QUEUED:
            return False
        self._timed_out += 1
        self._emit("timed_out", now_ns, self._size(waiter.tokens), now_ns - waiter.enqueued_ns)
        return self.remove(waiter)

    def drain(self) -> list[Waiter]:
        """Remove every queued waiter (for close()); return them in service order."""
        out: list[Waiter] = []
        for level in list(self._levels):
            queue: deque[Waiter] = self._queues[level][0]
            out.extend(w for w in queue if w.state == QUEUED)
        for waiter in out:
            self._unlink(waiter)
            waiter.state = REMOVED
        return out

    def forget_waiters(self) -> None:
        """Drop every queued waiter uncounted, and rebuild the queue empty.

        For a child of ``fork()``: the waiters' threads (or event loop) stayed in the parent.
        The queue is rebuilt rather than unlinked waiter by waiter, so that nothing depends
        on the copy having been taken between two updates.
        """
        for entry in self._queues.values():
            for waiter in entry[0]:
                if waiter.state == QUEUED:
                    waiter.state = REMOVED
        self._queues = {}
        self._levels = []
        self._waiting = 0

    def give_back(self, now_ns: int, tokens: Any, mark: Any) -> Any:
        """Refund and count it; return the tokens that went back (per limit, on a composite)."""
        returned = self.refund_at(now_ns, tokens, mark)
        total = returned if type(returned) is not dict else sum(returned.values())
        self._refunded += total
        if total:
            self._emit("refunded", now_ns, total)
        return returned

    # -- reporting -----------------------------------------------------------------------

    def _queued_cost(self) -> Any:
        """Return the cost of every queued waiter (kept per class, summed when asked)."""
        cost = self._zero()
        for entry in self._queues.values():
            cost = cost + entry[2]
        return cost

    def snapshot(self) -> Statistics:
        """Return the statistics as a frozen value."""
        granted, granted_tokens = self._grant_totals()
        waited = sum(self._wait_counts)
        cumulative = granted - waited  # immediate grants waited 0 s
        histogram = []
        for bound, count in zip(WAIT_BUCKETS, self._wait_counts, strict=False):
            cumulative += count
            histogram.append((bound, cumulative))
        histogram.append((float("inf"), granted))
        return Statistics(
            granted=granted,
            granted_tokens=granted_tokens,
            rejected=self._rejected,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            waiting=self._waiting,
            waiting_tokens=self._size(self._queued_cost()) if self._waiting else 0,
            refunded_tokens=self._refunded,
            total_wait=self._total_wait_ns / 1e9,
            max_wait=self._max_wait_ns / 1e9,
            wait_histogram=tuple(histogram),
        )


class SingleCost:
    """The queue's hooks for one limit, whose cost is an int (a bucket, or a window)."""

    if not TYPE_CHECKING:  # the concrete schedulers declare the slots
        __slots__ = ()

    if TYPE_CHECKING:
        _capacity: int
        _granted: int
        _excess: int

        def _largest_queued(self, index: int | None = None) -> int: ...
        def reconfigure(self, now_ns: int, rate: Rate, capacity: int) -> None: ...

    def change_limit(self, now_ns: int, rate: Rate, capacity: int | None) -> None:
        """Reconfigure at ``now_ns`` (capacity None: unchanged); raise ValueError, changing
        nothing, if a queued request would no longer fit."""
        capacity = self._capacity if capacity is None else capacity
        largest = self._largest_queued()
        if type(capacity) is int and largest > capacity:
            raise ValueError(f"capacity={capacity} is below a queued request for {largest} tokens")
        self.reconfigure(now_ns, rate, capacity)

    def _check(self, tokens: Any) -> int:
        return check_tokens(tokens, limit=self._capacity)

    def _check_amount(self, tokens: Any) -> int:
        return check_tokens(tokens)

    def _zero(self) -> int:
        return 0

    @staticmethod
    def _size(tokens: int) -> int:
        return tokens

    # Grants are counted as tokens (``_granted``, which the fast paths bump by one); the
    # number of grants is that minus ``_excess`` (extra tokens of larger grants, charges).
    def _count_grant(self, tokens: int) -> None:
        self._excess += tokens - 1

    def _count_charge(self, tokens: int) -> None:
        self._excess += tokens

    def _grant_totals(self) -> tuple[int, int]:
        return self._granted - self._excess, self._granted


class Scheduler(SingleCost, Queue, Gcra):
    """One token bucket with a queue: FIFO per priority class, one due time for the head."""

    __slots__ = (*QUEUE_SLOTS, "_excess")

    def __init__(self, rate: Rate, capacity: int, now_ns: int, initial: int | None = None) -> None:
        Gcra.__init__(self, rate, capacity, now_ns, initial)
        self._init_queue()
        self._excess = 0

    def _head_due_units(self, tokens: int) -> int:
        return self._tat + tokens * self._cost - self._burst

    def head_due_ns(self) -> int | None:
        """Return when (ns) the head may be granted, or None if nobody waits.

        ``Queue.head_due_ns`` with a live head at the front written out: the timer is
        re-armed through here after every release.
        """
        levels = self._levels
        if levels:
            queue: deque[Waiter] = self._queues[levels[0]][0]
            if queue and queue[0].state == QUEUED:
                tokens: int = queue[0].tokens
                return -(-(self._tat + tokens * self._cost - self._burst) // self._scale)
        return Queue.head_due_ns(self)

    def release_due(self, now_ns: int) -> list[Waiter]:
        """Grant every waiter, in order, whose tokens are due by ``now_ns``; return them.

        ``Queue.release_due`` with one bucket's arithmetic written out and its counters kept
        in locals, written back once a level (before a removal looks at them; with a
        listener, the generic loop runs). Under saturation this loop runs once per grant.
        The same decisions and statistics as the generic loop: tests/test_scheduler_fast.py
        holds the two together.
        """
        if self._listener is not None:
            return Queue.release_due(self, now_ns)  # an event per grant: the generic loop
        granted: list[Waiter] = []
        levels = self._levels
        if not levels:
            return granted
        append = granted.append
        queues = self._queues
        now = now_ns * self._scale
        cost = self._cost
        burst = self._burst
        shift = self._shift
        # The late credit, as in Queue.release_due and Gcra._late_credit.
        floor = now - max(cost - self._scale, self._scale - 1)
        tat = self._tat
        total = self._granted
        # Statistics from enqueue times (a wait is now_ns - enqueued_ns): their sum, the
        # earliest (the longest wait), and the clamped waits (a grant a hair before its
        # enqueue time waited 0) as a correction, so a grant costs one load and one add.
        enqueued_sum = 0
        earliest = now_ns - self._max_wait_ns
        clamped = 0
        counts = self._wait_counts
        # The histogram counts runs: waits in FIFO order fall, so most share a bucket. The
        # run's bucket holds the enqueue times low <= t < high (none before the first grant).
        bucket, low, high, run = 0, now_ns + 1, now_ns, 0
        while levels:
            level = levels[0]
            entry = queues[level]
            queue: deque[Waiter] = entry[0]
            before = len(granted)
            total_before = total
            due = now
            while queue:
                waiter = queue[0]
                if waiter.state != QUEUED:
                    queue.popleft()  # removed earlier, dropped lazily
                    continue
                if waiter.abandoned():
                    break  # settled below, outside the fast loop
                tokens = waiter.tokens
                take = tokens * cost
                due = tat + take - burst
                if due > now:
                    break
                queue.popleft()
                waiter.state = GRANTED
                if due > floor:
                    floor = due
                if tat < floor:
                    tat = floor
                tat += take
                total += tokens
                waiter.mark = total + shift
                enqueued = waiter.enqueued_ns
                if low <= enqueued < high:
                    run += 1
                else:
                    if run:
                        counts[bucket] += run
                    waited = now_ns - enqueued
                    if waited < 0:
                        clamped -= waited  # granted at its due time, a hair before it queued
                        waited = 0
                    bucket = bisect_left(_WAIT_BUCKETS_NS, waited)
                    high = now_ns - _WAIT_BUCKETS_NS[bucket - 1] if bucket else now_ns + 1
                    low = now_ns - (
                        _WAIT_BUCKETS_NS[bucket] if bucket < len(_WAIT_BUCKETS_NS) else waited
                    )
                    run = 1
                enqueued_sum += enqueued
                if enqueued < earliest:
                    earliest = enqueued
                append(waiter)
            # Write back what this level gave, before anything else may look.
            n = len(granted) - before
            taken = total - total_before
            entry[1] -= n
            entry[2] -= taken
            self._waiting -= n
            self._excess += taken - n
            if not entry[1]:
                del queues[levels.pop(0)]
                continue
            if due > now:
                break
            if queue and queue[0].state == QUEUED and queue[0].abandoned():
                self.remove(queue[0])
                self._cancelled += 1
        if run:
            counts[bucket] += run
        self._tat = tat
        self._granted = total
        self._total_wait_ns += len(granted) * now_ns - enqueued_sum + clamped
        self._max_wait_ns = now_ns - earliest
        return granted


class _WindowQueue(SingleCost, Queue):
    """A window's queue: the head is due when the window's own plan says (``due_ns``)."""

    if not TYPE_CHECKING:  # the concrete schedulers declare the slots
        __slots__ = ()

    if TYPE_CHECKING:

        def due_ns(self, tokens: int, now_ns: int = ...) -> int: ...

    def _init_window_queue(self) -> None:
        self._init_queue()
        self._excess = 0

    def _head_due_units(self, tokens: int) -> int:
        return self.due_ns(tokens)


class WindowScheduler(_WindowQueue, SlidingLog):
    """One sliding window with a queue: the same FIFO, timeouts and statistics as a bucket."""

    __slots__ = (*QUEUE_SLOTS, "_excess")

    def __init__(self, rate: Rate, capacity: int, now_ns: int) -> None:
        SlidingLog.__init__(self, rate, capacity, now_ns)
        self._init_window_queue()


class FixedScheduler(_WindowQueue, FixedCounter):
    """One fixed window with a queue: the same FIFO, timeouts and statistics as a bucket."""

    __slots__ = (*QUEUE_SLOTS, "_excess")

    def __init__(self, rate: Rate, capacity: int, now_ns: int, skew_ns: int = 0) -> None:
        FixedCounter.__init__(self, rate, capacity, now_ns, skew_ns)
        self._init_window_queue()


class CompositeScheduler(Queue, CompositeGcra):
    """Several limits with one queue: a waiter goes when its cost fits in every limit."""

    __slots__ = (*QUEUE_SLOTS, "_charged", "_grants")

    def __init__(self, limits: LimitsLike, now_ns: int) -> None:
        CompositeGcra.__init__(self, limits, now_ns)
        self._init_queue()
        self._grants = 0
        self._charged = 0

    def _head_due_units(self, tokens: tuple[int, ...]) -> int:
        return self._due_units(tokens)

    def _check(self, tokens: Any) -> Cost:
        # take() and limit() check a cost once, up front; their acquires pass it on checked.
        return tokens if type(tokens) is Cost else self.check_cost(tokens)

    def _check_amount(self, tokens: Any) -> Cost:
        return self.check_cost(tokens, settling=True)

    def _cost_text(self, tokens: Any) -> str:
        return "cost " + repr(dict(zip(self._names, tokens, strict=True)))

    def change_limit(self, now_ns: int, name: str, rate: Rate, capacity: int | None) -> None:
        """Reconfigure limit ``name`` at ``now_ns`` (capacity None: unchanged); raise
        ValueError, changing nothing, for an unknown name or if a queued cost would no
        longer fit."""
        index = self._limit_index(name)
        capacity = self._parts[index].capacity if capacity is None else capacity
        largest = self._largest_queued(index)
        if type(capacity) is int and largest > capacity:
            raise ValueError(f"capacity={capacity} is below a queued cost of {largest} on {name!r}")
        self.reconfigure_limit(now_ns, name, rate, capacity)

    def _limit_index(self, name: str) -> int:
        """Return the position of limit ``name``; raise ValueError naming the limits."""
        if name not in self._names:
            raise ValueError(f"unknown limit {name!r}; the limits are {list(self._names)}")
        return self._names.index(name)

    def _zero(self) -> Cost:
        return self.zero()

    @staticmethod
    def _size(tokens: tuple[int, ...]) -> int:
        return sum(tokens)

    def _count_grant(self, tokens: tuple[int, ...]) -> None:
        self._grants += 1

    def _count_charge(self, tokens: tuple[int, ...]) -> None:
        self._charged += sum(tokens)

    def _grant_totals(self) -> tuple[int, int]:
        return self._grants, sum(part._granted for part in self._parts)
