"""Per-key limits on Redis/Valkey: the keyed-backend protocols over the one script.

``RedisKeyedBackend`` (asyncio, on ``redis.asyncio``) and ``SyncRedisKeyedBackend`` (threads,
on ``redis.Redis``) keep the per-key state of ``KeyedLimiter`` / ``SyncKeyedLimiter`` at a
server, so every process using the same prefix shares each key's limits. Nothing here
decides anything: each call is one request to ``gcra.lua`` (the limiters' script, with the
server's clock) sent through the front ends' dispatchers, so it is coalesced with concurrent
calls, bounded by ``timeout`` and under the failure policy of ``_common``. A caller that must
wait has its slot booked at the server and the limiter sleeps locally until then.

A key's buckets are the strings ``prefix + "{" + key + "}:" + limit name``: the hash tag puts
them in one Cluster slot, so one script call decides all of a key's limits at once; each
expires when its bucket is full again, so idle keys cost nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from .._errors import BackendUnavailable, LimiterClosed
from .._fork import track
from .._gcra import Limit, LimitsLike, named_limits
from .._keyed import (
    DEFAULT_MAX_KEY_LENGTH,
    MemoryKeyedStore,
    Verdict,
    _check_key,
    _describe,
    check_costs,
)
from ._async import _AsyncLimiter
from ._common import Core, OnFailure, RedisStatistics, ServerFailure, pads, shared_limit
from ._script import (
    CHARGE,
    DONE,
    NO_MARK,
    PAD,
    REFUND,
    REFUSED,
    RESERVE,
    STATE,
    Request,
    Spec,
    make_spec,
)
from ._sync import _dispatcher_for as _sync_dispatcher_for
from ._sync import _resolve_client as _sync_resolve_client

__all__ = ["RedisKeyedBackend", "SyncRedisKeyedBackend"]

_MAX_WAIT = 2**53 - 1  # the script's numbers are doubles: a longer bound means "none" anyway


class _LocalMark:
    """The mark of a grant made by the fallback store while the server was down."""

    __slots__ = ("mark",)

    def __init__(self, mark: object) -> None:
        self.mark = mark


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's outcome as seen (its awaiting caller may have gone)."""
    if not future.cancelled():
        future.exception()


