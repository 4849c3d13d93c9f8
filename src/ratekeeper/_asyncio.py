"""The asyncio limiter: the shared core, a FIFO of futures, and one timer.

This is the only core module that imports asyncio. The scheduler decides; this module only
makes waiters wait (a future each), arms the single timer for the head waiter, and turns the
scheduler's verdicts into results and exceptions.

Event loops. A limiter may be created outside any loop, and may move from one loop to the
next (one ``asyncio.run`` after another, one test after another) whenever nobody is waiting.
Waiting in two loops at once raises RuntimeError. Its methods are not thread-safe: call them
from the loop's thread (use ``SyncTokenBucket`` for threads).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._clock import MONOTONIC, Clock, Timer, following_wall, wall_clock
from ._errors import AcquireTimeout, LimiterClosed
from ._fork import track
from ._gcra import LimitsLike, seconds_to_ns
from ._rate import Rate, RateLike
from ._scheduler import (
    QUEUED,
    CompositeScheduler,
    Listener,
    Queue,
    QueuedReservation,
    Scheduler,
    Statistics,
    TakeBlock,
    Waiter,
)
from ._verbs import AsyncVerbs

_running_loop = asyncio.get_running_loop
# Waiter objects a TokenBucket keeps for reuse (see acquire): enough for one release's grants.
_SPARE_WAITERS = 64

__all__ = ["CompositeLimiter", "Reservation", "TokenBucket", "TokenBucketRateLimiter"]

P = ParamSpec("P")
R = TypeVar("R")
B = TypeVar("B", bound="TokenBucket")
A = TypeVar("A")  # tokens as refund() and available() report them: float, or per limit

# The fast path recognises the default arguments by identity: cheaper than validating them.
_ONE = 1
_ZERO = 0
# The fast path's gate when it must not grant: below every ``tat - now``.
_SHUT = float("-inf")


def check_priority(priority: object) -> int:
    """Return ``priority`` if it is an int; raise TypeError naming it."""
    if type(priority) is not int:
        raise TypeError(f"priority must be an int, not {type(priority).__name__} {priority!r}")
    return priority


# Timeouts this long (about 31 years) or longer mean "no timeout": no clock or timer API can
# represent every finite float, and nobody waits that long.
_FOREVER_S = 1e9


def check_timeout(timeout: float | None) -> int | None:
    """Return a timeout in ns (None for no timeout, also for +inf and anything >= 1e9 s);
    raise TypeError/ValueError for bad values."""
    if timeout is None:
        return None
    if type(timeout) in (int, float) and timeout >= _FOREVER_S:  # NaN is refused below
        return None
    return seconds_to_ns(timeout, "timeout")


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    """Fail a waiter's future, marked as seen: a reservation nobody awaits must not log
    "Future exception was never retrieved" when it times out or is closed."""
    if not future.done():
        future.set_exception(error)
        future.exception()


class _AsyncWaiter(Waiter):
    __slots__ = ("deadline", "future")

    def __init__(self, tokens: Any, priority: int, future: asyncio.Future[None]) -> None:
        self.tokens = tokens  # Waiter.__init__, inlined
        self.priority = priority
        self.state = QUEUED
        self.enqueued_ns = 0
        self.mark: Any = 0
        self.future = future
        self.deadline: Timer | None = None

    def abandoned(self) -> bool:
        # A task cancelled while waiting cancels this future at once; its except-handler
        # runs later. Skipping it here keeps a cancelled waiter from holding up the queue.
        return self.future.cancelled()


class _AsyncLimiter(Queue, Generic[A], AsyncVerbs):
    """The asyncio adapter over a scheduler: futures for waiters, one timer for the head.

    Shared by TokenBucket (one bucket) and CompositeLimiter (several limits at once); each
    concrete class declares the fields below as slots and supplies ``_check``.
    """

    if not TYPE_CHECKING:
        __slots__ = ()

    _clock: Clock
    _now_ns: Callable[[], int]
    _closed: bool
    _loop: asyncio.AbstractEventLoop | None
    _timer: Timer | None
    _timer_when: int

    def _init_adapter(self, clock: Clock, name: str | None, on_event: Listener | None) -> None:
        self._clock = clock
        # Fixed windows (alone or in a composite) follow the wall clock: see following_wall.
        self._now_ns = following_wall(self, clock.now_ns, wall_clock(clock))
        self._closed = False
        self._loop = None
        self._timer = None
        self._timer_when = 0
        track(self)
        self._name = name
        if on_event is not None:
            self.on_event = on_event
        track(self)

    def _fork_locks(self) -> tuple[()]:
        return ()

    def _after_fork(self) -> None:
        """In a forked child: the waiters and the timer belong to the parent's event loop;
        the limiter is free to serve the child's."""
        self.forget_waiters()
        self._timer = None
        self._loop = None

    async def try_acquire(self, tokens: Any = 1, *, priority: int = 0) -> bool:
        """Take ``tokens`` if they can be granted now without overtaking a waiter.

        Never waits. Shorthand for ``try_acquire_nowait``, awaitable as on every limiter.
        """
        return self.try_acquire_nowait(tokens, priority=priority)

    def try_acquire_nowait(self, tokens: Any = 1, *, priority: int = 0) -> bool:
        """Take ``tokens`` if they can be granted now without overtaking a waiter; return
        True if they were (the in-memory, synchronous form of ``try_acquire``).

        The same decision as a reservation with a maximum wait of 0, without the cost of
        raising and catching its refusal.
        """
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        tokens = self._check(tokens)
        check_priority(priority)
        now = self._now_ns()
        if self._waiting:
            self._abandon_dead_loop()
        if self._waiting:
            self._release(now)  # a head already due is granted first, not held against us
        delay, ahead = self.plan(now, tokens, priority)
        if delay == 0 and not ahead:
            self.grant_now(now, tokens)
            return True
        self.reject(now, tokens)
        return False

    async def reserve(
        self, tokens: Any = 1, *, timeout: float | None = None, priority: int = 0
    ) -> Reservation:
        """Queue for ``tokens`` now and return the Reservation (see ``reserve_nowait``)."""
        return self.reserve_nowait(tokens, timeout=timeout, priority=priority)

    def reserve_nowait(
        self, tokens: Any = 1, *, timeout: float | None = None, priority: int = 0
    ) -> Reservation:
        """Queue for ``tokens`` now and return the Reservation at once.

        ``reservation.delay`` says how long it is expected to wait; ``await reservation``
        waits for the grant; ``reservation.cancel()`` withdraws it (a granted reservation
        not yet awaited gives its tokens back as far as that is still correct; once
        ``await reservation`` has returned, the tokens are in use and cancel does nothing).
        Raises AcquireTimeout if the expected wait exceeds ``timeout``. Must be called in a
        running loop if it must wait.
        """
        mark, waiter, delay_ns = self._admit(tokens, timeout, priority, plan_wait=True)
        return Reservation(self, self._check(tokens), mark, waiter, delay_ns / 1e9)

    def take(
        self,
        tokens: Any = 1,
        *,
        refund_on_error: bool = False,
        timeout: float | None = None,
        priority: int = 0,
    ) -> _Take:
        """Return an async context manager that acquires ``tokens`` on entry.

        With ``refund_on_error=True``, a block that raises an Exception gives its tokens
        back (the call it guarded is taken not to have happened).
        """
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        return _Take(self, self._check(tokens), refund_on_error, timeout, priority)

    def _admit(
        self, tokens: Any, timeout: float | None, priority: int, plan_wait: bool = False
    ) -> tuple[Any, _AsyncWaiter | None, int]:
        """Grant now, or queue, or refuse: the one engine behind every verb.

        Returns (refund mark, None, 0) when granted now, or (0, waiter, expected ns) when
        queued. Raises AcquireTimeout when the expected wait exceeds ``timeout``.
        """
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        tokens = self._check(tokens)
        check_priority(priority)
        return self._decide(
            self._now_ns(), tokens, priority, check_timeout(timeout), timeout, plan_wait=plan_wait
        )

    def _decide(
        self,
        now: int,
        tokens: Any,
        priority: int,
        max_wait: int | None,
        timeout: float | None,
        *,
        plan_wait: bool = False,
    ) -> tuple[Any, _AsyncWaiter | None, int]:
        """_admit for valid arguments, at ``now`` (ns).

        Without a timeout, a newcomer behind a waiter of its class (or a higher one) queues
        without planning: nothing would use the plan (the expected wait is then returned as
        -1), and under saturation that is most calls.
        """
        if self._waiting:
            self._abandon_dead_loop()
        levels = self._levels
        if max_wait is None and levels and levels[0] >= priority and not plan_wait:
            delay = -1
        else:
            delay, ahead = self.plan(now, tokens, priority)
            if delay == 0 and not ahead:
                return self.grant_now(now, tokens), None, 0
        if max_wait is not None and delay > max_wait:
            self.reject(now, tokens)
            raise AcquireTimeout(
                f"{self._cost_text(tokens)} would be granted in {delay / 1e9:.6f}s, "
                f"beyond the timeout of {timeout}s",
                delay / 1e9,
            )
        loop = asyncio.get_running_loop()
        if self._waiting and loop is not self._loop:
            raise RuntimeError(
                f"{self!r} has waiters in another event loop; a limiter serves one loop at "
                "a time (it may move to a new loop once nobody waits)"
            )
        self._loop = loop
        waiter = _AsyncWaiter(tokens, priority, loop.create_future())
        if self.enqueue(waiter, now):
            self._arm()
        self._listener_changed()
        if max_wait is not None:
            waiter.deadline = self._clock.call_at(
                loop, now + max_wait, functools.partial(self._expire, waiter, timeout)
            )
        return 0, waiter, delay

    async def _wait(self, waiter: _AsyncWaiter) -> None:
        """Wait for a queued waiter's grant; on cancellation, withdraw it or refund it."""
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise
        finally:
            if waiter.deadline is not None:
                waiter.deadline.cancel()

    def _withdraw(self, waiter: _AsyncWaiter) -> None:
        # Queued: it leaves the queue having consumed nothing. Granted but cancelled before
        # it could run: its tokens go back. Either way the plan is redone.
        if self.cancel(waiter, self._now_ns()):
            self._replan()

    # -- the timer -----------------------------------------------------------------------

    def _arm(self) -> None:
        """(Re-)arm the one timer for the head waiter's due time, or disarm it."""
        when = self.head_due_ns()
        timer = self._timer
        if when is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if self._timer_when == when:
                return
            timer.cancel()
        assert self._loop is not None
        self._timer_when = when
        self._timer = self._clock.call_at(self._loop, when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # The timer was armed for the head's due time: treat a (rounding-)early firing as on
        # time rather than re-arming a timer for a few nanoseconds.
        self._release(max(self._now_ns(), self._timer_when))

    def _release(self, now: int) -> None:
        """Grant every waiter due by ``now`` (waking each once), then re-arm the timer."""
        for waiter in self.release_due(now):
            waiter.future.set_result(None)  # type: ignore[attr-defined]
        self._arm()
        if not self._waiting:  # while anyone waits, the fast path stays shut already
            self._listener_changed()

    def _replan(self) -> None:
        """Re-plan after a change (refund, cancellation, new rate...): re-arm the timer for
        the head's new due time (at once if it is due now). A try in between grants a due
        head first, so it is never refused for nothing."""
        if self._waiting:
            self._abandon_dead_loop()
        self._arm()
        self._listener_changed()

    def _abandon_dead_loop(self) -> None:
        """Drop every waiter if their event loop was closed under them (never cancelled).

        Their tasks will never run again: they are abandoned, counted as cancelled, and
        cost nothing; the limiter is free to serve another loop.
        """
        loop = self._loop
        if loop is None or not loop.is_closed():
            return
        dropped = self.drain()
        self._cancelled += len(dropped)
        self._timer = None  # its loop is gone with it
        self._loop = None
        self._listener_changed()

    def _expire(self, waiter: _AsyncWaiter, timeout: float | None) -> None:
        if waiter.state != QUEUED:
            return
        if waiter.future.cancelled():
            # Its task was cancelled in this same tick, before its handler ran: that is a
            # cancellation, not a timeout.
            self._withdraw(waiter)
            return
        now = self._now_ns()
        due = self.head_due_ns()
        if due is not None and due <= now:
            # The head timer is due at this very moment too: grants come before timeouts.
            self._release(now)
            if waiter.state != QUEUED:
                return
        was_head = self.time_out(waiter, now)
        _fail(
            waiter.future,
            AcquireTimeout(f"{self._cost_text(waiter.tokens)} not granted within {timeout}s"),
        )
        if was_head or not self._waiting:
            self._replan()

    # -- settling accounts ---------------------------------------------------------------

    async def refund(self, tokens: Any) -> A:
        """Give back ``tokens`` taken earlier and unused; return how many went back.

        Shorthand for ``refund_nowait``, awaitable as on every limiter.
        """
        return self.refund_nowait(tokens)

    def refund_nowait(self, tokens: Any) -> A:
        """Give back ``tokens`` taken earlier and unused; return how many went back.

        The caller vouches that they were taken and not used. They never fill the bucket
        above its capacity. Waiters are re-planned.
        """
        tokens = self._check_amount(tokens)
        returned: A = self.give_back(self._now_ns(), tokens, None)
        self._replan()
        return returned

    async def charge(self, tokens: Any) -> None:
        """Take ``tokens`` now, even into debt. Shorthand for ``charge_nowait``."""
        self.charge_nowait(tokens)

    def charge_nowait(self, tokens: Any) -> None:
        """Take ``tokens`` now without waiting, even into debt (later callers wait it off).

        For settling a cost known only after the call, e.g. the tokens an LLM reply used.
        """
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        self.charge_now(self._now_ns(), self._check_amount(tokens))
        self._replan()

    def close(self) -> None:
        """Refuse every later call and wake every waiter with LimiterClosed. Idempotent."""
        self._closed = True
        if self._waiting:
            self._abandon_dead_loop()
        self._listener_changed()
        for waiter in self.drain():
            _fail(waiter.future, LimiterClosed(f"{self!r} was closed while waiting"))  # type: ignore[attr-defined]
        self._arm()

    async def aclose(self) -> None:
        """Close (see ``close``); an in-memory limiter holds nothing else."""
        self.close()

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    # -- reading -------------------------------------------------------------------------

    async def available(self) -> A:
        """Return the tokens available now (negative while in debt)."""
        return self.available_nowait()

    def available_nowait(self) -> A:
        """Return the tokens available now (negative while in debt), synchronously."""
        return self.tokens_at(self._now_ns())  # type: ignore[attr-defined,no-any-return]

    async def full_in(self) -> float:
        """Return seconds until the bucket is full again (0.0 when full)."""
        return self.full_in_nowait()

    def full_in_nowait(self) -> float:
        """Return seconds until the bucket is full again (0.0 when full), synchronously."""
        return self.full_in_ns(self._now_ns()) / 1e9

    def statistics(self) -> Statistics:
        """Return a snapshot of the counters: granted, rejected, timed out, waits..."""
        return self.snapshot()

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name else ""
        closed = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__}{name} {self.describe(self._now_ns())} "
            f"waiting={self._waiting}{closed}>"
        )

    # -- sugar ---------------------------------------------------------------------------

    async def acquire(
        self, tokens: Any = 1, *, timeout: float | None = None, priority: int = 0
    ) -> bool:
        """Wait until ``tokens`` are granted, in arrival order; return True (see subclasses)."""
        _, waiter, _ = self._admit(tokens, timeout, priority)
        if waiter is not None:
            await self._wait(waiter)
        return True

    def limit(
        self, tokens: Any = 1, *, timeout: float | None = None, priority: int = 0
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Return a decorator for async functions: each call acquires ``tokens`` first."""
        tokens = self._check(tokens)
        check_priority(priority)
        check_timeout(timeout)

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(
                    f"{func!r} is not an async function; decorate sync functions with "
                    "a SyncTokenBucket"
                )

            @functools.wraps(func)
            async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                await self.acquire(tokens, timeout=timeout, priority=priority)
                return await func(*args, **kwargs)

            return limited

        return decorate


class TokenBucket(_AsyncLimiter[float], Scheduler):
    """An asyncio token bucket: ``rate`` tokens per second, bursts up to ``capacity``.

    ===================  ===========================================================
    ``acquire(n)``       waits until n tokens are granted (FIFO), or raises
    ``try_acquire(n)``   never waits: True if granted now, else False
    ``reserve(n)``       queues now, returns a Reservation: its ``delay``, awaitable,
                         cancellable
    ``async with``       one token; ``take(n)`` for n, optionally refunded on error
    ``@limiter``         decorates an async function: one token per call
    ``refund(n)``        gives tokens back; ``charge(n)`` takes them after the fact
    ===================  ===========================================================

    Waiters are served strictly first-come first-served within a priority class (a higher
    ``priority`` is served first); a newcomer never overtakes a waiter, even when tokens are
    free. Only the head waiter has a timer. A timeout that cannot be met is refused at once
    with ``AcquireTimeout`` (a ``TimeoutError``); a refused, timed-out or cancelled call
    consumes nothing. ``close()`` wakes every waiter with ``LimiterClosed``.

    Raises ValueError/TypeError at once for a rate, capacity, token count, priority or
    timeout that is not allowed, naming the value.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_closed",
        "_gate",
        "_loop",
        "_now_ns",
        "_spare",
        "_timer",
        "_timer_when",
    )

    def __init__(
        self,
        rate: RateLike,
        capacity: int | None = None,
        *,
        initial: int | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        on_event: Listener | None = None,
    ) -> None:
        rate = Rate.of(rate)
        clock = MONOTONIC if clock is None else clock
        Scheduler.__init__(
            self,
            rate,
            rate.default_capacity if capacity is None else capacity,
            clock.now_ns(),
            initial,
        )
        self._spare: list[_AsyncWaiter] = []
        self._gate: int | float = _SHUT  # the fast path's, see acquire
        self._init_adapter(clock, name, on_event)
        self._listener_changed()

    async def acquire(
        self, tokens: int = 1, *, timeout: float | None = None, priority: int = 0
    ) -> bool:
        """Wait until ``tokens`` are granted, in arrival order; return True.

        Raises AcquireTimeout (nothing consumed) if they cannot be granted within
        ``timeout`` seconds (refused at once when the plan already says so), LimiterClosed
        after close(), ValueError/TypeError for bad arguments. Cancellation consumes nothing.
        """
        if tokens is _ONE and timeout is None and priority is _ZERO:
            # Fast path: one token, nobody waiting. Gcra.try_take(now_ns, 1), inlined because
            # a method call would double the cost, and reduced (checked by a differential
            # test): max(tat, now) + cost - now <= burst is tat - now <= burst - cost, as one
            # token always fits an empty bucket. ``_gate`` is burst - cost, or -inf while
            # anyone waits, the limiter is closed or a listener is set.
            now_ns = self._now_ns()
            scale = self._scale
            now = now_ns if scale == 1 else now_ns * scale  # 1 for most rates: skip a bignum *
            tat = self._tat
            if tat - now <= self._gate:
                self._tat = (now if tat < now else tat) + self._cost
                self._granted += 1
                return True
            # The defaults need no validation, and the clock was just read.
            if self._closed:
                raise LimiterClosed(f"{self!r} is closed")
            levels = self._levels
            loop = _running_loop()
            if levels and levels[0] == 0 and loop is self._loop:
                # Behind a waiter of its own class, in the loop they wait in: it queues at
                # the tail without a plan (nothing would use one). Queue.enqueue, written
                # out, on a waiter object reused from an earlier call: under saturation this
                # is every call.
                spare = self._spare
                if spare:
                    waiter = spare.pop()
                    waiter.future = loop.create_future()
                    waiter.state = QUEUED
                else:
                    waiter = _AsyncWaiter(1, 0, loop.create_future())
                waiter.enqueued_ns = now_ns
                entry = self._queues[0]
                entry[0].append(waiter)
                entry[1] += 1
                entry[2] += 1
                self._waiting += 1
                try:
                    await waiter.future
                except asyncio.CancelledError:
                    self._withdraw(waiter)
                    raise
                # Granted, out of the queue, and seen by nobody else now: reusable.
                if len(spare) < _SPARE_WAITERS:
                    spare.append(waiter)
                return True
            queued = self._decide(now_ns, 1, 0, None, None)[1]
        else:
            queued = self._admit(tokens, timeout, priority)[1]
        if queued is not None:
            # _wait, inlined: one coroutine frame per waiter instead of two, which is most
            # of what a waiting task costs in memory and much of its CPU.
            try:
                await queued.future
            except asyncio.CancelledError:
                self._withdraw(queued)
                raise
            finally:
                if queued.deadline is not None:
                    queued.deadline.cancel()
        return True

    async def __aenter__(self: B) -> B:
        # One token with nobody waiting, without a second coroutine for acquire().
        if self._gate >= 0 and self.try_take(self._now_ns(), 1):
            return self
        await self.acquire()
        return self

    async def try_acquire(self, tokens: int = 1, *, priority: int = 0) -> bool:
        """Take ``tokens`` if they can be granted now without overtaking a waiter.

        Never waits. Shorthand for ``try_acquire_nowait``.
        """
        return self.try_acquire_nowait(tokens, priority=priority)

    def try_acquire_nowait(self, tokens: int = 1, *, priority: int = 0) -> bool:
        """Take ``tokens`` if they can be granted now without overtaking a waiter; return
        True if they were. Synchronous (memory only); shorthand for a reservation with a
        maximum wait of 0.
        """
        if (
            tokens is _ONE
            and priority is _ZERO
            and self._gate >= 0  # nobody waiting, open, no listener
            and self.try_take(self._now_ns(), 1)
        ):
            return True
        return _AsyncLimiter.try_acquire_nowait(self, tokens, priority=priority)

    def _listener_changed(self) -> None:
        # Also called after every change of rate or capacity (through _replan).
        open_ = not self._waiting and not self._closed and self._listener is None
        self._gate = self._burst - self._cost if open_ else _SHUT

    async def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity). Shorthand for ``set_rate_nowait``."""
        self.set_rate_nowait(rate, capacity)

    def set_rate_nowait(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity; default: unchanged) now, carrying the balance over.

        The tokens available now stay available, capped at the new capacity; debt stays
        debt. Waiters keep their order and are re-planned at the new rate. Raises ValueError
        if a queued request asks for more than the new capacity.
        """
        self.change_limit(self._now_ns(), Rate.of(rate), capacity)
        self._replan()


