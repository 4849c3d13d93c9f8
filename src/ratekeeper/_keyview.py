"""One key of a keyed limiter, seen as a limiter of the contract.

``KeyedLimiter.for_key("github")`` returns a ``KeyedView``: the asyncio contract
(``ratekeeper.contract.AsyncLimiter``) on one key's buckets, so that code typed against the
protocol runs on a key of a keyed limiter, in memory or on Redis, as it runs on a
``TokenBucket``. ``SyncKeyedLimiter.for_key`` returns a ``SyncKeyedView`` (``SyncLimiter``).

A view keeps no state of its own: the buckets are the keyed limiter's, shared by every view
of the key and by calls that name the key. What differs from a single limiter, and is said by
the type (a view is an ``AsyncLimiter``, not an ``AsyncComposite``):

* no ``set_rate``: the limits belong to every key at once;
* ``statistics()`` are the keyed limiter's, summed over its keys;
* ``close()`` closes the view (its later calls are refused, its waiters woken with
  LimiterClosed), not the keyed limiter; closing the keyed limiter closes its views.

A call that must wait books its slot at once (see ``_keyed``): a reservation is that booked
slot, and ``cancel()`` gives it back by its mark until its holder has resumed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._errors import LimiterClosed
from ._keyed import (
    KeyedLimiter,
    KeyedStatistics,
    SyncKeyedLimiter,
    Tokens,
    Verdict,
    Watch,
    _KeyedBase,
    _wait_ns,
)
from ._scheduler import TakeBlock
from ._verbs import AsyncVerbs, SyncVerbs

__all__ = ["KeyedReservation", "KeyedView", "SyncKeyedReservation", "SyncKeyedView"]

P = ParamSpec("P")
R = TypeVar("R")

_LIVE, _IN_USE, _CANCELLED = 0, 1, 2
_refunds: set[asyncio.Task[Any]] = set()  # refunds sent to an awaited backend, until done


class _ViewBase:
    """What both views share: the key, the limiter, and the decision on a backend verdict."""

    __slots__ = ("_closed", "_key", "_limiter", "_sleeping")

    def __init__(self, limiter: _KeyedBase, key: str) -> None:
        if type(key) is not str or not key:
            raise TypeError(f"a key must be a non-empty str, not {key!r:.80}")
        self._limiter = limiter
        self._key = key
        self._closed = False
        self._sleeping: set[_ReservationBase] = set()

    @property
    def key(self) -> str:
        """The key whose buckets this view uses."""
        return self._key

    @property
    def closed(self) -> bool:
        """True after close() of this view or of its keyed limiter."""
        return self._closed or self._limiter.closed

    def _open(self) -> _KeyedBase:
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        limiter = self._limiter
        if limiter.closed:
            raise limiter._closed_error()
        return limiter

    def _decided(
        self, costs: tuple[int, ...], verdict: Verdict, timeout: float | None
    ) -> tuple[int, int]:
        """Count a reservation's verdict; return (due ns, delay ns), or raise AcquireTimeout."""
        limiter = self._limiter
        if verdict.wait_ns or limiter._own_counts:
            limiter._count(verdict, costs)
        if not verdict.granted:
            raise limiter._timeout_error(costs, verdict, timeout)
        return limiter._clock.now_ns() + verdict.wait_ns, verdict.wait_ns

    def statistics(self) -> KeyedStatistics:
        """Return the keyed limiter's counters (summed over its keys)."""
        return self._limiter.statistics()

    def close(self) -> None:
        """Refuse this view's later calls and wake its waiters with LimiterClosed.

        Idempotent. The keyed limiter and its other keys and views go on.
        """
        self._closed = True
        error = LimiterClosed(f"{self!r} was closed while waiting")
        for reservation in list(self._sleeping):
            reservation._abort(error)

    def __repr__(self) -> str:
        closed = " closed" if self.closed else ""
        return f"<{type(self).__name__} key={self._key!r} of {self._limiter!r}{closed}>"