class _KeyedCore(Core):
    """What both keyed backends share: keys, requests, replies as Verdicts, the fallback."""

    _prefix: str
    _named: dict[str, Limit]
    _max_key_length: int
    _full: tuple[float, ...]
    _store: MemoryKeyedStore | None

    def _keyed_setup(
        self, limits: LimitsLike, prefix: str, max_key_length: int
    ) -> tuple[Spec, ...]:
        """Check the arguments; return the limits' specs, on a placeholder key."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if type(max_key_length) is not int or max_key_length < 1:
            raise ValueError(f"max_key_length must be an int >= 1, got {max_key_length!r}")
        named = named_limits(limits)
        self._prefix = prefix
        self._named = named
        self._max_key_length = max_key_length
        self._full = tuple(float(limit.capacity) for limit in named.values())
        self._store = None
        return tuple(
            make_spec(f"{prefix}{{<key>}}:{name}", name, limit.rate, limit.capacity, limit.weight)
            for name, limit in named.items()
        )

    @property
    def limits(self) -> Mapping[str, Limit]:
        """The limits every key is held to, by name; costs and Verdicts follow their order."""
        return self._named

    @property
    def prefix(self) -> str:
        """The prefix of every key this backend writes."""
        return self._prefix

    def keys_of(self, key: str) -> list[str]:
        """Return the server keys holding ``key``'s buckets, one per limit.

        Raises TypeError/ValueError for a key the backend refuses (see ``_specs_for``).
        """
        return [spec.key for spec in self._specs_for(key)]

    def _specs_for(self, key: str) -> tuple[Spec, ...]:
        """Return the limits' specs on ``key``'s server keys.

        Raises TypeError for a key that is not a str; ValueError for one that is empty (it
        would give no hash tag), longer than ``max_key_length``, or not encodable as UTF-8
        (a lone surrogate).
        """
        if type(key) is not str or not key or len(key) > self._max_key_length:
            _check_key(key, self._max_key_length)
            if not key:
                raise ValueError("a key must be a non-empty str")
        if not key.isascii():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"a key must be encodable as UTF-8 (no lone surrogates), got {key!r:.80}"
                ) from None
        head = f"{self._prefix}{{{key}}}:"
        return tuple(
            Spec(head + s.name, s.name, s.rate, s.capacity, s.weight, s.cost, s.scale, s.burst)
            for s in self._specs
        )

    # -- requests ----------------------------------------------------------------------------

    def _reserve_requests(
        self, specs: tuple[Spec, ...], costs: tuple[int, ...], max_wait_ns: int | None
    ) -> list[Request]:
        """Return the decision, preceded by a read of the limits it does not touch, if any.

        A limit with no cost cannot ride in the decision (the script commits every limit of
        a reservation at its grant time), but the Verdict reports its state too: the read
        goes in the same script call.
        """
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        check_costs(costs, len(specs))
        wait = -1 if max_wait_ns is None else min(max_wait_ns, _MAX_WAIT)
        items = tuple((s, n, NO_MARK, 0) for s, n in zip(specs, costs, strict=True) if n)
        decision = Request(RESERVE, items, wait, self)
        if len(items) == len(specs):
            return [decision]
        idle = tuple((s, 0, NO_MARK, 0) for s, n in zip(specs, costs, strict=True) if not n)
        return [Request(STATE, idle, -1, self), decision]

    def _keyed_charge_request(self, specs: tuple[Spec, ...], costs: tuple[int, ...]) -> Request:
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        self._check_charge(check_costs(costs, len(specs)))
        items = tuple((s, n, NO_MARK, 0) for s, n in zip(specs, costs, strict=True) if n)
        return Request(CHARGE, items, -1, self)

    def _keyed_refund_request(
        self, specs: tuple[Spec, ...], costs: tuple[int, ...], mark: object
    ) -> Request:
        """Return the refund of ``costs`` by ``mark`` (a server grant's, or None).

        Raises TypeError/ValueError if ``costs`` is not one int from 0 to 2**48 per limit.
        """
        self._check_charge(check_costs(costs, len(specs)))
        if mark is None:
            marks: tuple[Any, ...] = ((NO_MARK, 0),) * len(specs)
        elif (
            isinstance(mark, tuple)
            and len(mark) == len(specs)
            and all(isinstance(m, tuple) and len(m) == 2 for m in mark)
        ):
            marks = mark
        else:
            raise TypeError(f"mark {mark!r:.80} does not come from this backend")
        items = tuple((s, n, m[0], m[1]) for s, n, m in zip(specs, costs, marks, strict=True) if n)
        return Request(REFUND, items, -1, self)

    def _keyed_state_request(self, specs: tuple[Spec, ...]) -> Request:
        return Request(STATE, tuple((s, 0, NO_MARK, 0) for s in specs), -1, self)

    # -- replies -----------------------------------------------------------------------------

    def _buckets(
        self,
        specs: tuple[Spec, ...],
        costs: tuple[int, ...],
        touched: list[int],
        idle: list[int] | None,
    ) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """Return (available, full_in_ns) per limit from the replies' ``ahead`` values.

        ``touched`` answers for the limits with a cost, ``idle`` (a read) for the others;
        an idle limit whose read failed is reported as a bucket nobody touched.
        """
        available = []
        full_in = []
        j = k = 4  # each reply: status, wait, then (epoch, value, ahead) per limit
        for spec, n in zip(specs, costs, strict=True):
            if n:
                ahead = touched[j]
                j += 3
            elif idle is not None:
                ahead = idle[k]
                k += 3
            else:
                ahead = 0
            available.append(spec.tokens(ahead))
            full_in.append(-(-ahead // spec.scale) if ahead > 0 else 0)
        return tuple(available), tuple(full_in)

    def _decided(
        self,
        specs: tuple[Spec, ...],
        costs: tuple[int, ...],
        reply: list[int],
        idle: list[int] | None,
    ) -> Verdict:
        """Return the Verdict in a reservation's reply; count it.

        Raises AcquireTimeout when the grant would lie beyond what the script can count
        exactly (status 2: the wait is beyond ``max_wait`` anyway, unless that is days), and
        BackendUnavailable when a key holds something else.
        """
        status = reply[0]
        if status == DONE:
            wait = reply[1]
            self._count_grant(costs, wait)
            marks = []
            j = 2
            for n in costs:
                if n:
                    marks.append((reply[j], reply[j + 1]))
                    j += 3
                else:
                    marks.append((NO_MARK, 0))
            available, full_in = self._buckets(specs, costs, reply, idle)
            return Verdict(True, wait, tuple(marks), available, full_in)
        if status == REFUSED:
            self._rejected += 1
            available, full_in = self._buckets(specs, costs, reply, idle)
            return Verdict(False, reply[1], None, available, full_in)
        self._refusal(reply, costs, None, specs)
        raise AssertionError("unreachable")  # pragma: no cover

    def _peeked(self, specs: tuple[Spec, ...], reply: list[int]) -> Verdict:
        """Return the Verdict of a read: ``granted``/``wait_ns`` for one token per limit."""
        if reply[0] != DONE:
            self._refusal(reply, (1,) * len(specs), None, specs)
        wait = 0
        for j, spec in enumerate(specs):
            due = reply[4 + 3 * j] + spec.cost - spec.burst
            if due > 0:
                wait = max(wait, -(-due // spec.scale))
        available, full_in = self._buckets(specs, (1,) * len(specs), reply, None)
        return Verdict(wait == 0, wait, None, available, full_in)

    def _refund_reply(
        self, reply: list[int] | None, specs: tuple[Spec, ...], costs: tuple[int, ...]
    ) -> tuple[float, ...]:
        if reply is None:
            return (0.0,) * len(costs)
        if reply[0] != DONE:
            self._refusal(reply, costs, None, specs)
        return self._count_refund(reply, costs)

    # -- the failure policy ------------------------------------------------------------------

    def _fallback_store(self) -> MemoryKeyedStore:
        """The in-memory store deciding while the server is down: ``fallback_share`` of it."""
        store = self._store
        if store is None:
            share = self._share or 1.0
            limits = {s.name: Limit(*shared_limit(s, share)) for s in self._specs}
            store = self._store = MemoryKeyedStore(limits, max_key_length=self._max_key_length)
            self._outage_keys: set[str] = set()
        return store

    def _keyed_settle(self, key: str, specs: tuple[Spec, ...]) -> Request | None:
        """Return the request settling the fallback store's grants on ``key`` at the
        server (see ``pads``), or None: sent with the key's next decision."""
        store = self._store
        if store is None:
            return None
        if not len(store):
            self._store = None  # every key settled (or full again): nothing outstanding
            return None
        available = store.peek(key).available
        deficits = [
            limit.capacity - left
            for limit, left in zip(store.limits.values(), available, strict=True)
        ]
        units = pads(specs, deficits, self._share or 1.0, self._retry_interval)
        if not any(units):
            return None
        items = tuple((s, n, NO_MARK, 0) for s, n in zip(specs, units, strict=True) if n)
        return Request(PAD, items, -1, self)

    def _keyed_settled(self, key: str, reply: list[int] | None) -> None:
        if reply is not None and reply[0] == DONE and self._store is not None:
            self._store.discard(key)

    def _fallback_verdict(
        self,
        failure: ServerFailure,
        key: str,
        costs: tuple[int, ...],
        max_wait_ns: int | None,
    ) -> Verdict:
        """Decide a reservation without the server, or raise BackendUnavailable.

        Fail open grants at once and reports full buckets; fallback asks the local store
        (its Verdict, its smaller buckets).
        """
        self._fail(failure)
        if self._on_failure == "open":
            self._failed_open += 1
            self._count_grant(costs, 0)
            return Verdict(True, 0, None, self._full, (0,) * len(costs))
        store = self._fallback_store()
        for (name, limit), n in zip(store.limits.items(), costs, strict=True):
            if n > limit.capacity:
                raise BackendUnavailable(
                    f"{failure}; the fallback limiter (capacity {limit.capacity} of "
                    f"{self._named[name].capacity}) can never grant {n} tokens on limit {name!r}"
                ) from failure
        if key not in self._outage_keys:
            # The first local decision on the key: its bucket starts no earlier than the
            # latest slot this process knows booked there (the sleepers take their tokens).
            self._outage_keys.add(key)
            limits = [(limit.rate, limit.capacity) for limit in store.limits.values()]
            behind = self._behind(self._specs_for(key), limits)
            if any(behind):
                store.charge(key, behind)
        verdict = store.reserve(key, costs, max_wait_ns)
        if not verdict.granted:
            self._rejected += 1
            return verdict
        self._fallback_grants += 1
        self._count_grant(costs, verdict.wait_ns)
        return verdict._replace(mark=_LocalMark(verdict.mark))

    def _fallback_refund_of(
        self, failure: ServerFailure, key: str, costs: tuple[int, ...], marked: bool
    ) -> tuple[float, ...]:
        """A refund the server could not take: by mark, counted; else by the policy."""
        if marked:  # never raised: it runs while a cancelled caller unwinds
            self._backend_errors += 1
            return (0.0,) * len(costs)
        self._fail(failure)
        if self._on_failure != "fallback" or self._store is None:
            return (0.0,) * len(costs)
        back = self._store.refund(key, costs, None)
        self._refunded += sum(back)
        return back

    def _local_refund(
        self, key: str, costs: tuple[int, ...], mark: _LocalMark
    ) -> tuple[float, ...]:
        """Give back a grant of the fallback store, to that store."""
        check_costs(costs, len(self._specs))
        if self._store is None:
            return (0.0,) * len(costs)
        back = self._store.refund(key, costs, mark.mark)
        self._refunded += sum(back)
        return back

    def _fallback_charge_of(self, failure: ServerFailure, key: str, costs: tuple[int, ...]) -> None:
        self._fail(failure)
        if self._on_failure == "fallback":
            self._fallback_store().charge(key, costs)

    def _fallback_peek(self, failure: ServerFailure, key: str) -> Verdict:
        self._fail(failure)
        if self._on_failure != "fallback":
            raise BackendUnavailable(f"{failure}; nothing to read while it is down") from failure
        return self._fallback_store().peek(key)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        closed = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__}{name} [{_describe(self._named)}] prefix={self._prefix!r} "
            f"on_failure={self._on_failure}{closed}>"
        )


