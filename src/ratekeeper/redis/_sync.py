"""The blocking Redis limiters, for threads: the asyncio ones' decisions, waited on in threads.

Coalescing. Threads calling through one client share round trips: a thread that finds no
call in flight sends its request at once, alone; threads that arrive meanwhile queue, and
when the call returns the first of them takes the lead and sends the whole queue as one
script call (one batch in flight per client), then hands each its reply and passes the lead
on. A caller that must wait has its slot reserved in its call and then sleeps on an event
of its own, so close() can wake it. Calls are bounded by the client's socket timeout: a
client made from a URL gets ``timeout``; a client passed in must have a ``socket_timeout``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import key_slot  # type: ignore[attr-defined]
from redis.exceptions import NoScriptError
from redis.retry import Retry

from .._asyncio import check_timeout
from .._errors import BackendUnavailable, LimiterClosed
from .._fork import track
from .._rate import RateLike
from .._scheduler import TakeBlock
from .._verbs import SyncVerbs
from ._common import (
    CANCELLED,
    IN_USE,
    LIVE,
    BucketParts,
    CompositeParts,
    Core,
    RedisStatistics,
    ReservationBase,
    ServerFailure,
    classify,
    describe_client,
    direct_for,
    take_replies,
    wire,
)
from ._script import DONE, SCRIPT, TAKE_SCRIPT, Request, parse, take_wire

MAX_BATCH = 256

__all__ = ["SyncRedisCompositeLimiter", "SyncRedisReservation", "SyncRedisTokenBucket"]

P = ParamSpec("P")
R = TypeVar("R")


def _resolve_client(client: Any, timeout: float) -> tuple[Any, bool]:
    """Return (client, owned) for a client or a URL; raise TypeError/ValueError."""
    if isinstance(client, str):
        try:
            made = redis.Redis.from_url(
                client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),  # reconnect once, at once
            )
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {client!r}: {exc}") from None
        return made, True
    if isinstance(client, redis.RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
    elif isinstance(client, redis.Redis):
        kwargs = client.connection_pool.connection_kwargs
    else:
        raise TypeError(
            "client must be a redis.Redis, a redis.RedisCluster or a redis:// URL, not "
            f"{type(client).__name__}; for redis.asyncio clients use RedisTokenBucket"
        )
    if kwargs.get("socket_timeout") is None:
        raise ValueError(
            "every server call needs a timeout: create the client with socket_timeout=... "
            "(and socket_connect_timeout=...), or pass a URL and timeout= instead"
        )
    return client, False


class _Waiter:
    """A queued thread: woken with its reply (or error), or to take the lead."""

    __slots__ = ("error", "event", "lead", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lead = False
        self.reply: list[int] | None = None
        self.error: ServerFailure | None = None


class _SyncDispatcher:
    """Sends the decisions of every blocking limiter on one client, batching concurrent ones."""

    def __init__(self, client: Any, retry_interval: float) -> None:
        # register_script keeps the sha and reloads the script on NOSCRIPT (restart, flush).
        self.script = client.register_script(SCRIPT)
        self.take_script = client.register_script(TAKE_SCRIPT)  # its common case, short
        self.cluster = isinstance(client, redis.RedisCluster)
        self.fast = direct_for(client)  # None: calls go through redis-py's execute_command
        self.where = describe_client(client)
        self.retry_interval = retry_interval
        self.lock = threading.Lock()
        self.busy = False  # a call is in flight (its sender holds the lead)
        self.pending: list[Request] = []
        self.down_until = 0.0
        track(self)

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self.lock,)

    def _after_fork(self) -> None:
        """In a forked child: a new lock, no call in flight, no queued thread (they were
        the parent's). redis-py gives the child new connections by itself."""
        self.lock = threading.Lock()
        self.busy = False
        self.pending = []

    def call(self, request: Request) -> list[int]:
        """Return the script's reply to ``request``; raise ServerFailure if the call failed."""
        with self.lock:
            alone = not self.busy
            if alone:
                self.busy = True
            else:
                waiter = request.future = _Waiter()
                self.pending.append(request)
        if alone:
            try:
                return self.send([request])[0]
            finally:
                self.hand_off()
        waiter.event.wait()
        if waiter.lead:
            self.serve()  # the batch includes this thread's own request
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None
        return waiter.reply

    def call_group(self, requests: list[Request]) -> tuple[list[list[int] | None], list[int]]:
        """Return the replies to reads of a key and to a decision on it (last), sent together.

        As ``call``, for requests that queue side by side and share one event: the thread
        wakes when any of them is answered or handed the lead. Returns (the reads' replies,
        None for a read whose batch failed; the decision's reply). Raises ServerFailure if
        the decision's call failed.
        """
        with self.lock:
            alone = not self.busy
            if alone:
                self.busy = True
            else:
                event = threading.Event()
                waiters = []
                for request in requests:
                    waiter = request.future = _Waiter()
                    waiter.event = event
                    waiters.append(waiter)
                self.pending.extend(requests)
        if alone:
            try:
                replies = self.send(requests)
            finally:
                self.hand_off()
            return list(replies[:-1]), replies[-1]
        while True:
            event.wait()
            with self.lock:
                # The lead is handed (and its event set) under the lock, and a batch's
                # replies are all set before its events: so the event is cleared only while
                # nothing of this group is being answered, and no wake-up is lost.
                lead = any(w.lead for w in waiters)
                for w in waiters:
                    w.lead = False
                answered = all(w.reply is not None or w.error is not None for w in waiters)
                if not lead and not answered:
                    event.clear()  # the reads were answered in an earlier batch
            if lead:
                self.serve()
            elif answered:
                break
        decision = waiters[-1]
        if decision.error is not None:
            raise decision.error
        assert decision.reply is not None
        return [w.reply if w.error is None else None for w in waiters[:-1]], decision.reply

    def hand_off(self) -> None:
        """Pass the lead to the first queued thread, or let the next caller go alone."""
        with self.lock:
            if self.pending:
                waiter = self.pending[0].future
                waiter.lead = True
                waiter.event.set()
            else:
                self.busy = False

    def serve(self) -> None:
        """Send the queued requests as one batch, hand out the replies, pass the lead on."""
        with self.lock:
            batch = self.pending[:MAX_BATCH]
            del self.pending[:MAX_BATCH]
        try:
            replies = self.send(batch)
        except ServerFailure as failure:
            for request in batch:
                request.future.error = failure
        else:
            for request, reply in zip(batch, replies, strict=True):
                request.future.reply = reply
        finally:
            for request in batch:
                request.future.event.set()
            self.hand_off()

    def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` once and return its reply: straight on a connection of the pool
        for a plain client (see Direct), else by redis-py; loaded again on NOSCRIPT."""
        fast = self.fast
        if fast is None:
            return script(keys, args)
        packed = fast.pack(script, keys, args)
        pool = fast.pool
        conn = pool.get_connection(*fast.name_args)
        try:
            return conn.retry.call_with_retry(
                lambda: _exchange(conn, packed), lambda error: conn.disconnect()
            )
        except NoScriptError:
            return script(keys, args)
        finally:
            pool.release(conn)

    def send(self, batch: list[Request]) -> list[list[int]]:
        """Make one script call (one per hash slot on a cluster) deciding ``batch``."""
        if self.down_until and time.monotonic() < self.down_until:
            raise ServerFailure(
                f"{self.where} failed a moment ago; the next try is in "
                f"{self.down_until - time.monotonic():.2f}s",
                True,
            )
        groups: list[list[Request]] = [batch]
        if self.cluster and len(batch) > 1:
            by_slot: dict[int, list[Request]] = {}
            for request in batch:
                slot = key_slot(request.items[0][0].key.encode())
                by_slot.setdefault(slot, []).append(request)
            groups = list(by_slot.values())
        replies: dict[int, list[int]] = {}
        try:
            for group in groups:
                owner = group[0].owner
                short = len(group) == 1 and not (owner is not None and owner._floors)
                take = take_wire(group[0]) if short else None
                # The short script's case: it answers, or leaves it to ours (an empty reply).
                # Not with slots booked ahead to send: only ours starts a lost key at them.
                values = [] if take is None else parse(self.run(self.take_script, *take))
                if take is not None and values:
                    keys = take[0]
                else:
                    keys, args = wire(group)
                    values = parse(self.run(self.script, keys, args))
                replies.update(zip(map(id, group), take_replies(values, keys, group), strict=True))
        except Exception as exc:
            failure = classify(exc, self.where)
            if failure.transient:
                self.down_until = time.monotonic() + self.retry_interval
            raise failure from exc
        self.down_until = 0.0
        owners = {}
        for request in batch:
            owners[id(request.owner)] = request.owner
        for owner in owners.values():
            n = sum(1 for r in batch if r.owner is owner)
            with owner._lock:
                owner._requests += n
                owner._round_trips += 1
        return [replies[id(r)] for r in batch]


def _exchange(conn: Any, packed: bytes) -> Any:
    """Send one packed command on ``conn`` and return its reply (one try)."""
    conn.send_packed_command((packed,))
    return conn.read_response()


def _dispatcher_for(client: Any, retry_interval: float) -> _SyncDispatcher:
    """Return the client's dispatcher for these settings (kept on the client: same lifetime)."""
    with _registry.lock:
        per_client: dict[float, _SyncDispatcher] | None = getattr(
            client, "_ratekeeper_dispatchers", None
        )
        if per_client is None:
            per_client = {}
            client._ratekeeper_dispatchers = per_client
        dispatcher = per_client.get(retry_interval)
        if dispatcher is None:
            dispatcher = per_client[retry_interval] = _SyncDispatcher(client, retry_interval)
        return dispatcher


class _Registry:
    """The lock guarding the dispatchers kept on clients (renewed in a forked child)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        track(self)

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self.lock,)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()


_registry = _Registry()


class _SyncLimiter(Core, SyncVerbs):
    """The blocking verbs over the server; subclasses say what ``tokens`` means."""

    def _connect(self, client: Any) -> None:
        self._client, self._owned = _resolve_client(client, self._timeout)
        self._lock = threading.Lock()
        self._dispatcher = _dispatcher_for(self._client, self._retry_interval)
        self._sleepers: dict[threading.Event, SyncRedisReservation] = {}
        track(self)

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self._lock,)

    def _after_fork(self) -> None:
        """In a forked child: a new lock; the sleepers were the parent's threads."""
        self._lock = threading.Lock()
        self._sleepers = {}
        self._waiting = 0
        self._waiting_tokens = 0

    def _count_cancel(self) -> None:
        with self._lock:
            self._cancelled += 1

    # -- the server ------------------------------------------------------------------------

    def _call(self, request: Request) -> list[int]:
        """Return the script's reply to ``request``; raise ServerFailure if the call failed."""
        return self._dispatcher.call(request)

    def _decide(self, request: Request) -> list[int]:
        """Return the server's reply to a decision, sent with the settlement of the
        fallback's grants if the server was down before (one atomic call)."""
        with self._lock:
            settle = self._settle_request()
        if settle is None:
            return self._dispatcher.call(request)
        (settled,), reply = self._dispatcher.call_group([settle, request])
        with self._lock:
            self._settled(settled)
        return reply

    # -- the engine ------------------------------------------------------------------------

    def _reserve(
        self, amounts: tuple[int, ...], timeout: float | None
    ) -> SyncRedisReservation | None:
        """Reserve ``amounts`` (or decide by the policy); None when let through by fail-open.

        Raises AcquireTimeout if the wait would pass ``timeout``.
        """
        max_wait_ns = check_timeout(timeout)
        request = self._reserve_request(amounts, max_wait_ns)
        try:
            reply = self._decide(request)
        except ServerFailure as failure:
            with self._lock:
                wait, marks = self._fallback_reserve(failure, amounts, max_wait_ns)
            if marks is None:
                return None
            return SyncRedisReservation(self, amounts, wait, None, marks)
        with self._lock:
            if reply[0] != DONE:
                self._refusal(reply, amounts, timeout)
            self._count_grant(amounts, reply[1])
        return SyncRedisReservation(self, amounts, reply[1], self._marks(reply, amounts), None)

    def _acquire(
        self, amounts: tuple[int, ...], timeout: float | None
    ) -> SyncRedisReservation | None:
        reservation = self._reserve(amounts, timeout)
        if reservation is not None and reservation.delay_ns:
            reservation.wait()
        return reservation

    def _try(self, amounts: tuple[int, ...]) -> bool:
        try:
            self._reserve(amounts, 0)
        except BackendUnavailable:
            raise
        except TimeoutError:
            return False
        return True

    def _charge(self, amounts: tuple[int, ...]) -> None:
        request = self._charge_request(amounts)
        try:
            reply = self._call(request)
        except ServerFailure as failure:
            with self._lock:
                self._fallback_charge(failure, amounts)
            return
        with self._lock:
            if reply[0] != DONE:
                self._refusal(reply, amounts, None)
            self._granted_tokens += sum(amounts)

    def _refund(
        self, amounts: tuple[int, ...], marks: tuple[tuple[int, int], ...] | None = None
    ) -> tuple[float, ...]:
        request = self._refund_request(amounts, marks)
        try:
            reply = self._call(request)
        except ServerFailure as failure:
            with self._lock:
                return self._fallback_refund(failure, amounts, None)
        with self._lock:
            if reply[0] != DONE:
                self._refusal(reply, amounts, None)
            return self._count_refund(reply, amounts)

    def _set_limit(self, name: str | None, rate: RateLike, capacity: int | None) -> None:
        request = self._set_limit_request(name, rate, capacity)
        try:
            reply = self._call(request)
        except ServerFailure as failure:
            with self._lock:
                self._set_limit_failed(failure)
        self._set_limit_done(request, reply)  # adopts under the lock

    def _adopt(self, key: str, cost: int, scale: int, capacity: int) -> None:
        with self._lock:
            super()._adopt(key, cost, scale, capacity)

    def _state(self) -> tuple[tuple[float, float], ...]:
        try:
            reply = self._call(self._state_request())
        except ServerFailure as failure:
            with self._lock:
                return self._fallback_state(failure)
        if reply[0] != DONE:
            self._refusal(reply, tuple(1 for _ in self._specs), None)
        return tuple(
            (spec.tokens(reply[4 + 3 * j]), spec.full_in(reply[4 + 3 * j]))
            for j, spec in enumerate(self._specs)
        )

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse every later call, wake sleeping callers with LimiterClosed (their tokens
        go back), and close a client made from a URL. Idempotent."""
        with self._lock:
            self._closed = True
            sleepers = list(self._sleepers.items())
        for event, _ in sleepers:
            event.set()
        if self._owned:
            self._client.close()

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def statistics(self) -> RedisStatistics:
        """Return a snapshot of this process's counters, with the backend's."""
        with self._lock:
            return self._statistics()

    def __repr__(self) -> str:
        return self._describe()

    def __enter__(self) -> Any:
        self._acquire(self._call_amounts(1), None)
        return self

    def limit(
        self, tokens: Any = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Return a decorator: each call of the function acquires ``tokens`` first."""
        amounts = self._call_amounts(tokens)
        check_timeout(timeout)

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(func)
            def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                self._acquire(amounts, timeout)
                return func(*args, **kwargs)

            return limited

        return decorate

    def take(
        self, tokens: Any = 1, *, refund_on_error: bool = False, timeout: float | None = None
    ) -> _SyncTake:
        """Return a context manager that acquires ``tokens`` on entry.

        With ``refund_on_error=True``, a block that raises an Exception gives its tokens
        back (by mark).
        """
        return _SyncTake(self, self._call_amounts(tokens), refund_on_error, timeout, 0)


class SyncRedisTokenBucket(BucketParts, _SyncLimiter):
    """The blocking twin of RedisTokenBucket, on a ``redis.Redis`` client (or a URL).

    Same decisions, same arguments, same errors; ``acquire`` blocks the calling thread,
    ``with limiter:`` takes one token, ``@limiter`` decorates sync functions. A client
    passed in must have a ``socket_timeout`` (it bounds every server call). No
    ``priority``: the server serves requests in arrival order.
    """

    def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity) at the server for every process sharing the key,
        carrying the balance over; see RedisTokenBucket.set_rate."""
        self._set_limit(None, rate, capacity)

    def acquire(self, tokens: int = 1, *, timeout: float | None = None) -> bool:
        """Block until ``tokens`` are granted, in arrival order at the server; return True.

        Raises AcquireTimeout (nothing consumed) if they cannot be granted within
        ``timeout`` seconds (refused at once), BackendUnavailable if the server fails and
        the policy is to fail closed, LimiterClosed after close(), ValueError/TypeError for
        bad arguments.
        """
        self._acquire(self._call_amounts(tokens), timeout)
        return True

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take ``tokens`` if the server can grant them now; never waits for them.

        Shorthand for a reservation with a maximum wait of 0.
        """
        return self._try(self._call_amounts(tokens))

    def reserve(self, tokens: int = 1, *, timeout: float | None = None) -> SyncRedisReservation:
        """Reserve ``tokens`` now; ``wait()`` sleeps until their slot, ``cancel()`` gives
        them back. Raises AcquireTimeout (nothing reserved) if the wait would exceed ``timeout``."""
        amounts = self._call_amounts(tokens)
        reservation = self._reserve(amounts, timeout)
        return reservation or SyncRedisReservation(self, amounts, 0, None, None)

    def refund(self, tokens: int) -> float:
        """Give back ``tokens`` taken earlier; return how many went back."""
        return self._refund(self._settle_amounts(tokens))[0]

    def charge(self, tokens: int) -> None:
        """Take ``tokens`` now without waiting, even into debt."""
        self._charge(self._settle_amounts(tokens))

    def available(self) -> float:
        """Return the tokens available now at the server (negative while in debt)."""
        return self._state()[0][0]

    def full_in(self) -> float:
        """Return seconds until the bucket is full again at the server (0.0 when full)."""
        return self._state()[0][1]


class SyncRedisCompositeLimiter(CompositeParts, _SyncLimiter):
    """The blocking twin of RedisCompositeLimiter: several limits on one key, all or nothing.

    No ``priority``: the server serves requests in arrival order.
    """

    def set_rate(self, name: str, rate: RateLike, capacity: int | None = None) -> None:
        """Change limit ``name``'s rate (and capacity) at the server for every process
        sharing the key, carrying its balance over; see RedisCompositeLimiter.set_rate."""
        self._set_limit(name, rate, capacity)

    def acquire(self, tokens: int | Mapping[str, int] = 1, *, timeout: float | None = None) -> bool:
        """Block until every limit grants its share of the call; return True."""
        self._acquire(self._call_amounts(tokens), timeout)
        return True

    def try_acquire(self, tokens: int | Mapping[str, int] = 1) -> bool:
        """Take the call's tokens from every limit if all can grant them now."""
        return self._try(self._call_amounts(tokens))

    def reserve(
        self, tokens: int | Mapping[str, int] = 1, *, timeout: float | None = None
    ) -> SyncRedisReservation:
        """Reserve the call's tokens on every limit now (see SyncRedisTokenBucket.reserve)."""
        amounts = self._call_amounts(tokens)
        reservation = self._reserve(amounts, timeout)
        return reservation or SyncRedisReservation(self, amounts, 0, None, None)

    def refund(self, tokens: int | Mapping[str, int]) -> dict[str, float]:
        """Give back tokens on the limits named (or whose weight is None); return them."""
        return self._named(self._refund(self._settle_amounts(tokens)))

    def charge(self, tokens: int | Mapping[str, int]) -> None:
        """Take tokens from the limits named (or whose weight is None), debt allowed."""
        self._charge(self._settle_amounts(tokens))

    def available(self) -> dict[str, float]:
        """Return each limit's tokens available now at the server."""
        return self._named(tuple(t for t, _ in self._state()))

    def full_in(self) -> float:
        """Return seconds until every limit is full again (0.0 when all are)."""
        return max(f for _, f in self._state())


class SyncRedisReservation(ReservationBase):
    """Tokens reserved by a blocking limiter: ``delay``, ``wait()``, ``cancel()``.

    ``cancel()`` gives the tokens back by mark until ``wait()`` has returned, and does
    nothing after (see ReservationBase).
    """

    __slots__ = ()

    def wait(self) -> None:
        """Sleep until the slot; raise LimiterClosed if cancelled, or if the limiter closes
        meanwhile (the tokens then go back)."""
        limiter = self._limiter
        event = threading.Event()
        with limiter._lock:
            closed = limiter._closed or self._state == CANCELLED
            if not closed:
                limiter._sleepers[event] = self
                limiter._waiting += 1
                limiter._waiting_tokens += self.amounts[0]
        if not closed:
            try:
                remaining = self._due - time.monotonic()
                closed = remaining > 0 and event.wait(remaining)
            finally:
                with limiter._lock:
                    del limiter._sleepers[event]
                    limiter._waiting -= 1
                    limiter._waiting_tokens -= self.amounts[0]
        if closed:
            self.cancel()
            raise LimiterClosed(
                f"{limiter!r} was closed while waiting (or the reservation cancelled)"
            )
        if self._state == LIVE:
            self._state = IN_USE

    def _give_back(self) -> None:
        if not self._refund_due():
            return
        limiter = self._limiter
        if self._marks is not None:
            # A failure is counted in backend_errors; the tokens stay consumed (the safe side).
            with contextlib.suppress(BackendUnavailable):
                limiter._refund(self.amounts, self._marks)
        elif self._local is not None:
            with limiter._lock:
                limiter._fallback_refund(None, self.amounts, self._local)


class _SyncTake(TakeBlock):
    """The context manager returned by ``take()``; its mark is the reservation."""

    __slots__ = ()

    def __enter__(self) -> None:
        self._mark = self._limiter._acquire(self._tokens, self._timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._refunds(exc_type) and isinstance(self._mark, SyncRedisReservation):
            self._mark._give_back()
