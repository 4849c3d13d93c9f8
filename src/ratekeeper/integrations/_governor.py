"""What every client adapter decides, once: which bucket, what a request costs, what a
response says, and when the server's own quota holds a request back.

No HTTP library here: the httpx transports, the ``requests`` adapter and the aiohttp
middleware only wait for tokens, send, and hand the response's status and header fields to
``_Governor.heard``. The asyncio and blocking adapters differ only in how they wait.

The rules (the adapters' docstrings point here):

- ``429`` or ``503`` with ``Retry-After`` (seconds, or an HTTP date measured from the
  response's ``Date``) pauses the limit for that long: the bucket is charged into debt so that
  its next token comes no sooner, and every request queued behind waits too. Concurrent 429s
  pause once, not once each.
- Provider quota headers (see ``_headers``: IETF ``RateLimit``, ``X-RateLimit-*``, OpenAI's
  and Anthropic's) are read on every response. A quota with nothing remaining pauses the limit
  until its reset. A quota counted in requests becomes a local ledger: what the server says
  is left, less the requests still in flight when the answer came (the server may not have
  counted them yet); each request sent takes one, and a request that finds it empty waits,
  queued in the bucket, until there is one again. A window (``RateLimit``, ``X-RateLimit-*``)
  gives nothing back before its reset; OpenAI's and Anthropic's quotas refill steadily and
  are whole at their reset, so their ledger refills at the rate that implies. So the client
  sends no more than the server says it may, and never more than its own configured rate. A
  host's quotas hold back all of that host's requests (an API with separate quotas per
  endpoint family, such as GitHub's search, is best given a client of its own).
- A ``429`` without a usable ``Retry-After`` or quota pauses for ``default_pause`` seconds; a
  ``503`` without them is not a rate signal (servers answer 503 for many reasons).
- Every pause and every ledger lasts at most ``max_pause`` seconds.
- With ``aimd=Aimd(...)`` a rate signal lowers the rate (once per round: responses to
  requests sent before the last decrease do not lower it again) and each successful response
  raises it, through ``set_rate``; the capacity stays as configured.
- With ``retries=n`` a rate-limited response is retried up to n times (after the pause) when
  its body can be sent again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypedDict, TypeVar

from .._asyncio import TokenBucket
from .._clock import MONOTONIC, Clock
from .._rate import Rate, RateLike
from .._threading import SyncTokenBucket
from ._headers import Fields, Quota, parse_retry_after, read_quotas

__all__ = ["Aimd", "ClientOptions"]

logger = logging.getLogger("ratekeeper.clients")

Bucket = TypeVar("Bucket", TokenBucket, SyncTokenBucket)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Aimd:
    """Adapt the rate to the server: multiplicative decrease, additive increase, in bounds.

    On a rate signal (429, or 503 with ``Retry-After``/a spent quota) the rate becomes
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


class ClientOptions(TypedDict, total=False):
    """The options every client adapter takes, as keywords (see the adapters)."""

    rate: RateLike
    capacity: int
    per_host: bool
    timeout: float | None
    aimd: Aimd | None
    retries: int
    default_pause: float
    max_pause: float
    max_hosts: int
    clock: Clock


class _Ledger:
    """What one server quota lets this client send, counted in requests: ``left`` at
    ``at`` (ns), growing by ``refill`` per ns up to ``limit`` (a quota that refills
    steadily), or not at all until ``until`` (a window), after which it says nothing."""

    __slots__ = ("at", "left", "limit", "refill", "sent", "until")

    def __init__(
        self,
        left: float,
        at: int,
        *,
        sent: int,
        refill: float = 0.0,
        limit: int | None = None,
        until: int | None = None,
    ) -> None:
        self.left = left
        self.at = at
        self.refill = refill
        self.limit = limit
        self.until = until
        self.sent = sent  # when the request the answer was for was sent

    def left_at(self, now: int) -> float:
        left = self.left + (now - self.at) * self.refill
        return left if self.limit is None else min(left, self.limit)

    def said_nothing(self, now: int) -> bool:
        """True once the ledger no longer constrains: a window reset, a quota whole again."""
        if self.until is not None:
            return now >= self.until
        return self.limit is not None and self.left_at(now) >= self.limit

    def next_at(self, now: int) -> int:
        """Return when one more request is allowed (ns)."""
        if self.until is not None:
            return self.until
        return now + math.ceil((1 - self.left_at(now)) / self.refill)