class RedisKeyedBackend(_KeyedCore, _AsyncLimiter):
    """Per-key token buckets at a Redis/Valkey server: the awaited ``KeyedLimiter`` backend.

    ``KeyedLimiter(backend=RedisKeyedBackend(client, {"default": Limit("10/s", 20)}))``
    holds every key to 10 tokens a second with bursts of 20, in every process that uses the
    same server and prefix. Several limits per key are decided together, all or nothing.

    Each call (``reserve``, ``refund``, ``charge``, ``peek``) is one atomic script call on the
    server's clock, in the core's exact integer arithmetic, coalesced with the process's
    concurrent calls on the same client. A reservation that must wait books its slot at the
    server; the limiter then sleeps locally. Verdicts carry each limit's tokens and time to
    full from that same call. A refund by mark gives back only what is provably still
    outstanding (the core's rule); it is sent even if its caller is cancelled meanwhile, and
    never raises.

    ``client``: a ``redis.asyncio.Redis`` or ``RedisCluster``, or a URL (then the backend
    owns the client; ``aclose()`` closes it). ``timeout``, ``on_failure`` (``"closed"``:
    raise ``BackendUnavailable``; ``"open"``: grant, reporting full buckets; ``"fallback"``:
    a ``MemoryKeyedStore`` at ``fallback_share`` of each limit decides), ``retry_interval``:
    as for ``RedisTokenBucket``. ``peek`` has nothing to read while the server is down and
    raises unless the policy is fallback.

    Keys must be non-empty ``str`` of at most ``max_key_length`` characters, encodable as
    UTF-8 (else TypeError/ValueError: hash long keys, as the ASGI middleware does). A refusal
    at the server beyond what it can count exactly (waits of days) raises AcquireTimeout; a
    key holding something else raises BackendUnavailable whatever the policy.
    """

    def __init__(
        self,
        client: Any,
        limits: LimitsLike,
        *,
        prefix: str = "ratekeeper:",
        timeout: float = 0.5,
        on_failure: OnFailure = "closed",
        fallback_share: float | None = None,
        retry_interval: float = 1.0,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        name: str | None = None,
    ) -> None:
        if isinstance(client, (redis.Redis, redis.RedisCluster)):
            raise TypeError("a blocking redis client goes to SyncRedisKeyedBackend")
        self._start(
            client,
            self._keyed_setup(limits, prefix, max_key_length),
            timeout=timeout,
            on_failure=on_failure,
            fallback_share=fallback_share,
            retry_interval=retry_interval,
            name=name,
        )

    async def reserve(self, key: str, costs: tuple[int, ...], max_wait_ns: int | None) -> Verdict:
        """Take ``costs`` for the earliest time they can go, if within ``max_wait_ns``.

        ``None`` means no bound. When refused nothing changed and ``wait_ns`` is the wait
        that would have been needed. Raises LimiterClosed after close(), BackendUnavailable
        per the policy, TypeError/ValueError for a bad key.
        """
        specs = self._specs_for(key)
        requests = self._reserve_requests(specs, costs, max_wait_ns)
        settle = self._keyed_settle(key, specs)
        if settle is not None:
            requests.insert(0, settle)
        try:
            if len(requests) == 1:
                reply = await self._dispatcher.call(requests[0])
                reads: list[list[int] | None] = []
            else:
                reads, reply = await self._dispatcher.call_group(requests)
        except ServerFailure as failure:
            return self._fallback_verdict(failure, key, costs, max_wait_ns)
        if settle is not None:
            self._keyed_settled(key, reads.pop(0))
        return self._decided(specs, costs, reply, reads[0] if reads else None)

    async def refund(self, key: str, costs: tuple[int, ...], mark: object) -> tuple[float, ...]:
        """Give back ``costs`` taken earlier (``mark`` from their Verdict, or None).

        Never more than is provably still outstanding (grants made since keep their cost,
        from the latest slot booked ahead); without a mark nothing goes back while a slot is
        booked ahead. Returns the tokens that went back, per limit. By mark, it is sent even
        if this caller is cancelled while it waits, and a failure is counted, not raised;
        without one, BackendUnavailable per the policy. Raises TypeError/ValueError if
        ``costs`` is not one int from 0 to 2**48 per limit.
        """
        specs = self._specs_for(key)
        if isinstance(mark, _LocalMark):
            return self._local_refund(key, costs, mark)
        request = self._keyed_refund_request(specs, costs, mark)
        if mark is None:
            try:
                reply = await self._dispatcher.call(request)
            except ServerFailure as failure:
                return self._fallback_refund_of(failure, key, costs, False)
            return self._refund_reply(reply, specs, costs)
        # By mark: the caller is typically unwinding a cancellation. The request is posted
        # with a future of its own and awaited through a shield, so that a second
        # cancellation cannot withdraw it from the queue.
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        request.future = future
        self._dispatcher.post(request)
        try:
            reply = await asyncio.shield(future)
        except ServerFailure as failure:
            return self._fallback_refund_of(failure, key, costs, True)
        try:
            return self._refund_reply(reply, specs, costs)
        except BackendUnavailable:
            self._backend_errors += 1
            return (0.0,) * len(costs)

    async def charge(self, key: str, costs: tuple[int, ...]) -> None:
        """Take ``costs`` now without checking, even into debt.

        Raises BackendUnavailable per the policy, AcquireTimeout if the debt would pass what
        the server counts exactly.
        """
        specs = self._specs_for(key)
        request = self._keyed_charge_request(specs, costs)
        try:
            reply = await self._dispatcher.call(request)
        except ServerFailure as failure:
            self._fallback_charge_of(failure, key, costs)
            return
        if reply[0] != DONE:
            self._refusal(reply, costs, None, specs)
        self._granted_tokens += sum(costs)

    async def peek(self, key: str) -> Verdict:
        """Describe the key's buckets; ``granted``/``wait_ns`` are for one token per limit."""
        specs = self._specs_for(key)
        try:
            reply = await self._dispatcher.call(self._keyed_state_request(specs))
        except ServerFailure as failure:
            return self._fallback_peek(failure, key)
        return self._peeked(specs, reply)


