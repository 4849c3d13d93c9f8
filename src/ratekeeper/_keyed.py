"""Per-key limits: one limit definition (or several at once), a bucket per key.

``KeyedLimiter`` (asyncio) and ``SyncKeyedLimiter`` (threads) answer "may key K have n tokens
now, or when?" for any number of keys. Each asks a *backend* that keeps the per-key state and
makes each decision atomically. This module ships the in-memory backend, ``MemoryKeyedStore``;
a shared one (Redis) plugs in through the same small protocol, ``KeyedBackend`` (called
directly) or ``AsyncKeyedBackend`` (awaited).

The arithmetic is the core's GCRA in exact integer units (see ``_gcra``): for each key and
limit the store keeps one integer, the theoretical arrival time ``tat`` in that limit's units
(``ns * scale``), and nothing else. A key whose buckets are all full (``tat <= now``) carries
no information, so it is dropped; memory follows the keys in use, not the keys ever seen.

Waiting is a reservation. A caller that must wait takes its tokens at once for the earliest
time they can go and then sleeps until that time. Reservations are made in arrival order and
a newcomer sees the ``tat`` the sleepers pushed forward, so within a key callers are served
first come, first served, and nobody barges. Nothing is kept per key while nobody waits; the
asyncio limiter arms one timer for all its sleepers. What it costs: a caller's place is fixed
when it arrives, so tokens a cancelled sleeper gives back go to later arrivals, not to the
callers already sleeping (they keep their slot; nobody is ever served later than promised).
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from ._asyncio import check_timeout
from ._clock import MONOTONIC, Clock, Timer
from ._errors import AcquireTimeout, LimiterClosed
from ._fork import track
from ._gcra import Limit, LimitsLike, check_amount, check_tokens, named_limits
from ._rate import RateLike, several
from ._scheduler import WAIT_BUCKETS, Statistics

if TYPE_CHECKING:
    from ._keyview import KeyedView, SyncKeyedView

__all__ = [
    "AsyncKeyedBackend",
    "KeyedBackend",
    "KeyedLimiter",
    "KeyedStatistics",
    "Limit",
    "MemoryKeyedStore",
    "SyncKeyedLimiter",
    "Verdict",
]

DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_KEY_LENGTH = 256
# Idle buckets dropped per call at most, so that reclaiming a million idle keys never stalls
# one caller; the rest go on the following calls, or all at once with ``sweep()``.
_SWEEP_BATCH = 256
# Sweeps wait at least this long (ns) for the next key to be full, so that a hot key that
# refills between its requests is not dropped and re-inserted on every call.
_SWEEP_PAUSE_NS = 1_000_000
_PAST = -(1 << 126)  # a time (ns) earlier than any clock reading: due at once
_WAIT_BUCKETS_NS = tuple(round(b * 1e9) for b in WAIT_BUCKETS)
_NO_WAIT = 0.0  # the default maximum wait, recognised by identity to skip its validation


Limits = LimitsLike
Tokens = int | Mapping[str, int]
"""What a call takes: an int (from every limit without a weight; weighted ones take their
weight), or a mapping of limit name to tokens (unnamed limits: 0)."""


class Verdict(NamedTuple):
    """The answer to "may this key have these tokens?", with what a client should be told.

    ``granted``: the tokens are taken, for use ``wait_ns`` from now (0: at once). When not
    granted nothing changed and ``wait_ns`` is the wait that would have been needed.
    ``mark`` identifies the grant for ``refund`` (opaque; None when refused).
    ``available`` and ``full_in_ns`` describe each limit's bucket after the decision, in the
    order of the limiter's limits: tokens available (negative in debt, or while reserved
    tokens are outstanding) and ns until the bucket is full again.
    """

    granted: bool
    wait_ns: int
    mark: object
    available: tuple[float, ...]
    full_in_ns: tuple[int, ...]

    @property
    def wait(self) -> float:
        """The wait in seconds (see ``wait_ns``)."""
        return self.wait_ns / 1e9


ONE = (1,)
"""One token from one limit: the costs the limiters pass for the common call, recognised by
identity on the memory store's fast path."""

# Verdict(...) runs a Python-level __new__; this builds the same tuple in half the time.
_new_verdict = tuple.__new__


@runtime_checkable
class KeyedBackend(Protocol):
    """Where per-key state lives, for a backend called without awaiting (memory).

    Every call is one atomic decision on the backend's own clock. ``costs`` has one entry per
    limit, each 0 (the limit is not involved) up to that limit's capacity, at least one > 0;
    the limiters validate it before calling. Keys are ``str``.
    """

    @property
    def limits(self) -> Mapping[str, Limit]:
        """The limits by name; ``costs`` and Verdicts follow their order."""
        ...

    def reserve(self, key: str, costs: tuple[int, ...], max_wait_ns: int | None) -> Verdict:
        """Take ``costs`` for the earliest time they can go, if within ``max_wait_ns``.

        ``None`` means no bound. Several limits are all-or-nothing: all are taken for the
        same time, or none is.
        """
        ...

    def refund(self, key: str, costs: tuple[int, ...], mark: object) -> tuple[float, ...]:
        """Give back tokens taken earlier (``mark`` from their Verdict, or None).

        Never more than is provably still outstanding, counting grants made since as taken
        (see ``_refunded_tat``). Returns the tokens that went back, per limit.
        """
        ...

    def charge(self, key: str, costs: tuple[int, ...]) -> None:
        """Take ``costs`` now without checking, even into debt."""
        ...

    def peek(self, key: str) -> Verdict:
        """Describe the key's buckets; ``granted``/``wait_ns`` are for one token per limit."""
        ...


@runtime_checkable
class AsyncKeyedBackend(Protocol):
    """The awaited form of ``KeyedBackend``, for a backend across the network (Redis)."""

    @property
    def limits(self) -> Mapping[str, Limit]: ...

    async def reserve(
        self, key: str, costs: tuple[int, ...], max_wait_ns: int | None
    ) -> Verdict: ...

    async def refund(self, key: str, costs: tuple[int, ...], mark: object) -> tuple[float, ...]: ...

    async def charge(self, key: str, costs: tuple[int, ...]) -> None: ...

    async def peek(self, key: str) -> Verdict: ...


# -- the arithmetic --------------------------------------------------------------------------
# Pure helpers over one limit's integers, the same rules as Gcra (``_gcra``) written for a
# bare ``tat`` instead of an object: a Gcra per key takes about 170 bytes and a TokenBucket
# about 640, where a bare tat takes 40. Candidates for ``_gcra`` as module functions, so that
# Gcra and this module share one statement of them.


def _refunded_tat(
    tat: int, now: int, back: int, mark: int | None, booked: int, *, counted: int
) -> int:
    """Return the ``tat`` after giving back ``back`` units taken by the grant ``mark``.

    ``Gcra.refund_at``'s rule on a bare ``tat``: units taken since the grant keep their
    cost, counted from the latest slot booked ahead (``booked``, units; 0: none) if it lies
    ahead, so that no promised slot is handed to a second caller; a full bucket gives
    nothing back; nothing goes below ``now`` (above the capacity); without a mark nothing
    goes back while a slot is booked ahead. ``counted`` is the ``tat`` as it would be had
    nothing been given back (see ``MemoryKeyedStore._counted``) and the mark is its value
    just after the grant, so ``counted - mark`` is every unit granted since, undone or not,
    as the core counts them: refunds, the grant's own included, never make later grants
    look undone, and once a grant has been given back as far as it can go, refunding it
    again gives nothing.
    """
    if tat <= now:
        return tat
    if mark is None:
        if booked > now:
            return tat
        floor = now
    else:
        floor = (booked if booked > now else now) + (counted - mark if counted > mark else 0)
    new = tat - back
    if new < floor:
        new = floor
    return new if new < tat else tat