class _Host(Generic[Bucket]):
    """One bucket, its adaptive state, and what the server said of its quotas."""

    __slots__ = ("applied", "bucket", "decreased_at", "in_flight", "ledgers", "rate")
    bucket: Bucket
    rate: float
    applied: float
    decreased_at: int
    in_flight: int
    ledgers: dict[str, _Ledger]

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.rate = bucket.rate.per_second  # the AIMD rate, as a float
        self.applied = self.rate  # the rate last given to set_rate
        self.decreased_at = -(1 << 62)  # ns
        self.in_flight = 0  # requests sent and not yet answered
        self.ledgers = {}  # quota name -> what it lets through


# The window within which two resets reported for one quota are the same reset (ns): Date and
# the resets themselves are whole seconds.
_SAME_RESET_NS = 1_500_000_000


class _Governor(Generic[Bucket, Req]):
    """Everything the adapters decide; they differ only in how they wait and send."""

    def __init__(
        self,
        make: Callable[[Rate, int, Clock], Bucket],
        *,
        rate: RateLike | None = None,
        capacity: int | None = None,
        limiter: Bucket | None = None,
        per_host: bool = False,
        cost: int | Callable[[Req], int] = 1,
        timeout: float | None = None,
        aimd: Aimd | None = None,
        retries: int = 0,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        max_hosts: int = 1024,
        clock: Clock | None = None,
    ) -> None:
        if (rate is None) == (limiter is None):
            raise TypeError("give either rate (and capacity) or limiter=, not both or neither")
        if limiter is not None and (per_host or capacity is not None):
            raise TypeError("per_host and capacity go with rate; a limiter is one bucket")
        if limiter is not None and clock is not None:
            raise TypeError("clock goes with rate; a limiter has its own clock")
        if not (callable(cost) or (type(cost) is int and cost >= 0)):
            raise TypeError(f"cost must be an int >= 0 or a function of the request, not {cost!r}")
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
        self._default_pause = check_seconds(default_pause, "default_pause")
        self._max_pause = check_seconds(max_pause, "max_pause")
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

    def host(self, name: str) -> _Host[Bucket]:
        """Return the bucket state that requests to ``name`` (``host:port``) go through."""
        if self._single is not None:
            return self._single
        hosts = self._hosts
        state = hosts.get(name)
        if state is None:
            if len(hosts) >= self._max_hosts:
                hosts.popitem(last=False)
            state = hosts[name] = _Host(self._new_bucket())
        else:
            hosts.move_to_end(name)
        return state

    def cost(self, request: Req) -> int:
        """Return the tokens ``request`` takes (0: not limited); raise for a bad amount."""
        cost = self._cost
        if callable(cost):
            amount = cost(request)
            if type(amount) is not int or amount < 0:
                raise TypeError(f"the cost function must return an int >= 0, not {amount!r}")
            return amount
        return cost

    def now_ns(self) -> int:
        """Return the clock's reading (ns)."""
        return self._clock.now_ns()

    def admit(self, state: _Host[Bucket], tokens: int) -> int | None:
        """Let a request whose tokens were granted go, and return when it was sent (ns).

        Return None when the server's quota has nothing left for it until a reset: the bucket
        is then paused until that reset, and the adapter acquires ``tokens`` again (waiting
        its turn there). A request that takes no tokens is never held back.
        """
        now = self._clock.now_ns()
        ledgers = state.ledgers
        held_until = 0
        for name, ledger in list(ledgers.items()):
            if ledger.said_nothing(now):
                del ledgers[name]  # the next answer says what there is now
            elif ledger.left_at(now) < 1:
                held_until = max(held_until, ledger.next_at(now))
        if held_until and tokens:
            self._hold(state, now, held_until)
            return None
        for ledger in ledgers.values():
            ledger.left = ledger.left_at(now) - 1
            ledger.at = now
            if ledger.left < 1:
                # That was the last one: whoever queues next waits for the next.
                self._hold(state, now, ledger.next_at(now))
        state.in_flight += 1
        return now

    def _hold(self, state: _Host[Bucket], now: int, until: int) -> None:
        self.pause(state, min((until - now) / 1e9, self._max_pause), "quota spent")

    def lost(self, state: _Host[Bucket]) -> None:
        """Note that a request sent through ``admit`` got no response (it raised)."""
        state.in_flight = max(0, state.in_flight - 1)

    def heard(self, state: _Host[Bucket], status: int, headers: Fields, sent_ns: int) -> bool:
        """Act on a response to a request sent at ``sent_ns`` (``admit``); return True if it
        was a rate-limit signal. ``headers`` as ``_headers.fields`` makes them."""
        state.in_flight = max(0, state.in_flight - 1)
        limited = status in (429, 503)
        pause: float | None = None
        source = ""
        if limited and "retry-after" in headers:
            date = headers.get("date")
            pause = parse_retry_after(headers["retry-after"][0], date[0] if date else None)
            source = "" if pause is None else "Retry-After"
        quotas = read_quotas(headers, time.time())
        if pause is None:
            # (A refilling quota of requests is left to its ledger: one comes back soon.)
            spent = [
                q
                for q in quotas
                if q.remaining == 0
                and q.reset is not None
                and not (q.per_request and q.refill_rate is not None)
            ]
            if spent:
                longest = max(spent, key=lambda q: q.reset or 0.0)
                pause = longest.reset
                source = f"{longest.family} {longest.resource} quota"
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
        now = self._clock.now_ns()
        for quota in quotas if source != "Retry-After" else ():  # an explicit wait wins
            if quota.per_request and quota.remaining is not None:
                self._note(state, quota, now, sent_ns)
        if signal:
            self.limited += 1
        return signal

    def _note(self, state: _Host[Bucket], quota: Quota, now: int, sent: int) -> None:
        """Set a quota's ledger from an answer: what is left, less what is still in flight
        (the server may not have counted those yet)."""
        assert quota.remaining is not None
        name = f"{quota.family}:{quota.resource}"
        left: float = quota.remaining - state.in_flight
        old = state.ledgers.get(name)
        refill = quota.refill_rate
        if refill is not None:
            if old is not None and old.until is None and sent < old.sent:
                return  # an answer to an older request: the ledger knows better
            ledger = _Ledger(left, now, sent=sent, refill=refill / 1e9, limit=quota.limit)
        elif quota.reset:
            until = now + round(min(quota.reset, self._max_pause) * 1e9)
            if (
                old is not None
                and old.until is not None
                and abs(until - old.until) < _SAME_RESET_NS
            ):
                # The same window: answers can arrive out of order, the smaller count is the newer.
                left = min(left, old.left_at(now))
                until = max(until, old.until)
            ledger = _Ledger(left, now, sent=sent, until=until)
        else:
            return  # a window with no reset, or a refilling quota already whole: no news
        state.ledgers[name] = ledger
        if left < 1:
            self._hold(state, now, ledger.next_at(now))

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