class SyncRedisKeyedBackend(_KeyedCore):
    """The blocking twin of ``RedisKeyedBackend``, for ``SyncKeyedLimiter``: a ``redis.Redis``.

    Same decisions, arguments and errors; calls block the calling thread and threads share
    round trips. A client passed in must have a ``socket_timeout`` (it bounds every call).
    Thread-safe.
    """

    def __init__(
        self,
        client: Any,
        limits: LimitsLike,
        *,
        prefix: str = "ratekeeper:",
        timeout: float = 0.5,
        on_failure: OnFailure = "closed",
        fallback_share: float | None = None,
        retry_interval: float = 1.0,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        name: str | None = None,
    ) -> None:
        if isinstance(client, (aioredis.Redis, aioredis.RedisCluster)):
            raise TypeError("a redis.asyncio client goes to RedisKeyedBackend")
        self._setup(
            self._keyed_setup(limits, prefix, max_key_length),
            on_failure=on_failure,
            fallback_share=fallback_share,
            retry_interval=retry_interval,
            timeout=timeout,
            name=name,
        )
        self._client, self._owned = _sync_resolve_client(client, self._timeout)
        self._lock = threading.Lock()
        self._dispatcher = _sync_dispatcher_for(self._client, self._retry_interval)
        track(self)

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self._lock,)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def reserve(self, key: str, costs: tuple[int, ...], max_wait_ns: int | None) -> Verdict:
        """Take ``costs`` for the earliest time they can go; see RedisKeyedBackend.reserve."""
        specs = self._specs_for(key)
        requests = self._reserve_requests(specs, costs, max_wait_ns)
        with self._lock:
            settle = self._keyed_settle(key, specs)
        if settle is not None:
            requests.insert(0, settle)
        try:
            if len(requests) == 1:
                reply = self._dispatcher.call(requests[0])
                reads: list[list[int] | None] = []
            else:
                reads, reply = self._dispatcher.call_group(requests)
        except ServerFailure as failure:
            with self._lock:
                return self._fallback_verdict(failure, key, costs, max_wait_ns)
        with self._lock:
            if settle is not None:
                self._keyed_settled(key, reads.pop(0))
            return self._decided(specs, costs, reply, reads[0] if reads else None)

    def refund(self, key: str, costs: tuple[int, ...], mark: object) -> tuple[float, ...]:
        """Give back ``costs`` taken earlier; see RedisKeyedBackend.refund."""
        specs = self._specs_for(key)
        if isinstance(mark, _LocalMark):
            with self._lock:
                return self._local_refund(key, costs, mark)
        request = self._keyed_refund_request(specs, costs, mark)
        try:
            reply = self._dispatcher.call(request)
        except ServerFailure as failure:
            with self._lock:
                return self._fallback_refund_of(failure, key, costs, mark is not None)
        with self._lock:
            try:
                return self._refund_reply(reply, specs, costs)
            except BackendUnavailable:
                if mark is None:
                    raise
                self._backend_errors += 1
                return (0.0,) * len(costs)

    def charge(self, key: str, costs: tuple[int, ...]) -> None:
        """Take ``costs`` now without checking, even into debt."""
        specs = self._specs_for(key)
        request = self._keyed_charge_request(specs, costs)
        try:
            reply = self._dispatcher.call(request)
        except ServerFailure as failure:
            with self._lock:
                self._fallback_charge_of(failure, key, costs)
            return
        with self._lock:
            if reply[0] != DONE:
                self._refusal(reply, costs, None, specs)
            self._granted_tokens += sum(costs)

    def peek(self, key: str) -> Verdict:
        """Describe the key's buckets; ``granted``/``wait_ns`` are for one token per limit."""
        specs = self._specs_for(key)
        try:
            reply = self._dispatcher.call(self._keyed_state_request(specs))
        except ServerFailure as failure:
            with self._lock:
                return self._fallback_peek(failure, key)
        with self._lock:
            return self._peeked(specs, reply)

    def close(self) -> None:
        """Refuse later reservations and charges; close a client made from a URL. Idempotent."""
        self._closed = True
        if self._owned:
            self._client.close()

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def statistics(self) -> RedisStatistics:
        """Return this process's counters of the backend (server requests, errors...)."""
        with self._lock:
            return self._statistics()
