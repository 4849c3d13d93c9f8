"""Windows at a Redis/Valkey server: ``window.lua`` (sliding) and ``fixed.lua`` (fixed,
aligned to the server's clock), one atomic call per decision.

Each window's arithmetic is the core's (``ratekeeper._window.SlidingLog``,
``ratekeeper._fixed.FixedCounter``), written once more in Lua and held to it by a
differential test; the server's clock (TIME, microseconds since the Unix epoch) times it, so
every process sharing the key counts the same tokens. The two scripts take the same
operations and give the same replies, so one pair of front ends serves both. What the two
front ends share (the limit, the script's arguments and replies, the counters) is here, in
``WindowCore``; the asyncio and the blocking limiter differ only in how they call the server
and how they wait.

A caller that must wait reserves its slot at the server in the same call (its tokens are
recorded at the time it may use them) and then sleeps: no polling, and callers are served
in the order their calls reach the server. A server failure raises ``BackendUnavailable``
(these limiters fail closed; there is no local fallback for a window).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from importlib import resources
from types import TracebackType
from typing import Any, ClassVar, ParamSpec, TypeVar

from redis.exceptions import NoScriptError, RedisError

from .._asyncio import check_timeout
from .._errors import AcquireTimeout, BackendUnavailable, LimiterClosed
from .._gcra import check_capacity, check_tokens, signed_seconds_to_ns
from .._rate import Rate, RateLike
from .._verbs import AsyncVerbs, SyncVerbs
from .._window import window_ns
from ._async import _resolve_client as _async_client
from ._common import RedisStatistics, check_key, check_seconds
from ._sync import _resolve_client as _sync_client

__all__ = [
    "FIXED_SCRIPT",
    "WINDOW_SCRIPT",
    "RedisFixedWindow",
    "RedisSlidingWindow",
    "RedisWindowReservation",
    "SyncRedisFixedWindow",
    "SyncRedisSlidingWindow",
    "SyncRedisWindowReservation",
]

P = ParamSpec("P")
R = TypeVar("R")

WINDOW_SCRIPT: str = resources.files(__package__).joinpath("window.lua").read_text("utf-8")
"""The sliding window's Lua source; its opening comment is the KEYS/ARGV/return contract."""
FIXED_SCRIPT: str = resources.files(__package__).joinpath("fixed.lua").read_text("utf-8")
"""The fixed window's Lua source (the same operations and replies, aligned by the server)."""

_NO_MARK = -1
# The script's ops, and its argument "" (read the time at the server), as the bytes sent.
_RESERVE, _CHARGE, _REFUND, _STATE, _SERVER_TIME = b"R", b"C", b"F", b"S", b""
_ONE = 1  # the default token count, recognised by identity on the hot path
_FAILURES = (RedisError, OSError, TimeoutError)