class CompositeLimiter(_AsyncLimiter[dict[str, float]], CompositeScheduler):
    """Several limits checked and charged together, all or nothing, with one FIFO queue.

    ``CompositeLimiter({"requests": Limit("60/minute", weight=1), "tokens":
    Limit("90000/minute")})`` takes each limit as a ``Limit``, a rate (capacity: its count)
    or a (rate, capacity) pair; ``CompositeLimiter("10/hour;100/day")`` reads several rates
    from one string, named ``"hour"`` and ``"day"`` (see ``Limit.parse_many``). A cost is a
    mapping of limit name to tokens (unnamed limits: 0), or an int ``n``: ``n`` from each
    limit without a weight, its weight from a weighted one (so ``acquire(1500)`` is one
    request and 1,500 tokens); the default is 1. With an int, ``charge`` and ``refund``
    settle only the limits without a weight.
    ``await llm.acquire({"requests": 1, "tokens": 1500})`` waits until both fit;
    ``charge({"tokens": 700})`` and ``refund({"tokens": 300})`` settle the true cost after
    the call. Everything else is as in TokenBucket: FIFO, priorities, cancellation-safe,
    timeouts refused at once when the plan misses them; behind queued waiters the plan is a
    lower bound (one limit may hold a waiter ahead while another refills), so a waiter can
    also time out in the queue, having consumed nothing.
    """

    __slots__ = ("__weakref__", "_clock", "_closed", "_loop", "_now_ns", "_timer", "_timer_when")

    def __init__(
        self,
        limits: LimitsLike,
        *,
        clock: Clock | None = None,
        name: str | None = None,
        on_event: Listener | None = None,
    ) -> None:
        clock = MONOTONIC if clock is None else clock
        CompositeScheduler.__init__(self, limits, clock.now_ns())
        self._init_adapter(clock, name, on_event)

    async def set_rate(self, name: str, rate: RateLike, capacity: int | None = None) -> None:
        """Change one limit's rate (and capacity). Shorthand for ``set_rate_nowait``."""
        self.set_rate_nowait(name, rate, capacity)

    def set_rate_nowait(self, name: str, rate: RateLike, capacity: int | None = None) -> None:
        """Change one limit's rate (and capacity) now, carrying its balance over.

        Raises ValueError for an unknown name or a capacity below a queued request's cost.
        """
        self.change_limit(self._now_ns(), name, Rate.of(rate), capacity)
        self._replan()