def check_costs(costs: object, limits: int) -> tuple[int, ...]:
    """Return ``costs`` if it is a tuple of ``limits`` ints from 0 to 2**48.

    The backends' own check on what they are given to charge or refund (the limiters
    validate a caller's tokens before that). Raises TypeError for another shape or for an
    amount that is not an int (a float would make a key's exact integer state inexact),
    ValueError for an amount out of range.
    """
    if type(costs) is not tuple or len(costs) != limits:
        raise TypeError(
            f"costs must be a tuple of {limits} int(s), one per limit, got {costs!r:.80}"
        )
    for amount in costs:
        check_amount(amount, "each of costs")
    return costs


class _Params:
    """One limit's constants in exact units: ``scale`` units per ns, ``cost`` units a token."""

    __slots__ = ("burst", "burst_ns", "capacity", "cost", "scale")

    def __init__(self, limit: Limit) -> None:
        self.scale = limit.rate.ns_per_token.denominator
        self.cost = limit.rate.ns_per_token.numerator
        self.capacity = limit.capacity
        self.burst = limit.capacity * self.cost
        self.burst_ns = -(-self.burst // self.scale)  # a full bucket's span, in ns

    def state(self, tat: int, now: int) -> tuple[float, int]:
        """Return (tokens available, ns until full) for ``tat`` at ``now`` (units)."""
        ahead = tat - now
        if ahead <= 0:
            return float(self.capacity), 0
        return (self.burst - ahead) / self.cost, -(-ahead // self.scale)


def _describe(limits: Mapping[str, Limit]) -> str:
    return ", ".join(f"{name}: {limit}" for name, limit in limits.items())


def _wait_ns(max_wait: float | None) -> int | None:
    """Return a maximum wait in ns (None: no bound); raise TypeError/ValueError if bad."""
    if max_wait is _NO_WAIT or (type(max_wait) is float and max_wait == 0.0):
        return 0  # the common case, without the checks
    return check_timeout(max_wait)


def _check_key(key: object, max_length: int) -> str:
    if type(key) is not str:
        raise TypeError(f"a key must be a str, not {type(key).__name__} {key!r:.80}")
    if len(key) > max_length:
        raise ValueError(
            f"a key of {len(key)} characters exceeds max_key_length={max_length}: hash long "
            f"keys (e.g. hashlib.sha256) or raise max_key_length"
        )
    return key


class MemoryKeyedStore:
    """Per-key GCRA state in this process's memory: the ``KeyedBackend`` the limiters default to.

    Per key it keeps the key and one integer per limit (a tuple of them for several limits) in
    a plain dict: about 70 bytes plus the key string, measured in ``benchmarks/bench_web.py``.
    The keys live in two generations, each a dict in insertion order: *recent*, the keys used
    since the last rotation, and *older*, the keys not used since (a call on an older key
    moves it to recent). When every older key is gone, recent becomes older (once its first
    key may be full: not before there is something to reclaim) and a new recent starts.
    Memory stays bounded:

    - a key whose buckets are all full again is dropped (it carries no information). Calls
      drop such keys from the older generation as they go, in the order they entered it, up
      to 256 a call, stopping at the first key that is not full yet: a key is dropped at most
      two full bucket spans (capacity / rate, but >= 1 ms) after it is full; ``sweep()``
      drops them all at once. A key in debt is stepped over, never in the way. An emptied
      generation's dict is released, so the memory goes back too;
    - at ``max_keys`` live keys a new key first makes room by dropping the next older key if
      it is full; failing that it evicts that key. So eviction takes older keys first, in the
      order they entered the older generation (rotating when it is empty): a key used since
      the last rotation is never evicted while a key not used since is live. Eviction forgets
      a bucket that was not full, so that key starts full again: with keys in active use
      beyond ``max_keys``, each can get up to one extra burst. ``evicted`` counts these;
      ``dropped`` counts lossless drops.

    Thread-safe (one short lock per call), so one store may serve a ``KeyedLimiter`` and a
    ``SyncKeyedLimiter`` at once. Raises TypeError for a key that is not a ``str`` and
    ValueError for one longer than ``max_key_length``.
    """

    __slots__ = (
        "__weakref__",
        "_booked",
        "_booked_purge",
        "_burst",
        "_clock",
        "_counted",
        "_counted_purge",
        "_extra_tokens",
        "_limits",
        "_lock",
        "_max_key_length",
        "_max_keys",
        "_now_ns",
        "_older",
        "_older_head",
        "_older_items",
        "_older_live",
        "_params",
        "_recent",
        "_rotate_due",
        "_scale",
        "_single",
        "_slack",
        "_sweep_at",
        "_unit",
        "dropped",
        "evicted",
        "granted",
        "rejected",
    )

    def __init__(
        self,
        limits: Limits,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        clock: Clock | None = None,
    ) -> None:
        named = named_limits(limits)
        for value, what in ((max_keys, "max_keys"), (max_key_length, "max_key_length")):
            if type(value) is not int:
                raise TypeError(f"{what} must be an int >= 1, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{what} must be an int >= 1, got {value}")
        self._limits = named
        self._params = tuple(_Params(limit) for limit in named.values())
        self._single = len(named) == 1
        # One limit's constants, read on the hot paths without going through _params:
        # units per ns, units a token and a full bucket's units.
        first = self._params[0]
        self._scale = first.scale
        self._unit = first.cost
        self._burst = first.burst
        self._max_keys = max_keys
        self._max_key_length = max_key_length
        self._clock = MONOTONIC if clock is None else clock
        self._now_ns = self._clock.now_ns
        self._lock = threading.Lock()
        track(self)
        # key -> tat (one limit) or tuple of tats (several): the keys used since the last
        # rotation. The older generation maps each key not used since to its value, or to None
        # once it has moved to recent or gone: it is never resized, so that one iterator walks
        # it in order, resuming where the last sweep stopped (``_older_head``: the key it
        # stopped at, not yet full). ``_older_live`` counts its keys not None.
        self._recent: dict[str, Any] = {}
        self._older: dict[str, Any] = {}
        self._older_items: Iterator[tuple[str, Any]] = iter(())
        self._older_head: str | None = None
        self._older_live = 0
        # key -> the latest slot (ns) booked ahead by a reservation that had to wait: only
        # keys with a sleeper are here (see _book). Refunds must not hand such a slot out.
        self._booked: dict[str, int] = {}
        self._booked_purge = 64
        # key -> its tat (a tuple of them: several limits) as it would be had nothing been
        # given back: only keys with tokens given back that time has not yet caught up with
        # are here. Refund marks are its value after the grant, so the units granted since
        # a mark are counted exactly, whatever was given back since (see _refunded_tat).
        self._counted: dict[str, Any] = {}
        self._counted_purge = 64
        self._sweep_at = _PAST  # when the next older key may be full (empty: every 1 ms)
        self._rotate_due: int | None = None  # when recent may rotate (None: not looked yet)
        # A full bucket's span (ns): a key not full for longer than that from now is in debt.
        self._slack = max(p.burst_ns for p in self._params)
        self.dropped = 0
        self.evicted = 0
        self.granted = 0  # decisions granted (a reservation counts when it is made)
        self._extra_tokens = 0  # granted_tokens - granted: one count per grant of one token
        self.rejected = 0

    @property
    def limits(self) -> Mapping[str, Limit]:
        """The limits every key is held to, by name."""
        return self._limits

    @property
    def granted_tokens(self) -> int:
        """The first limit's tokens in the decisions granted."""
        return self.granted + self._extra_tokens

    @property
    def clock(self) -> Clock:
        """The clock decisions are made on."""
        return self._clock

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self._lock,)

    def _after_fork(self) -> None:
        """In a forked child: a new lock; the keys' state is the parent's at the fork."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return the number of live keys (buckets not yet known to be full)."""
        return len(self._recent) + self._older_live

    def __bool__(self) -> bool:
        return True  # a store with no live keys is still a store

    # -- deciding ----------------------------------------------------------------------------

    def reserve(self, key: str, costs: tuple[int, ...], max_wait_ns: int | None) -> Verdict:
        """Take ``costs`` for the earliest time they can go, if within ``max_wait_ns``."""
        lock = self._lock  # acquire/release: half the cost of ``with`` on this hot path
        lock.acquire()
        try:
            now_ns = self._now_ns()
            if now_ns >= self._sweep_at:
                self._sweep(now_ns, _SWEEP_BATCH)
            if not self._single:
                return self._reserve_all(key, costs, now_ns, max_wait_ns)
            p = self._params[0]
            scale, cost, burst = p.scale, p.cost, p.burst
            now = now_ns * scale
            tats = self._recent
            tat = tats.get(key)
            if tat is None and self._older_live:
                tat = self._revive(key)
            base = tat if tat is not None and tat > now else now
            new = base + costs[0] * cost
            if type(new) is not int:
                check_costs(costs, 1)  # raises: a float would make the tat inexact
            due = new - burst - now
            wait = -(-due // scale) if due > 0 else 0
            if max_wait_ns is not None and wait > max_wait_ns:
                self.rejected += 1
                ahead = base - now
                return _new_verdict(
                    Verdict, (False, wait, None, ((burst - ahead) / cost,), (-(-ahead // scale),))
                )
            if tat is None:
                self._insert(key, new, now_ns)
            else:
                tats[key] = new
            if wait:
                self._book(key, now_ns + wait)
            self.granted += 1
            self._extra_tokens += costs[0] - 1
            ahead = new - now
            mark = new if not self._counted else self._count(key, new, now, costs[0] * cost)
            return _new_verdict(
                Verdict, (True, wait, mark, ((burst - ahead) / cost,), (-(-ahead // scale),))
            )
        finally:
            lock.release()

    def take(self, key: str, costs: tuple[int, ...]) -> bool:
        """Take ``costs`` if they can go now; never waits. Faster ``reserve(key, costs, 0)``.

        Optional in the backend protocol: the limiters' ``try_acquire`` uses it when present.
        """
        lock = self._lock  # as in reserve
        lock.acquire()
        try:
            now_ns = self._now_ns()
            if now_ns >= self._sweep_at:
                self._sweep(now_ns, _SWEEP_BATCH)
            if not self._single:
                return self._reserve_all(key, costs, now_ns, 0).granted
            if costs is ONE:  # the limiters' one token, already checked
                tokens = 1
                units = self._unit
            else:
                tokens = costs[0]
                units = self._unit * tokens
                if type(units) is not int:
                    check_costs(costs, 1)  # raises: a float would make the tat inexact
            now = now_ns * self._scale
            tats = self._recent
            fresh = now + units
            if fresh > 256:
                tat = tats.setdefault(key, fresh)
                new = tat is fresh
            else:  # ints up to 256 are shared: identity cannot tell a new key (clock near 0)
                tat = tats.get(key)
                new = tat is None
                if new:
                    tat = tats[key] = fresh
            if new and self._older_live:
                value = self._revive(key)  # in place of the fresh entry: no second one
                if value is not None:
                    tat = value
                    new = False
            if new and (
                type(key) is not str
                or len(key) > self._max_key_length
                or len(tats) + self._older_live > self._max_keys
            ):
                del tats[key]  # a bad key, or no room yet: settled the slow way
                self._insert(key, fresh, now_ns)
            if not new:
                if tat < now:
                    tat = now
                tat += units
                if tat - now > self._burst:
                    self.rejected += 1
                    return False
                tats[key] = tat
            if self._counted:
                self._count(key, tat, now, units)
            self.granted += 1
            if tokens != 1:
                self._extra_tokens += tokens - 1
            return True
        finally:
            lock.release()

    def _reserve_all(
        self, key: str, costs: tuple[int, ...], now_ns: int, max_wait_ns: int | None
    ) -> Verdict:
        """Several limits: the grant time is the latest of theirs; all are taken for it."""
        old = self._lookup(key)
        waits = []
        for i, p in enumerate(self._params):
            need = 0
            if costs[i]:
                now = now_ns * p.scale
                tat = now if old is None else old[i]
                due = (tat if tat > now else now) + costs[i] * p.cost - p.burst - now
                if due > 0:
                    need = -(-due // p.scale)
            waits.append(need)
        wait = max(waits)
        if max_wait_ns is not None and wait > max_wait_ns:
            self.rejected += 1
            return self._verdict(False, wait, None, old, now_ns)
        # As CompositeGcra.reserve_at: a limit that sets the grant time commits now (exactly
        # as one limit alone would); one that could have served earlier commits at the grant
        # time, or it would look full again while the tokens are in use.
        at_ns = now_ns + wait
        new = []
        ats = []
        for i, p in enumerate(self._params):
            now = now_ns * p.scale
            tat = now if old is None else old[i]
            at = now if waits[i] == wait else at_ns * p.scale
            if costs[i]:
                tat = (tat if tat > at else at) + costs[i] * p.cost
                if type(tat) is not int:
                    check_costs(costs, len(self._params))  # raises: the tat must stay exact
            new.append(tat)
            ats.append(at)
        value = tuple(new)
        if old is None:
            self._insert(key, value, now_ns)
        else:
            self._recent[key] = value
        if wait:
            self._book(key, at_ns)
        self.granted += 1
        self._extra_tokens += costs[0] - 1
        mark = value if not self._counted else self._count_all(key, value, ats, costs)
        return self._verdict(True, wait, mark, value, now_ns)

    def _verdict(
        self, granted: bool, wait: int, mark: object, tats: tuple[int, ...] | None, now_ns: int
    ) -> Verdict:
        available = []
        full_in = []
        for i, p in enumerate(self._params):
            now = now_ns * p.scale
            tokens, ns = p.state(now if tats is None else tats[i], now)
            available.append(tokens)
            full_in.append(ns)
        return Verdict(granted, wait, mark, tuple(available), tuple(full_in))

    def charge(self, key: str, costs: tuple[int, ...]) -> None:
        """Take ``costs`` now without checking, even into debt.

        Raises TypeError/ValueError if ``costs`` is not one int from 0 to 2**48 per limit.
        """
        check_costs(costs, len(self._params))
        with self._lock:
            now_ns = self._now_ns()
            if now_ns >= self._sweep_at:
                self._sweep(now_ns, _SWEEP_BATCH)
            old = self._lookup(key)
            nows = [now_ns * p.scale for p in self._params]
            new: Any
            if self._single:
                now, units = nows[0], costs[0] * self._params[0].cost
                new = (old if old is not None and old > now else now) + units
            else:
                values = []
                for i, p in enumerate(self._params):
                    tat = nows[i] if old is None else old[i]
                    if tat < nows[i]:
                        tat = nows[i]
                    values.append(tat + costs[i] * p.cost)
                new = tuple(values)
            if old is None:
                self._insert(key, new, now_ns)
            else:
                self._recent[key] = new
            if self._counted:
                if self._single:
                    self._count(key, new, now, units)
                else:
                    self._count_all(key, new, nows, costs)

    def _count(self, key: str, tat: int, at: int, units: int) -> int:
        """Count a grant of ``units`` committed at ``at`` into the key's counted tat (one
        limit, units); return the grant's refund mark.

        The counted tat moves as the tat would have, had nothing been given back: once it is
        no further ahead than the tat (time has caught up with the refunds), it goes.
        """
        counted = self._counted.get(key)
        if counted is None:
            return tat
        counted = (counted if counted > at else at) + units
        if counted > tat:
            self._counted[key] = counted
            return counted
        del self._counted[key]
        return tat

    def _count_all(
        self, key: str, tats: tuple[int, ...], ats: list[int], costs: tuple[int, ...]
    ) -> tuple[int, ...]:
        """``_count`` for several limits: ``ats`` and ``costs`` per limit; return the mark."""
        counted = self._counted.get(key)
        if counted is None:
            return tats
        marks = []
        for i, p in enumerate(self._params):
            value = counted[i]
            if costs[i]:
                at = ats[i]
                value = (value if value > at else at) + costs[i] * p.cost
            marks.append(value)
        mark = tuple(marks)
        if any(m > t for m, t in zip(mark, tats, strict=True)):
            self._counted[key] = mark
            return mark
        del self._counted[key]
        return tats

    def refund(self, key: str, costs: tuple[int, ...], mark: object) -> tuple[float, ...]:
        """Give back tokens taken earlier; return how many went back, per limit.

        Raises TypeError/ValueError if ``costs`` is not one int from 0 to 2**48 per limit,
        TypeError for a mark that does not come from this store.
        """
        check_costs(costs, len(self._params))
        with self._lock:
            now_ns = self._now_ns()
            old = self._lookup(key)
            if old is None:
                return (0.0,) * len(self._params)  # full (or evicted): nothing is outstanding
            olds = (old,) if self._single else old
            marks = (mark,) if self._single else mark
            if marks is not None and (not isinstance(marks, tuple) or len(marks) != len(olds)):
                raise TypeError(f"mark {mark!r} does not come from this store")
            booked = self._booked.get(key, 0)
            if booked and booked <= now_ns:
                del self._booked[key]  # that slot has come: nothing is booked ahead
                booked = 0
            counted = self._counted.get(key, old)
            counts = (counted,) if self._single else counted
            new = []
            back = []
            full = True
            for i, p in enumerate(self._params):
                now = now_ns * p.scale
                tat = olds[i]
                if costs[i]:
                    tat = _refunded_tat(
                        tat,
                        now,
                        costs[i] * p.cost,
                        None if marks is None else marks[i],
                        booked * p.scale,
                        counted=counts[i],
                    )
                back.append((olds[i] - tat) / p.cost)
                new.append(tat)
                full = full and tat <= now
            if full:
                del self._recent[key]
                self.dropped += 1
            else:
                self._recent[key] = new[0] if self._single else tuple(new)
            if any(back) and key not in self._counted:
                self._keep_count(key, counted, now_ns)
            return tuple(back)

    def peek(self, key: str) -> Verdict:
        """Describe the key's buckets; ``granted``/``wait_ns`` are for one token per limit."""
        with self._lock:
            now_ns = self._now_ns()
            old = self._recent.get(key)
            if old is None:
                old = self._older.get(key)  # None: absent, or no longer there
        tats = None if old is None else (old,) if self._single else old
        wait = 0
        if tats is not None:
            for tat, p in zip(tats, self._params, strict=True):
                due = tat + p.cost - p.burst - now_ns * p.scale
                if due > 0:
                    wait = max(wait, -(-due // p.scale))
        return self._verdict(wait == 0, wait, None, tats, now_ns)

    def _keep_count(self, key: str, counted: Any, now_ns: int) -> None:
        """Start keeping ``key``'s counted tat (tokens were given back: it is now ahead).

        Entries that time has caught up with are purged when the dict has doubled since the
        last purge, so it stays as small as the keys with refunds still ahead of now.
        """
        entries = self._counted
        entries[key] = counted
        if len(entries) > self._counted_purge:
            full_at = self._full_at
            for stale in [k for k, value in entries.items() if full_at(value) <= now_ns]:
                del entries[stale]
            self._counted_purge = max(64, 2 * len(entries))

    def _book(self, key: str, slot_ns: int) -> None:
        """Remember the latest slot booked ahead for ``key`` (a sleeper's): it is promised.

        Only keys with a sleeper have an entry; entries whose slot has come are purged when
        the dict has doubled since the last purge, so it stays as small as the sleepers.
        """
        booked = self._booked
        if booked.get(key, 0) < slot_ns:
            booked[key] = slot_ns
        if len(booked) > self._booked_purge:
            now_ns = self._now_ns()
            for stale in [k for k, slot in booked.items() if slot <= now_ns]:
                del booked[stale]
            self._booked_purge = max(64, 2 * len(booked))

    # -- bounding memory ---------------------------------------------------------------------

    def _lookup(self, key: str) -> Any:
        """Return ``key``'s value (None: not live), moving it to recent if it was older."""
        value = self._recent.get(key)
        if value is None and self._older_live:
            value = self._revive(key)
        return value

    def _revive(self, key: str) -> Any:
        """Move ``key`` from the older generation to recent; return its value (None: absent)."""
        older = self._older
        value = older.get(key)
        if value is not None:
            older[key] = None  # an assignment, not a deletion: the sweep's iterator stays valid
            self._older_live -= 1
            self._recent[key] = value
            if not self._older_live:
                self._release_older()
        return value

    def _release_older(self) -> None:
        """Release the older generation's dict once no key in it is live.

        Its keys left as they were used or dropped, but a dict never shrinks: until then
        every key that moved to recent is held twice.
        """
        self._older = {}
        self._older_items = iter(())
        self._older_head = None

    def _insert(self, key: str, value: Any, now_ns: int) -> None:
        if type(key) is not str or len(key) > self._max_key_length:
            _check_key(key, self._max_key_length)
        if len(self._recent) + self._older_live >= self._max_keys:
            self._make_room(now_ns)
        self._recent[key] = value

    def _make_room(self, now_ns: int) -> None:
        """Drop the next older key if it is full; failing that, evict it."""
        self._sweep(now_ns, 8)
        if len(self._recent) + self._older_live < self._max_keys:
            return
        if not self._older_live:
            self._rotate()
        lost, _ = self._next_older()
        self._older[lost] = None
        self._older_live -= 1
        self._booked.pop(lost, None)
        self._counted.pop(lost, None)
        self.evicted += 1

    def _rotate(self) -> None:
        """Make recent the older generation (the emptied one is released) and start anew."""
        recent = self._recent
        self._older = recent
        self._older_items = iter(recent.items())
        self._rotate_due = None
        self._older_head = None
        self._older_live = len(recent)
        self._recent = {}

    def _next_older(self) -> tuple[str, Any]:
        """Return the next live older key and its value, in the order they entered it.

        Only while ``_older_live`` (the caller checks); the key stays in place until the
        caller settles it.
        """
        head = self._older_head
        if head is not None:
            self._older_head = None
            value = self._older[head]
            if value is not None:
                return head, value
        for key, value in self._older_items:
            if value is not None:
                return key, value
        raise AssertionError(f"{self._older_live} older keys counted, none found")

    def _full_at(self, value: Any) -> int:
        """Return when (ns) a key's buckets are all full again."""
        if self._single:
            tat: int = value
            return -(-tat // self._params[0].scale)
        tats: tuple[int, ...] = value
        return max(-(-t // p.scale) for t, p in zip(tats, self._params, strict=True))

    def _sweep(self, now_ns: int, budget: int) -> int:
        """Drop full older keys, in order, at most ``budget`` of them; return how many.

        Stops at the first key that is not full yet, and notes when it will be. A key in debt
        (not full for longer than a full bucket's span) is moved to recent instead, so a
        large ``charge`` cannot hold up the reclaiming of the keys behind it. When no older
        key is left, the emptied generation is released, and recent becomes older once its
        first key may be full.
        """
        dropped = 0
        moved = 0
        full_at = self._full_at
        slack = self._slack
        while dropped + moved < budget:
            if not self._older_live:
                if self._older:
                    self._release_older()
                recent = self._recent
                if not recent:
                    self._rotate_due = None
                    self._sweep_at = now_ns + _SWEEP_PAUSE_NS  # a cheap look, for new keys
                    break
                # Rotate once recent's first key may be full (by its state when first looked
                # at), not before: until then there is nothing to reclaim, and an empty older
                # generation spares every call on a key not in recent a second lookup. A
                # first key in debt does not hold it up (the walk moves it aside).
                due = self._rotate_due
                if due is None:
                    due = full_at(recent[next(iter(recent))])
                    self._rotate_due = due = now_ns if due - now_ns > slack else due
                if due > now_ns:
                    self._sweep_at = max(due, now_ns + _SWEEP_PAUSE_NS)
                    break
                self._rotate()
            key, value = self._next_older()
            when = full_at(value)
            if when > now_ns and when - now_ns <= slack:
                self._older_head = key  # the next key to look at
                self._sweep_at = max(when, now_ns + _SWEEP_PAUSE_NS)
                break
            self._older[key] = None
            self._older_live -= 1
            if when <= now_ns:
                dropped += 1
            else:
                self._recent[key] = value  # in debt: out of the way, looked at again later
                moved += 1
        else:
            # Out of budget: look again at once if this round dropped anything, else (only
            # keys in debt ahead) one full bucket's span from now.
            self._sweep_at = now_ns if dropped else now_ns + slack
        self.dropped += dropped
        return dropped

    def _live(self) -> dict[str, Any]:
        """Return every live key's value, older keys first (for tests and ``sweep``)."""
        live = {k: v for k, v in self._older.items() if v is not None}
        live.update(self._recent)
        return live

    def sweep(self) -> int:
        """Drop every key whose buckets are all full again; return how many were dropped."""
        with self._lock:
            now_ns = self._now_ns()
            full_at = self._full_at
            before = len(self)
            # Rebuilt rather than emptied in place (a dict never shrinks as keys leave it), as
            # one older generation that keeps the order the keys had.
            self._recent = {k: v for k, v in self._live().items() if full_at(v) > now_ns}
            self._rotate()
            dropped = before - self._older_live
            self.dropped += dropped
            for stale in [k for k, v in self._counted.items() if full_at(v) <= now_ns]:
                del self._counted[stale]
            self._sweep_at = now_ns + _SWEEP_PAUSE_NS  # then the calls look at the first key
            return dropped

    def discard(self, key: str) -> None:
        """Forget ``key`` (its buckets start full again); nothing if it is not live."""
        with self._lock:
            self._recent.pop(key, None)
            if self._older.get(key) is not None:
                self._older[key] = None
                self._older_live -= 1
            self._booked.pop(key, None)
            self._counted.pop(key, None)

    def clear(self) -> None:
        """Forget every key (every bucket starts full again)."""
        with self._lock:
            self._recent = {}
            self._older = {}
            self._older_items = iter(())
            self._older_head = None
            self._older_live = 0
            self._booked = {}
            self._counted = {}
            self._sweep_at = _PAST
            self._rotate_due = None

    def __repr__(self) -> str:
        return (
            f"<MemoryKeyedStore [{_describe(self._limits)}] keys={len(self)} "
            f"max_keys={self._max_keys}>"
        )


@dataclass(frozen=True)
class KeyedStatistics(Statistics):
    """Statistics of a keyed limiter: ``Statistics`` summed over keys, and the keys' count.

    ``granted_tokens`` counts the first limit's tokens.
    """

    keys: int = 0
    """Live keys in the backend now (memory; 0 when the backend does not say)."""
    dropped: int = 0
    """Keys dropped because their buckets were full again (lossless)."""
    evicted: int = 0
    """Keys evicted at ``max_keys`` before they were full (lossy: they start full again)."""


class _KeyedBase:
    """What the asyncio and thread keyed limiters share: set-up, arguments, counters."""

    __slots__ = (
        "__weakref__",
        "_backend",
        "_cancelled",
        "_clock",
        "_closed",
        "_granted",
        "_granted_tokens",
        "_limits",
        "_max_wait_ns",
        "_name",
        "_one",
        "_own_counts",
        "_rejected",
        "_sync",
        "_take",
        "_timed_out",
        "_total_wait_ns",
        "_wait_counts",
        "_waiting",
    )

    def __init__(
        self,
        rate: RateLike | None,
        capacity: int | None,
        *,
        limits: Limits | None,
        backend: KeyedBackend | AsyncKeyedBackend | None,
        max_keys: int,
        max_key_length: int,
        clock: Clock | None,
        name: str | None,
    ) -> None:
        given = sum(x is not None for x in (rate, limits, backend))
        if given != 1:
            raise TypeError(
                "give exactly one of: a rate (and capacity), limits={name: Limit(...)}, or "
                f"backend=...; got rate={rate!r}, limits={limits!r}, backend={backend!r}"
            )
        if backend is None:
            if isinstance(rate, str) and several(rate):
                if capacity is not None:
                    raise TypeError(
                        "capacity goes with one rate; several limits each carry their own, as "
                        "limits=, e.g. {'hour': Limit('10/hour', 5), 'day': Limit('100/day', 20)}"
                    )
                limits, rate = rate, None
            if rate is not None:
                limits = {"default": Limit(rate, capacity)}
            elif capacity is not None:
                raise TypeError("capacity goes with rate; with limits=, give each Limit's own")
            assert limits is not None
            backend = MemoryKeyedStore(
                limits, max_keys=max_keys, max_key_length=max_key_length, clock=clock
            )
            clock = backend.clock
        else:
            if capacity is not None:
                raise TypeError("capacity goes with rate; a backend carries its own limits")
            if clock is None:
                clock = getattr(backend, "clock", None)  # sleep on the clock it decides on
        self._backend: Any = backend
        self._sync = not inspect.iscoroutinefunction(backend.reserve)
        # The memory store counts its own decisions (under its lock); other backends' are
        # counted here. Its ``take`` is the fast path of try_acquire (None once closed).
        self._own_counts = not isinstance(backend, MemoryKeyedStore)
        self._take = backend.take if isinstance(backend, MemoryKeyedStore) else None
        self._limits: dict[str, Limit] = dict(backend.limits)
        self._clock = MONOTONIC if clock is None else clock
        one = self._costs_of(1, True)
        self._one = ONE if one == ONE else one
        self._name = name
        self._closed = False
        self._granted = 0
        self._granted_tokens = 0
        self._rejected = 0
        self._timed_out = 0
        self._cancelled = 0
        self._waiting = 0
        self._total_wait_ns = 0
        self._max_wait_ns = 0
        self._wait_counts = [0] * (len(_WAIT_BUCKETS_NS) + 1)

    @property
    def limits(self) -> dict[str, Limit]:
        """The limits every key is held to, by name (``{"default": ...}`` for one)."""
        return dict(self._limits)

    @property
    def backend(self) -> KeyedBackend | AsyncKeyedBackend:
        """The backend that keeps the per-key state."""
        return self._backend  # type: ignore[no-any-return]

    @property
    def name(self) -> str | None:
        """The limiter's name (in repr and statistics), or None."""
        return self._name

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def _costs(self, tokens: Tokens, capped: bool = True) -> tuple[int, ...]:
        """Return what ``tokens`` takes from each limit; raise TypeError/ValueError if bad.

        ``capped``: no amount may exceed its limit's capacity (a call's; charges and
        refunds may). For charges and refunds an int settles the limits without a weight.
        """
        if tokens == 1 and type(tokens) is int and capped:
            return self._one
        return self._costs_of(tokens, capped)

    def _costs_of(self, tokens: Tokens, capped: bool) -> tuple[int, ...]:
        limits = self._limits
        if isinstance(tokens, Mapping):
            unknown = set(tokens) - set(limits)
            if unknown:
                raise ValueError(
                    f"no limit named {sorted(unknown)!r}; the limits are {sorted(limits)}"
                )
            costs = []
            for name, limit in limits.items():
                amount = tokens.get(name, 0)
                check_amount(
                    amount, f"tokens for limit {name!r}", limit.capacity if capped else None
                )
                costs.append(amount)
            if not any(costs):
                raise ValueError(f"tokens must name at least one limit with >= 1, got {tokens!r}")
            return tuple(costs)
        check_tokens(tokens)
        costs = []
        for name, limit in limits.items():
            if limit.weight is not None:
                costs.append(limit.weight if capped else 0)
                continue
            if capped and tokens > limit.capacity:
                check_tokens(tokens, f"tokens for limit {name!r}", limit.capacity)
            costs.append(tokens)
        if not any(costs):
            raise ValueError(
                "every limit has a weight: give charge/refund a mapping of limit name to "
                f"tokens, e.g. {{{next(iter(limits))!r}: 1}}"
            )
        return tuple(costs)

    def _by_name(self, values: tuple[float, ...]) -> dict[str, float]:
        return dict(zip(self._limits, values, strict=True))

    def _closed_error(self) -> LimiterClosed:
        return LimiterClosed(f"{self!r} is closed")

    def _timeout_error(
        self, costs: tuple[int, ...], verdict: Verdict, timeout: float | None
    ) -> AcquireTimeout:
        return AcquireTimeout(
            f"{costs[0] if len(costs) == 1 else costs} token(s) would be granted in "
            f"{verdict.wait_ns / 1e9:.6f}s, beyond the timeout of {timeout}s",
            verdict.wait_ns / 1e9,
        )

    def _count(self, verdict: Verdict, costs: tuple[int, ...]) -> None:
        if verdict.granted:
            if self._own_counts:
                self._granted += 1
                self._granted_tokens += costs[0]
            waited = verdict.wait_ns
            if waited:
                self._total_wait_ns += waited
                if waited > self._max_wait_ns:
                    self._max_wait_ns = waited
                index = 0
                for bound in _WAIT_BUCKETS_NS:
                    if waited <= bound:
                        break
                    index += 1
                self._wait_counts[index] += 1
        elif self._own_counts:
            self._rejected += 1

    def statistics(self) -> KeyedStatistics:
        """Return a snapshot of the counters, summed over keys, and the number of live keys."""
        backend = self._backend
        memory = isinstance(backend, MemoryKeyedStore)
        granted = backend.granted if memory else self._granted
        cumulative = granted - sum(self._wait_counts)
        histogram = []
        for bound, count in zip(WAIT_BUCKETS, self._wait_counts, strict=False):
            cumulative += count
            histogram.append((bound, cumulative))
        histogram.append((float("inf"), granted))
        return KeyedStatistics(
            granted=granted,
            granted_tokens=backend.granted_tokens if memory else self._granted_tokens,
            rejected=backend.rejected if memory else self._rejected,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            waiting=self._waiting,
            waiting_tokens=0,
            refunded_tokens=0.0,
            total_wait=self._total_wait_ns / 1e9,
            max_wait=self._max_wait_ns / 1e9,
            wait_histogram=tuple(histogram),
            keys=len(backend) if memory else 0,
            dropped=backend.dropped if memory else 0,
            evicted=backend.evicted if memory else 0,
        )

    def sweep(self) -> int:
        """Drop every key whose buckets are full again (memory backend); return how many.

        Calls do this as they go; this reclaims the memory of idle keys at once, e.g. from a
        periodic task. Returns 0 for a backend that expires keys on its own (Redis).
        """
        backend = self._backend
        return backend.sweep() if isinstance(backend, MemoryKeyedStore) else 0

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name else ""
        limits = _describe(self._limits)
        closed = " closed" if self._closed else ""
        backend = self._backend
        keys = len(backend) if isinstance(backend, MemoryKeyedStore) else "?"
        return (
            f"<{type(self).__name__}{name} [{limits}] keys={keys} waiting={self._waiting}{closed}>"
        )


class Watch:
    """The sleepers of one view of a keyed limiter (``for_key``): closing the view sets
    ``closed`` and wakes ``members`` (asyncio futures, or the locks blocked threads wait on)."""

    __slots__ = ("closed", "members")

    def __init__(self) -> None:
        self.closed = False
        self.members: set[Any] = set()


class _Sleepers:
    """Callers sleeping until their reserved time, woken by one timer (asyncio).

    A heap of (due ns, arrival, future); the timer is armed for the earliest. A cancelled
    sleeper's entry is skipped when its time comes (and the heap is compacted when such
    entries are over half of it).
    """

    __slots__ = ("_clock", "_dead", "_heap", "_loop", "_seq", "_timer", "_timer_when")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: Timer | None = None
        self._timer_when = 0
        self._dead = 0

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def sleep_until(self, when_ns: int) -> asyncio.Future[None]:
        """Return a future that completes at ``when_ns`` (the clock's ns)."""
        loop = asyncio.get_running_loop()
        if self._heap and loop is not self._loop:
            raise RuntimeError(
                "a keyed limiter has callers sleeping in another event loop; it serves one "
                "loop at a time (it may move to a new loop once nobody sleeps)"
            )
        self._loop = loop
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (when_ns, next(self._seq), future))
        if self._timer is None or when_ns < self._timer_when:
            self._arm(when_ns)
        return future

    def forget(self) -> None:
        """Note that a sleeper left early (its future is cancelled)."""
        self._dead += 1
        heap = self._heap
        if self._dead > 64 and self._dead * 2 > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].done()]
            heapq.heapify(heap)
            self._dead = 0

    def _arm(self, when_ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_when = when_ns
        self._timer = self._clock.call_at(self._loop, when_ns, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # Armed for the earliest due time: a (rounding-)early firing counts as on time.
        now = max(self._clock.now_ns(), self._timer_when)
        heap = self._heap
        while heap and heap[0][0] <= now:
            future = heapq.heappop(heap)[2]
            if future.done():
                self._dead -= 1 if self._dead else 0
            else:
                future.set_result(None)
        if heap:
            self._arm(heap[0][0])

    def close(self, error: BaseException) -> None:
        """Wake every sleeper with ``error``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        heap, self._heap = self._heap, []
        self._dead = 0
        for _, _, future in heap:
            if not future.done():
                future.set_exception(error)


class KeyedLimiter(_KeyedBase):
    """An asyncio limiter with one token bucket per key, created on first use.

    ``KeyedLimiter("10/s", 20)`` holds every key to 10 tokens a second with bursts of 20.
    ``KeyedLimiter(limits={"requests": Limit("60/minute", weight=1), "tokens":
    Limit("90000/minute")})`` holds each key to several limits at once, all or nothing:
    ``acquire(key, 1500)`` takes 1 request and 1,500 tokens (``tokens`` may also map limit
    names to amounts). ``KeyedLimiter("10/hour;100/day")`` (or ``limits=`` that string)
    holds each key to both, named ``"hour"`` and ``"day"`` (see ``Limit.parse_many``).
    ``KeyedLimiter(backend=...)`` keeps the state elsewhere (Redis).

    ==========================  ================================================================
    ``await acquire(key, n)``   waits until granted (FIFO within a key), or raises AcquireTimeout
    ``await try_acquire(...)``  never waits: True if granted now
    ``await admit(key, n)``     waits up to ``max_wait`` and returns the ``Verdict`` with the
                                numbers a client should be told (used by the ASGI middleware)
    ``await refund / charge``   give tokens back / take them after the fact (debt)
    ==========================  ================================================================

    In memory, idle keys cost nothing and ``max_keys`` bounds the live ones (see
    ``MemoryKeyedStore``). Every method is a coroutine, so that a backend across the network
    fits the same API. Raises ValueError/TypeError at once for bad arguments, naming them;
    LimiterClosed after ``close()``. Not thread-safe: call it from its event loop's thread.
    """

    __slots__ = ("_sleepers",)

    def __init__(
        self,
        rate: RateLike | None = None,
        capacity: int | None = None,
        *,
        limits: Limits | None = None,
        backend: KeyedBackend | AsyncKeyedBackend | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            rate,
            capacity,
            limits=limits,
            backend=backend,
            max_keys=max_keys,
            max_key_length=max_key_length,
            clock=clock,
            name=name,
        )
        self._sleepers = _Sleepers(self._clock)
        track(self)

    def _fork_locks(self) -> tuple[()]:
        return ()

    def _after_fork(self) -> None:
        """In a forked child: the sleepers and their timer belong to the parent's loop."""
        self._sleepers = _Sleepers(self._clock)
        self._waiting = 0

    async def admit(
        self, key: str, tokens: Tokens = 1, *, max_wait: float | None = _NO_WAIT
    ) -> Verdict:
        """Take ``tokens`` for ``key`` if they can go within ``max_wait`` seconds; wait for them.

        Returns the Verdict: when granted, after sleeping its ``wait``; when refused at once
        (the wait would exceed ``max_wait``; None means no bound), nothing was taken. A
        caller cancelled while it sleeps gives its tokens back. Raises LimiterClosed,
        TypeError/ValueError for a bad key or amount, and whatever the backend raises
        (``BackendUnavailable``).
        """
        if self._closed:
            raise self._closed_error()
        costs = self._costs(tokens)
        max_wait_ns = _wait_ns(max_wait)
        backend = self._backend
        if self._sync:
            verdict: Verdict = backend.reserve(key, costs, max_wait_ns)
        else:
            verdict = await backend.reserve(key, costs, max_wait_ns)
        if verdict.wait_ns:
            if verdict.granted:
                await self._sleep(key, costs, verdict.mark, self._clock.now_ns() + verdict.wait_ns)
            self._count(verdict, costs)
        elif self._own_counts:
            self._count(verdict, costs)
        return verdict

    def admit_now(self, key: str, tokens: Tokens = 1) -> Verdict | None:
        """Decide at once, without awaiting: ``admit`` with a maximum wait of 0.

        Returns None when the backend must be awaited (Redis): use ``admit`` then. The fast
        path of the ASGI middleware (no coroutine per request). Raises as ``admit`` does.
        """
        if not self._sync:
            return None
        if self._closed:
            raise self._closed_error()
        costs = self._one if tokens == 1 and type(tokens) is int else self._costs(tokens)
        verdict: Verdict = self._backend.reserve(key, costs, 0)
        if self._own_counts or verdict.wait_ns:
            self._count(verdict, costs)
        return verdict

    def try_acquire_now(self, key: str, tokens: Tokens = 1) -> bool | None:
        """Decide at once, without awaiting: ``try_acquire`` on a backend that needs no await.

        Returns None when the backend must be awaited (Redis): use ``try_acquire`` then. The
        fast path of the route limits when accepted responses get no headers (a bool, no
        Verdict to build). Raises as ``try_acquire`` does.
        """
        take = self._take
        if take is None:
            verdict = self.admit_now(key, tokens)
            return None if verdict is None else verdict.granted
        if self._closed:
            raise self._closed_error()
        return take(key, self._one if tokens == 1 and type(tokens) is int else self._costs(tokens))

    async def _sleep(
        self,
        key: str,
        costs: tuple[int, ...],
        mark: object,
        until_ns: int,
        watch: Watch | None = None,
    ) -> None:
        """Sleep until a reservation's time; if cancelled or closed, give its tokens back.

        ``watch``: the sleepers of one view (``for_key``), whose close() wakes this one too.
        """
        sleepers = self._sleepers
        future = sleepers.sleep_until(until_ns)
        if watch is not None:
            watch.members.add(future)
        self._waiting += 1
        try:
            await future
        except BaseException:
            # Cancelled (or woken by close()): the reserved tokens were never used. The refund
            # runs before re-raising, so a cancelled caller never leaves tokens behind; that
            # holds too for one cancelled after its timer woke it, before it could run.
            if not future.done():
                future.cancel()
                sleepers.forget()  # its heap entry is left for the timer to skip
            self._cancelled += 1
            refund = self._backend.refund(key, costs, mark)
            if not self._sync:
                await refund
            raise
        finally:
            self._waiting -= 1
            if watch is not None:
                watch.members.discard(future)

    async def acquire(self, key: str, tokens: Tokens = 1, *, timeout: float | None = None) -> bool:
        """Wait until ``tokens`` are granted for ``key``, in arrival order; return True.

        Raises AcquireTimeout at once (nothing taken) if they cannot be granted within
        ``timeout`` seconds, LimiterClosed, or TypeError/ValueError for bad arguments.
        Cancellation gives the tokens back.
        """
        verdict = await self.admit(key, tokens, max_wait=timeout)
        if not verdict.granted:
            raise self._timeout_error(self._costs(tokens), verdict, timeout)
        return True

    async def try_acquire(self, key: str, tokens: Tokens = 1) -> bool:
        """Take ``tokens`` for ``key`` if they can be granted now; never waits.

        Shorthand for ``admit`` with a maximum wait of 0.
        """
        take = self._take
        if take is None:  # another backend, or closed (admit raises LimiterClosed)
            return (await self.admit(key, tokens, max_wait=_NO_WAIT)).granted
        return take(key, self._one if tokens == 1 and type(tokens) is int else self._costs(tokens))

    async def refund(self, key: str, tokens: Tokens = 1) -> dict[str, float]:
        """Give back ``tokens`` that ``key`` took and did not use; return how many went back.

        As ``TokenBucket.refund``: never above the capacity, never more than was taken since
        the bucket was last full. Nothing goes back while callers of the key sleep on
        reservations (the tokens might be theirs). Returns the tokens that went back, by
        limit name.
        """
        costs = self._costs(tokens, capped=False)
        if self._sync:
            back = self._backend.refund(key, costs, None)
        else:
            back = await self._backend.refund(key, costs, None)
        return self._by_name(back)

    async def charge(self, key: str, tokens: Tokens = 1) -> None:
        """Take ``tokens`` for ``key`` now without waiting, even into debt.

        For a cost known only after the call (e.g. the tokens an LLM reply used); the key's
        later callers wait the debt off. Raises LimiterClosed after ``close()``.
        """
        if self._closed:
            raise self._closed_error()
        costs = self._costs(tokens, capped=False)
        result = self._backend.charge(key, costs)
        if not self._sync:
            await result

    async def peek(self, key: str) -> Verdict:
        """Return the state of ``key``'s buckets without taking anything.

        ``granted``/``wait_ns`` say whether one token per limit could go now, or when.
        """
        if self._sync:
            return self._backend.peek(key)  # type: ignore[no-any-return]
        return await self._backend.peek(key)  # type: ignore[no-any-return]

    async def available(self, key: str) -> dict[str, float]:
        """Return the tokens ``key`` has now, by limit name (negative in debt)."""
        return self._by_name((await self.peek(key)).available)

    async def full_in(self, key: str) -> float:
        """Return seconds until all of ``key``'s buckets are full again (0.0 when full)."""
        return max((await self.peek(key)).full_in_ns) / 1e9

    def for_key(self, key: str) -> KeyedView:
        """Return ``key``'s buckets as an asyncio limiter of the contract (``AsyncLimiter``).

        ``await limiter.for_key("github").acquire()`` is ``await limiter.acquire("github")``;
        the view also reserves, takes blocks and decorates (see ``KeyedView``).
        """
        from ._keyview import KeyedView  # noqa: PLC0415 (the view module imports this one)

        return KeyedView(self, key)

    def close(self) -> None:
        """Refuse every later call and wake every sleeper with LimiterClosed. Idempotent.

        The sleepers' reserved tokens go back.
        """
        self._closed = True
        self._take = None  # try_acquire's fast path, which does not look at _closed
        self._sleepers.close(LimiterClosed(f"{self!r} was closed while waiting"))


class SyncKeyedLimiter(_KeyedBase):
    """The blocking twin of ``KeyedLimiter``, for threads: the same backend API, no awaits.

    ``acquire(key, n, timeout=)`` blocks until granted (FIFO within a key), ``try_acquire``
    never blocks, ``admit`` returns the Verdict. A sleeping thread holds no lock. Requires a
    backend called without awaiting (``KeyedBackend``); the memory store may be shared with an
    asyncio ``KeyedLimiter``. Raises as ``KeyedLimiter`` does.
    """

    __slots__ = ("_sleeping", "_stats_lock")

    def __init__(
        self,
        rate: RateLike | None = None,
        capacity: int | None = None,
        *,
        limits: Limits | None = None,
        backend: KeyedBackend | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            rate,
            capacity,
            limits=limits,
            backend=backend,
            max_keys=max_keys,
            max_key_length=max_key_length,
            clock=clock,
            name=name,
        )
        if not self._sync:
            raise TypeError(
                f"{self._backend!r} is awaited (an AsyncKeyedBackend); SyncKeyedLimiter needs "
                "a backend it can call directly"
            )
        self._stats_lock = threading.Lock()
        self._sleeping: set[threading.Lock] = set()
        track(self)

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self._stats_lock,)

    def _after_fork(self) -> None:
        """In a forked child: a new lock; the sleepers were other threads."""
        self._stats_lock = threading.Lock()
        self._sleeping = set()
        self._waiting = 0

    def admit(self, key: str, tokens: Tokens = 1, *, max_wait: float | None = 0.0) -> Verdict:
        """Take ``tokens`` for ``key`` if they can go within ``max_wait`` seconds; block for them.

        Returns the Verdict (see ``KeyedLimiter.admit``). Raises LimiterClosed (also when
        closed while blocked: the tokens go back) and TypeError/ValueError for bad arguments.
        """
        if self._closed:
            raise self._closed_error()
        costs = self._costs(tokens)
        verdict: Verdict = self._backend.reserve(key, costs, _wait_ns(max_wait))
        if verdict.granted and verdict.wait_ns:
            self._sleep(key, costs, verdict.mark, self._clock.now_ns() + verdict.wait_ns)
        if self._own_counts or verdict.wait_ns:
            with self._stats_lock:
                self._count(verdict, costs)
        return verdict

    def _sleep(
        self,
        key: str,
        costs: tuple[int, ...],
        mark: object,
        until_ns: int,
        watch: Watch | None = None,
    ) -> None:
        """Block until a reservation's time; if closed meanwhile, give its tokens back."""
        wake = threading.Lock()
        wake.acquire()
        with self._stats_lock:
            self._waiting += 1
            self._sleeping.add(wake)
            if watch is not None:
                watch.members.add(wake)
            if self._closed or (watch is not None and watch.closed):
                wake.release()  # closed before it could be woken: do not sleep at all
        try:
            while self._clock.now_ns() < until_ns:
                if self._clock.wait(wake, until_ns) and (
                    self._closed or (watch is not None and watch.closed)
                ):
                    raise LimiterClosed(f"{self!r} was closed while waiting")
        except BaseException:
            self._backend.refund(key, costs, mark)
            with self._stats_lock:
                self._cancelled += 1
            raise
        finally:
            with self._stats_lock:
                self._waiting -= 1
                self._sleeping.discard(wake)
                if watch is not None:
                    watch.members.discard(wake)

    def acquire(self, key: str, tokens: Tokens = 1, *, timeout: float | None = None) -> bool:
        """Block until ``tokens`` are granted for ``key``, in arrival order; return True.

        Raises AcquireTimeout at once (nothing taken) if they cannot be granted within
        ``timeout`` seconds, LimiterClosed, or TypeError/ValueError for bad arguments.
        """
        verdict = self.admit(key, tokens, max_wait=timeout)
        if not verdict.granted:
            raise self._timeout_error(self._costs(tokens), verdict, timeout)
        return True

    def try_acquire(self, key: str, tokens: Tokens = 1) -> bool:
        """Take ``tokens`` for ``key`` if they can be granted now; never blocks.

        Shorthand for ``admit`` with a maximum wait of 0.
        """
        take = self._take
        if take is None:  # another backend, or closed (admit raises LimiterClosed)
            return self.admit(key, tokens, max_wait=0.0).granted
        return take(key, self._one if tokens == 1 and type(tokens) is int else self._costs(tokens))

    def refund(self, key: str, tokens: Tokens = 1) -> dict[str, float]:
        """Give back ``tokens`` that ``key`` did not use; return how many went back.

        See ``KeyedLimiter.refund``.
        """
        costs = self._costs(tokens, capped=False)
        back = self._backend.refund(key, costs, None)
        return self._by_name(back)

    def charge(self, key: str, tokens: Tokens = 1) -> None:
        """Take ``tokens`` for ``key`` now without waiting, even into debt."""
        if self._closed:
            raise self._closed_error()
        self._backend.charge(key, self._costs(tokens, capped=False))

    def peek(self, key: str) -> Verdict:
        """Return the state of ``key``'s buckets without taking anything."""
        return self._backend.peek(key)  # type: ignore[no-any-return]

    def available(self, key: str) -> dict[str, float]:
        """Return the tokens ``key`` has now, by limit name (negative in debt)."""
        return self._by_name(self.peek(key).available)

    def full_in(self, key: str) -> float:
        """Return seconds until all of ``key``'s buckets are full again (0.0 when full)."""
        return max(self.peek(key).full_in_ns) / 1e9

    def for_key(self, key: str) -> SyncKeyedView:
        """Return ``key``'s buckets as a blocking limiter of the contract (``SyncLimiter``)."""
        from ._keyview import SyncKeyedView  # noqa: PLC0415 (as above)

        return SyncKeyedView(self, key)

    def close(self) -> None:
        """Refuse every later call and wake every blocked thread with LimiterClosed.

        Idempotent; the woken threads' reserved tokens go back.
        """
        with self._stats_lock:
            self._closed = True
            self._take = None  # try_acquire's fast path, which does not look at _closed
            for wake in self._sleeping:
                if wake.locked():
                    wake.release()
