"""The blocking limiters for threads: the shared core under one lock, a FIFO of wake-locks.

The scheduler decides; this module only makes threads wait. Each waiting thread blocks on a
lock of its own. Only the head waiter sleeps with a timeout (until its due time): when it
wakes it grants itself and every waiter due with it, and wakes the new head to take over the
timer. No thread polls, and the shared lock is never held while anyone sleeps.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._asyncio import check_priority, check_timeout
from ._clock import MONOTONIC, Clock, following_wall, wall_clock
from ._errors import AcquireTimeout, LimiterClosed
from ._fork import track
from ._gcra import LimitsLike
from ._rate import Rate, RateLike
from ._scheduler import (
    GRANTED,
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
from ._verbs import SyncVerbs

__all__ = ["SyncCompositeLimiter", "SyncReservation", "SyncTokenBucket"]

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")  # tokens as refund() reports them: float, or per limit

# The fast path recognises the default arguments by identity, as TokenBucket.acquire does.
_ONE = 1
_ZERO = 0


class _ThreadWaiter(Waiter):
    # ``attached``: a thread is waiting for it (False for a reservation until its wait()).
    __slots__ = ("attached", "signalled", "wake")

    def __init__(self, tokens: Any, priority: int, attached: bool = True) -> None:
        super().__init__(tokens, priority)
        self.wake = threading.Lock()
        self.wake.acquire()
        self.signalled = False
        self.attached = attached


class _SyncLimiter(Queue, Generic[A], SyncVerbs):
    """The thread adapter over a scheduler: a wake-lock per waiter, the head sleeps.

    Shared by SyncTokenBucket and SyncCompositeLimiter; each declares the fields below as
    slots and supplies ``_check``.
    """

    if not TYPE_CHECKING:
        __slots__ = ()

    _clock: Clock
    _closed: bool
    _lock: threading.Lock
    _now_ns: Callable[[], int]

    def _init_adapter(self, clock: Clock, name: str | None, on_event: Listener | None) -> None:
        self._clock = clock
        # Fixed windows (alone or in a composite) follow the wall clock: see following_wall.
        self._now_ns = following_wall(self, clock.now_ns, wall_clock(clock))
        self._lock = threading.Lock()
        self._closed = False
        self._name = name
        if on_event is not None:
            self.on_event = on_event
        track(self)

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self._lock,)

    def _after_fork(self) -> None:
        """In a forked child: a new lock; the queued waiters were other threads' (a
        reservation still queued is withdrawn: its ``wait()`` raises LimiterClosed)."""
        self._lock = threading.Lock()
        self.forget_waiters()

    # -- acquiring -----------------------------------------------------------------------

    def acquire(self, tokens: Any = 1, *, timeout: float | None = None, priority: int = 0) -> bool:
        """Block until ``tokens`` are granted, in arrival order; return True.

        Raises AcquireTimeout (nothing consumed) if they cannot be granted within
        ``timeout`` seconds (refused at once when the plan already says so), LimiterClosed
        after close(), ValueError/TypeError for bad arguments.
        """
        _, waiter, _ = self._admit(tokens, timeout, priority)
        if waiter is not None:
            self._wait(waiter, timeout)
        return True

    def reserve(
        self, tokens: Any = 1, *, timeout: float | None = None, priority: int = 0
    ) -> SyncReservation:
        """Queue for ``tokens`` now and return the SyncReservation at once.

        ``reservation.delay`` says how long it is expected to wait; ``reservation.wait()``
        blocks until the grant; ``reservation.cancel()`` withdraws it (a granted
        reservation not yet waited for gives its tokens back as far as that is still
        correct; once ``wait()`` has returned, cancel does nothing). Raises AcquireTimeout
        if the expected wait exceeds ``timeout``; ``wait()`` raises it if the grant does not
        come within ``timeout`` of the reservation.
        """
        mark, waiter, delay_ns = self._admit(tokens, timeout, priority, attached=False)
        return SyncReservation(self, self._check(tokens), mark, waiter, delay_ns, timeout=timeout)

    def try_acquire(self, tokens: Any = 1, *, priority: int = 0) -> bool:
        """Take ``tokens`` if they can be granted now without overtaking a waiter.

        Never blocks (beyond the short internal lock). Shorthand for an acquire with a
        maximum wait of 0.
        """
        tokens = self._check(tokens)
        check_priority(priority)
        with self._lock:
            if self._closed:
                raise LimiterClosed(f"{self!r} is closed")
            now = self._now_ns()
            if self._waiting:
                self._release_locked(now)  # a head already due is granted first
            delay, ahead = self.plan(now, tokens, priority)
            if delay == 0 and not ahead:
                self.grant_now(now, tokens)
                return True
            self.reject(now, tokens)
            return False

    def _admit(
        self, tokens: Any, timeout: float | None, priority: int, attached: bool = True
    ) -> tuple[Any, _ThreadWaiter | None, int]:
        """Grant now (mark, None, 0), or queue (0, waiter, expected wait in ns); raise
        AcquireTimeout on refusal."""
        tokens = self._check(tokens)
        check_priority(priority)
        max_wait = check_timeout(timeout)
        with self._lock:
            if self._closed:
                raise LimiterClosed(f"{self!r} is closed")
            now = self._now_ns()
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
            waiter = _ThreadWaiter(tokens, priority, attached)
            if self.enqueue(waiter, now):
                self._wake_head_locked()
            return 0, waiter, delay

    def _wait(self, waiter: _ThreadWaiter, timeout: float | None) -> Any:
        """Block until ``waiter`` is granted; return its refund mark.

        The deadline is kept here, on the waiter's own stack: a thread needs no timer. If
        anything else ends the wait (KeyboardInterrupt in this thread, say), the waiter
        leaves the queue, or gives its grant back, and the next head is woken: a waiter
        whose thread is gone must not hold up the queue.
        """
        try:
            return self._wait_loop(waiter, timeout)
        except (AcquireTimeout, LimiterClosed):
            raise
        except BaseException:
            with self._lock:
                if self.cancel(waiter, self._now_ns()):
                    self._wake_head_locked()
            raise

    def _wait_loop(self, waiter: _ThreadWaiter, timeout: float | None) -> Any:
        max_wait = check_timeout(timeout)
        deadline = None if max_wait is None else waiter.enqueued_ns + max_wait
        clock = self._clock
        while True:
            with self._lock:
                if waiter.signalled:
                    # Consume the wake-up with the flag: "signalled" and "wake is released"
                    # must stay one fact, or the next signal releases an unlocked lock.
                    waiter.signalled = False
                    waiter.wake.acquire(False)
                if waiter.state == GRANTED:
                    return waiter.mark
                if waiter.state != QUEUED:
                    raise LimiterClosed(f"{self!r} was closed while waiting")
                now = self._now_ns()
                wake_at = deadline
                due = self.head_due_ns()
                if due is not None and due <= now:
                    # Whoever is due is granted first (this waiter, or ones ahead of it),
                    # and before any timeout: grants come before timeouts.
                    self._release_locked(now)
                    continue
                if self._timekeeper() is waiter:
                    assert due is not None
                    wake_at = due if deadline is None else min(due, deadline)
                if deadline is not None and now >= deadline:
                    if self.time_out(waiter, now):
                        self._wake_head_locked()
                    raise AcquireTimeout(
                        f"{self._cost_text(waiter.tokens)} not granted within {timeout}s"
                    )
            clock.wait(waiter.wake, wake_at)

    def _release_locked(self, now: int) -> None:
        for granted in self.release_due(now):
            self._signal(granted)
        self._wake_head_locked()

    def _wake_head_locked(self) -> None:
        keeper = self._timekeeper()
        if keeper is not None:
            self._signal(keeper)

    def _timekeeper(self) -> _ThreadWaiter | None:
        """Return the waiter whose thread sleeps until the head's due time: the head, or,
        while the head is a reservation nobody waits for yet, the first waiter with a
        thread (it grants the head when due, so the queue never stalls behind it)."""
        head = self.head()
        if head is None or head.attached:  # type: ignore[attr-defined]
            return head  # type: ignore[return-value]
        for level in self._levels:
            for waiter in self._queues[level][0]:
                if waiter.state == QUEUED and waiter.attached:
                    return waiter  # type: ignore[no-any-return]
        return None

    @staticmethod
    def _signal(waiter: Waiter) -> None:
        assert isinstance(waiter, _ThreadWaiter)
        if not waiter.signalled:
            waiter.signalled = True
            waiter.wake.release()

    # -- settling accounts ---------------------------------------------------------------

    def refund(self, tokens: Any) -> A:
        """Give back ``tokens`` taken earlier and unused; return how many went back.

        The caller vouches that they were taken and not used. They never fill the bucket
        above its capacity. Waiters are re-planned.
        """
        tokens = self._check_amount(tokens)
        with self._lock:
            now = self._now_ns()
            returned: A = self.give_back(now, tokens, None)
            self._release_locked(now)
        return returned

    def charge(self, tokens: Any) -> None:
        """Take ``tokens`` now without waiting, even into debt (later callers wait it off)."""
        tokens = self._check_amount(tokens)
        with self._lock:
            if self._closed:
                raise LimiterClosed(f"{self!r} is closed")
            self.charge_now(self._now_ns(), tokens)
            self._wake_head_locked()

    def close(self) -> None:
        """Refuse every later call and wake every waiter with LimiterClosed. Idempotent."""
        with self._lock:
            self._closed = True
            for waiter in self.drain():
                self._signal(waiter)

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    # -- reading -------------------------------------------------------------------------

    def full_in(self) -> float:
        """Return seconds until the bucket is full again (0.0 when full)."""
        with self._lock:
            return self.full_in_ns(self._now_ns()) / 1e9

    def statistics(self) -> Statistics:
        """Return a snapshot of the counters."""
        with self._lock:
            return self.snapshot()

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name else ""
        closed = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__}{name} {self.describe(self._now_ns())} "
            f"waiting={self._waiting}{closed}>"
        )

    # -- sugar ---------------------------------------------------------------------------

    def take(
        self,
        tokens: Any = 1,
        *,
        refund_on_error: bool = False,
        timeout: float | None = None,
        priority: int = 0,
    ) -> _SyncTake:
        """Return a context manager that acquires ``tokens`` on entry (see TokenBucket.take)."""
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        return _SyncTake(self, self._check(tokens), refund_on_error, timeout, priority)

    def limit(
        self, tokens: Any = 1, *, timeout: float | None = None, priority: int = 0
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Return a decorator: each call of the function acquires ``tokens`` first."""
        tokens = self._check(tokens)
        check_priority(priority)
        check_timeout(timeout)

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(func)
            def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                self.acquire(tokens, timeout=timeout, priority=priority)
                return func(*args, **kwargs)

            return limited

        return decorate