class WindowCore:
    """The limit, the script's arguments and replies, and the counters of one window."""

    _resolve: Callable[[Any, float], tuple[Any, bool]]  # the front end's client check
    _source: ClassVar[str] = WINDOW_SCRIPT  # the script, by kind of window

    def __init__(
        self,
        client: Any,
        key: str,
        rate: RateLike,
        capacity: int | None = None,
        *,
        prefix: str = "ratekeeper:",
        timeout: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.key = prefix + check_key(key, prefix)
        self._key = self.key.encode()
        self._configure(Rate.of(rate), capacity)
        self._timeout = check_seconds(timeout, "timeout", allow_zero=False)
        self.name = name
        self._closed = False
        self._granted = self._granted_tokens = self._rejected = self._cancelled = 0
        self._waiting = self._waiting_tokens = 0
        self._refunded = 0.0
        self._total_wait_ns = self._max_wait_ns = 0
        self._backend_errors = self._requests = 0
        self._made = 0  # reservations made (their order among grants of one server time)
        self._client, self._owned = self._resolve(client, self._timeout)
        # register_script keeps the source to load it again on NOSCRIPT (after a restart or a
        # SCRIPT FLUSH); the calls themselves go straight to EVALSHA (see _eval).
        self._script = self._client.register_script(self._source)
        self._evalsha = ("EVALSHA", self._script.sha, 1, self._key)  # what each call starts with
        self._init_front()

    def _init_front(self) -> None:
        """Set up what the front end needs to wait (hook)."""

    def _configure(self, rate: Rate, capacity: int | None) -> None:
        capacity = check_capacity(rate.default_capacity if capacity is None else capacity)
        span_us = -(-window_ns(rate, capacity) // 1000)  # the server counts in us: round up
        if span_us >= 2**52:
            raise ValueError(f"a window of {span_us} us is too long for the server's arithmetic")
        self._rate, self._capacity, self._span_us = rate, capacity, span_us
        # The arguments as the bytes sent: the client passes bytes through unencoded.
        self._limit = [b"%d" % capacity, b"%d" % span_us, *self._alignment()]
        self._try_one: list[bytes | int] = [_SERVER_TIME, *self._limit, _RESERVE, b"1", b"0"]

    def _alignment(self) -> list[bytes]:
        """Return the script's arguments after N and T (hook: none for a sliding window)."""
        return []

    @property
    def rate(self) -> Rate:
        """The current rate (capacity tokens per window)."""
        return self._rate

    @property
    def capacity(self) -> int:
        """The most tokens any window may hold."""
        return self._capacity

    @property
    def window(self) -> float:
        """The window's length in seconds (rounded up to the server's microsecond)."""
        return self._span_us / 1e6

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    # -- the script's arguments and replies ------------------------------------------------

    def _args(self, op: bytes, *numbers: int) -> list[bytes | int]:
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        self._requests += 1
        return [_SERVER_TIME, *self._limit, op, *numbers]

    def _try_args(self, tokens: int) -> list[bytes | int]:
        """Return the arguments of a try: a reservation that may not wait."""
        if tokens is _ONE and not self._closed:
            self._requests += 1
            return self._try_one  # built once
        return self._args(_RESERVE, check_tokens(tokens, limit=self._capacity), 0)

    def _tried(self, reply: list[int], tokens: int) -> bool:
        """Count a try's reply; return whether it was granted."""
        if reply[1]:
            self._granted += 1
            self._granted_tokens += tokens
            return True
        self._rejected += 1
        return False

    def _reserve_args(self, tokens: int, timeout: float | None) -> tuple[int, list[bytes | int]]:
        tokens = check_tokens(tokens, limit=self._capacity)
        max_wait = check_timeout(timeout)
        max_us = -1 if max_wait is None else max_wait // 1000
        return tokens, self._args(_RESERVE, tokens, max_us)

    def _granted_at(self, reply: list[int], tokens: int, timeout: float | None) -> tuple[int, int]:
        """Count a reservation's reply; return (wait ns, mark), or raise AcquireTimeout."""
        _, status, wait_us, mark = reply
        if not status:
            self._rejected += 1
            raise AcquireTimeout(
                f"{tokens} token(s) would be granted in {wait_us / 1e6:.6f}s, beyond the "
                f"timeout of {timeout}s",
                wait_us / 1e6,
            )
        wait_ns = wait_us * 1000
        self._granted += 1
        self._granted_tokens += tokens
        self._total_wait_ns += wait_ns
        if wait_ns > self._max_wait_ns:
            self._max_wait_ns = wait_ns
        return wait_ns, mark

    def _refunded_by(self, reply: list[int]) -> float:
        back = float(reply[1])
        self._refunded += back
        return back

    def _failure(self, exc: BaseException) -> BackendUnavailable:
        self._backend_errors += 1
        return BackendUnavailable(f"{self!r}: the server call failed: {exc!r}")

    def statistics(self) -> RedisStatistics:
        """Return this process's counters (the window itself is shared)."""
        return RedisStatistics(
            granted=self._granted,
            granted_tokens=self._granted_tokens,
            rejected=self._rejected,
            timed_out=0,
            cancelled=self._cancelled,
            waiting=self._waiting,
            waiting_tokens=self._waiting_tokens,
            refunded_tokens=self._refunded,
            total_wait=self._total_wait_ns / 1e9,
            max_wait=self._max_wait_ns / 1e9,
            backend_errors=self._backend_errors,
            server_requests=self._requests,
            round_trips=self._requests,
        )

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        closed = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__}{name} {self.key!r} {self._rate} capacity={self._capacity} "
            f"window={self.window:g}s waiting={self._waiting}{closed}>"
        )


