"""httpx transports that keep a client under someone else's limit, and listen when told.

``httpx.AsyncClient(transport=RateLimitTransport(rate="10/s"))`` takes tokens from a
``TokenBucket`` before each request (``SyncRateLimitTransport`` and ``SyncTokenBucket`` for the
sync ``httpx.Client``). The server is listened to:

- ``429`` or ``503`` with ``Retry-After`` (seconds, or an HTTP date: measured from the
  response's ``Date`` when it has one, so clock skew does not matter) pauses the limit for
  that long: the bucket is charged into debt so that its next token comes no sooner, and
  every request queued behind waits too. Concurrent 429s pause once, not once each.
- A ``RateLimit`` header (IETF draft -10/-11, ``"policy";r=0;t=5``; also the older
  ``RateLimit-Remaining: 0`` with ``RateLimit-Reset: 5``) with nothing remaining pauses the
  limit for its ``t`` seconds, on any response: the server said the quota is spent.
- A ``429`` without a usable ``Retry-After`` or ``RateLimit`` (missing, malformed, negative)
  pauses for ``default_pause`` seconds (1.0): the documented safe default. A ``503`` without
  them is not taken as a rate signal (servers answer 503 for many reasons).
- Every pause is capped at ``max_pause`` seconds (60): a misconfigured or hostile server
  cannot stall the client for hours.
- Reading the headers never raises. A value that is malformed or out of range (a number of
  more than 15 digits, the bound RFC 8941 sets for integers; a date past year 9999) is
  ignored as if absent, and logged on the ``ratekeeper.httpx`` logger: a warning the first
  time for each header, then at debug level.
- With ``aimd=Aimd(min_rate, max_rate)`` a rate signal also lowers the rate (times
  ``decrease``, once per round: responses to requests sent before the last decrease do not
  lower it again) and each successful response raises it by ``increase / rate``, i.e. by
  ``increase`` tokens/s per second of traffic at the full rate, within the bounds, through
  ``set_rate``. The capacity (burst) stays as configured.
- With ``retries=n`` a rate-limited response is retried up to n times (after the pause)
  when its body can be sent again; otherwise it is returned as it came.

``per_host=True`` gives each host (``host:port``) its own bucket and its own AIMD state.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

try:
    import httpx
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.httpx needs httpx: pip install 'ratekeeper[httpx]'",
        name="httpx",
    ) from exc

from .._asyncio import TokenBucket
from .._clock import MONOTONIC, Clock
from .._rate import Rate, RateLike
from .._threading import SyncTokenBucket

__all__ = [
    "Aimd",
    "RateLimitTransport",
    "SyncRateLimitTransport",
    "parse_ratelimit",
    "parse_retry_after",
]

logger = logging.getLogger("ratekeeper.httpx")

# RFC 8941 integers have at most 15 digits; more is out of range, whatever the header. ASCII
# digits only: HTTP's DIGIT is 0-9, while \d would also read other scripts' digits.
_MAX_DIGITS = 15
_SECONDS = re.compile(r"\s*([0-9]{1,15}(?:\.[0-9]+)?)\s*")
_PARAM = re.compile(r"\s*([a-z*][a-z0-9_.*-]*)\s*=\s*(-?)([0-9]+)\s*")
_warned: set[str] = set()  # the headers already warned about (see _ignored)
Bucket = TypeVar("Bucket", TokenBucket, SyncTokenBucket)


@dataclass(frozen=True)
class Aimd:
    """Adapt the rate to the server: multiplicative decrease, additive increase, in bounds.

    On a rate signal (429, or 503 with ``Retry-After``/``RateLimit``) the rate becomes
    ``max(min_rate, rate * decrease)``; after each successful response it grows by
    ``increase / rate`` up to ``max_rate`` (``increase`` tokens/s for each second spent at
    the full rate). Raises ValueError for bounds that are not 0 < min_rate <= max_rate, a
    ``decrease`` outside (0, 1) or an ``increase`` < 0.
    """

    min_rate: float
    max_rate: float
    decrease: float = 0.5
    increase: float = 1.0

    def __post_init__(self) -> None:
        for name in ("min_rate", "max_rate", "decrease", "increase"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Aimd.{name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"Aimd.{name} must be finite, got {value!r}")
        if not 0 < self.min_rate <= self.max_rate:
            raise ValueError(
                f"Aimd needs 0 < min_rate <= max_rate, got {self.min_rate}, {self.max_rate}"
            )
        if not 0 < self.decrease < 1:
            raise ValueError(f"Aimd.decrease must be between 0 and 1, got {self.decrease}")
        if self.increase < 0:
            raise ValueError(f"Aimd.increase must be >= 0, got {self.increase}")


# -- reading the server ------------------------------------------------------------------------


def _ignored(header: str, value: str, why: str) -> None:
    """Log that a header value was ignored: a warning the first time per header, then debug.

    Once per header, because a server that sends garbage sends it on every response.
    """
    level = logging.DEBUG if header in _warned else logging.WARNING
    _warned.add(header)
    logger.log(level, "ignoring %s %s %.80r (logged once as a warning)", why, header, value)


def parse_retry_after(
    value: str, date: str | None = None, now: float | None = None
) -> float | None:
    """Return the seconds a ``Retry-After`` value asks for, or None if it is malformed.

    Accepts delay-seconds (``"120"``, at most 15 digits; a decimal fraction is tolerated) and
    HTTP dates (years 1 to 9999). A date is measured from ``date`` (the response's ``Date``
    header) when that parses, else from ``now`` (default: the wall clock); a date in the past
    means 0. Never raises: anything else is None (and logged, see the module), so the result
    is always None or from 0 to under 1e15.
    """
    match = _SECONDS.fullmatch(value)
    if match:
        return float(match[1])
    when = _http_date(value)
    if when is None:
        _ignored("Retry-After", value, "a malformed or out-of-range")
        return None
    base = _http_date(date) if date else None
    if base is None:
        base = time.time() if now is None else now
    return max(0.0, when - base)


def _http_date(value: str) -> float | None:
    """Return an HTTP date as a POSIX timestamp, or None when it does not parse."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        return parsed.timestamp() if parsed.tzinfo is not None else None
    except (TypeError, ValueError, IndexError, OverflowError):  # e.g. year 0 or 10000
        return None


