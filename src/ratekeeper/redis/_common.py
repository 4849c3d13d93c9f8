"""What the asyncio and the blocking Redis limiters share: limits, outcomes, policy, counts.

No I/O here. The two front ends differ only in how they call the server and how a caller
waits; they build every request, read every reply and apply the failure policy through the
methods below, so both make the same decisions and raise the same errors.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio
import redis.exceptions as rex

from .._errors import AcquireTimeout, BackendUnavailable, LimiterClosed
from .._gcra import Limit, LimitsLike, check_tokens, named_limits
from .._rate import NS_PER_SECOND, Rate, RateLike
from .._scheduler import Statistics
from ._local import LocalLimits
from ._script import (
    BEYOND,
    CHARGE,
    DONE,
    MAX_AHEAD,
    MAX_BURST,
    NO_MARK,
    PAD,
    REFUND,
    REFUSED,
    RESERVE,
    SET_LIMIT,
    STATE,
    WRONGTYPE,
    Request,
    Spec,
    adopted_spec,
    cut,
    encode,
    make_spec,
)

__all__ = [
    "Limit",
    "OnFailure",
    "RedisStatistics",
    "ReservationBase",
    "ServerFailure",
    "classify",
]

OnFailure = Literal["closed", "open", "fallback"]
_POLICIES = ("closed", "open", "fallback")


@dataclass(frozen=True)
class RedisStatistics(Statistics):
    """The limiter's counters (this process only), with the backend's on top."""

    backend_errors: int = 0
    """Server calls that failed (unreachable, timed out, refused)."""
    failed_open: int = 0
    """Calls let through unchecked by ``on_failure="open"``."""
    fallback_grants: int = 0
    """Grants decided by the local fallback limiter while the server was down."""
    server_requests: int = 0
    """Decisions sent to the server."""
    round_trips: int = 0
    """Server round trips that carried them (concurrent calls share one)."""


class ServerFailure(Exception):
    """A server call failed; ``transient`` if the failure policy applies (server down)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


_TRANSIENT_CODES = frozenset(
    ("OOM", "BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "NOREPLICAS")
)
"""Error replies meaning "cannot serve now": full (OOM under maxmemory and noeviction),
running a long script (BUSY), loading its data (LOADING), a replica (READONLY) or one cut off
from its master (MASTERDOWN), a cluster resharding (TRYAGAIN) or missing slots (CLUSTERDOWN),
too few replicas in sync (NOREPLICAS)."""

_TRANSIENT_TYPES = (
    rex.OutOfMemoryError,
    rex.ReadOnlyError,
    rex.TryAgainError,
    rex.ClusterDownError,  # MasterDownError is one too
)


def classify(exc: BaseException, where: str) -> ServerFailure:
    """Turn a client exception into a ServerFailure saying what went wrong and where.

    Transient (the failure policy applies): a server unreachable, slow (timeouts), resetting
    connections, out of memory, busy, loading, read-only or cut off from its master, a
    cluster down or resharding. Not transient: refused credentials, a user not allowed to
    run scripts, a script the server will not run (NOSCRIPT after the reload, unknown
    command, a script error) and unexpected error replies: mistakes that letting calls
    through would hide. The table is in docs/redis.md.
    """
    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError)):
        return ServerFailure(f"{where} refused the credentials: {exc}", False)
    if isinstance(exc, rex.NoPermissionError):
        return ServerFailure(
            f"{where} refuses this user the script (NOPERM): allow EVALSHA and SCRIPT LOAD "
            f"(ACL category @scripting) for the user: {exc}",
            False,
        )
    if isinstance(exc, rex.ResponseError):
        text = str(exc)
        # redis-py strips the code of the replies it maps to a class, and keeps it here.
        code = getattr(exc, "status_code", None) or text.split(" ", 1)[0]
        if code in _TRANSIENT_CODES or isinstance(exc, _TRANSIENT_TYPES):
            shown = text if text.startswith(code) else f"{code} {text}"
            return ServerFailure(f"{where} is not serving now: {shown}", True)
        lowered = text.lower()
        # NOSCRIPT here survived the reload (redis-py loads the script again once).
        if "unknown command" in lowered or "noscript" in lowered or "script" in lowered:
            return ServerFailure(f"{where} refuses to run the ratekeeper script: {exc}", False)
        return ServerFailure(f"{where} answered with an error: {exc}", False)
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError, asyncio.TimeoutError)):
        if isinstance(exc, rex.BusyLoadingError):
            return ServerFailure(f"{where} is not serving now: LOADING {exc}", True)
        return ServerFailure(f"{where} is unreachable: {type(exc).__name__}: {exc}", True)
    if isinstance(exc, rex.RedisClusterException):
        return ServerFailure(f"{where} (cluster) is not serving: {exc}", True)
    return ServerFailure(f"{where} failed: {type(exc).__name__}: {exc}", False)


