"""The contract every limiter honours, written down as ``typing.Protocol`` classes.

Two families, by how a caller waits:

* ``AsyncLimiter``: asyncio. Every method that may talk to a backend is a coroutine in every
  implementation (``TokenBucket`` in memory, ``RedisTokenBucket`` at a server), so moving from
  one to the other never turns ``if await limiter.try_acquire():`` into something else. The
  in-memory limiters add synchronous shortcuts under names of their own (``try_acquire_nowait``,
  ``refund_nowait``...), as ``asyncio.Queue`` has ``get`` and ``get_nowait``; they are not part
  of the contract.
* ``SyncLimiter``: blocking, for threads (``SyncTokenBucket``, ``SyncRedisTokenBucket``).

Each family has a single-limit form (``AsyncBucket``/``SyncBucket``: a cost is an int) and a
composite form (``AsyncComposite``/``SyncComposite``: several named limits, a cost is an int
or a mapping of limit name to tokens). Within a form every implementation has the same
methods, parameters, errors and statistics fields. What only some implementations offer is
outside the protocols and says so in its type: ``priority=`` exists on the in-memory limiters
only (the Redis ones serve in arrival order at the server, and passing ``priority`` to them is
a ``TypeError``, which mypy reports).

Errors, everywhere: ``AcquireTimeout`` (a ``TimeoutError``) when a timeout cannot be met,
``LimiterClosed`` after ``close()``, ``BackendUnavailable`` when a shared backend fails under
the fail-closed policy, ``ValueError``/``TypeError`` for bad arguments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from ._gcra import Limit
from ._rate import RateLike
from ._scheduler import Statistics

__all__ = [
    "AsyncBucket",
    "AsyncComposite",
    "AsyncLimiter",
    "AsyncReservation",
    "CompositeCost",
    "SyncBucket",
    "SyncComposite",
    "SyncLimiter",
    "SyncReservation",
]

P = ParamSpec("P")
R = TypeVar("R")
C_contra = TypeVar("C_contra", contravariant=True)  # what a call costs
A_co = TypeVar("A_co", covariant=True)  # tokens, as refund() and available() report them

CompositeCost = int | Mapping[str, int]
"""A composite's cost: ``n`` (n of each unweighted limit, its weight of a weighted one) or
``{"requests": 1, "tokens": 1500}`` (unnamed limits: 0)."""


class AsyncReservation(Protocol):
    """A place in an asyncio limiter's queue: ``await`` it for the grant.

    ``cancel()`` withdraws it: a queued reservation leaves the queue having consumed nothing; a
    granted one not yet awaited gives its tokens back (as far as that is still correct). Once
    ``await reservation`` has returned, the tokens are in use and ``cancel()`` does nothing.
    """

    @property
    def delay(self) -> float:
        """The wait (seconds) expected when it was made."""
        ...

    @property
    def granted(self) -> bool:
        """True once the tokens are granted."""
        ...

    @property
    def cancelled(self) -> bool:
        """True after cancel(), a timeout or close()."""
        ...

    def cancel(self) -> None:
        """Withdraw the reservation (see the class); idempotent."""
        ...

    def __await__(self) -> Generator[Any, None, None]: ...


class SyncReservation(Protocol):
    """A place in a blocking limiter's queue: ``wait()`` for the grant (see AsyncReservation)."""

    @property
    def delay(self) -> float:
        """The wait (seconds) expected when it was made."""
        ...

    @property
    def granted(self) -> bool:
        """True once the tokens are granted."""
        ...

    @property
    def cancelled(self) -> bool:
        """True after cancel(), a timeout or close()."""
        ...

    def cancel(self) -> None:
        """Withdraw the reservation; does nothing once ``wait()`` has returned."""
        ...

    def wait(self) -> None:
        """Block until granted; raises AcquireTimeout or LimiterClosed."""
        ...