def parse_ratelimit(value: str) -> list[tuple[str, int | None, int | None]]:
    """Read a ``RateLimit`` field: ``[(policy, r, t), ...]``, malformed items left out.

    The draft's syntax is a structured-field list, ``"default";r=50;t=30, "daily";r=1``;
    a bare token as the policy name is accepted too. ``r`` or ``t`` is None when absent.
    Never raises: an item with a negative integer or one of more than 15 digits (RFC 8941's
    bound) is left out and logged (see the module), so every ``r`` and ``t`` is from 0 to
    under 1e15.
    """
    items = []
    for member in _split_list(value):
        name, *params = member.split(";")
        name = name.strip().strip('"')
        if not name:
            continue
        values: dict[str, int] = {}
        usable = True
        for param in params:
            match = _PARAM.fullmatch(param.lower())
            if match is None:
                continue
            key, minus, digits = match.groups()
            if minus or len(digits) > _MAX_DIGITS:
                usable = False
                break
            values[key] = int(digits)
        if not usable:
            _ignored("RateLimit", member, "a negative or out-of-range item of")
            continue
        items.append((name, values.get("r"), values.get("t")))
    return items


def _split_list(value: str) -> list[str]:
    """Split a structured-field list on commas outside quoted strings."""
    members: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            members.append("".join(current))
            current = []
        else:
            current.append(char)
    members.append("".join(current))
    return [m for m in members if m.strip()]


def _quota_spent_for(headers: httpx.Headers) -> float | None:
    """Return the seconds the RateLimit headers say the quota stays spent, or None.

    Never raises; the result is None or from 0 to under 1e15 (the parsers' bound)."""
    longest: float | None = None
    for value in headers.get_list("ratelimit"):
        for _, remaining, reset in parse_ratelimit(value):
            if remaining == 0 and reset is not None:
                longest = reset if longest is None else max(longest, reset)
    if longest is None:
        remaining_text = headers.get("ratelimit-remaining")
        reset_text = headers.get("ratelimit-reset")
        if remaining_text is not None and reset_text is not None:
            left = _SECONDS.fullmatch(remaining_text)
            until = _SECONDS.fullmatch(reset_text)
            if left is None or until is None:
                _ignored(
                    "RateLimit-Remaining/Reset",
                    f"{remaining_text}, {reset_text}",
                    "a malformed or out-of-range",
                )
            elif float(left[1]) == 0:
                longest = float(until[1])
    return longest


# -- the shared logic ---------------------------------------------------------------------------