def check_seconds(value: float, what: str) -> float:
    """Return ``value`` as float seconds; raise TypeError/ValueError naming ``what`` unless it
    is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {value!r}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{what} must be finite seconds >= 0, got {value!r}")
    return float(value)


def _round(rate: float) -> float:
    return float(f"{rate:.4g}")


def async_bucket(rate: Rate, capacity: int, clock: Clock) -> TokenBucket:
    """Make the asyncio adapters' bucket."""
    return TokenBucket(rate, capacity, clock=clock)


def sync_bucket(rate: Rate, capacity: int, clock: Clock) -> SyncTokenBucket:
    """Make the blocking adapters' bucket."""
    return SyncTokenBucket(rate, capacity, clock=clock)


async def send_async(
    governor: _Governor[TokenBucket, Req],
    request: Req,
    *,
    host: str,
    replayable: Callable[[Req], bool],
    send: Callable[[Req], Awaitable[Resp]],
    answer: Callable[[Resp], tuple[int, Fields]],
    discard: Callable[[Resp], Awaitable[object]],
) -> Resp:
    """Send ``request`` under the governor's limit: the asyncio adapters' whole loop.

    Waits for the tokens, sends through ``send``, reads the response through ``answer``
    (status, header fields), and retries a rate-limited answer (``discard`` frees it) while
    ``retries`` allows and ``replayable(request)`` says its body can be sent again. Raises
    AcquireTimeout and what ``send`` raises.
    """
    attempt = 0
    while True:
        state = governor.host(host)
        tokens = governor.cost(request)
        if tokens:
            await state.bucket.acquire(tokens, timeout=governor.timeout)
        sent = governor.admit(state, tokens)
        if sent is None:
            continue  # the server's quota is spent: queue again, behind the pause
        try:
            response = await send(request)
        except BaseException:
            governor.lost(state)
            raise
        status, headers = answer(response)
        limited = governor.heard(state, status, headers, sent)
        if not limited or attempt >= governor.retries or not replayable(request):
            return response
        attempt += 1
        await discard(response)