class AsyncLimiter(Protocol[C_contra, A_co]):
    """An asyncio rate limiter: FIFO waiting, timeouts, tries, reservations, settling.

    ========================  ==========================================================
    ``await acquire(n)``      waits its turn until n tokens are granted; returns True
    ``await try_acquire(n)``  never waits: True if granted now (never overtakes a waiter)
    ``await reserve(n)``      queues now; the reservation's ``delay``, ``await``, ``cancel``
    ``await refund(n)``       gives unused tokens back; returns how many went back
    ``await charge(n)``       takes n now, even into debt (a cost known after the call)
    ``async with limiter``    one token; ``take(n, refund_on_error=)`` for n
    ``@limiter``              one token per call of an async function; ``limit(n)`` for n
    ========================  ==========================================================
    """

    async def acquire(self, tokens: C_contra = ..., *, timeout: float | None = None) -> bool:
        """Wait until ``tokens`` are granted, in arrival order; return True.

        Raises AcquireTimeout (nothing consumed) if ``timeout`` seconds cannot do, at once
        when the plan already says so. Cancelled while waiting, it consumes nothing.
        """
        ...

    async def try_acquire(self, tokens: C_contra = ...) -> bool:
        """Take ``tokens`` if they can be granted now; never waits for them."""
        ...

    async def reserve(
        self, tokens: C_contra = ..., *, timeout: float | None = None
    ) -> AsyncReservation:
        """Queue for ``tokens`` now and return the reservation; AcquireTimeout past ``timeout``."""
        ...

    async def refund(self, tokens: C_contra) -> A_co:
        """Give back ``tokens`` taken and unused; return how many went back."""
        ...

    async def charge(self, tokens: C_contra) -> None:
        """Take ``tokens`` now without waiting, even into debt."""
        ...

    async def available(self) -> A_co:
        """Return the tokens available now (negative while in debt)."""
        ...

    async def full_in(self) -> float:
        """Return seconds until the limiter is full again (0.0 when full)."""
        ...

    def take(
        self,
        tokens: C_contra = ...,
        *,
        refund_on_error: bool = False,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[None]:
        """Return an async context manager that acquires ``tokens`` on entry."""
        ...

    def limit(
        self, tokens: C_contra = ..., *, timeout: float | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Return a decorator: each call of the async function acquires ``tokens`` first."""
        ...

    def __call__(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate an async function: each call acquires one token first."""
        ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def statistics(self) -> Statistics:
        """Return a snapshot of this process's counters."""
        ...

    def close(self) -> None:
        """Refuse every later call; wake every waiter with LimiterClosed. Idempotent."""
        ...

    async def aclose(self) -> None:
        """Close, and release what the limiter holds (a client it made, say)."""
        ...

    @property
    def closed(self) -> bool:
        """True after close()."""
        ...


class SyncLimiter(Protocol[C_contra, A_co]):
    """The blocking twin of AsyncLimiter: the same verbs, blocking the calling thread."""

    def acquire(self, tokens: C_contra = ..., *, timeout: float | None = None) -> bool:
        """Block until ``tokens`` are granted, in arrival order; return True."""
        ...

    def try_acquire(self, tokens: C_contra = ...) -> bool:
        """Take ``tokens`` if they can be granted now; never blocks for them."""
        ...

    def reserve(self, tokens: C_contra = ..., *, timeout: float | None = None) -> SyncReservation:
        """Queue for ``tokens`` now and return the reservation; AcquireTimeout past ``timeout``."""
        ...

    def refund(self, tokens: C_contra) -> A_co:
        """Give back ``tokens`` taken and unused; return how many went back."""
        ...

    def charge(self, tokens: C_contra) -> None:
        """Take ``tokens`` now without waiting, even into debt."""
        ...

    def available(self) -> A_co:
        """Return the tokens available now (negative while in debt)."""
        ...

    def full_in(self) -> float:
        """Return seconds until the limiter is full again (0.0 when full)."""
        ...

    def take(
        self,
        tokens: C_contra = ...,
        *,
        refund_on_error: bool = False,
        timeout: float | None = None,
    ) -> AbstractContextManager[None]:
        """Return a context manager that acquires ``tokens`` on entry."""
        ...

    def limit(
        self, tokens: C_contra = ..., *, timeout: float | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Return a decorator: each call of the function acquires ``tokens`` first."""
        ...

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function: each call acquires one token first."""
        ...

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def statistics(self) -> Statistics:
        """Return a snapshot of this process's counters."""
        ...

    def close(self) -> None:
        """Refuse every later call; wake every waiter with LimiterClosed. Idempotent."""
        ...

    @property
    def closed(self) -> bool:
        """True after close()."""
        ...


class AsyncBucket(AsyncLimiter[int, float], Protocol):
    """One token bucket, asyncio: ``TokenBucket`` or ``RedisTokenBucket``."""

    @property
    def rate(self) -> Any:
        """The rate (a ``Rate``)."""
        ...

    @property
    def capacity(self) -> int:
        """The burst size."""
        ...

    async def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change rate and capacity now; the balance carries over, waiters are re-planned."""
        ...


class SyncBucket(SyncLimiter[int, float], Protocol):
    """One token bucket, blocking: ``SyncTokenBucket`` or ``SyncRedisTokenBucket``."""

    @property
    def rate(self) -> Any:
        """The rate (a ``Rate``)."""
        ...

    @property
    def capacity(self) -> int:
        """The burst size."""
        ...

    def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change rate and capacity now; the balance carries over, waiters are re-planned."""
        ...


class AsyncComposite(AsyncLimiter[CompositeCost, dict[str, float]], Protocol):
    """Several limits at once, asyncio: ``CompositeLimiter`` or ``RedisCompositeLimiter``."""

    @property
    def limits(self) -> dict[str, Limit]:
        """The limits by name, as they are now."""
        ...

    async def set_rate(self, name: str, rate: RateLike, capacity: int | None = None) -> None:
        """Change one limit's rate and capacity now, carrying its balance over."""
        ...


class SyncComposite(SyncLimiter[CompositeCost, dict[str, float]], Protocol):
    """Several limits at once, blocking: ``SyncCompositeLimiter``, ``SyncRedisCompositeLimiter``."""

    @property
    def limits(self) -> dict[str, Limit]:
        """The limits by name, as they are now."""
        ...

    def set_rate(self, name: str, rate: RateLike, capacity: int | None = None) -> None:
        """Change one limit's rate and capacity now, carrying its balance over."""
        ...


if TYPE_CHECKING:
    # Static proof that the in-memory limiters honour the contract (mypy only; the Redis
    # ones have theirs in ratekeeper/redis/_conformance.py).
    from ._asyncio import CompositeLimiter, Reservation, TokenBucket
    from ._threading import SyncCompositeLimiter, SyncTokenBucket
    from ._threading import SyncReservation as _SyncReservation

    def _async_bucket(limiter: TokenBucket) -> AsyncBucket:
        return limiter

    def _async_composite(limiter: CompositeLimiter) -> AsyncComposite:
        return limiter

    def _sync_bucket(limiter: SyncTokenBucket) -> SyncBucket:
        return limiter

    def _sync_composite(limiter: SyncCompositeLimiter) -> SyncComposite:
        return limiter

    def _async_reservation(reservation: Reservation) -> AsyncReservation:
        return reservation

    def _sync_reservation(reservation: _SyncReservation) -> SyncReservation:
        return reservation
