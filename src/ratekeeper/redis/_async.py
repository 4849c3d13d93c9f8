"""The asyncio Redis limiters: one round trip per decision, shared by concurrent callers.

Ordering. Every decision is made by the script at the server, in the order requests reach
it: arrival order at the server is service order. A caller that must wait has its tokens
reserved in that same round trip and then sleeps locally until its slot; nobody polls.

Coalescing. Calls on one client go through one dispatcher. A call made while no other is in
flight goes out at once, alone. Calls made while one is in flight are collected and sent
together, once it returns, as a single script call (up to 256 decisions); the script decides
them one after another, atomically. One call is in flight per client at a time, so the
server sees one process's requests in the order they were made: within a process, callers
are served first come, first served (a second call in flight would gain ~4% throughput and
lose that order).

Cancellation. A caller cancelled while it sleeps gives its tokens back by mark (the refund
goes out with the next batch); one cancelled while its request is queued sends nothing; one
cancelled while its batch is at the server gives back whatever that batch granted it. A
caller sending alone that is cancelled mid-flight cannot know the outcome: its tokens may
have been consumed (never more than it asked for).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.cluster import key_slot  # type: ignore[attr-defined]
from redis.exceptions import NoScriptError

from .._asyncio import check_timeout
from .._errors import AcquireTimeout, BackendUnavailable, LimiterClosed
from .._fork import track
from .._rate import RateLike
from .._scheduler import TakeBlock
from .._verbs import AsyncVerbs
from ._common import (
    CANCELLED,
    IN_USE,
    LIVE,
    BucketParts,
    CompositeParts,
    Core,
    Direct,
    RedisStatistics,
    ReservationBase,
    ServerFailure,
    classify,
    describe_client,
    direct_for,
    take_replies,
    wire,
)
from ._script import (
    BEYOND,
    DONE,
    NO_MARK,
    REFUND,
    REFUSED,
    RESERVE,
    SCRIPT,
    TAKE_SCRIPT,
    Request,
    single_take_wire,
    single_wire,
    take_wire,
)

__all__ = ["RedisCompositeLimiter", "RedisReservation", "RedisTokenBucket"]

P = ParamSpec("P")
R = TypeVar("R")

MAX_BATCH = 256
MAX_IN_FLIGHT = 1  # see "Coalescing" above
_ONE = 1


class _Dispatcher:
    """Sends the decisions of every limiter on one client, batching concurrent ones.

    Every call is bounded by ``timeout``: calls in flight are registered with their start
    time and one watchdog timer (not one per call) cancels any that overruns, within a
    quarter of the timeout.
    """

    def __init__(self, client: Any, timeout: float, retry_interval: float) -> None:
        self.client = client
        # register_script keeps the sha and reloads the script on NOSCRIPT (restart, SCRIPT
        # FLUSH); calls go straight to EVALSHA and fall back to it on NOSCRIPT.
        self.script = client.register_script(SCRIPT)
        self.take_script = client.register_script(TAKE_SCRIPT)  # its common case, short
        self.evalsha = client.evalsha
        self.cluster = isinstance(client, RedisCluster)
        self.fast = direct_for(client)  # None: calls go through redis-py's execute_command
        self.where = describe_client(client)
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.pending: list[Request] = []
        self.in_flight = 0
        self.scheduled = False
        self.down_until = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.calls: dict[asyncio.Task[Any], float] = {}  # in flight: task -> start (monotonic)
        self.overdue: set[asyncio.Task[Any]] = set()
        self.watchdog: asyncio.TimerHandle | None = None
        track(self)

    def _fork_locks(self) -> tuple[()]:
        return ()

    def _after_fork(self) -> None:
        """In a forked child: nothing in flight or queued (the parent's event loop's), and
        none of the parent's connections: they are its sockets, and replies read on them
        in two processes would be mixed up. The child opens its own."""
        self.pending = []
        self.in_flight = 0
        self.scheduled = False
        self.tasks = set()
        self.calls = {}
        self.overdue = set()
        self.watchdog = None
        self.down_until = 0.0
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            pool.reset()  # drops the inherited connections without closing the parent's
            if isinstance(getattr(pool, "_lock", None), asyncio.Lock):
                pool._lock = asyncio.Lock()  # it may be bound to the parent's loop
        elif self.cluster:
            _reset_cluster(self.client)

    async def call(self, request: Request) -> list[int]:
        """Return the script's reply to ``request``; raise ServerFailure if the call failed."""
        if not self.in_flight and not self.pending:
            owner = request.owner
            # The short script's case (it answers, or leaves it to ours), unless slots
            # booked ahead must go with the request (only ours starts a lost key at them).
            take = None if owner is not None and owner._floors else take_wire(request)
            if take is not None:
                values = await self.execute(*take, owner, self.take_script)
                if values:
                    return take_replies(values, take[0], [request])[0]
            keys, args = request.wire or wire([request])
            return take_replies(await self.execute(keys, args, request.owner), keys, [request])[0]
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        request.future = future
        self.post(request)
        return await future

    async def call_group(self, requests: list[Request]) -> tuple[list[list[int] | None], list[int]]:
        """Return the replies to reads of a key and to a decision on it (last), sent together.

        One script call when nothing is in flight; else they queue side by side and go in
        the same batch (or, past MAX_BATCH, the reads in the batch before). Returns (the
        reads' replies, None for a read whose batch failed; the decision's reply). Raises
        ServerFailure if the decision's call failed. Cancelled: as ``call``.
        """
        if not self.in_flight and not self.pending:
            keys, args = wire(requests)
            values = await self.execute(keys, args, requests[-1].owner)
            replies = take_replies(values, keys, requests)
            return list(replies[:-1]), replies[-1]
        loop = asyncio.get_running_loop()
        for request in requests:
            request.future = loop.create_future()
            self.post(request)
        try:
            decision = await requests[-1].future
        except BaseException:
            for request in requests[:-1]:
                if not request.future.cancel() and not request.future.cancelled():
                    request.future.exception()  # answered, now unread: mark it seen
            raise
        # Queued before the decision, the reads were answered in its batch or an earlier one.
        reads: list[list[int] | None] = []
        for request in requests[:-1]:
            future = request.future
            answered = future.done() and not future.cancelled() and future.exception() is None
            reads.append(future.result() if answered else None)
        return reads, decision

    def post(self, request: Request) -> None:
        """Queue ``request`` for the next batch (without waiting for it)."""
        self.pending.append(request)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send the queued requests, in batches, while fewer than MAX_IN_FLIGHT are out."""
        self.scheduled = False
        pending = self.pending
        while pending and self.in_flight < MAX_IN_FLIGHT:
            batch = [r for r in pending[:MAX_BATCH] if r.future is None or not r.future.cancelled()]
            del pending[:MAX_BATCH]
            if batch:
                self.in_flight += 1
                task = asyncio.get_running_loop().create_task(self.run(batch))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def run(self, batch: list[Request]) -> None:
        """Send one batch and hand each reply to its caller."""
        try:
            replies = await self.send(batch)
        except BaseException as exc:
            failure = exc if isinstance(exc, ServerFailure) else classify(exc, self.where)
            for request in batch:
                future = request.future
                if future is not None and not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
        else:
            for request, reply in zip(batch, replies, strict=True):
                future = request.future
                if future is None:
                    request.owner._after_batch(request, reply)
                elif not future.done():
                    future.set_result(reply)
                elif request.op == RESERVE and reply[0] == DONE:
                    # Its caller was cancelled while the batch was out: give the grant back.
                    request.owner._give_back_reply(request, reply)
        finally:
            self.in_flight -= 1
            if self.pending and not self.scheduled:
                self.flush()

    async def send(self, batch: list[Request]) -> list[list[int]]:
        """Make one script call (one per hash slot on a cluster) deciding ``batch``."""
        if self.cluster:
            groups: dict[int, list[Request]] = {}
            for request in batch:
                slot = key_slot(request.items[0][0].key.encode())
                groups.setdefault(slot, []).append(request)
            parts = list(groups.values())
            wires = [wire(part) for part in parts]
            results = await asyncio.gather(*(self.execute(*wire) for wire in wires))
            by_request: dict[int, list[int]] = {}
            for part, (keys, _), values in zip(parts, wires, results, strict=True):
                by_request.update(zip(map(id, part), take_replies(values, keys, part), strict=True))
            replies = [by_request[id(r)] for r in batch]
        else:
            keys, args = wire(batch)
            replies = take_replies(await self.execute(keys, args), keys, batch)
        owners = set()
        for request in batch:
            owner = request.owner
            owner._requests += 1
            owners.add(owner)
        for owner in owners:
            owner._round_trips += 1
        return replies

    def pack(self, keys: list[str], args: list[Any], script: Any = None) -> bytes | None:
        """Return the EVALSHA of ``script`` (default: ours) on ``keys``/``args``, packed for
        ``direct``; None when calls must go through redis-py's execute_command."""
        fast = self.fast
        return None if fast is None else fast.pack(script or self.script, keys, args)

    async def direct(self, fast: Direct, packed: bytes) -> Any:
        """Send a packed command on a connection of the pool and return its reply (see
        Direct), with the client's retry policy: each failed try disconnects, as redis-py's
        does."""
        pool = fast.pool
        conn = await pool.get_connection(*fast.name_args)
        try:
            return await conn.retry.call_with_retry(
                lambda: _exchange(conn, packed), lambda error: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    async def execute(
        self,
        keys: list[str],
        args: list[Any],
        owner: Any = None,
        script: Any = None,
        packed: bytes | None = None,
    ) -> list[int]:
        """Run the script (or ``script``: the short one) once, within the timeout; return
        the integers of its reply.

        With ``owner``, this is one request sent at once, alone: it is counted as in flight
        and for its owner. ``packed``: the same call, packed ahead by ``pack``. Raises
        ServerFailure if the call fails.
        """
        if script is None:
            script = self.script
        if self.down_until and time.monotonic() < self.down_until:
            raise ServerFailure(
                f"{self.where} failed a moment ago; the next try is in "
                f"{self.down_until - time.monotonic():.2f}s",
                True,
            )
        task = asyncio.current_task()
        assert task is not None
        calls = self.calls
        calls[task] = time.monotonic()
        if self.watchdog is None:
            self._arm_watchdog()
        if owner is not None:
            self.in_flight += 1
        try:
            try:
                fast = self.fast
                if fast is None:
                    reply: bytes | str = await self.evalsha(script.sha, len(keys), *keys, *args)
                else:
                    reply = await self.direct(fast, packed or fast.pack(script, keys, args))
            except NoScriptError:
                reply = await script(keys, args)
        except asyncio.CancelledError:
            if task not in self.overdue:
                raise
            self.overdue.discard(task)
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            self.down_until = time.monotonic() + self.retry_interval
            raise ServerFailure(
                f"{self.where} did not answer within the timeout of {self.timeout}s", True
            ) from None
        except Exception as exc:
            failure = classify(exc, self.where)
            if failure.transient:
                self.down_until = time.monotonic() + self.retry_interval
            raise failure from exc
        finally:
            del calls[task]
            if owner is not None:
                self.in_flight -= 1
                if self.pending and not self.scheduled:
                    self.flush()
        self.down_until = 0.0
        if owner is not None:
            owner._requests += 1
            owner._round_trips += 1
        return list(map(int, reply.split()))

    def _arm_watchdog(self) -> None:
        self.watchdog = asyncio.get_running_loop().call_later(self.timeout / 4, self._check)

    def _check(self) -> None:
        """Cancel the calls that have run past the timeout; re-arm while any are out."""
        self.watchdog = None
        if not self.calls:
            return
        late = time.monotonic() - self.timeout
        for task, started in list(self.calls.items()):
            if started <= late and task not in self.overdue:
                self.overdue.add(task)
                task.cancel()
        self._arm_watchdog()


async def _exchange(conn: Any, packed: bytes) -> Any:
    """Send one packed command on ``conn`` and return its reply (one try)."""
    await conn.send_packed_command(packed)
    return await conn.read_response()


def _reset_cluster(client: RedisCluster) -> None:
    """Drop an asyncio cluster client's inherited connections and its locks (bound to the
    parent's loop), in a forked child; nothing is closed, as ``ConnectionPool.reset`` does.
    The slot map is kept: the nodes are the same."""
    client._lock = None  # made again when first needed
    manager = client.nodes_manager
    manager._initialize_lock = asyncio.Lock()
    for node in {*manager.nodes_cache.values(), *manager.startup_nodes.values()}:
        node._connections = []
        node._free = collections.deque(maxlen=node.max_connections)
        node._background_tasks = set()


def _dispatcher_for(client: Any, timeout: float, retry_interval: float) -> _Dispatcher:
    """Return the client's dispatcher for these settings (kept on the client: same lifetime)."""
    per_client: dict[tuple[float, float], _Dispatcher] | None = getattr(
        client, "_ratekeeper_dispatchers", None
    )
    if per_client is None:
        per_client = {}
        client._ratekeeper_dispatchers = per_client
    dispatcher = per_client.get((timeout, retry_interval))
    if dispatcher is None:
        dispatcher = per_client[(timeout, retry_interval)] = _Dispatcher(
            client, timeout, retry_interval
        )
    return dispatcher


def _resolve_client(client: Any, timeout: float) -> tuple[Any, bool]:
    """Return (asyncio client, owned) for a client or a URL; raise TypeError/ValueError."""
    if isinstance(client, str):
        try:
            made = aioredis.Redis.from_url(
                client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=aioredis.retry.Retry(NoBackoff(), 1),  # reconnect once, at once
            )
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {client!r}: {exc}") from None
        return made, True
    if isinstance(client, (aioredis.Redis, RedisCluster)):
        return client, False
    raise TypeError(
        "client must be a redis.asyncio.Redis, a redis.asyncio.RedisCluster or a redis:// URL, "
        f"not {type(client).__name__}; for redis.Redis use SyncRedisTokenBucket"
    )


class _AsyncLimiter(Core, AsyncVerbs):
    """The asyncio verbs over the server; subclasses say what ``tokens`` means."""

    def _connect(self, client: Any) -> None:
        self._client, self._owned = _resolve_client(client, self._timeout)
        self._dispatcher = _dispatcher_for(self._client, self._timeout, self._retry_interval)
        self._sleepers: dict[asyncio.Future[None], RedisReservation] = {}
        track(self)

    def _fork_locks(self) -> tuple[()]:
        return ()

    def _after_fork(self) -> None:
        """In a forked child: the sleepers belong to the parent's event loop."""
        self._sleepers = {}
        self._waiting = 0
        self._waiting_tokens = 0

    # -- the engine ------------------------------------------------------------------------

    async def _decide(self, request: Request) -> list[int]:
        """Return the server's reply to a decision, sent with the settlement of the
        fallback's grants if the server was down before (one atomic call)."""
        settle = self._settle_request()
        if settle is None:
            return await self._dispatcher.call(request)
        (settled,), reply = await self._dispatcher.call_group([settle, request])
        self._settled(settled)
        return reply

    async def _reserve(
        self, amounts: tuple[int, ...], timeout: float | None
    ) -> RedisReservation | int:
        """Reserve ``amounts`` at the server (or by the policy).

        Returns 0 when granted for use at once with no reservation worth keeping (fail open),
        else the Reservation. Raises AcquireTimeout if the wait would pass ``timeout``.
        """
        max_wait_ns = check_timeout(timeout)
        request = self._reserve_request(amounts, max_wait_ns)
        try:
            reply = await self._decide(request)
        except ServerFailure as failure:
            wait, marks = self._fallback_reserve(failure, amounts, max_wait_ns)
            if marks is None:
                return 0
            return RedisReservation(self, amounts, wait, None, marks)
        if reply[0] != DONE:
            self._refusal(reply, amounts, timeout)
        wait = reply[1]
        self._count_grant(amounts, wait)
        return RedisReservation(self, amounts, wait, self._marks(reply, amounts), None)

    async def _acquire(
        self, amounts: tuple[int, ...], timeout: float | None
    ) -> RedisReservation | int:
        reservation = await self._reserve(amounts, timeout)
        if isinstance(reservation, RedisReservation) and reservation.delay_ns:
            await reservation
        return reservation

    def _give_back_reply(self, request: Request, reply: list[int]) -> None:
        """Refund a grant whose caller was cancelled while its request was out."""
        self._cancelled += 1
        items = tuple(
            (spec, n, reply[2 + 3 * j], reply[3 + 3 * j])
            for j, (spec, n, _, _) in enumerate(request.items)
        )
        self._dispatcher.post(Request(REFUND, items, -1, self))

    async def _charge(self, amounts: tuple[int, ...]) -> None:
        request = self._charge_request(amounts)
        try:
            reply = await self._dispatcher.call(request)
        except ServerFailure as failure:
            self._fallback_charge(failure, amounts)
            return
        if reply[0] != DONE:
            self._refusal(reply, amounts, None)
        self._granted_tokens += sum(amounts)

    async def _refund(
        self, amounts: tuple[int, ...], marks: tuple[tuple[int, int], ...] | None = None
    ) -> tuple[float, ...]:
        request = self._refund_request(amounts, marks)
        try:
            reply = await self._dispatcher.call(request)
        except ServerFailure as failure:
            return self._fallback_refund(failure, amounts, None)
        if reply[0] != DONE:
            self._refusal(reply, amounts, None)
        return self._count_refund(reply, amounts)

    async def _set_limit(self, name: str | None, rate: RateLike, capacity: int | None) -> None:
        request = self._set_limit_request(name, rate, capacity)
        try:
            reply = await self._dispatcher.call(request)
        except ServerFailure as failure:
            self._set_limit_failed(failure)
        self._set_limit_done(request, reply)

    async def _state(self) -> tuple[tuple[float, float], ...]:
        try:
            reply = await self._dispatcher.call(self._state_request())
        except ServerFailure as failure:
            return self._fallback_state(failure)
        if reply[0] != DONE:
            self._refusal(reply, tuple(1 for _ in self._specs), None)
        return tuple(
            (spec.tokens(reply[4 + 3 * j]), spec.full_in(reply[4 + 3 * j]))
            for j, spec in enumerate(self._specs)
        )

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse every later call; wake sleeping callers with LimiterClosed. Idempotent.

        The sleepers' reservations are given back at the server (sent with the next batch
        while the loop runs). Use ``aclose()`` to also close a client made from a URL.
        """
        self._closed = True
        for future, reservation in list(self._sleepers.items()):
            if not future.done():
                future.set_exception(LimiterClosed(f"{self!r} was closed while waiting"))
            reservation.cancel()

    async def aclose(self) -> None:
        """Close (see ``close``), send what is queued, and close a client made from a URL."""
        self.close()
        dispatcher = self._dispatcher
        if dispatcher.pending and not dispatcher.scheduled:
            dispatcher.flush()
        if dispatcher.tasks:
            await asyncio.gather(*list(dispatcher.tasks), return_exceptions=True)
        if self._owned:  # nobody else uses this client and its dispatcher
            if dispatcher.watchdog is not None:
                dispatcher.watchdog.cancel()
                dispatcher.watchdog = None
            await self._client.aclose()

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def statistics(self) -> RedisStatistics:
        """Return a snapshot of this process's counters, with the backend's."""
        return self._statistics()

    def __repr__(self) -> str:
        return self._describe()


class RedisTokenBucket(BucketParts, _AsyncLimiter):
    """A token bucket kept at a Redis/Valkey server, shared by every process that names it.

    ===================  ===========================================================
    ``acquire(n)``       reserves n tokens at the server, then sleeps until their slot
    ``try_acquire(n)``   never waits: True if granted now, else False
    ``reserve(n)``       reserves, returns a RedisReservation: ``delay``, awaitable,
                         ``cancel()`` gives the tokens back
    ``async with``       one token; ``take(n)`` for n, optionally refunded on error
    ``@limiter``         decorates an async function: one token per call
    ``refund(n)``        gives tokens back; ``charge(n)`` takes them after the fact
    ``set_rate(r, c)``   changes the limit at the server, for every process on the key
    ===================  ===========================================================

    Each decision is one atomic script call timed by the server's clock, in exact integer
    arithmetic (the same as ``TokenBucket``'s); callers are served in the order their
    requests reach the server, and one that must wait reserves its slot in the same round
    trip (no polling). A timeout that cannot be met is refused at once, consuming nothing.
    Concurrent calls of one process share round trips. There is no ``priority``: the
    server serves requests in arrival order (the in-memory limiters' ``priority=`` is
    outside the contract, and passing it here is a TypeError).

    ``client``: a ``redis.asyncio.Redis`` or ``RedisCluster``, or a URL (then the limiter
    owns the client; ``aclose()`` closes it). The key stored is ``prefix + key``; it expires
    when the bucket is full again. Every server call is bounded by ``timeout`` seconds. When
    the server cannot be reached (or times out): ``on_failure="closed"`` raises
    ``BackendUnavailable``; ``"open"`` lets calls through (counted); ``"fallback"`` decides
    with a local limiter at ``fallback_share`` of the rate and capacity. After a failure the
    server is tried again ``retry_interval`` seconds later; it recovers by itself.

    Raises ValueError/TypeError at once for a bad rate, capacity, key, URL or policy.
    """

    def _specs_changed(self) -> None:
        # The one-token requests, encoded once: the hot paths only point at them.
        spec = self._specs[0]
        self._one = ((spec, 1, NO_MARK, 0),)
        self._wire_try = single_wire(spec, RESERVE, 1, 0)
        self._wire_take = single_take_wire(spec, 1, 0)
        self._wire_wait = single_wire(spec, RESERVE, 1, -1)
        self._wire_take_wait = single_take_wire(spec, 1, -1)
        dispatcher = self._dispatcher
        take = dispatcher.take_script
        self._packed_try = dispatcher.pack(*self._wire_try)
        self._packed_take = dispatcher.pack(*self._wire_take, take)
        self._packed_wait = dispatcher.pack(*self._wire_wait)
        self._packed_take_wait = dispatcher.pack(*self._wire_take_wait, take)

    def _request_one(self, max_wait: int) -> Request:
        return Request(RESERVE, self._one, max_wait, self)

    async def set_rate(self, rate: RateLike, capacity: int | None = None) -> None:
        """Change the rate (and capacity; default: unchanged) at the server, for every
        process sharing the key, carrying the balance over.

        The tokens available now stay available (capped at the new capacity); debt stays
        debt; reservations already granted keep their slots. The key then holds its limit
        (and no longer expires): every limiter on it decides with that limit from its next
        call, whatever rate it was made with. Raises ValueError/TypeError for a bad rate or
        capacity (nothing changed), BackendUnavailable if the server cannot be reached,
        whatever ``on_failure`` says (a change this process alone knew of would not be one),
        LimiterClosed after close().
        """
        await self._set_limit(None, rate, capacity)

    async def acquire(self, tokens: int = 1, *, timeout: float | None = None) -> bool:
        """Wait until ``tokens`` are granted, in arrival order at the server; return True.

        Raises AcquireTimeout (nothing consumed) if they cannot be granted within
        ``timeout`` seconds (refused at once), BackendUnavailable if the server fails and
        the policy is to fail closed, LimiterClosed after close(), ValueError/TypeError for
        bad arguments. Cancelled while sleeping, it gives its tokens back.
        """
        if tokens is _ONE and timeout is None and self._local is None:
            # Fast path: the one-token, no-timeout call, without building a Reservation.
            if self._closed:
                raise LimiterClosed(f"{self!r} is closed")
            dispatcher = self._dispatcher
            try:
                floors = self._floors  # slots booked ahead: sent, so not prebuilt
                if not dispatcher.in_flight and not dispatcher.pending and not floors:
                    # Alone on the connection: the short script first, as in try_acquire.
                    take = dispatcher.take_script
                    reply = await dispatcher.execute(
                        *self._wire_take_wait, self, take, self._packed_take_wait
                    )
                    if not reply:
                        reply = await dispatcher.execute(
                            *self._wire_wait, self, None, self._packed_wait
                        )
                    if len(reply) > 6 or reply[2]:  # a limit of its own, or a slot booked
                        reply = take_replies(reply, [self.key], [self._request_one(-1)])[0]
                    else:
                        del reply[0]
                else:
                    request = self._request_one(-1)
                    if not floors:
                        request.wire = self._wire_wait
                    reply = await dispatcher.call(request)
            except ServerFailure as failure:
                wait, marks = self._fallback_reserve(failure, (1,), None)
                if marks is not None and wait:
                    await RedisReservation(self, (1,), wait, None, marks)
                return True
            if reply[0] != DONE:
                self._refusal(reply, (1,), None)
            self._count_grant((1,), reply[1])
            if reply[1]:
                await RedisReservation(self, (1,), reply[1], ((reply[2], reply[3]),), None)
            return True
        await self._acquire(self._call_amounts(tokens), timeout)
        return True

    async def try_acquire(self, tokens: int = 1) -> bool:
        """Take ``tokens`` if the server can grant them now; never waits for them.

        Shorthand for a reservation with a maximum wait of 0. Raises BackendUnavailable
        (fail closed) when the server fails.
        """
        dispatcher = self._dispatcher
        amounts: tuple[int, ...] = (1,)
        try:
            if tokens is _ONE and self._local is None:
                if self._closed:
                    raise LimiterClosed(f"{self!r} is closed")
                floors = self._floors  # slots booked ahead: sent, so not prebuilt
                if not dispatcher.in_flight and not dispatcher.pending and not floors:
                    # Fast path: alone on the connection, the request prebuilt, the short
                    # script first (it leaves a key that is not a plain bucket to ours).
                    take = dispatcher.take_script
                    reply = await dispatcher.execute(
                        *self._wire_take, self, take, self._packed_take
                    )
                    if not reply:
                        reply = await dispatcher.execute(
                            *self._wire_try, self, None, self._packed_try
                        )
                    if len(reply) > 6 or reply[5] > self._specs[0].burst:
                        # The key holds a limit of its own, or slots are booked ahead.
                        reply = take_replies(reply, [self.key], [self._request_one(0)])[0]
                    else:
                        del reply[0]
                else:
                    request = self._request_one(0)
                    if not floors:
                        request.wire = self._wire_try
                    reply = await dispatcher.call(request)
            else:
                amounts = self._call_amounts(tokens)
                reply = await self._decide(self._reserve_request(amounts, 0))
        except ServerFailure as failure:
            try:
                self._fallback_reserve(failure, amounts, 0)
            except AcquireTimeout:
                return False
            return True
        status = reply[0]
        if status == DONE:
            self._granted += 1
            self._granted_tokens += amounts[0]
            return True
        if status in (REFUSED, BEYOND):
            self._rejected += 1
            return False
        self._refusal(reply, amounts, 0)
        return False  # pragma: no cover

    async def reserve(self, tokens: int = 1, *, timeout: float | None = None) -> RedisReservation:
        """Reserve ``tokens`` at the server now and return the reservation.

        ``reservation.delay`` is the wait until their slot; ``await reservation`` sleeps
        until then; ``reservation.cancel()`` gives them back as far as that is still
        correct. Raises AcquireTimeout (nothing reserved) if the wait would exceed ``timeout``.
        """
        reservation = await self._reserve(self._call_amounts(tokens), timeout)
        if not reservation:
            return RedisReservation(self, self._call_amounts(tokens), 0, None, None)
        assert isinstance(reservation, RedisReservation)
        return reservation

    async def refund(self, tokens: int) -> float:
        """Give back ``tokens`` taken earlier; return how many went back.

        At most what is outstanding goes back, never above the capacity. Raises
        BackendUnavailable (fail closed) when the server fails.
        """
        return (await self._refund(self._settle_amounts(tokens)))[0]

    async def charge(self, tokens: int) -> None:
        """Take ``tokens`` now without waiting, even into debt (later callers wait it off).

        For settling a cost known only after the call. Raises BackendUnavailable (fail
        closed) when the server fails.
        """
        await self._charge(self._settle_amounts(tokens))

    async def available(self) -> float:
        """Return the tokens available now at the server (negative while in debt)."""
        return (await self._state())[0][0]

    async def full_in(self) -> float:
        """Return seconds until the bucket is full again at the server (0.0 when full)."""
        return (await self._state())[0][1]

    def take(
        self, tokens: int = 1, *, refund_on_error: bool = False, timeout: float | None = None
    ) -> _Take:
        """Return an async context manager that acquires ``tokens`` on entry.

        With ``refund_on_error=True``, a block that raises an Exception gives its tokens
        back at the server (by mark: never more than is still outstanding).
        """
        return _Take(self, self._call_amounts(tokens), refund_on_error, timeout, 0)

    def limit(
        self, tokens: int = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Return a decorator for async functions: each call acquires ``tokens`` first."""
        return _decorator(self, tokens, timeout)


class RedisCompositeLimiter(CompositeParts, _AsyncLimiter):
    """Several limits on one key, checked and charged together: all granted, or none.

    For example 60 requests/minute AND 90,000 tokens/minute on one API key::

        limits = RedisCompositeLimiter(client, "api-key-1", {
            "requests": Limit("60/minute", weight=1),   # every call takes 1
            "tokens": Limit("90000/minute"),            # a call takes its ``tokens``
        })
        await limits.acquire(1200)                 # 1 request and 1200 tokens, atomically
        await limits.charge({"tokens": 300})       # the reply used 300 more than estimated

    The limits may also be one string, ``RedisCompositeLimiter(client, "api-key-1",
    "10/hour;100/day")``: limits named ``"hour"`` and ``"day"`` (see ``Limit.parse_many``).
    ``tokens`` may also be a mapping of limit name to tokens. The limits' keys are
    ``prefix + "{key}:" + name``: the ``{key}`` hash tag puts them in one Redis Cluster
    slot. A grant waits for the slowest limit; each limit is committed at the grant time.
    ``charge``/``refund`` with an int settle the limits whose weight is None. Arguments
    and failures as in RedisTokenBucket; no ``priority`` (arrival order at the server).
    ``set_rate(name, rate, capacity)`` changes one limit at the server.
    """

    async def set_rate(self, name: str, rate: RateLike, capacity: int | None = None) -> None:
        """Change limit ``name``'s rate (and capacity; default: unchanged) at the server,
        for every process sharing the key, carrying its balance over.

        As RedisTokenBucket.set_rate; also raises ValueError for an unknown name or a
        capacity below the limit's weight. The other limits are left as they are.
        """
        await self._set_limit(name, rate, capacity)

    async def acquire(
        self, tokens: int | Mapping[str, int] = 1, *, timeout: float | None = None
    ) -> bool:
        """Wait until every limit grants its share of the call; return True.

        Raises as RedisTokenBucket.acquire; a refusal changes no limit.
        """
        await self._acquire(self._call_amounts(tokens), timeout)
        return True

    async def try_acquire(self, tokens: int | Mapping[str, int] = 1) -> bool:
        """Take the call's tokens from every limit if all can grant them now; never waits."""
        try:
            await self._reserve(self._call_amounts(tokens), 0)
        except BackendUnavailable:
            raise
        except TimeoutError:
            return False
        return True

    async def reserve(
        self, tokens: int | Mapping[str, int] = 1, *, timeout: float | None = None
    ) -> RedisReservation:
        """Reserve the call's tokens on every limit now; see RedisTokenBucket.reserve."""
        amounts = self._call_amounts(tokens)
        reservation = await self._reserve(amounts, timeout)
        if not reservation:
            return RedisReservation(self, amounts, 0, None, None)
        assert isinstance(reservation, RedisReservation)
        return reservation

    async def refund(self, tokens: int | Mapping[str, int]) -> dict[str, float]:
        """Give back tokens on the limits named (or whose weight is None); return them."""
        return self._named(await self._refund(self._settle_amounts(tokens)))

    async def charge(self, tokens: int | Mapping[str, int]) -> None:
        """Take tokens from the limits named (or whose weight is None), debt allowed."""
        await self._charge(self._settle_amounts(tokens))

    async def available(self) -> dict[str, float]:
        """Return each limit's tokens available now at the server."""
        return self._named(tuple(t for t, _ in await self._state()))

    async def full_in(self) -> float:
        """Return seconds until every limit is full again (0.0 when all are)."""
        return max(f for _, f in await self._state())

    def take(
        self,
        tokens: int | Mapping[str, int] = 1,
        *,
        refund_on_error: bool = False,
        timeout: float | None = None,
    ) -> _Take:
        """Return an async context manager that acquires the call's tokens on entry."""
        return _Take(self, self._call_amounts(tokens), refund_on_error, timeout, 0)

    def limit(
        self, tokens: int | Mapping[str, int] = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
        """Return a decorator for async functions: each call acquires ``tokens`` first."""
        return _decorator(self, tokens, timeout)


def _decorator(
    limiter: Any, tokens: Any, timeout: float | None
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    amounts = limiter._call_amounts(tokens)
    check_timeout(timeout)

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"{func!r} is not an async function; decorate sync functions with "
                "a SyncRedisTokenBucket"
            )

        @functools.wraps(func)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            await limiter._acquire(amounts, timeout)
            return await func(*args, **kwargs)

        return limited

    return decorate


class RedisReservation(ReservationBase):
    """Tokens reserved at the server (or by the fallback), returned by ``reserve()``.

    ``delay`` is the wait (seconds) from the server's decision until their slot; ``await
    reservation`` sleeps until then (raising LimiterClosed if cancelled or closed first);
    ``cancel()`` gives the tokens back by mark until it has returned, and does nothing after
    (see ReservationBase).
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return self._sleep().__await__()

    async def _sleep(self) -> None:
        limiter = self._limiter
        if self._state == CANCELLED:
            raise LimiterClosed("the reservation was cancelled")
        remaining = self._due - time.monotonic()
        if remaining > 0:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            handle = loop.call_later(remaining, _wake, future)
            limiter._sleepers[future] = self
            limiter._waiting += 1
            limiter._waiting_tokens += self.amounts[0]
            try:
                await future
            except asyncio.CancelledError:
                # Cancelled while sleeping: the slot will not be used; give it back.
                self.cancel()
                raise
            finally:
                handle.cancel()
                del limiter._sleepers[future]
                limiter._waiting -= 1
                limiter._waiting_tokens -= self.amounts[0]
        if self._state == LIVE:
            self._state = IN_USE

    def _give_back(self) -> None:
        if not self._refund_due():
            return
        limiter = self._limiter
        if self._marks is not None:
            request = limiter._refund_request(self.amounts, self._marks)
            try:
                limiter._dispatcher.post(request)
            except RuntimeError:  # no running loop: nothing can be sent
                limiter._backend_errors += 1
        elif self._local is not None:
            limiter._fallback_refund(None, self.amounts, self._local)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Take(TakeBlock):
    """The async context manager returned by ``take()``; its mark is the reservation (an
    int when the grant needed none)."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        self._mark = await self._limiter._acquire(self._tokens, self._timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._refunds(exc_type) and isinstance(self._mark, RedisReservation):
            self._mark._give_back()
