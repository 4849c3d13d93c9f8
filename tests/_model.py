"""The reference model for the property tests: an ideal token bucket in exact Fractions.

Written to be obviously right, not fast. The balance is a Fraction of tokens that refills at
one token per ``interval`` ns and never exceeds the capacity (it may go below zero: debt).
Waiters are served strictly in arrival order within a priority class, higher classes first;
the head is granted at the first instant at which it is the head and its tokens are there.
Time is a Fraction of ns; a nanosecond clock observes an instant as its ceiling. Nothing here
is shared with ratekeeper's arithmetic (only ``Rate.ns_per_token``, which defines the rate).

Three rules are ratekeeper's documented choices rather than arithmetic, and are modelled as
such:

- undoing a grant (cancel after the grant, ``Reservation.cancel``, a ``take`` block that
  raised) gives back at most ``capacity - later - balance`` tokens, where ``later`` counts
  the tokens granted or charged after it (in use from now, or from the latest slot booked
  ahead by a reservation into the future): the balance can never be made larger than it
  could honestly be, so an undo can never open a burst; a plain refund gives nothing back
  while a slot is booked ahead;
- ``set_rate`` keeps the balance (capped at the new capacity), rounded down to the clock's
  resolution: the refill still missing is rounded up to a multiple of ``1/scale`` ns;
- at an instant where a grant and a deadline meet, the grant wins.

``check_envelope`` is the window check of the first property; it reads a log of what a
limiter was seen to do and knows nothing about how the limiter works.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from ratekeeper import Rate

__all__ = ["Ideal", "Req", "check_envelope", "ceil_ns"]


def ceil_ns(t: Fraction) -> int:
    """Return the first whole nanosecond at or after the instant ``t``."""
    return -(-t.numerator // t.denominator)


@dataclass(eq=False)
class Req:
    """One request, and what became of it."""

    tokens: int
    priority: int = 0
    max_wait: int | None = None  # ns; None: wait as long as it takes
    state: str = "new"  # new -> queued -> granted -> done, or new/queued -> done
    enqueued: int = 0
    deadline: int | None = None
    mark: int = 0  # tokens granted or charged up to and including this grant
    granted_at: Fraction | None = None  # the exact instant of the grant
    granted_ns: int | None = None  # when a nanosecond clock sees it
    returned: Fraction = Fraction(0)
    outcome: str = ""  # granted, rejected, timed_out, cancelled, closed, invalid
    outcome_ns: int | None = None
    withdrawn: bool = False  # cancelled, timed out or closed after it was admitted
    seq: int = 0  # arrival order among queued requests
    key: object = None  # the replay driver's name for it
    handle: object = None  # an engine's own object for it


GrantHook = Callable[[Req, int, bool], None]


class Ideal:
    """The ideal limiter. ``advance(t)`` lets time pass; the other methods act at ``now``.

    ``after_grant(req, now, immediate)`` is called for each grant once the whole batch of
    grants at that instant is made, in grant order: what a woken caller does at once (give
    its tokens back, be cancelled) happens there.
    """

    def __init__(
        self,
        rate: Rate,
        capacity: int,
        initial: int | None = None,
        after_grant: GrantHook | None = None,
    ) -> None:
        self.interval = rate.ns_per_token
        self.capacity = capacity
        self.level = Fraction(capacity if initial is None else initial)
        self.at = Fraction(0)  # the instant ``level`` was measured
        self.clock = Fraction(0)  # the instant of the last thing that happened
        self.now = 0
        self.queues: dict[int, list[Req]] = {}
        self.closed = False
        self.after_grant: GrantHook = after_grant or (lambda req, now, immediate: None)
        self.tokens_granted = 0  # granted or charged: the refund marks count these
        self.shift = 0  # capacity raised since creation: counts as tokens granted later
        self.booked = 0  # ns: the latest slot promised ahead by reserve_ahead
        # Counters, as Statistics names them.
        self.granted = 0
        self.rejected = 0
        self.timed_out = 0
        self.cancelled = 0
        self.refunded = 0.0
        self.total_wait_ns = 0
        self.max_wait_ns = 0
        # Set by the driver when what a woken caller does at once changes the balance. That
        # runs in the caller's task, after the timers of that instant; a deadline at that
        # same instant may run before it or after it (timers of one instant run in the order
        # they were armed), so the run is flagged ambiguous and the test skips it.
        self.acted = False
        self.ambiguous = False
        self._seq = 0

    # -- the balance ---------------------------------------------------------------------

    def level_at(self, t: Fraction) -> Fraction:
        """Return the balance at ``t`` (>= the last change): refilled, capped at capacity."""
        assert t >= self.at, (t, self.at)
        return min(Fraction(self.capacity), self.level + (t - self.at) / self.interval)

    def _move(self, t: Fraction) -> None:
        self.level = self.level_at(t)
        self.at = t
        self.clock = max(self.clock, t)

    def tokens(self) -> Fraction:
        """Return the balance now."""
        return self.level_at(Fraction(self.now))

    # -- the queue -----------------------------------------------------------------------

    def queued(self) -> list[Req]:
        """Return the waiters in service order."""
        return [r for p in sorted(self.queues, reverse=True) for r in self.queues[p]]

    def head(self) -> Req | None:
        """Return the waiter served next."""
        waiting = self.queued()
        return waiting[0] if waiting else None

    def _unqueue(self, req: Req) -> None:
        self.queues[req.priority].remove(req)
        if not self.queues[req.priority]:
            del self.queues[req.priority]

    def _due(self, req: Req) -> Fraction:
        """Return when the head ``req`` can be granted: its tokens there, and not before now."""
        level = self.level_at(self.clock)
        if level >= req.tokens:
            return self.clock
        # Short of tokens now, so not capped since ``at``: the refill is a straight line.
        return self.at + (req.tokens - self.level) * self.interval

    # -- time passing --------------------------------------------------------------------

    def advance(self, t: int) -> None:
        """Let time pass until ``t`` ns, granting and timing out on the way."""
        assert t >= self.now
        while True:
            head = self.head()
            instants = [ceil_ns(self._due(head))] if head else []
            instants += [r.deadline for r in self.queued() if r.deadline is not None]
            if not instants or min(instants) > t:
                break
            self._instant(min(instants))
        self.now = t
        self.clock = max(self.clock, Fraction(t))

    def _instant(self, g: int) -> None:
        """Do everything due at ``g`` ns: grants first, then what the granted do at once,
        then one timeout at a time (in arrival order), each after any grant it allows."""
        self.now = g
        self.acted = False
        deadline_here = any(r.deadline == g for r in self.queued())
        while True:
            self.ambiguous |= self.acted and deadline_here
            batch = []
            while (head := self.head()) is not None and (due := self._due(head)) <= g:
                self._grant(head, due, g)
                batch.append(head)
            self.clock = max(self.clock, Fraction(g))
            for req in batch:
                self.after_grant(req, g, False)
            if batch:
                continue
            expired = [r for r in self.queued() if r.deadline is not None and r.deadline <= g]
            if not expired:
                return
            req = min(expired, key=lambda r: (r.deadline, r.seq))
            self._unqueue(req)
            req.state = "done"
            req.withdrawn = True
            self.timed_out += 1
            self._end(req, "timed_out")

    def _grant(self, req: Req, at: Fraction, seen_ns: int) -> None:
        queued = req.state == "queued"
        if queued:
            self._unqueue(req)
        self._move(at)
        self.level -= req.tokens
        self.tokens_granted += req.tokens
        req.mark = self.tokens_granted + self.shift
        req.state = "granted"
        req.granted_at = at
        req.granted_ns = seen_ns
        req.outcome, req.outcome_ns = "granted", seen_ns
        self.granted += 1
        if queued:
            waited = seen_ns - req.enqueued
            self.total_wait_ns += waited
            self.max_wait_ns = max(self.max_wait_ns, waited)

    def _end(self, req: Req, outcome: str) -> None:
        req.outcome = outcome
        req.outcome_ns = self.now

    # -- calls ---------------------------------------------------------------------------

    def plan(self, tokens: int, priority: int) -> int:
        """Return the ns a newcomer would wait if nothing changed: until the tokens of all it
        queues behind and its own have come in (0: it may go now)."""
        ahead = sum(r.tokens for r in self.queued() if r.priority >= priority)
        missing = ahead + tokens - self.level_at(Fraction(self.now))
        return max(ceil_ns(missing * self.interval), 0)

    def admit(self, req: Req) -> None:
        """Grant ``req`` now, queue it, or refuse it (closed, too large, timeout not met)."""
        if self.closed:
            return self._end(req, "closed")
        if req.tokens > self.capacity:
            return self._end(req, "invalid")
        ahead = sum(r.tokens for r in self.queued() if r.priority >= req.priority)
        now = Fraction(self.now)
        if ahead == 0 and self.level_at(now) >= req.tokens:
            self._grant(req, now, self.now)
            self._end(req, "granted")
            self.after_grant(req, self.now, True)
            return None
        delay = self.plan(req.tokens, req.priority)
        if req.max_wait is not None and delay > req.max_wait:
            self.rejected += 1
            return self._end(req, "rejected")
        req.state = "queued"
        self._seq += 1
        req.seq = self._seq
        req.enqueued = self.now
        req.deadline = None if req.max_wait is None else self.now + req.max_wait
        self.queues.setdefault(req.priority, []).append(req)
        return None

    def next_instant(self) -> int | None:
        """Return the ns at which the head will be granted if nothing changes."""
        head = self.head()
        return None if head is None else max(ceil_ns(self._due(head)), self.now)

    def reserve_ahead(self, tokens: int, max_wait: int | None) -> tuple[bool, int, Req | None]:
        """Take ``tokens`` now for use when they have come in (the balance may go below zero),
        if that is within ``max_wait`` ns; return (granted, wait ns, the grant)."""
        wait = self.plan(tokens, 0)
        if max_wait is not None and wait > max_wait:
            return False, wait, None
        req = Req(tokens)
        self._move(Fraction(self.now))
        if wait:
            self.booked = max(self.booked, self.now + wait)
        self.level -= tokens
        self.tokens_granted += tokens
        req.mark = self.tokens_granted + self.shift
        req.state = "granted"
        return True, wait, req

    def try_acquire(self, tokens: int, priority: int) -> str:
        """Return "granted", "rejected", "closed" or "invalid"; never queue."""
        req = Req(tokens, priority, max_wait=0)
        self.admit(req)
        return req.outcome or "granted"

    def cancel(self, req: Req) -> None:
        """Withdraw ``req``: out of the queue, or its grant undone. Counted as cancelled."""
        if req.state == "queued":
            self._unqueue(req)
            self._end(req, "cancelled")
        elif req.state == "granted":
            self.give_back(req)
        else:
            return
        req.state = "done"
        req.withdrawn = True
        self.cancelled += 1

    def give_back(self, req: Req) -> Fraction:
        """Undo the grant of ``req`` as far as that is still correct; return what went back."""
        assert req.state == "granted"
        req.state = "done"
        self._move(Fraction(self.now))
        # A capacity raise since the grant counts as tokens granted later: the lower capacity
        # had capped what time paid back, and that must not come back now.
        later = self.tokens_granted + self.shift - req.mark
        # The tokens granted later are in use now, or at the slot booked ahead if there is one.
        promised = max(self.booked - self.now, 0) / self.interval
        room = self.capacity - later - promised - self.level
        back = max(Fraction(0), min(Fraction(req.tokens), room))
        self.level += back
        self.refunded += float(back)
        req.returned += back
        return back

    def refund(self, tokens: int) -> Fraction:
        """Give back ``tokens`` the caller vouches went unused, up to the capacity; nothing
        while a slot is booked ahead (the tokens could be the sleeper's)."""
        self._move(Fraction(self.now))
        if self.booked > self.now:
            return Fraction(0)
        back = max(Fraction(0), min(Fraction(tokens), self.capacity - self.level))
        self.level += back
        self.refunded += float(back)
        return back

    def charge(self, tokens: int) -> str:
        """Take ``tokens`` now, into debt if need be."""
        if self.closed:
            return "closed"
        self._move(Fraction(self.now))
        self.level -= tokens
        self.tokens_granted += tokens
        return "ok"

    def set_rate(self, rate: Rate, capacity: int) -> str:
        """Change rate and capacity, keeping the balance; refuse if a waiter would not fit."""
        if any(r.tokens > capacity for r in self.queued()):
            return "invalid"
        self._move(Fraction(self.now))
        balance = min(self.level, Fraction(capacity))
        self.interval = rate.ns_per_token
        grid = Fraction(1, self.interval.denominator)  # the clock's resolution at this rate
        missing = (capacity - balance) * self.interval
        missing = -(-missing // grid) * grid
        self.level = capacity - missing / self.interval
        if capacity > self.capacity:
            self.shift += capacity - self.capacity
        self.capacity = capacity
        return "ok"

    def close(self) -> None:
        """Refuse every later call; every waiter ends with "closed"."""
        self.closed = True
        for req in self.queued():
            self._unqueue(req)
            req.state = "done"
            req.withdrawn = True
            self._end(req, "closed")

    def statistics(self) -> dict[str, object]:
        """Return the counters under their Statistics names."""
        waiting = self.queued()
        return {
            "granted": self.granted,
            "granted_tokens": self.tokens_granted,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "waiting": len(waiting),
            "waiting_tokens": sum(r.tokens for r in waiting),
            "refunded_tokens": self.refunded,
            "total_wait": self.total_wait_ns / 1e9,
            "max_wait": self.max_wait_ns / 1e9,
        }


# -- the envelope ----------------------------------------------------------------------------


@dataclass
class _Use:
    lo: Fraction  # earliest instant it can have happened
    hi: Fraction  # latest instant it can have happened
    amount: Fraction  # net of what was given back
    forced: bool  # a charge: may go into debt, so no window may end at it
    capacity: int  # the capacity just before it


@dataclass
class _Rates:
    """The refill as a function of time: integral of the rate, piecewise constant."""

    starts: list[Fraction] = field(default_factory=list)
    intervals: list[Fraction] = field(default_factory=list)
    totals: list[Fraction] = field(default_factory=list)  # refill from 0 to each start

    def change(self, at: Fraction, interval: Fraction) -> None:
        if self.starts:
            self.totals.append(self.refill(at))
        else:
            self.totals.append(Fraction(0))
        self.starts.append(at)
        self.intervals.append(interval)

    def refill(self, t: Fraction) -> Fraction:
        i = max(bisect_right(self.starts, t) - 1, 0)
        return self.totals[i] + (t - self.starts[i]) / self.intervals[i]


def check_envelope(
    log: Iterable[tuple[object, ...]], capacity: int, interval: Fraction
) -> Fraction:
    """Check every window of a limiter's log against the envelope; return the least slack.

    The log is what was seen, in the order it happened:

    - ("grant", key, lo, hi, tokens): tokens granted at an instant in [lo, hi]
    - ("charge", t, tokens): tokens charged at t (forced: the balance may go below zero)
    - ("return", key, tokens): tokens of grant ``key`` given back (cancelled after the
      grant, reservation cancelled, ``take`` block raised): they count as never granted
    - ("rate", t, interval, capacity): set_rate at t

    A window starts at a use or a set_rate and ends at a grant j. The net tokens used in it
    are at most the capacity just before its start (the balance can hold no more) plus the
    refill from its start to j. Windows end at grants only: a charge may overdraw, and this
    checks that later grants wait until the debt is paid off. Raises AssertionError naming
    the worst window.
    """
    rates = _Rates()
    rates.change(Fraction(0), interval)
    items: list[_Use] = []  # uses, and the starts set_rate adds (forced, amount 0)
    by_key: dict[object, _Use] = {}
    for entry in log:
        kind = entry[0]
        if kind == "grant":
            _, key, lo, hi, tokens = entry
            use = _Use(Fraction(lo), Fraction(hi), Fraction(tokens), False, capacity)  # type: ignore[arg-type]
            items.append(use)
            by_key[key] = use
        elif kind == "charge":
            _, t, tokens = entry
            items.append(_Use(Fraction(t), Fraction(t), Fraction(tokens), True, capacity))  # type: ignore[arg-type]
        elif kind == "return":
            _, key, tokens = entry
            by_key[key].amount -= tokens  # type: ignore[operator]
            assert by_key[key].amount >= 0, f"more given back than granted: {entry}"
        elif kind == "rate":
            _, t, new_interval, new_capacity = entry
            items.append(_Use(Fraction(t), Fraction(t), Fraction(0), True, capacity))  # type: ignore[arg-type]
            rates.change(Fraction(t), new_interval)  # type: ignore[arg-type]
            capacity = new_capacity  # type: ignore[assignment]
        else:  # pragma: no cover
            raise AssertionError(f"unknown log entry {entry}")
    least = None
    best_start: tuple[Fraction, int] | None = None  # min of used-before + capacity - refill
    used = Fraction(0)
    for j, item in enumerate(items):
        start = used + item.capacity - rates.refill(item.lo)
        if best_start is None or start < best_start[0]:
            best_start = (start, j)
        used += item.amount
        if item.forced:
            continue
        slack = best_start[0] - (used - rates.refill(item.hi))
        if least is None or slack < least:
            least = slack
        assert slack >= 0, (
            f"envelope exceeded by {-slack} tokens in the window from item {best_start[1]} "
            f"to grant {j}: {items[best_start[1] : j + 1]}"
        )
    return Fraction(0) if least is None else least