class _Host(Generic[Bucket]):
    """One bucket and its adaptive state."""

    __slots__ = ("applied", "bucket", "decreased_at", "rate")
    bucket: Bucket
    rate: float
    applied: float
    decreased_at: int

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.rate = bucket.rate.per_second  # the AIMD rate, as a float
        self.applied = self.rate  # the rate last given to set_rate
        self.decreased_at = -(1 << 62)  # ns


class _Governor(Generic[Bucket]):
    """Everything both transports decide: which bucket, what a request costs, what a
    response says. They differ only in how they wait and send."""

    def __init__(
        self,
        make: Callable[[Rate, int, Clock], Bucket],
        *,
        rate: RateLike | None,
        capacity: int | None,
        limiter: Bucket | None,
        per_host: bool,
        cost: int | Callable[[httpx.Request], int],
        timeout: float | None,
        aimd: Aimd | None,
        retries: int,
        default_pause: float,
        max_pause: float,
        max_hosts: int,
        clock: Clock | None,
    ) -> None:
        if (rate is None) == (limiter is None):
            raise TypeError("give either rate (and capacity) or limiter=, not both or neither")
        if limiter is not None and (per_host or capacity is not None):
            raise TypeError("per_host and capacity go with rate; a limiter is one bucket")
        if limiter is not None and clock is not None:
            raise TypeError("clock goes with rate; a limiter has its own clock")
        if not (callable(cost) or (type(cost) is int and cost >= 0)):
            raise TypeError(f"cost must be an int >= 0 or a function of the request, not {cost!r}")
        for value, what in ((default_pause, "default_pause"), (max_pause, "max_pause")):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{what} must be a number of seconds, not {value!r}")
            if not 0 <= value < math.inf:
                raise ValueError(f"{what} must be finite seconds >= 0, got {value!r}")
        if type(retries) is not int or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if type(max_hosts) is not int or max_hosts < 1:
            raise ValueError(f"max_hosts must be an int >= 1, got {max_hosts!r}")
        self._make: Callable[[Rate, int, Clock], Bucket] = make
        self._rate = None if rate is None else Rate.of(rate)
        if aimd is not None and not isinstance(aimd, Aimd):
            raise TypeError(f"aimd must be an Aimd(...) or None, not {aimd!r}")
        if self._rate is not None and aimd is not None:
            # Start inside the bounds.
            start = min(max(self._rate.per_second, aimd.min_rate), aimd.max_rate)
            self._rate = Rate(_round(start)) if start != self._rate.per_second else self._rate
        self._capacity = capacity
        if limiter is not None:
            clock = limiter._clock  # the shared bucket's clock times its pauses and rounds
        self._clock = MONOTONIC if clock is None else clock
        self._per_host = per_host
        self._cost = cost
        self.timeout = timeout
        self._aimd = aimd
        self.retries = retries
        self._default_pause = float(default_pause)
        self._max_pause = float(max_pause)
        self._max_hosts = max_hosts
        self._hosts: OrderedDict[str, _Host[Bucket]] = OrderedDict()
        self._single: _Host[Bucket] | None = None if limiter is None else _Host(limiter)
        if self._single is None and not per_host:
            self._single = _Host(self._new_bucket())
        self.limited = 0  # rate-limit signals seen
        self.paused = 0.0  # seconds of pause asked for, in total

    def _new_bucket(self) -> Bucket:
        assert self._rate is not None
        capacity = self._rate.default_capacity if self._capacity is None else self._capacity
        return self._make(self._rate, capacity, self._clock)

    def host(self, request: httpx.Request) -> _Host[Bucket]:
        """Return the bucket state that ``request`` goes through."""
        if self._single is not None:
            return self._single
        name = request.url.netloc.decode("ascii", "replace")
        hosts = self._hosts
        state = hosts.get(name)
        if state is None:
            if len(hosts) >= self._max_hosts:
                hosts.popitem(last=False)
            state = hosts[name] = _Host(self._new_bucket())
        else:
            hosts.move_to_end(name)
        return state

    def cost(self, request: httpx.Request) -> int:
        """Return the tokens ``request`` takes (0: not limited); raise for a bad amount."""
        cost = self._cost
        if callable(cost):
            amount = cost(request)
            if type(amount) is not int or amount < 0:
                raise TypeError(f"the cost function must return an int >= 0, not {amount!r}")
            return amount
        return cost

    def now_ns(self) -> int:
        """Return the clock's reading (ns), to note when a request was sent."""
        return self._clock.now_ns()

    def heard(self, state: _Host[Bucket], response: httpx.Response, sent_ns: int) -> bool:
        """Act on what ``response`` says; return True if it was a rate-limit signal."""
        status = response.status_code
        headers = response.headers
        limited = status in (429, 503)
        pause: float | None = None
        source = ""
        if limited and "retry-after" in headers:
            pause = parse_retry_after(headers["retry-after"], headers.get("date"))
            source = "Retry-After"
        if pause is None:
            pause = _quota_spent_for(headers)
            source = "RateLimit"
        if pause is None and status == 429:
            pause = self._default_pause
            source = "default_pause"
        signal = status == 429 or (limited and pause is not None)
        if self._aimd is not None:
            # The rate first: a pause is charged in tokens at the rate in force, and
            # set_rate keeps debt in tokens, so lowering the rate after would stretch it.
            if signal:
                self._decrease(state, sent_ns)
            elif status < 400:
                self._increase(state)
        if pause is not None and pause > 0:
            self.pause(state, min(pause, self._max_pause), f"{status} {source}")
        if signal:
            self.limited += 1
        return signal

    def pause(self, state: _Host[Bucket], seconds: float, why: str = "") -> None:
        """Hold the bucket's next token back for ``seconds`` by charging it into debt.

        Idempotent: a bucket that already waits that long is left alone.
        """
        bucket = state.bucket
        # The bucket is in this process: its synchronous calls (the asyncio one's *_nowait).
        if isinstance(bucket, TokenBucket):
            available, charge = bucket.available_nowait(), bucket.charge_nowait
        else:
            available, charge = bucket.available(), bucket.charge
        need = available - 1 + seconds * bucket.rate.per_second
        tokens = math.ceil(need - 1e-9)
        if tokens >= 1:
            self.paused += seconds
            logger.debug("pausing %r for %.3fs (%s)", bucket, seconds, why)
            charge(tokens)

    def _decrease(self, state: _Host[Bucket], sent_ns: int) -> None:
        aimd = self._aimd
        assert aimd is not None
        if sent_ns < state.decreased_at:
            return  # sent before the last decrease: that one already answered for it
        state.decreased_at = self._clock.now_ns()
        state.rate = max(aimd.min_rate, state.rate * aimd.decrease)
        self._apply(state)

    def _increase(self, state: _Host[Bucket]) -> None:
        aimd = self._aimd
        assert aimd is not None
        state.rate = min(aimd.max_rate, state.rate + aimd.increase / state.rate)
        # set_rate is not free: apply a change of 2% or more (or reaching the bound).
        if state.rate >= state.applied * 1.02 or state.rate == aimd.max_rate != state.applied:
            self._apply(state)

    def _apply(self, state: _Host[Bucket]) -> None:
        rate = _round(state.rate)
        state.applied = rate
        bucket = state.bucket
        if isinstance(bucket, TokenBucket):
            bucket.set_rate_nowait(Rate(rate))
        else:
            bucket.set_rate(Rate(rate))

    def current_rate(self, host: str | None = None) -> float:
        """Return the rate (tokens/s) now in force, for ``host`` when ``per_host``."""
        if self._single is not None:
            return self._single.rate
        if host is None:
            raise ValueError("per_host=True: name the host ('example.com' or 'example.com:8080')")
        state = self._hosts.get(host)
        if state is None:
            assert self._rate is not None
            return self._rate.per_second
        return state.rate

    def buckets(self) -> dict[str, Bucket]:
        """Return the buckets in use: {"*": bucket} or {host: bucket}."""
        if self._single is not None:
            return {"*": self._single.bucket}
        return {host: state.bucket for host, state in self._hosts.items()}