def describe_client(client: Any) -> str:
    """Return 'the server at HOST:PORT' (or the cluster's first node) for messages."""
    try:
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"the server at {kwargs['path']}"
        return f"the server at {kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    except AttributeError:
        nodes = getattr(client, "startup_nodes", None) or []
        first = nodes[0] if nodes else None
        if first is not None:
            return f"the cluster at {first.host}:{first.port}"
        return "the server"


MAX_SECONDS = 86400.0
"""The longest server-call ``timeout`` and ``retry_interval`` (a day): longer ones are
mistakes, and past the platform's time_t a socket timeout fails only at the first call."""


def check_seconds(value: float, what: str, allow_zero: bool = True) -> float:
    """Return ``value`` if it is a number of seconds from 0 (excluded unless allowed) to
    ``MAX_SECONDS``; raise TypeError, or ValueError naming the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not 0 <= value <= MAX_SECONDS or (value == 0 and not allow_zero):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"{what} must be a number of seconds {allowed} and at most {MAX_SECONDS:.0f} "
            f"(a day), got {value!r}"
        )
    return float(value)


class Core:
    """The limiter's decisions around the server: requests, replies, policy and counters."""

    _specs: tuple[Spec, ...]

    def _start(
        self,
        client: Any,
        specs: tuple[Spec, ...],
        *,
        timeout: float,
        on_failure: OnFailure,
        fallback_share: float | None,
        retry_interval: float,
        name: str | None,
    ) -> None:
        """Check the options (``_setup``), then connect through the front end (``_connect``)."""
        self._setup(
            specs,
            on_failure=on_failure,
            fallback_share=fallback_share,
            retry_interval=retry_interval,
            timeout=timeout,
            name=name,
        )
        self._connect(client)

    def _connect(self, client: Any) -> None:
        """Take the client (or a URL) and the dispatcher that batches its calls."""
        raise NotImplementedError

    def _setup(
        self,
        specs: tuple[Spec, ...],
        *,
        on_failure: OnFailure,
        fallback_share: float | None,
        retry_interval: float,
        timeout: float,
        name: str | None,
    ) -> None:
        if on_failure not in _POLICIES:
            raise ValueError(f"on_failure must be one of {_POLICIES}, got {on_failure!r}")
        if on_failure == "fallback":
            if fallback_share is None:
                raise ValueError(
                    'on_failure="fallback" needs fallback_share: the fraction of the rate '
                    "this process may use alone while the server is down (e.g. 1 / the "
                    "number of processes sharing the limit)"
                )
            if isinstance(fallback_share, bool) or not 0 < fallback_share <= 1:
                raise ValueError(f"fallback_share must be in (0, 1], got {fallback_share!r}")
        self._specs = specs
        self._items1 = len(specs) == 1
        self._on_failure: OnFailure = on_failure
        self._share = fallback_share
        self._retry_interval = check_seconds(retry_interval, "retry_interval")
        self._timeout = check_seconds(timeout, "timeout", allow_zero=False)
        self._local: LocalLimits | None = None
        self._closed = False
        self.name = name
        # counters
        self._granted = 0
        self._granted_tokens = 0
        self._rejected = 0
        self._cancelled = 0
        self._waiting = 0
        self._waiting_tokens = 0
        self._refunded = 0.0
        self._total_wait_ns = 0
        self._max_wait_ns = 0
        self._backend_errors = 0
        self._failed_open = 0
        self._fallback_grants = 0
        self._requests = 0
        self._round_trips = 0
        # key -> (the latest slot this limiter knows to be booked there, by anyone: server
        # ns; until when (monotonic ns) it lies ahead; the key's epoch then). Sent with each
        # request, so that a key that lost its state is put back empty at it (see gcra.lua).
        self._floors: dict[str, tuple[int, int, int]] = {}

    # -- booked slots, against state loss ----------------------------------------------

    def _saw(self, spec: Spec, epoch: int, now_us: int, ahead: int) -> None:
        """Remember the latest slot a reply shows booked on ``spec``'s key, if any.

        A bucket more than a burst ahead has its latest slot booked at ``ahead - burst``
        (a sleeper's, this process's or another's; or a debt, the same to a new bucket).
        """
        booked = ahead - spec.burst
        if booked <= 0:
            return
        wait = booked // spec.scale
        slot = now_us * 1000 + wait
        floors = self._floors
        old = floors.get(spec.key)
        if old is not None and old[0] >= slot and old[2] == epoch:
            return
        if len(floors) >= _MAX_FLOORS:
            now = time.monotonic_ns()
            for key in [k for k, (_, end, _) in floors.items() if end < now]:
                del floors[key]
        floors[spec.key] = (slot, time.monotonic_ns() + wait + _FLOOR_MARGIN_NS, epoch)

    def _floors_of(self, request: Request, into: dict[str, tuple[int, int]]) -> None:
        """Add the floors (slot, epoch) of ``request``'s keys still ahead to ``into`` (the
        latest slot wins)."""
        floors = self._floors
        now = time.monotonic_ns()
        for spec, _, _, _ in request.items:
            floor = floors.get(spec.key)
            if floor is not None:
                if floor[1] < now:
                    del floors[spec.key]
                else:
                    sent = into.get(spec.key)
                    if sent is None or sent[0] < floor[0]:
                        into[spec.key] = (floor[0], floor[2])

    # -- amounts ---------------------------------------------------------------------------

    def _call_amounts(self, tokens: int | Mapping[str, int]) -> tuple[int, ...]:
        """Return what a call of ``tokens`` takes from each limit (checked against capacity)."""
        specs = self._specs
        if isinstance(tokens, Mapping):
            return self._mapped(tokens, acquire=True)
        check_tokens(tokens, limit=None if len(specs) > 1 else specs[0].capacity)
        amounts = tuple(tokens if s.weight is None else s.weight for s in specs)
        for spec, n in zip(specs, amounts, strict=False):
            if n > spec.capacity:
                check_tokens(n, f"tokens for limit {spec.name!r}", spec.capacity)
        return amounts

    def _settle_amounts(self, tokens: int | Mapping[str, int]) -> tuple[int, ...]:
        """Return what a charge/refund of ``tokens`` means per limit (weighted ones: 0)."""
        if isinstance(tokens, Mapping):
            return self._mapped(tokens, acquire=False)
        check_tokens(tokens)
        amounts = tuple(tokens if s.weight is None else 0 for s in self._specs)
        if not any(amounts):
            raise ValueError(
                "every limit has a fixed weight: give charge/refund a mapping of limit name "
                f"to tokens, e.g. {{{self._specs[0].name!r}: 1}}"
            )
        self._check_charge(amounts)
        return amounts

    def _mapped(self, tokens: Mapping[str, int], acquire: bool) -> tuple[int, ...]:
        names = {s.name: s for s in self._specs}
        unknown = set(tokens) - set(names)
        if unknown:
            raise ValueError(f"no limit named {sorted(unknown)}; the limits are {sorted(names)}")
        amounts = []
        for spec in self._specs:
            n = tokens.get(spec.name, 0)
            if n != 0:
                check_tokens(
                    n, f"tokens for limit {spec.name!r}", spec.capacity if acquire else None
                )
            amounts.append(n)
        if not any(amounts):
            raise ValueError(f"tokens must name at least one limit with >= 1, got {tokens!r}")
        result = tuple(amounts)
        if not acquire:
            self._check_charge(result)
        return result

    def _check_charge(self, amounts: tuple[int, ...]) -> None:
        for spec, n in zip(self._specs, amounts, strict=False):
            if n * spec.cost > MAX_BURST:
                raise ValueError(
                    f"{n} tokens on limit {spec.name or spec.key!r} span more than the 2^51 "
                    "units the server's exact arithmetic allows in one step"
                )

    def _items(
        self, amounts: tuple[int, ...], marks: tuple[tuple[int, int], ...] | None = None
    ) -> tuple[tuple[Spec, int, int, int], ...]:
        if marks is None:
            return tuple(
                (s, n, NO_MARK, 0) for s, n in zip(self._specs, amounts, strict=False) if n
            )
        return tuple((s, n, *m) for s, n, m in zip(self._specs, amounts, marks, strict=False) if n)

    def _reserve_request(self, amounts: tuple[int, ...], max_wait_ns: int | None) -> Request:
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        wait = -1 if max_wait_ns is None else min(max_wait_ns, 2**53 - 1)
        return Request(RESERVE, self._items(amounts), wait, self)

    def _charge_request(self, amounts: tuple[int, ...]) -> Request:
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        return Request(CHARGE, self._items(amounts), -1, self)

    def _refund_request(
        self, amounts: tuple[int, ...], marks: tuple[tuple[int, int], ...] | None
    ) -> Request:
        return Request(REFUND, self._items(amounts, marks), -1, self)

    def _state_request(self) -> Request:
        return Request(STATE, tuple((s, 0, NO_MARK, 0) for s in self._specs), -1, self)

    # -- changing a limit ------------------------------------------------------------------

    def _set_limit_request(self, name: str | None, rate: RateLike, capacity: int | None) -> Request:
        """Return the request that makes limit ``name`` (None: the only one) rate/capacity.

        Raises LimiterClosed, or ValueError/TypeError (changing nothing) for an unknown
        name, a bad rate or capacity, a capacity below the limit's weight, or a limit too
        large for the script's exact arithmetic.
        """
        if self._closed:
            raise LimiterClosed(f"{self!r} is closed")
        old = self._specs[self._limit_index(name)]
        new = make_spec(
            old.key, old.name, rate, old.capacity if capacity is None else capacity, old.weight
        )
        return Request(SET_LIMIT, ((old, new.cost, new.scale, new.capacity),), -1, self)

    def _limit_index(self, name: str | None) -> int:
        if name is None:
            return 0
        for j, spec in enumerate(self._specs):
            if spec.name == name:
                return j
        if not isinstance(name, str):
            raise TypeError(f"name must be a str naming a limit, not {type(name).__name__}")
        raise ValueError(f"unknown limit {name!r}; the limits are {[s.name for s in self._specs]}")

    def _set_limit_failed(self, failure: ServerFailure) -> None:
        """Raise BackendUnavailable for a change that did not reach the server.

        Whatever the policy: a change kept in this process alone would not be seen by the
        others sharing the key, so nothing changes anywhere and the caller is told.
        """
        self._backend_errors += 1
        raise BackendUnavailable(
            f"{failure}; the limit was not changed (a change must reach the server, where "
            "every process sharing the key reads it)"
        ) from failure

    def _set_limit_done(self, request: Request, reply: list[int]) -> None:
        """Adopt the limit the server now holds; raise if the script refused the change."""
        spec, cost, scale, capacity = request.items[0]
        if reply[0] == BEYOND:
            raise ValueError(
                f"key {spec.key!r}: its balance in the new limit would lie more than 2^52 "
                "units ahead, past what the server counts exactly; nothing changed"
            )
        if reply[0] != DONE:
            self._refusal(reply, (1,), None, (spec,))
        self._adopt(spec.key, cost, scale, capacity)

    def _adopt(self, key: str, cost: int, scale: int, capacity: int) -> None:
        """Take the limit that ``key`` holds at the server as this limiter's own.

        Called with the script's reply, before the replies are read (they are in that
        limit's units), by whichever front end received it. The fallback limiter, if
        running, carries its balance over to its share of the new limit.
        """
        specs = self._specs
        for j, spec in enumerate(specs):
            if spec.key == key and (spec.cost, spec.scale, spec.capacity) != (
                cost,
                scale,
                capacity,
            ):
                new = adopted_spec(spec, cost, scale, capacity)
                self._specs = (*specs[:j], new, *specs[j + 1 :])
                if self._local is not None:
                    rate, share_capacity = shared_limit(new, self._share or 1.0)
                    self._local.reconfigure(time.monotonic_ns(), j, rate, share_capacity)
                self._specs_changed()
                return

    def _specs_changed(self) -> None:
        """Rebuild what was derived from ``_specs`` (the hot paths' prebuilt requests)."""

    # -- replies ---------------------------------------------------------------------------

    def _marks(self, reply: list[int], amounts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """Return (epoch, count) per limit from a grant's reply ((-1, 0) where untouched)."""
        if self._items1:
            return ((reply[2], reply[3]),)
        marks = []
        j = 2
        for n in amounts:
            if n:
                marks.append((reply[j], reply[j + 1]))
                j += 3
            else:
                marks.append((NO_MARK, 0))
        return tuple(marks)

    def _refusal(
        self,
        reply: list[int],
        amounts: tuple[int, ...],
        timeout: float | None,
        specs: tuple[Spec, ...] | None = None,
    ) -> None:
        """Count and raise the refusal in ``reply`` (status != DONE).

        ``specs``: the limits the request named, when not the limiter's own (a keyed
        backend's, per key).
        """
        status, code = reply[0], reply[1]
        if status == REFUSED:
            self._rejected += 1
            raise AcquireTimeout(
                f"{self._show(amounts)} would be granted in {code / NS_PER_SECOND:.6f}s, "
                f"beyond the timeout of {timeout}s",
                code / NS_PER_SECOND,
            )
        spec = self._spec_of(code, amounts, specs)
        if status == BEYOND:
            self._rejected += 1
            raise AcquireTimeout(
                f"key {spec.key!r} is booked more than {spec.horizon:.0f}s ahead, the longest "
                f"wait its rate allows the server to count exactly; {self._show(amounts)} "
                "refused",
                None,
            )
        if status == WRONGTYPE:
            raise BackendUnavailable(
                f"key {spec.key!r} holds something that is not a ratekeeper bucket (another "
                "type, WRONGTYPE, or a string of another form): it was left alone; delete it, "
                "or give this limiter another key or prefix"
            )
        raise BackendUnavailable(f"the script answered an unknown status {status}")

    def _spec_of(
        self, index: int, amounts: tuple[int, ...], specs: tuple[Spec, ...] | None = None
    ) -> Spec:
        specs = self._specs if specs is None else specs
        touched = [s for s, n in zip(specs, amounts, strict=False) if n] or list(specs)
        return touched[min(max(index, 1), len(touched)) - 1]

    def _show(self, amounts: tuple[int, ...]) -> str:
        if self._items1:
            return f"{amounts[0]} token(s)"
        return ", ".join(f"{n} {s.name}" for s, n in zip(self._specs, amounts, strict=False) if n)

    def _count_grant(self, amounts: tuple[int, ...], wait_ns: int) -> None:
        self._granted += 1
        self._granted_tokens += amounts[0] if self._items1 else sum(amounts)
        self._total_wait_ns += wait_ns
        if wait_ns > self._max_wait_ns:
            self._max_wait_ns = wait_ns

    def _uncount_grant(self, amounts: tuple[int, ...], wait_ns: int) -> None:
        """Take back _count_grant for a booking withdrawn before its slot came."""
        self._granted -= 1
        self._granted_tokens -= amounts[0] if self._items1 else sum(amounts)
        self._total_wait_ns -= wait_ns

    def _count_refund(self, reply: list[int], amounts: tuple[int, ...]) -> tuple[float, ...]:
        backs = []
        j = 3
        for spec, n in zip(self._specs, amounts, strict=False):
            if n:
                backs.append(reply[j] / spec.cost)
                j += 3
            else:
                backs.append(0.0)
        self._refunded += sum(backs)
        return tuple(backs)

    def _count_cancel(self) -> None:
        self._cancelled += 1

    def _after_batch(self, request: Request, reply: list[int] | None) -> None:
        """Settle a request nobody awaits (a refund sent for a cancelled grant)."""
        if reply is not None and request.op == REFUND and reply[0] == DONE:
            for j, (spec, _, _, _) in enumerate(request.items):
                self._refunded += reply[3 + 3 * j] / spec.cost

    # -- the failure policy ----------------------------------------------------------------

    def _fail(self, failure: ServerFailure) -> None:
        """Count a failed server call; raise BackendUnavailable unless the policy covers it."""
        self._backend_errors += 1
        if not failure.transient or self._on_failure == "closed":
            raise BackendUnavailable(str(failure)) from failure

    def _fallback_reserve(
        self, failure: ServerFailure, amounts: tuple[int, ...], max_wait_ns: int | None
    ) -> tuple[int, tuple[int, ...] | None]:
        """Decide a reservation without the server: (wait_ns, local marks or None if open).

        Raises BackendUnavailable (fail closed, or not a matter for the policy) or
        AcquireTimeout (the fallback limiter cannot grant within max_wait).
        """
        self._fail(failure)
        if self._on_failure == "open":
            self._failed_open += 1
            self._count_grant(amounts, 0)
            return 0, None
        local = self._fallback()
        for spec, n, g in zip(self._specs, amounts, local.gcras, strict=False):
            if n > g.capacity:
                raise BackendUnavailable(
                    f"{failure}; the fallback limiter (capacity {g.capacity} of "
                    f"{spec.capacity}) can never grant {n} tokens on limit {spec.name!r}"
                ) from failure
        granted, wait, marks = local.reserve(time.monotonic_ns(), amounts, max_wait_ns)
        if not granted:
            self._rejected += 1
            raise AcquireTimeout(
                f"{self._show(amounts)} would be granted by the fallback limiter in "
                f"{wait / NS_PER_SECOND:.6f}s, beyond the timeout (server down: {failure})",
                wait / NS_PER_SECOND,
            )
        self._fallback_grants += 1
        self._count_grant(amounts, wait)
        return wait, marks

    def _settle_request(self) -> Request | None:
        """Return the request settling the fallback's grants at the server, if any.

        Sent in the same call as the first decision after an outage (see ``pads``).
        """
        local = self._local
        if local is None or self._closed:
            return None
        now = time.monotonic_ns()
        deficits = [g.capacity - g.tokens_at(now) for g in local.gcras]
        units = pads(self._specs, deficits, self._share or 1.0, self._retry_interval)
        if not any(units):
            self._local = None  # nothing outstanding: back on the server as it stands
            return None
        return Request(PAD, self._items(units), -1, self)

    def _settled(self, reply: list[int] | None) -> None:
        """Drop the fallback limiter once its deficit was charged at the server."""
        if reply is not None and reply[0] == DONE:
            self._local = None

    def _behind(
        self, specs: tuple[Spec, ...], limits: Sequence[tuple[Rate, int]]
    ) -> tuple[int, ...]:
        """Return the tokens to charge a new local bucket per limit: none if this process
        knows of no slot booked ahead on its key (the bucket was not saturated), else
        enough to empty it at the latest one (the sleepers still take their tokens)."""
        now = time.monotonic_ns()
        behind = []
        for spec, (rate, capacity) in zip(specs, limits, strict=True):
            floor = self._floors.get(spec.key)
            ahead = 0 if floor is None else floor[1] - _FLOOR_MARGIN_NS - now
            tokens = math.ceil(ahead / rate.ns_per_token) if ahead > 0 else 0
            behind.append(tokens + capacity if tokens else 0)
        return tuple(behind)

    def _fallback(self) -> LocalLimits:
        """Return the local limiter, made at the first failure, at ``fallback_share`` of
        the limit: full, unless this process knows of slots booked ahead (the bucket at
        the server was saturated), then empty at the latest one (the sleepers still take
        their tokens)."""
        local = self._local
        if local is None:
            share = self._share or 1.0
            limits = [shared_limit(s, share) for s in self._specs]
            now = time.monotonic_ns()
            local = self._local = LocalLimits(limits, now)
            behind = self._behind(self._specs, limits)
            if any(behind):
                local.charge(now, behind)
        return local

    def _fallback_charge(self, failure: ServerFailure, amounts: tuple[int, ...]) -> None:
        self._fail(failure)
        if self._on_failure == "fallback":
            self._fallback().charge(time.monotonic_ns(), amounts)

    def _fallback_refund(
        self,
        failure: ServerFailure | None,
        amounts: tuple[int, ...],
        marks: tuple[int, ...] | None,
    ) -> tuple[float, ...]:
        if failure is not None:
            self._fail(failure)
        if self._on_failure != "fallback" or self._local is None:
            return tuple(0.0 for _ in amounts)
        backs = self._local.refund(
            time.monotonic_ns(), amounts, [None] * len(amounts) if marks is None else marks
        )
        self._refunded += sum(backs)
        return backs

    def _fallback_state(self, failure: ServerFailure) -> tuple[tuple[float, float], ...]:
        self._fail(failure)
        if self._on_failure != "fallback":
            raise BackendUnavailable(f"{failure}; nothing to read while it is down") from failure
        local = self._fallback()
        now = time.monotonic_ns()
        return tuple((g.tokens_at(now), g.full_in_ns(now) / NS_PER_SECOND) for g in local.gcras)

    # -- reporting -------------------------------------------------------------------------

    def _statistics(self) -> RedisStatistics:
        return RedisStatistics(
            granted=self._granted,
            granted_tokens=self._granted_tokens,
            rejected=self._rejected,
            timed_out=0,
            cancelled=self._cancelled,
            waiting=self._waiting,
            waiting_tokens=self._waiting_tokens,
            refunded_tokens=self._refunded,
            total_wait=self._total_wait_ns / NS_PER_SECOND,
            max_wait=self._max_wait_ns / NS_PER_SECOND,
            backend_errors=self._backend_errors,
            failed_open=self._failed_open,
            fallback_grants=self._fallback_grants,
            server_requests=self._requests,
            round_trips=self._round_trips,
        )

    def _describe(self) -> str:
        if self._items1:
            s = self._specs[0]
            head = f"{s.key!r} {s.rate} capacity={s.capacity}"
        else:
            head = " ".join(f"{s.name}={s.rate}/{s.capacity}" for s in self._specs)
        name = f" {self.name!r}" if self.name else ""
        closed = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__}{name} {head} on_failure={self._on_failure} "
            f"waiting={self._waiting}{closed}>"
        )