class TokenBucketRateLimiter(TokenBucket):
    """A ``TokenBucket`` under the name and signature of a common recipe's class.

    ``TokenBucketRateLimiter(rate=5, capacity=5)``: code written for such a class (``async
    with limiter:``, ``await limiter.acquire(tokens)``, ``limiter.tokens``) works unchanged
    but for the import, without that recipe's bugs (see the design notes). ``rate`` is tokens
    per second.
    """

    __slots__ = ()

    def __init__(self, rate: RateLike, capacity: int, **kwargs: Any) -> None:
        super().__init__(rate, capacity, **kwargs)

    @property
    def tokens(self) -> float:
        """The tokens available now (``available_nowait()``), under the recipe's name."""
        return self.available_nowait()


class Reservation(QueuedReservation):
    """A place in a limiter's queue, returned by ``reserve()``.

    ``delay`` is the wait expected when it was made; ``await reservation`` waits for the
    grant; ``cancel()`` withdraws it. Once ``await reservation`` has returned, its holder is
    using the tokens: the reservation is spent and ``cancel()`` does nothing (a refund then
    could hand the same tokens to a second caller: a burst).
    """

    __slots__ = ()
    _limiter: _AsyncLimiter[Any]
    _waiter: _AsyncWaiter | None

    def __await__(self) -> Generator[Any, None, None]:
        if self._waiter is not None:
            yield from self._limiter._wait(self._waiter).__await__()
        self._spent = not self._withdrawn

    def cancel(self) -> None:
        """Withdraw: leave the queue, or give the tokens of a granted reservation not yet
        awaited back. Idempotent; does nothing once ``await reservation`` has returned.

        A task awaiting the reservation gets CancelledError.
        """
        limiter = self._limiter
        if not self._withdraw(limiter._now_ns()):
            return
        waiter = self._waiter
        if waiter is not None and not waiter.future.done():
            waiter.future.cancel()
        limiter._replan()


class _Take(TakeBlock):
    """The async context manager returned by ``TokenBucket.take()``."""

    __slots__ = ()
    _limiter: _AsyncLimiter[Any]

    async def __aenter__(self) -> None:
        limiter = self._limiter
        mark, waiter, _ = limiter._admit(self._tokens, self._timeout, self._priority)
        if waiter is not None:
            await limiter._wait(waiter)
            mark = waiter.mark
        self._mark = mark

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._refunds(exc_type):
            limiter = self._limiter
            limiter.give_back(limiter._now_ns(), self._tokens, self._mark)
            limiter._replan()