class _SyncSingle(_SyncLimiter[float]):
    """What a blocking limiter of one limit (a bucket or a window) adds: set_rate and
    available."""

    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:

        def change_limit(self, now_ns: int, rate: Rate, capacity: int | None) -> None: ...
        def tokens_at(self, now_ns: int) -> float: ...

    def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change rate (and capacity) now: a bucket carries its balance over (see
        TokenBucket), a window keeps the tokens it holds (see SlidingWindow, FixedWindow)."""
        rate = Rate.of(rate)
        with self._lock:
            now = self._now_ns()
            self.change_limit(now, rate, capacity)
            self._release_locked(now)

    def available(self) -> float:
        """Return the tokens available now (negative while in debt)."""
        with self._lock:
            return self.tokens_at(self._now_ns())


class SyncTokenBucket(_SyncSingle, Scheduler):
    """A thread-safe, blocking token bucket with the asyncio limiter's API and guarantees.

    ``acquire(n, timeout=)`` blocks until granted (FIFO among threads, higher ``priority``
    first), ``try_acquire(n)`` never blocks, ``with limiter:`` takes one token, ``@limiter``
    decorates sync functions. A timeout that cannot be met is refused at once; a refused or
    timed-out call consumes nothing.
    """

    __slots__ = ("__weakref__", "_clock", "_closed", "_lock", "_now_ns")

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
        capacity = rate.default_capacity if capacity is None else capacity
        Scheduler.__init__(self, rate, capacity, clock.now_ns(), initial)
        self._init_adapter(clock, name, on_event)

    def acquire(self, tokens: int = 1, *, timeout: float | None = None, priority: int = 0) -> bool:
        """Block until ``tokens`` are granted, in arrival order; return True.

        Raises AcquireTimeout (nothing consumed) if they cannot be granted within
        ``timeout`` seconds (refused at once when the plan already says so), LimiterClosed
        after close(), ValueError/TypeError for bad arguments.
        """
        if tokens is _ONE and timeout is None and priority is _ZERO and self._take_one():
            return True
        return _SyncLimiter.acquire(self, tokens, timeout=timeout, priority=priority)

    def try_acquire(self, tokens: int = 1, *, priority: int = 0) -> bool:
        """Take ``tokens`` if they can be granted now without overtaking a waiter.

        Never blocks (beyond the short internal lock). Shorthand for an acquire with a
        maximum wait of 0.
        """
        if tokens is _ONE and priority is _ZERO and self._take_one():
            return True
        return _SyncLimiter.try_acquire(self, tokens, priority=priority)

    def _take_one(self) -> bool:
        """The fast path of acquire() and try_acquire() with their defaults: take one token
        if nobody is queued, the limiter is open and no listener is set, so the lock is held
        for a few bytecodes only. False sends the call down the full path, which decides."""
        with self._lock:
            return (
                not self._waiting
                and not self._closed
                and self._listener is None
                and self.try_take(self._now_ns(), 1)
            )


class SyncCompositeLimiter(_SyncLimiter[dict[str, float]], CompositeScheduler):
    """The thread-safe, blocking twin of CompositeLimiter (same costs, same semantics)."""

    __slots__ = ("__weakref__", "_clock", "_closed", "_lock", "_now_ns")

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

    def set_rate(self, name: str, rate: RateLike, capacity: int | None = None) -> None:
        """Change one limit's rate (and capacity) now, carrying its balance over.

        Raises ValueError for an unknown name or a capacity below a queued request's cost.
        """
        rate = Rate.of(rate)
        with self._lock:
            now = self._now_ns()
            self.change_limit(now, name, rate, capacity)
            self._release_locked(now)

    def available(self) -> dict[str, float]:
        """Return the tokens available now, per limit (negative while in debt)."""
        with self._lock:
            return self.tokens_at(self._now_ns())


class _SyncTake(TakeBlock):
    """The context manager returned by ``SyncTokenBucket.take()``."""

    __slots__ = ()
    _limiter: _SyncLimiter[Any]

    def __enter__(self) -> None:
        limiter = self._limiter
        mark, waiter, _ = limiter._admit(self._tokens, self._timeout, self._priority)
        self._mark = limiter._wait(waiter, self._timeout) if waiter is not None else mark

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._refunds(exc_type):
            limiter = self._limiter
            with limiter._lock:
                now = limiter._now_ns()
                limiter.give_back(now, self._tokens, self._mark)
                limiter._release_locked(now)


class SyncReservation(QueuedReservation):
    """A place in a blocking limiter's queue, returned by ``reserve()``.

    ``delay`` is the wait expected when it was made; ``wait()`` blocks until the grant;
    ``cancel()`` withdraws it. Once ``wait()`` has returned, its holder is using the tokens:
    the reservation is spent and ``cancel()`` does nothing.
    """

    __slots__ = ("_timeout",)
    _limiter: _SyncLimiter[Any]
    _waiter: _ThreadWaiter | None

    def __init__(
        self,
        limiter: _SyncLimiter[Any],
        tokens: Any,
        mark: Any,
        waiter: _ThreadWaiter | None,
        delay_ns: int,
        *,
        timeout: float | None,
    ) -> None:
        super().__init__(limiter, tokens, mark, waiter, delay_ns / 1e9)
        self._timeout = timeout

    def wait(self) -> None:
        """Block until granted; raise AcquireTimeout (past the reservation's timeout) or
        LimiterClosed (closed, or cancelled, while waiting)."""
        waiter = self._waiter
        if self._withdrawn:
            raise LimiterClosed(f"{self!r} was cancelled")
        if waiter is not None and not self._spent:
            limiter = self._limiter
            with limiter._lock:
                waiter.attached = True
                if waiter.state == QUEUED:
                    limiter._wake_head_locked()  # it may have to keep the time now
            self._mark = limiter._wait(waiter, self._timeout)
        self._spent = True

    def cancel(self) -> None:
        """Withdraw: leave the queue, or give the tokens of a granted reservation not yet
        waited for back. Idempotent; does nothing once ``wait()`` has returned."""
        limiter = self._limiter
        with limiter._lock:
            now = limiter._now_ns()
            if not self._withdraw(now):
                return
            if self._waiter is not None:
                limiter._signal(self._waiter)  # a thread in wait() sees it withdrawn
            limiter._release_locked(now)