class _ReservationBase:
    """A slot booked for one view's call: live until its holder resumes (in use), or until
    cancel(), a close or its holder's cancellation (cancelled)."""

    __slots__ = ("_costs", "_delay_ns", "_due_ns", "_mark", "_state", "_view", "_watch")

    def __init__(
        self, view: _ViewBase, costs: tuple[int, ...], mark: object, due: tuple[int, int]
    ) -> None:
        self._view = view
        self._costs = costs
        self._mark = mark
        self._due_ns, self._delay_ns = due
        self._state = _LIVE
        self._watch = Watch()

    @property
    def delay(self) -> float:
        """The wait (seconds) expected when it was made."""
        return self._delay_ns / 1e9

    @property
    def granted(self) -> bool:
        """True once its slot has come (at once for a delay of 0), until cancelled."""
        state = self._state
        if state == _LIVE:
            return self._view._limiter._clock.now_ns() >= self._due_ns
        return state == _IN_USE

    @property
    def cancelled(self) -> bool:
        """True after cancel(), a timeout, a close or the cancellation of its holder."""
        return self._state == _CANCELLED

    def cancel(self) -> None:
        """Give the slot back unless the holder has resumed; idempotent."""
        if self._state != _LIVE:
            return
        if self._watch.members:  # someone sleeps on it: wake them, their wake-up refunds
            self._abort(LimiterClosed("the reservation was cancelled"))
            return
        self._view._limiter._cancelled += 1
        refund = self._give_back()
        if refund is not None:  # an awaited backend: sent in the background, never raised
            try:
                task = asyncio.get_running_loop().create_task(refund)
            except RuntimeError:  # no running loop: nothing can be sent; the tokens stay used
                refund.close()
                return
            _refunds.add(task)
            task.add_done_callback(_refunds.discard)

    def _abort(self, error: BaseException) -> None:
        """Wake whoever sleeps on it with ``error`` (the sleeper gives the tokens back)."""
        self._state = _CANCELLED
        self._wake(error)

    def _wake(self, error: BaseException) -> None:
        raise NotImplementedError

    def _give_back(self) -> Any:
        """Return the tokens by mark (also after use: ``take(refund_on_error=True)``).

        Returns what an awaited backend's refund returns (a coroutine, for the caller to
        await), or None.
        """
        self._state = _CANCELLED
        limiter = self._view._limiter
        refund = limiter._backend.refund(self._view._key, self._costs, self._mark)
        return None if limiter._sync else refund

    def _resumed(self) -> None:
        if self._state == _CANCELLED:
            raise LimiterClosed("the reservation was cancelled")
        self._state = _IN_USE

    def __repr__(self) -> str:
        state = ("live", "in use", "cancelled")[self._state]
        return f"<{type(self).__name__} costs={self._costs} delay={self.delay:.6f}s {state}>"


class KeyedReservation(_ReservationBase):
    """A slot booked by ``KeyedView.reserve()``: ``await`` it, or ``cancel()`` it."""

    __slots__ = ()

    def _wake(self, error: BaseException) -> None:
        for future in self._watch.members:
            if not future.done():
                future.set_exception(error)

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        if self._state != _LIVE:
            self._resumed()  # in use already: nothing to do; cancelled: raises
            return
        view = self._view
        limiter: Any = view._limiter
        if limiter._clock.now_ns() < self._due_ns:
            view._sleeping.add(self)
            try:
                await limiter._sleep(view._key, self._costs, self._mark, self._due_ns, self._watch)
            except BaseException:
                self._state = _CANCELLED  # the sleep gave the tokens back
                raise
            finally:
                view._sleeping.discard(self)
        self._resumed()