def _parse(reply: bytes | str) -> list[int]:
    return list(map(int, reply.split()))


class _ReservationState:
    """A grant at the server: used ``delay`` seconds after it was made, or given back."""

    __slots__ = ("_due", "_limiter", "_mark", "_order", "_state", "delay", "tokens")

    def __init__(self, limiter: Any, tokens: int, wait_ns: int, mark: int) -> None:
        limiter._made += 1
        self._order = (mark, limiter._made)  # the server's time, then the order of replies
        self._limiter = limiter
        self.tokens = tokens
        self.delay = wait_ns / 1e9
        self._mark = mark
        self._due = time.monotonic() + self.delay
        self._state = 0  # 0 live, 1 cancelled, 2 in use

    @property
    def granted(self) -> bool:
        """True once its time has come, until cancel()."""
        return self._state == 2 or (self._state == 0 and time.monotonic() >= self._due)

    @property
    def cancelled(self) -> bool:
        """True after cancel() (or close() while it was waited on)."""
        return self._state == 1

    def _withdrawn(self) -> bool:
        """Mark it cancelled; return True if its tokens are to go back."""
        if self._state != 0:
            return False
        self._state = 1
        self._limiter._cancelled += 1
        return True

    def __repr__(self) -> str:
        state = ("live", "cancelled", "in use")[self._state]
        return f"<{type(self).__name__} tokens={self.tokens} delay={self.delay:.6f}s {state}>"


# -- asyncio ------------------------------------------------------------------------------


class RedisWindowReservation(_ReservationState):
    """A grant from ``RedisSlidingWindow.reserve()`` (or a fixed window's): ``await`` it to
    sleep until its time; ``cancel()`` gives its tokens back unless it has been awaited."""

    __slots__ = ()
    _limiter: _AsyncWindow

    def __await__(self) -> Generator[Any, None, None]:
        return self._limiter._sleep(self).__await__()

    def cancel(self) -> None:
        """Give the tokens back (sent before this limiter's next call). Idempotent."""
        if self._withdrawn():
            self._limiter._give_back(self.tokens, self._mark)