def send_sync(
    governor: _Governor[SyncTokenBucket, Req],
    request: Req,
    *,
    host: str,
    replayable: Callable[[Req], bool],
    send: Callable[[Req], Resp],
    answer: Callable[[Resp], tuple[int, Fields]],
    discard: Callable[[Resp], object],
) -> Resp:
    """Send ``request`` under the governor's limit, blocking: the twin of ``send_async``."""
    attempt = 0
    while True:
        state = governor.host(host)
        tokens = governor.cost(request)
        if tokens:
            state.bucket.acquire(tokens, timeout=governor.timeout)
        sent = governor.admit(state, tokens)
        if sent is None:
            continue
        try:
            response = send(request)
        except BaseException:
            governor.lost(state)
            raise
        status, headers = answer(response)
        limited = governor.heard(state, status, headers, sent)
        if not limited or attempt >= governor.retries or not replayable(request):
            return response
        attempt += 1
        discard(response)


class Adapter(Generic[Bucket, Req]):
    """What every adapter reports: its signals, its rates, its buckets."""

    _governor: _Governor[Bucket, Req]

    @property
    def limited(self) -> int:
        """Rate-limit signals (429, or 503 with Retry-After or a spent quota) seen so far."""
        return self._governor.limited

    def current_rate(self, host: str | None = None) -> float:
        """Return the rate in force (tokens/s); name the host with ``per_host=True``."""
        return self._governor.current_rate(host)

    def buckets(self) -> dict[str, Bucket]:
        """Return the buckets in use: ``{"*": bucket}``, or one per host."""
        return self._governor.buckets()


ARGS_DOC = """
    Options, as keywords: ``rate``/``capacity`` make the bucket (per host with
    ``per_host=True``); or pass ``limiter=`` to share one you made. ``cost``: tokens per
    request, an int or a function of the request (0: not limited). ``timeout``: seconds a
    request may wait for its tokens before AcquireTimeout (a TimeoutError) is raised at once;
    None waits as long as needed. ``aimd`` (an ``Aimd``), ``retries`` (0), ``default_pause``
    (1.0 s), ``max_pause`` (60 s), ``max_hosts`` (1024), ``clock``: see
    ``ratekeeper.integrations.httpx``. Raises TypeError/ValueError for bad arguments, naming
    them.
"""