_FLOOR_MARGIN_NS = 100_000_000
"""How long past its slot (by this process's clock) a floor is still sent: a no-op at the
server once the slot has passed, so the margin only covers the two clocks' drift."""
_MAX_FLOORS = 4096
"""Floors kept before the ones whose slots have passed are swept out (keyed backends)."""


def pads(
    specs: tuple[Spec, ...], deficits: Sequence[float], share: float, retry_interval: float
) -> tuple[int, ...]:
    """Return, per limit, how far ahead (units) the server's bucket must be when a process
    that decided alone while it was down comes back.

    The process's local bucket still counts ``deficits`` tokens as taken. Scaled up
    from its share to the whole limit (every process deciding locally as it did) and at
    most the capacity, that is what was granted recently everywhere; and the processes not
    yet back may go on granting alone for up to ``retry_interval`` at the rest of the rate.
    The bucket is padded to that (a max, not a sum: several processes coming back do not
    add up, and a bucket that kept its state further behind is left alone), so that a
    server that comes back full (a restart) does not admit on top of the local grants.
    The cost: up to one burst too little just after an outage, never too much.
    """
    units = []
    for spec, deficit in zip(specs, deficits, strict=True):
        if deficit <= 0:
            units.append(0)
            continue
        taken = min(spec.capacity, math.ceil(deficit / share)) * spec.cost
        rest = math.ceil((1 - share) * retry_interval * NS_PER_SECOND) * spec.scale
        units.append(min(taken + rest, MAX_AHEAD))
    return tuple(units)