class _AsyncWindow(WindowCore, AsyncVerbs):
    """The asyncio front end of a window at a server (the script says which kind)."""

    _resolve = staticmethod(_async_client)

    def _init_front(self) -> None:
        self._pending: list[tuple[int, int]] = []  # refunds to send before the next call
        # sleeping reservations' futures -> their order (server time, then arrival)
        self._sleepers: dict[asyncio.Future[None], tuple[int, int]] = {}
        self._turn_future: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _eval(self, args: list[bytes | int]) -> bytes | str:
        try:
            reply: bytes | str = await self._client.execute_command(*self._evalsha, *args)
        except NoScriptError:
            reply = await self._script(keys=[self._key], args=args)  # loads it again
        return reply

    async def _call(self, args: list[bytes | int]) -> list[int]:
        if self._pending:
            await self._send_refunds()
        try:
            return _parse(await self._eval(args))
        except _FAILURES as exc:
            raise self._failure(exc) from exc

    async def _send_refunds(self) -> None:
        while self._pending:
            tokens, mark = self._pending.pop(0)
            try:
                self._refunded_by(_parse(await self._eval(self._args(_REFUND, tokens, mark))))
            except (*_FAILURES, LimiterClosed):
                self._backend_errors += 1  # the tokens stay counted: the safe side

    def _turn(self) -> asyncio.Future[None]:
        """Return a future resolved when the next sleeper leaves."""
        if self._turn_future is None or self._turn_future.done():
            self._turn_future = asyncio.get_running_loop().create_future()
        return self._turn_future

    def _pass_turn(self) -> None:
        turn = self._turn_future
        if turn is not None and not turn.done():
            if self._closed:
                turn.set_exception(LimiterClosed(f"{self!r} was closed while waiting"))
                turn.exception()
            else:
                turn.set_result(None)

    def _give_back(self, tokens: int, mark: int) -> None:
        self._pending.append((tokens, mark))
        task = asyncio.get_running_loop().create_task(self._send_refunds())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, reservation: RedisWindowReservation) -> None:
        left = reservation._due - time.monotonic()
        if reservation._state == 0 and (left > 0 or self._sleepers):
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            handle = loop.call_later(max(left, 0), _wake, future)
            self._sleepers[future] = reservation._order
            self._waiting += 1
            self._waiting_tokens += reservation.tokens
            try:
                await future
                # Grants of one server time wake in the order the server made them.
                while any(o < reservation._order for o in self._sleepers.values()):
                    await asyncio.shield(self._turn())
            except asyncio.CancelledError:
                reservation.cancel()
                raise
            except LimiterClosed:
                reservation._state = 1
                raise
            finally:
                handle.cancel()
                del self._sleepers[future]
                self._waiting -= 1
                self._waiting_tokens -= reservation.tokens
                self._pass_turn()
        if reservation._state == 1:
            if self._closed:
                raise LimiterClosed(f"{self!r} was closed while waiting")
            raise asyncio.CancelledError  # as a cancelled queued reservation in memory
        reservation._state = 2

    # -- the verbs -------------------------------------------------------------------------

    async def reserve(
        self, tokens: int = 1, *, timeout: float | None = None
    ) -> RedisWindowReservation:
        """Reserve ``tokens`` at the server for the earliest time they fit; return the
        reservation (``delay``, awaitable, ``cancel()``).

        Raises AcquireTimeout (nothing consumed) if that is beyond ``timeout`` seconds,
        BackendUnavailable, LimiterClosed, ValueError/TypeError for bad arguments.
        """
        tokens, args = self._reserve_args(tokens, timeout)
        wait_ns, mark = self._granted_at(await self._call(args), tokens, timeout)
        return RedisWindowReservation(self, tokens, wait_ns, mark)

    async def acquire(self, tokens: int = 1, *, timeout: float | None = None) -> bool:
        """Wait until ``tokens`` are granted; return True (see ``reserve`` for the errors).

        Cancelled while sleeping, it gives its tokens back."""
        await (await self.reserve(tokens, timeout=timeout))
        return True

    async def try_acquire(self, tokens: int = 1) -> bool:
        """Take ``tokens`` if the window has room now; never waits."""
        return self._tried(await self._call(self._try_args(tokens)), tokens)

    async def refund(self, tokens: int) -> float:
        """Give back ``tokens`` still in the window (a sliding window's oldest first, a
        fixed window's off the current count); return how many went back. The caller
        vouches that they were taken and not used."""
        tokens = check_tokens(tokens)
        return self._refunded_by(await self._call(self._args(_REFUND, tokens, _NO_MARK)))

    async def charge(self, tokens: int) -> None:
        """Record ``tokens`` now, past the capacity if need be (later callers wait it off)."""
        tokens = check_tokens(tokens)
        await self._call(self._args(_CHARGE, tokens))
        self._granted_tokens += tokens

    async def available(self) -> float:
        """Return the tokens the window has room for now (negative while in debt)."""
        reply = await self._call(self._args(_STATE))
        return float(self._capacity - reply[1])

    async def full_in(self) -> float:
        """Return seconds until the window is empty (a fixed window: until one starts
        empty)."""
        reply = await self._call(self._args(_STATE))
        return reply[2] / 1e6

    async def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the limit this process sends (capacity None: unchanged); the tokens in the
        window keep their times. Raises ValueError/TypeError for a bad rate or capacity."""
        self._configure(Rate.of(rate), self._capacity if capacity is None else capacity)

    def take(
        self, tokens: int = 1, *, refund_on_error: bool = False, timeout: float | None = None
    ) -> _AsyncTake:
        """Return an async context manager that acquires ``tokens`` on entry (given back if
        the block raises an Exception and ``refund_on_error`` is True)."""
        check_tokens(tokens, limit=self._capacity)
        return _AsyncTake(self, tokens, refund_on_error, timeout)

    def limit(
        self, tokens: int = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Return a decorator for async functions: each call acquires ``tokens`` first."""
        check_tokens(tokens, limit=self._capacity)
        check_timeout(timeout)

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"{func!r} is not an async function")

            @functools.wraps(func)
            async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                await self.acquire(tokens, timeout=timeout)
                return await func(*args, **kwargs)

            return limited

        return decorate

    def close(self) -> None:
        """Refuse later calls and wake every sleeper with LimiterClosed. Idempotent."""
        self._closed = True
        for future in list(self._sleepers):
            if not future.done():
                future.set_exception(LimiterClosed(f"{self!r} was closed while waiting"))
        self._pass_turn()

    async def aclose(self) -> None:
        """Close, send the refunds still due, and close the client if this limiter made it."""
        self.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owned:
            await self._client.aclose()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _AsyncTake:
    __slots__ = ("_limiter", "_refund_on_error", "_reservation", "_timeout", "_tokens")

    def __init__(
        self, limiter: _AsyncWindow, tokens: int, refund: bool, timeout: float | None
    ) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._refund_on_error = refund
        self._timeout = timeout
        self._reservation: RedisWindowReservation | None = None

    async def __aenter__(self) -> None:
        self._reservation = await self._limiter.reserve(self._tokens, timeout=self._timeout)
        await self._reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reservation = self._reservation
        if (
            self._refund_on_error
            and reservation is not None
            and exc_type is not None
            and issubclass(exc_type, Exception)
        ):
            limiter = self._limiter
            limiter._pending.append((reservation.tokens, reservation._mark))
            await limiter._send_refunds()