def _round(rate: float) -> float:
    return float(f"{rate:.4g}")


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


_ARGS = """
    ``rate``/``capacity`` make the bucket (per host with ``per_host=True``); or pass
    ``limiter=`` to share one you made. ``cost``: tokens per request, an int or a function of
    the request (0: not limited). ``timeout``: seconds a request may wait for its tokens
    before AcquireTimeout (a TimeoutError) is raised at once; None waits as long as needed.
    ``aimd``, ``retries``, ``default_pause``, ``max_pause``: see the module. Raises
    TypeError/ValueError for bad arguments, naming them.
"""


class RateLimitTransport(httpx.AsyncBaseTransport):
    """An httpx async transport that takes tokens before each request and heeds 429s.

    Wraps ``transport`` (default ``httpx.AsyncHTTPTransport()``), which it closes with
    itself.
    """

    __doc__ = (__doc__ or "") + _ARGS

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        rate: RateLike | None = None,
        capacity: int | None = None,
        limiter: TokenBucket | None = None,
        per_host: bool = False,
        cost: int | Callable[[httpx.Request], int] = 1,
        timeout: float | None = None,
        aimd: Aimd | None = None,
        retries: int = 0,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        max_hosts: int = 1024,
        clock: Clock | None = None,
    ) -> None:
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport
        self._governor: _Governor[TokenBucket] = _Governor(
            lambda rate, capacity, clock: TokenBucket(rate, capacity, clock=clock),
            rate=rate,
            capacity=capacity,
            limiter=limiter,
            per_host=per_host,
            cost=cost,
            timeout=timeout,
            aimd=aimd,
            retries=retries,
            default_pause=default_pause,
            max_pause=max_pause,
            max_hosts=max_hosts,
            clock=clock,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Wait for the request's tokens, send it, and act on what the response says.

        Raises AcquireTimeout if the tokens cannot come within ``timeout``, and whatever the
        wrapped transport raises.
        """
        governor = self._governor
        attempt = 0
        while True:
            state = governor.host(request)
            tokens = governor.cost(request)
            if tokens:
                await state.bucket.acquire(tokens, timeout=governor.timeout)
            sent = governor.now_ns()
            response = await self._transport.handle_async_request(request)
            limited = governor.heard(state, response, sent)
            if not limited or attempt >= governor.retries or not _replayable(request):
                return response
            attempt += 1
            await response.aclose()

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()

    @property
    def limited(self) -> int:
        """Rate-limit signals (429, or 503 with Retry-After/RateLimit) seen so far."""
        return self._governor.limited

    def current_rate(self, host: str | None = None) -> float:
        """Return the rate in force (tokens/s); name the host with ``per_host=True``."""
        return self._governor.current_rate(host)

    def buckets(self) -> dict[str, TokenBucket]:
        """Return the buckets in use: ``{"*": bucket}``, or one per host."""
        return self._governor.buckets()


class SyncRateLimitTransport(httpx.BaseTransport):
    """An httpx sync transport that takes tokens before each request and heeds 429s.

    The blocking twin of ``RateLimitTransport`` (a ``SyncTokenBucket``, FIFO among
    threads). Wraps ``transport`` (default ``httpx.HTTPTransport()``).
    """

    __doc__ = (__doc__ or "") + _ARGS

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        rate: RateLike | None = None,
        capacity: int | None = None,
        limiter: SyncTokenBucket | None = None,
        per_host: bool = False,
        cost: int | Callable[[httpx.Request], int] = 1,
        timeout: float | None = None,
        aimd: Aimd | None = None,
        retries: int = 0,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        max_hosts: int = 1024,
        clock: Clock | None = None,
    ) -> None:
        self._transport = httpx.HTTPTransport() if transport is None else transport
        self._governor: _Governor[SyncTokenBucket] = _Governor(
            lambda rate, capacity, clock: SyncTokenBucket(rate, capacity, clock=clock),
            rate=rate,
            capacity=capacity,
            limiter=limiter,
            per_host=per_host,
            cost=cost,
            timeout=timeout,
            aimd=aimd,
            retries=retries,
            default_pause=default_pause,
            max_pause=max_pause,
            max_hosts=max_hosts,
            clock=clock,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Block for the request's tokens, send it, and act on what the response says.

        Raises AcquireTimeout if the tokens cannot come within ``timeout``, and whatever the
        wrapped transport raises.
        """
        governor = self._governor
        attempt = 0
        while True:
            state = governor.host(request)
            tokens = governor.cost(request)
            if tokens:
                state.bucket.acquire(tokens, timeout=governor.timeout)
            sent = governor.now_ns()
            response = self._transport.handle_request(request)
            limited = governor.heard(state, response, sent)
            if not limited or attempt >= governor.retries or not _replayable(request):
                return response
            attempt += 1
            response.close()

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()

    @property
    def limited(self) -> int:
        """Rate-limit signals (429, or 503 with Retry-After/RateLimit) seen so far."""
        return self._governor.limited

    def current_rate(self, host: str | None = None) -> float:
        """Return the rate in force (tokens/s); name the host with ``per_host=True``."""
        return self._governor.current_rate(host)

    def buckets(self) -> dict[str, SyncTokenBucket]:
        """Return the buckets in use: ``{"*": bucket}``, or one per host."""
        return self._governor.buckets()