# redis-py's own methods, as imported (before any later patching of the classes).
_PLAIN: dict[Any, tuple[Any, Any]] = {
    kind: (kind.evalsha, kind.execute_command) for kind in (redis.Redis, redis.asyncio.Redis)
}


class Direct:
    """A plain client's script calls, packed here and sent on a connection of its pool.

    Per call, redis-py's execute_command encodes every argument and goes through layers
    (the evalsha wrapper, observability hooks) that cost more than a short script at the
    server; a limiter's hot commands never change, so they are packed once. The front ends
    send them with what execute_command keeps: the connection's retry policy, socket timeout
    and health check, and a connection that fails or is cancelled mid-reply is dropped.
    """

    __slots__ = ("encode", "name_args", "pool")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.encode = pool.get_encoder().encode
        # redis-py < 5.3 wants a command name (unused); later versions warn if given one.
        params = list(inspect.signature(pool.get_connection).parameters.values())
        named = bool(params) and params[0].kind is params[0].POSITIONAL_OR_KEYWORD
        wants = named and params[0].default is params[0].empty
        self.name_args: tuple[str, ...] = ("EVALSHA",) if wants else ()

    def pack(self, script: Any, keys: list[str], args: list[Any]) -> bytes:
        """Return EVALSHA of ``script`` (a registered Script) on ``keys`` and ``args``."""
        return pack_command(self.encode, ("EVALSHA", script.sha, len(keys), *keys, *args))