# -- threads ------------------------------------------------------------------------------


class SyncRedisWindowReservation(_ReservationState):
    """A grant from ``SyncRedisSlidingWindow.reserve()`` (or a fixed window's): ``wait()``
    sleeps until its time; ``cancel()`` gives its tokens back unless it has been waited for."""

    __slots__ = ()
    _limiter: _SyncWindow

    def wait(self) -> None:
        """Sleep until the tokens may be used. Raises LimiterClosed if closed meanwhile."""
        self._limiter._sleep(self)

    def cancel(self) -> None:
        """Give the tokens back now (a failure is counted, never raised). Idempotent."""
        if self._withdrawn():
            self._limiter._give_back(self.tokens, self._mark)


class _SyncWindow(WindowCore, SyncVerbs):
    """The blocking front end of a window at a server, on ``redis.Redis``."""

    _resolve = staticmethod(_sync_client)

    def _init_front(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._sleeping: dict[int, tuple[int, int]] = {}  # id(reservation) -> its order

    def _eval(self, args: list[bytes | int]) -> bytes | str:
        try:
            reply: bytes | str = self._client.execute_command(*self._evalsha, *args)
        except NoScriptError:
            reply = self._script(keys=[self._key], args=args)  # loads it again
        return reply

    def _call(self, args: list[bytes | int]) -> list[int]:
        try:
            return _parse(self._eval(args))
        except _FAILURES as exc:
            with self._lock:
                raise self._failure(exc) from exc

    def _give_back(self, tokens: int, mark: int) -> None:
        try:
            reply = self._call(self._args(_REFUND, tokens, mark))
        except (BackendUnavailable, LimiterClosed):
            return  # counted; the tokens stay counted: the safe side
        with self._lock:
            self._refunded_by(reply)

    def _sleep(self, reservation: SyncRedisWindowReservation) -> None:
        with self._lock:
            self._waiting += 1
            self._waiting_tokens += reservation.tokens
            try:
                self._sleeping[id(reservation)] = reservation._order
                while reservation._state == 0 and not self._closed:
                    left: float | None = reservation._due - time.monotonic()
                    if left is not None and left <= 0:
                        # Grants of one server time go in the order the server made them.
                        order = reservation._order
                        if not any(o < order for o in self._sleeping.values()):
                            break
                        left = None
                    self._wake.wait(left)
            finally:
                del self._sleeping[id(reservation)]
                self._wake.notify_all()
                self._waiting -= 1
                self._waiting_tokens -= reservation.tokens
            if reservation._state == 0 and self._closed:
                reservation._state = 1
            if reservation._state == 1:
                raise LimiterClosed(f"{self!r}: the reservation was cancelled or closed")
            reservation._state = 2

    def reserve(
        self, tokens: int = 1, *, timeout: float | None = None
    ) -> SyncRedisWindowReservation:
        """Reserve ``tokens`` at the server (see RedisSlidingWindow.reserve)."""
        tokens, args = self._reserve_args(tokens, timeout)
        reply = self._call(args)
        with self._lock:
            wait_ns, mark = self._granted_at(reply, tokens, timeout)
            return SyncRedisWindowReservation(self, tokens, wait_ns, mark)

    def acquire(self, tokens: int = 1, *, timeout: float | None = None) -> bool:
        """Block until ``tokens`` are granted; return True (see RedisSlidingWindow)."""
        self.reserve(tokens, timeout=timeout).wait()
        return True

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take ``tokens`` if the window has room now; never blocks for them."""
        reply = self._call(self._try_args(tokens))
        with self._lock:
            return self._tried(reply, tokens)

    def refund(self, tokens: int) -> float:
        """Give back ``tokens`` still in the window, the oldest first (see the async twin)."""
        reply = self._call(self._args(_REFUND, check_tokens(tokens), _NO_MARK))
        with self._lock:
            return self._refunded_by(reply)

    def charge(self, tokens: int) -> None:
        """Record ``tokens`` now, past the capacity if need be."""
        tokens = check_tokens(tokens)
        self._call(self._args(_CHARGE, tokens))
        with self._lock:
            self._granted_tokens += tokens

    def available(self) -> float:
        """Return the tokens the window has room for now (negative while in debt)."""
        return float(self._capacity - self._call(self._args(_STATE))[1])

    def full_in(self) -> float:
        """Return seconds until the window is empty (a fixed window: until one starts
        empty)."""
        return self._call(self._args(_STATE))[2] / 1e6

    def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the limit this process sends (see RedisSlidingWindow.set_rate)."""
        self._configure(Rate.of(rate), self._capacity if capacity is None else capacity)

    def take(
        self, tokens: int = 1, *, refund_on_error: bool = False, timeout: float | None = None
    ) -> _SyncTake:
        """Return a context manager that acquires ``tokens`` on entry (given back if the
        block raises an Exception and ``refund_on_error`` is True)."""
        check_tokens(tokens, limit=self._capacity)
        return _SyncTake(self, tokens, refund_on_error, timeout)

    def limit(
        self, tokens: int = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Return a decorator: each call acquires ``tokens`` first."""
        check_tokens(tokens, limit=self._capacity)
        check_timeout(timeout)

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(func)
            def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                self.acquire(tokens, timeout=timeout)
                return func(*args, **kwargs)

            return limited

        return decorate

    def close(self) -> None:
        """Refuse later calls, wake sleepers with LimiterClosed, close an owned client."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if self._owned:
            self._client.close()


class _SyncTake:
    __slots__ = ("_limiter", "_refund_on_error", "_reservation", "_timeout", "_tokens")

    def __init__(
        self, limiter: _SyncWindow, tokens: int, refund: bool, timeout: float | None
    ) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._refund_on_error = refund
        self._timeout = timeout
        self._reservation: SyncRedisWindowReservation | None = None

    def __enter__(self) -> None:
        self._reservation = self._limiter.reserve(self._tokens, timeout=self._timeout)
        self._reservation.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reservation = self._reservation
        if (
            self._refund_on_error
            and reservation is not None
            and exc_type is not None
            and issubclass(exc_type, Exception)
        ):
            self._limiter._give_back(reservation.tokens, reservation._mark)


# -- the public limiters ------------------------------------------------------------------------


class RedisSlidingWindow(_AsyncWindow):
    """A sliding window kept at a Redis/Valkey server, shared by every process naming it.

    At most ``capacity`` tokens in any window of ``capacity / rate`` seconds, exactly, timed
    by the server's clock: ``RedisSlidingWindow(client, "api", "100/minute")``. The verbs and
    their meaning are SlidingWindow's (``acquire``, ``try_acquire``, ``reserve``, ``take``,
    ``refund``, ``charge``, ``available``, ``full_in``, decorators, ``statistics``,
    ``close``), served in the order calls reach the server. ``set_rate`` changes the limit
    this process sends with its calls (other processes keep theirs until they change it).

    ``client``: a ``redis.asyncio.Redis``, or a URL (then the limiter owns the client;
    ``aclose()`` closes it). The list stored at ``prefix + key`` holds at most
    ``capacity + 1`` elements and expires at most a quarter window after the window is
    empty. A server failure raises ``BackendUnavailable``. Raises ValueError/TypeError at
    once for a bad rate, capacity, key or URL.
    """


class SyncRedisSlidingWindow(_SyncWindow):
    """The blocking twin of RedisSlidingWindow, on ``redis.Redis`` (same verbs, same key)."""


class _Fixed(WindowCore):
    """What a fixed window adds: the script, and the offset it aligns the server's time by."""

    _source = FIXED_SCRIPT

    def __init__(
        self,
        client: Any,
        key: str,
        rate: RateLike,
        capacity: int | None = None,
        *,
        utc_offset: float = 0,
        prefix: str = "ratekeeper:",
        timeout: float = 1.0,
        name: str | None = None,
    ) -> None:
        # Whole microseconds, as the server counts (rounded towards zero).
        offset_ns = signed_seconds_to_ns(utc_offset, "utc_offset")
        self._offset_us = -(-offset_ns // 1000) if offset_ns < 0 else offset_ns // 1000
        super().__init__(client, key, rate, capacity, prefix=prefix, timeout=timeout, name=name)

    def _alignment(self) -> list[bytes]:
        return [b"%d" % self._offset_us]


class RedisFixedWindow(_Fixed, _AsyncWindow):
    """A fixed window kept at a Redis/Valkey server, shared by every process naming it.

    At most ``capacity`` tokens in each window of ``capacity / rate`` seconds aligned to the
    server's clock in UTC: ``RedisFixedWindow(client, "api", "1000/day")`` resets at 00:00
    UTC by the server's clock (``utc_offset``, in seconds east of UTC, moves the boundaries
    to a time zone). The verbs and their meaning are FixedWindow's, served in the order calls
    reach the server; up to twice the capacity can go across a boundary. The key at
    ``prefix + key`` is a hash of the window's number, its count and the limit it was counted
    under, and expires when a window starts that holds nothing (at the next boundary, unless
    in debt). ``set_rate`` changes the limit
    this process sends. A server failure raises ``BackendUnavailable``. Raises
    ValueError/TypeError at once for a bad rate, capacity, offset, key or URL.
    """


class SyncRedisFixedWindow(_Fixed, _SyncWindow):
    """The blocking twin of RedisFixedWindow, on ``redis.Redis`` (same verbs, same key)."""