class SyncKeyedReservation(_ReservationBase):
    """A slot booked by ``SyncKeyedView.reserve()``: ``wait()`` for it, or ``cancel()`` it."""

    __slots__ = ()

    def _wake(self, error: BaseException) -> None:
        limiter: Any = self._view._limiter
        with limiter._stats_lock:
            self._watch.closed = True
            for wake in self._watch.members:
                if wake.locked():
                    wake.release()

    def wait(self) -> None:
        """Block until its slot; raises LimiterClosed if cancelled or closed first."""
        if self._state != _LIVE:
            self._resumed()
            return
        view = self._view
        limiter: Any = view._limiter
        if limiter._clock.now_ns() < self._due_ns:
            view._sleeping.add(self)
            try:
                limiter._sleep(view._key, self._costs, self._mark, self._due_ns, self._watch)
            except BaseException:
                self._state = _CANCELLED
                raise
            finally:
                view._sleeping.discard(self)
        self._resumed()


class KeyedView(_ViewBase, AsyncVerbs):
    """One key of a ``KeyedLimiter`` as an asyncio limiter of the contract (``AsyncLimiter``).

    Costs are an int or a mapping of limit name to tokens; refund() and available() report
    tokens by limit name. See the module for what differs from a single limiter.
    """

    __slots__ = ()

    _limiter: KeyedLimiter

    def __init__(self, limiter: KeyedLimiter, key: str) -> None:
        super().__init__(limiter, key)

    async def reserve(
        self, tokens: Tokens = 1, *, timeout: float | None = None
    ) -> KeyedReservation:
        """Book the earliest slot for ``tokens``; AcquireTimeout (nothing taken) past
        ``timeout``."""
        limiter = self._open()
        costs = limiter._costs(tokens)
        max_wait_ns = _wait_ns(timeout)
        backend = limiter._backend
        if limiter._sync:
            verdict = backend.reserve(self._key, costs, max_wait_ns)
        else:
            verdict = await backend.reserve(self._key, costs, max_wait_ns)
        return KeyedReservation(self, costs, verdict.mark, self._decided(costs, verdict, timeout))

    async def acquire(self, tokens: Tokens = 1, *, timeout: float | None = None) -> bool:
        """Wait until ``tokens`` are granted, in arrival order; return True."""
        await (await self.reserve(tokens, timeout=timeout))
        return True

    async def try_acquire(self, tokens: Tokens = 1) -> bool:
        """Take ``tokens`` if they can be granted now; never waits."""
        self._open()
        return await self._limiter.try_acquire(self._key, tokens)

    async def refund(self, tokens: Tokens) -> dict[str, float]:
        """Give back ``tokens`` taken and unused; return how many went back, by limit name."""
        return await self._limiter.refund(self._key, tokens)

    async def charge(self, tokens: Tokens) -> None:
        """Take ``tokens`` now without waiting, even into debt."""
        self._open()
        await self._limiter.charge(self._key, tokens)

    async def available(self) -> dict[str, float]:
        """Return the tokens available now, by limit name (negative while in debt)."""
        return await self._limiter.available(self._key)

    async def full_in(self) -> float:
        """Return seconds until the key's buckets are full again (0.0 when full)."""
        return await self._limiter.full_in(self._key)

    def take(
        self, tokens: Tokens = 1, *, refund_on_error: bool = False, timeout: float | None = None
    ) -> _Take:
        """Return an async context manager that acquires ``tokens`` on entry (and, with
        ``refund_on_error``, gives them back if the block raises an Exception)."""
        return _Take(self, tokens, refund_on_error, timeout, 0)

    def limit(
        self, tokens: Tokens = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Return a decorator: each call of the async function acquires ``tokens`` first."""

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            @functools.wraps(func)
            async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                await self.acquire(tokens, timeout=timeout)
                return await func(*args, **kwargs)

            return limited

        return decorate

    async def aclose(self) -> None:
        """Close the view (see close())."""
        self.close()


class SyncKeyedView(_ViewBase, SyncVerbs):
    """One key of a ``SyncKeyedLimiter`` as a blocking limiter of the contract
    (``SyncLimiter``); see ``KeyedView``."""

    __slots__ = ()

    _limiter: SyncKeyedLimiter

    def __init__(self, limiter: SyncKeyedLimiter, key: str) -> None:
        super().__init__(limiter, key)

    def reserve(self, tokens: Tokens = 1, *, timeout: float | None = None) -> SyncKeyedReservation:
        """Book the earliest slot for ``tokens``; AcquireTimeout (nothing taken) past
        ``timeout``."""
        limiter = self._open()
        costs = limiter._costs(tokens)
        verdict = limiter._backend.reserve(self._key, costs, _wait_ns(timeout))
        due = self._decided(costs, verdict, timeout)
        return SyncKeyedReservation(self, costs, verdict.mark, due)

    def acquire(self, tokens: Tokens = 1, *, timeout: float | None = None) -> bool:
        """Block until ``tokens`` are granted, in arrival order; return True."""
        self.reserve(tokens, timeout=timeout).wait()
        return True

    def try_acquire(self, tokens: Tokens = 1) -> bool:
        """Take ``tokens`` if they can be granted now; never blocks."""
        self._open()
        return self._limiter.try_acquire(self._key, tokens)

    def refund(self, tokens: Tokens) -> dict[str, float]:
        """Give back ``tokens`` taken and unused; return how many went back, by limit name."""
        return self._limiter.refund(self._key, tokens)

    def charge(self, tokens: Tokens) -> None:
        """Take ``tokens`` now without waiting, even into debt."""
        self._open()
        self._limiter.charge(self._key, tokens)

    def available(self) -> dict[str, float]:
        """Return the tokens available now, by limit name (negative while in debt)."""
        return self._limiter.available(self._key)

    def full_in(self) -> float:
        """Return seconds until the key's buckets are full again (0.0 when full)."""
        return self._limiter.full_in(self._key)

    def take(
        self, tokens: Tokens = 1, *, refund_on_error: bool = False, timeout: float | None = None
    ) -> _SyncTake:
        """Return a context manager that acquires ``tokens`` on entry (see KeyedView.take)."""
        return _SyncTake(self, tokens, refund_on_error, timeout, 0)

    def limit(
        self, tokens: Tokens = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Return a decorator: each call of the function acquires ``tokens`` first."""

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(func)
            def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                self.acquire(tokens, timeout=timeout)
                return func(*args, **kwargs)

            return limited

        return decorate


class _TakeBase(TakeBlock):
    """What both views' ``take()`` blocks share; the mark is the reservation, once entered."""

    __slots__ = ()

    def _exit(self, exc_type: type[BaseException] | None) -> Any:
        """Give the block's tokens back if it failed and was asked to; return the refund to
        await (an awaited backend), or None."""
        reservation, self._mark = self._mark, None
        if isinstance(reservation, _ReservationBase) and self._refunds(exc_type):
            return reservation._give_back()
        return None


class _Take(_TakeBase):
    __slots__ = ()

    async def __aenter__(self) -> None:
        reservation = await self._limiter.reserve(self._tokens, timeout=self._timeout)
        await reservation
        self._mark = reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        refund = self._exit(exc_type)
        if refund is not None:
            await refund


class _SyncTake(_TakeBase):
    __slots__ = ()

    def __enter__(self) -> None:
        reservation = self._limiter.reserve(self._tokens, timeout=self._timeout)
        reservation.wait()
        self._mark = reservation

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc_type)


if TYPE_CHECKING:  # mypy proves that the views implement the contract
    from .contract import AsyncLimiter, AsyncReservation, SyncLimiter, SyncReservation

    def _conforms(
        a: KeyedView, s: SyncKeyedView, ar: KeyedReservation, sr: SyncKeyedReservation
    ) -> None:
        _a: AsyncLimiter[Tokens, dict[str, float]] = a
        _s: SyncLimiter[Tokens, dict[str, float]] = s
        _ar: AsyncReservation = ar
        _sr: SyncReservation = sr