def direct_for(client: Any) -> Direct | None:
    """Return the client's Direct path, or None where its calls must go through redis-py's
    execute_command: a cluster (it routes by slot), a single-connection client (it has a
    lock of its own), a client whose class overrides evalsha or execute_command (the
    override must run: a test's clock, instrumentation)."""
    kind = type(client)
    for base, plain in _PLAIN.items():
        if isinstance(client, base):
            if (kind.evalsha, kind.execute_command) != plain:
                return None
            if getattr(client, "single_connection_client", False):
                return None
            return Direct(client.connection_pool)
    return None


def pack_command(encode: Callable[[Any], bytes], parts: Sequence[Any]) -> bytes:
    """Return one command as it goes on the wire (RESP: an array of bulk strings).

    ``encode`` is the client's encoder (``pool.get_encoder().encode``), so every part goes
    out as redis-py itself would send it. The hot paths pack their commands once and send
    the bytes as they are, call after call.
    """
    chunks = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = encode(part)
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)


def wire(requests: list[Request]) -> tuple[list[str], list[Any]]:
    """Return ``encode(requests)`` with the floors their owners hold for the keys."""
    floors: dict[str, tuple[int, int]] | None = None
    for request in requests:
        owner = request.owner
        if owner is not None and owner._floors:
            if floors is None:
                floors = {}
            owner._floors_of(request, floors)
    return encode(requests, None, floors)


def take_replies(values: list[int], keys: list[str], requests: list[Request]) -> list[list[int]]:
    """Return one reply per request from the script's integers, after handing the keys'
    own limits (the reply's trailer) to the owners of the requests naming them, and the
    slots the replies show booked ahead to their owners' floors."""
    replies, trailer = cut(values, requests)
    if trailer:
        adopt_limits(trailer, keys, requests)
        return replies  # in the keys' own limits: the next replies give the floors
    now_us = values[0]
    for request, reply in zip(requests, replies, strict=True):
        owner = request.owner
        if owner is not None and reply[0] != WRONGTYPE:
            j = 4
            for spec, _, _, _ in request.items:
                if reply[j] > spec.burst:
                    owner._saw(spec, reply[j - 2], now_us, reply[j])
                j += 3
    return replies


def adopt_limits(trailer: list[int], keys: list[str], requests: list[Request]) -> None:
    """Give each owner in ``requests`` the limits the trailer says its keys hold."""
    owners = {id(r.owner): r.owner for r in requests if r.owner is not None}
    for pos in range(0, len(trailer), 4):
        index, cost, scale, capacity = trailer[pos : pos + 4]
        for owner in owners.values():
            owner._adopt(keys[index - 1], cost, scale, capacity)


class BucketParts:
    """What both front ends' single buckets add to Core: construction, the limit as it is
    now. ``Core._start`` checks the options and has the front end connect."""

    _specs: tuple[Spec, ...]
    _start: Callable[..., None]
    _specs_changed: Callable[[], None]

    def __init__(
        self,
        client: Any,
        key: str,
        rate: RateLike,
        capacity: int | None = None,
        *,
        prefix: str = "ratekeeper:",
        timeout: float = 0.5,
        on_failure: OnFailure = "closed",
        fallback_share: float | None = None,
        retry_interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        self._start(
            client,
            single_spec(prefix, key, rate, capacity),
            timeout=timeout,
            on_failure=on_failure,
            fallback_share=fallback_share,
            retry_interval=retry_interval,
            name=name,
        )
        self.key = self._specs[0].key
        self._specs_changed()

    @property
    def rate(self) -> Rate:
        """The rate, as this process last saw it at the server."""
        return self._specs[0].rate

    @property
    def capacity(self) -> int:
        """The burst size, as this process last saw it at the server."""
        return self._specs[0].capacity


class CompositeParts:
    """What both front ends' composites add to Core: construction, the limits by name."""

    _specs: tuple[Spec, ...]
    _start: Callable[..., None]

    def __init__(
        self,
        client: Any,
        key: str,
        limits: LimitsLike,
        *,
        prefix: str = "ratekeeper:",
        timeout: float = 0.5,
        on_failure: OnFailure = "closed",
        fallback_share: float | None = None,
        retry_interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        self._start(
            client,
            composite_specs(prefix, key, limits),
            timeout=timeout,
            on_failure=on_failure,
            fallback_share=fallback_share,
            retry_interval=retry_interval,
            name=name,
        )
        self.key = key

    @property
    def limits(self) -> dict[str, Limit]:
        """The limits by name, as this process last saw them at the server."""
        return {s.name: Limit(s.rate, s.capacity, s.weight) for s in self._specs}

    def _named(self, values: tuple[float, ...]) -> dict[str, float]:
        return {s.name: v for s, v in zip(self._specs, values, strict=False)}


def shared_limit(spec: Spec, share: float) -> tuple[Rate, int]:
    """Return (rate, capacity) of the fallback limiter: ``share`` of the limit's, >= 1 token."""
    rate = Rate(float(spec.rate.tokens) * share, spec.rate.per)
    return rate, max(1, math.floor(spec.capacity * share))


def single_spec(prefix: str, key: str, rate: RateLike, capacity: int | None) -> tuple[Spec]:
    """Return the one Spec of a single-key limiter; raise for a bad key or limit."""
    return (make_spec(prefix + check_key(key, prefix), "", rate, capacity),)


def composite_specs(prefix: str, key: str, limits: LimitsLike) -> tuple[Spec, ...]:
    """Return the Specs of a composite; all its keys share one hash slot (``{key}``)."""
    check_key(key, prefix)
    specs = []
    for name, limit in named_limits(limits).items():
        specs.append(
            make_spec(f"{prefix}{{{key}}}:{name}", name, limit.rate, limit.capacity, limit.weight)
        )
    return tuple(specs)


def check_key(key: str, prefix: str) -> str:
    """Return ``key`` if it is a non-empty str; raise TypeError/ValueError otherwise."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not isinstance(key, str):
        raise TypeError(f"key must be a str naming the limit, not {type(key).__name__} {key!r}")
    if not key:
        raise ValueError("key must be a non-empty string naming the limit")
    return key


LIVE, CANCELLED, IN_USE = 0, 1, 2
"""A reservation's states: granted and not yet used; given back; used (its holder resumed)."""


class ReservationBase:
    """What both front ends' reservations are: tokens granted at the server (or by the
    fallback), for use ``delay`` seconds after the decision.

    ``cancel()`` gives them back by mark while the holder has not resumed (as far as that is
    still correct: never tokens granted to others since). Once the holder has resumed
    (``await reservation`` or ``wait()`` returned) the tokens are in use and ``cancel()``
    does nothing: giving used tokens back would open a burst. The front ends say how to
    wait and how to send the refund (``_give_back``).
    """

    __slots__ = ("_due", "_limiter", "_local", "_marks", "_state", "amounts", "delay_ns")

    def __init__(
        self,
        limiter: Any,
        amounts: tuple[int, ...],
        delay_ns: int,
        marks: tuple[tuple[int, int], ...] | None,
        local: tuple[int, ...] | None,
    ) -> None:
        self._limiter = limiter
        self.amounts = amounts
        self.delay_ns = delay_ns
        self._marks = marks
        self._local = local
        self._state = LIVE
        self._due = time.monotonic() + delay_ns / NS_PER_SECOND

    @property
    def delay(self) -> float:
        """Seconds from the decision until the tokens may be used (0.0: at once)."""
        return self.delay_ns / NS_PER_SECOND

    @property
    def tokens(self) -> int:
        """The tokens reserved (on a composite: of its first limit)."""
        return self.amounts[0]

    @property
    def granted(self) -> bool:
        """True once the slot has come (at once for a delay of 0) and until cancel(), or
        close() while waiting: as a queued reservation in memory is granted at its due time."""
        state = self._state
        return state == IN_USE or (state == LIVE and time.monotonic() >= self._due)

    @property
    def cancelled(self) -> bool:
        """True after cancel() (or close() while it was waited on)."""
        return self._state == CANCELLED

    def cancel(self) -> None:
        """Give the tokens back (by mark) unless the holder has resumed. Idempotent.

        A failure to send the refund is counted (``backend_errors``), never raised: the
        tokens then stay consumed, the safe side.
        """
        if self._state == LIVE:
            limiter = self._limiter
            limiter._count_cancel()
            if self.delay_ns and time.monotonic() < self._due:
                # Withdrawn before its slot: in memory's terms a waiter that left the queue,
                # never granted. The server booked it, so the booking counted it: uncount.
                limiter._uncount_grant(self.amounts, self.delay_ns)
            self._give_back()

    def _give_back(self) -> None:
        """Send the refund (also after use: ``take(refund_on_error=True)``), once."""
        raise NotImplementedError

    def _refund_due(self) -> bool:
        """Mark the reservation given back; return False if it already was."""
        if self._state == CANCELLED:
            return False
        self._state = CANCELLED
        return True

    def __repr__(self) -> str:
        state = ("live", "cancelled", "in use")[self._state]
        return f"<{type(self).__name__} amounts={self.amounts} delay={self.delay:.6f}s {state}>"
