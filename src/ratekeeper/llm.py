"""Requests per minute and tokens per minute for an LLM API: estimate, call, settle.

An LLM provider limits a key twice: requests per minute and tokens per minute, where a call's
tokens are known only from its reply. ``LLMLimiter`` is that recipe as one object::

    llm = LLMLimiter(requests_per_minute=500, tokens_per_minute=200_000)
    hooks = {"response": [llm.on_response]}
    client = openai.AsyncOpenAI(http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks))

    async with llm.call(llm.estimate(messages, max_tokens=300)) as call:
        reply = await client.chat.completions.create(model=m, messages=messages, max_tokens=300)
        call.used(reply.usage.total_tokens)

- ``call(estimate)`` waits until one request and ``estimate`` tokens fit both limits (FIFO,
  all or nothing); leaving the block settles the estimate with what ``used`` reported: the
  difference is charged (debt: later calls wait it off) or refunded. A block that reports
  nothing (an error before the reply) keeps the estimate: the provider may have counted it.
- ``on_response`` is an httpx response event hook for the SDK's client (OpenAI's and
  Anthropic's SDKs take ``http_client=``): every response's headers go to ``observe``, which
  reads OpenAI's ``x-ratelimit-*-requests``/``-tokens``, Anthropic's
  ``anthropic-ratelimit-*``, the IETF ``RateLimit`` and ``X-RateLimit-*``, and ``Retry-After``
  on a 429. The local limits then hold at most what the provider says is left, less what is
  still in flight. OpenAI's and Anthropic's quotas refill steadily and are full again at
  their reset, which tells their rate: a limit configured faster follows the provider's
  (``set_rate``; back up to the configured rate when the provider allows more, never above)
  and stays under the quota's limit by the reset. A window (``X-RateLimit-*``,
  ``RateLimit``) gives nothing back before its reset, so the limits wait for it. Garbage in
  the headers is ignored (see ``ratekeeper.integrations.httpx``); no pause lasts more than
  ``max_pause`` seconds.
- ``limiter=`` takes any composite with limits named ``requests`` and ``tokens``
  (``RedisCompositeLimiter`` to share one key's quota between processes).

``SyncLLMLimiter`` is the blocking twin, for threads and the SDKs' sync clients
(``with llm.call(estimate) as call``; ``openai.DefaultHttpxClient(event_hooks=...)``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from ._asyncio import CompositeLimiter
from ._clock import Clock
from ._gcra import Limit
from ._rate import Rate
from ._threading import SyncCompositeLimiter
from .contract import AsyncComposite, SyncComposite
from .integrations._governor import check_seconds
from .integrations._headers import (
    REFILLED,
    Fields,
    Quota,
    fields,
    parse_retry_after,
    read_quotas,
)


class _Headers(Protocol):
    def multi_items(self) -> list[tuple[str, str]]: ...


class HttpResponse(Protocol):
    """What ``on_response`` reads: an httpx (or httpx2) ``Response``."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> _Headers: ...


__all__ = ["LLMCall", "LLMLimiter", "SyncLLMCall", "SyncLLMLimiter", "estimate_tokens"]

_CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and BPE tokenizers
_PER_MESSAGE = 4  # the role and separators each chat message costs
_NAMES = ("requests", "tokens")
_PARTS = frozenset({"input-tokens", "output-tokens"})


def estimate_tokens(prompt: str | Iterable[Mapping[str, Any]], max_tokens: int = 0) -> int:
    """Return a rough token estimate for a call: about 4 characters a token, plus the reply.

    ``prompt`` is text or chat messages (``[{"role": ..., "content": ...}]``, content text or
    a list of parts with ``"text"``); ``max_tokens`` is the longest reply allowed. Deliberately
    simple: ``LLMLimiter`` settles the estimate with the true usage afterwards. Raises
    TypeError for a prompt of another type.
    """
    if isinstance(prompt, str):
        chars, messages = len(prompt), 0
    else:
        chars, messages = 0, 0
        for message in prompt:
            if not isinstance(message, Mapping):
                raise TypeError(f"a chat message must be a mapping, not {message!r}")
            messages += 1
            content = message.get("content", "")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, Iterable):
                chars += sum(
                    len(str(part.get("text", ""))) for part in content if isinstance(part, Mapping)
                )
    return math.ceil(chars / _CHARS_PER_TOKEN) + _PER_MESSAGE * messages + max_tokens


class _Call:
    """What both call blocks share: the estimate and the usage reported."""

    __slots__ = ("_estimate", "_timeout", "_used")

    def __init__(self, estimate: int, timeout: float | None) -> None:
        self._estimate = estimate
        self._timeout = timeout
        self._used: int | None = None

    def used(self, tokens: int) -> None:
        """Report the tokens the reply says the call used (``usage.total_tokens``).

        Raises TypeError for anything but an int >= 0.
        """
        if type(tokens) is not int or tokens < 0:
            raise TypeError(f"used tokens must be an int >= 0, not {tokens!r}")
        self._used = tokens


class LLMCall(_Call):
    """One call's place in an ``LLMLimiter``: ``async with llm.call(estimate) as call``."""

    __slots__ = ("_llm",)

    def __init__(self, llm: LLMLimiter, estimate: int, timeout: float | None) -> None:
        super().__init__(estimate, timeout)
        self._llm = llm

    async def __aenter__(self) -> LLMCall:
        await self._llm.acquire(self._estimate, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._llm.settle(self._estimate, self._used)


class SyncLLMCall(_Call):
    """One call's place in a ``SyncLLMLimiter``: ``with llm.call(estimate) as call``."""

    __slots__ = ("_llm",)

    def __init__(self, llm: SyncLLMLimiter, estimate: int, timeout: float | None) -> None:
        super().__init__(estimate, timeout)
        self._llm = llm

    def __enter__(self) -> SyncLLMCall:
        self._llm.acquire(self._estimate, timeout=self._timeout)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._llm.settle(self._estimate, self._used)


Composite = TypeVar("Composite", AsyncComposite, SyncComposite)


class _Planner(Generic[Composite]):
    """Everything both limiters decide, without I/O: the calls in flight, what a settled
    call gives back or owes, and what a response's headers ask of the limits. The twins
    only read and change the composite (awaiting, or not)."""

    limiter: Composite
    _make: Callable[..., Composite]  # the composite a limiter makes for its rates

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        limiter: Composite | None = None,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        rpm, tpm = requests_per_minute, tokens_per_minute
        if limiter is None:
            if rpm is None or tpm is None:
                raise TypeError("give requests_per_minute and tokens_per_minute, or limiter=")
            limits = {"requests": Limit(Rate(rpm, 60), weight=1), "tokens": Limit(Rate(tpm, 60))}
            limiter = type(self)._make(limits, clock=clock)
        elif rpm is not None or tpm is not None or clock is not None:
            raise TypeError("give either the rates (and clock) or limiter=, not both")
        if not set(_NAMES) <= set(limiter.limits):
            raise ValueError(
                f"limiter= needs limits named requests and tokens, has {limiter.limits}"
            )
        self.limiter = limiter
        self._configured = {name: limiter.limits[name].rate.per_second for name in _NAMES}
        self._default_pause = check_seconds(default_pause, "default_pause")
        self._max_pause = check_seconds(max_pause, "max_pause")
        self._calls = 0  # calls between acquire and settle
        self._tokens = 0  # their estimates
        self.limited = 0  # 429s seen
        self._lock = threading.Lock()  # the counters, between threads (the blocking twin)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.limiter!r} in_flight={self._calls}>"

    @staticmethod
    def estimate(prompt: str | Iterable[Mapping[str, Any]], max_tokens: int = 0) -> int:
        """Shorthand for ``estimate_tokens``."""
        return estimate_tokens(prompt, max_tokens)

    def _acquired(self, estimate: int) -> None:
        self._calls += 1
        self._tokens += estimate

    def _settled(self, estimate: int, used: int | None) -> int:
        """Note a call settled; return the tokens it owes (> 0) or gives back (< 0)."""
        self._calls = max(0, self._calls - 1)
        self._tokens = max(0, self._tokens - estimate)
        return 0 if used is None else used - estimate

    def _read(
        self, status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> tuple[Fields, list[Quota], dict[str, Rate]]:
        """Read a response: its fields, its quotas, and the rates the limits should follow.

        A steadily refilled quota says the provider's rate, as what is missing over the
        time it takes to come back: a limit configured faster follows it, and goes back up
        to what was configured when the provider allows more (never above).
        """
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        found = fields(pairs)
        if status == 429:
            self.limited += 1
        # Anthropic's input-tokens and output-tokens quotas are parts of its tokens one,
        # which says the most restrictive of them: the local tokens limit follows that.
        quotas = [q for q in read_quotas(found, time.time()) if q.resource not in _PARTS]
        rates = {}
        for name in _NAMES:
            refills = [
                rate
                for q in quotas
                if q.per_request == (name == "requests") and (rate := q.refill_rate) is not None
            ]
            if not refills:
                continue
            wanted = min(*refills, self._configured[name])
            current = self.limiter.limits[name].rate.per_second
            if abs(wanted - current) > 0.05 * current:
                rates[name] = Rate(float(f"{wanted:.4g}"))
        return found, quotas, rates

    def _charges(
        self, status: int, found: Fields, quotas: list[Quota], available: Mapping[str, float]
    ) -> dict[str, int]:
        """Return the tokens to charge so that each limit holds no more than the response
        says is left (see the module), and waits out a 429's Retry-After."""
        limits = self.limiter.limits
        targets: dict[str, float] = {}
        for quota in quotas:
            if quota.remaining is None:
                continue
            name = "requests" if quota.per_request else "tokens"
            reset = min(quota.reset or 0.0, self._max_pause)
            rate = limits[name].rate.per_second
            # The calls in flight but the one this answers (when it is one of them): the
            # provider may not have counted them yet.
            others = max(0, self._calls - 1)
            if name == "requests":
                in_flight: float = others
            else:
                in_flight = self._tokens * others / self._calls if self._calls else 0
            target: float = quota.remaining - in_flight  # never more than is left now
            if quota.family in REFILLED:
                # Refilled steadily, full again at the reset: never past the limit by then.
                if quota.limit is not None:
                    target = min(target, quota.limit - in_flight - rate * reset)
            else:
                # A window: nothing comes back before the reset.
                target -= rate * reset
            targets[name] = min(targets.get(name, target), target)
        if status == 429:
            values = found.get("retry-after")
            date = found.get("date")
            said = parse_retry_after(values[0], date[0] if date else None) if values else None
            wait = min(self._default_pause if said is None else said, self._max_pause)
            for name in _NAMES:
                # The next token no sooner than ``wait`` seconds from now.
                pause = 1 - wait * limits[name].rate.per_second
                targets[name] = min(targets.get(name, pause), pause)
        charge = {}
        for name, target in targets.items():
            excess = math.ceil(available[name] - target - 1e-9)
            if excess >= 1:
                charge[name] = excess
        return charge


_LIMITER_DOC = """
    Give ``requests_per_minute`` and ``tokens_per_minute`` (bursts: a minute's worth), or
    ``limiter=`` a composite with limits named ``requests`` and ``tokens``. A 429 without a
    usable ``Retry-After`` pauses for ``default_pause`` seconds; no pause lasts more than
    ``max_pause``. Raises TypeError/ValueError for bad arguments.
"""


class LLMLimiter(_Planner[AsyncComposite]):
    """Requests/min and tokens/min for one LLM API key, for asyncio (see the module)."""

    __doc__ = (__doc__ or "") + _LIMITER_DOC
    _make = CompositeLimiter

    def call(self, estimate: int, *, timeout: float | None = None) -> LLMCall:
        """Return the block for one call of ``estimate`` tokens (see the module).

        Entering it raises AcquireTimeout if ``timeout`` cannot be met, ValueError if the
        estimate is above the tokens limit's capacity.
        """
        return LLMCall(self, estimate, timeout)

    async def acquire(self, estimate: int, *, timeout: float | None = None) -> None:
        """Wait for one request and ``estimate`` tokens; pair with ``settle``."""
        await self.limiter.acquire({"requests": 1, "tokens": estimate}, timeout=timeout)
        self._acquired(estimate)

    async def settle(self, estimate: int, used: int | None) -> None:
        """Settle a call acquired with ``estimate``: charge or refund the difference with
        ``used`` (None: keep the estimate)."""
        owed = self._settled(estimate, used)
        if owed > 0:
            await self.limiter.charge({"tokens": owed})
        elif owed < 0:
            await self.limiter.refund({"tokens": -owed})

    async def on_response(self, response: HttpResponse) -> None:
        """Observe an httpx response: use it as the client's response event hook.

        ``httpx.AsyncClient(event_hooks={"response": [llm.on_response]})``; for the OpenAI
        and Anthropic SDKs, ``http_client=openai.DefaultAsyncHttpxClient(event_hooks=...)``
        (their client class, whichever httpx package the SDK version uses). Shorthand for
        ``observe(response.status_code, response.headers.multi_items())``.
        """
        await self.observe(response.status_code, response.headers.multi_items())

    async def observe(
        self, status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> None:
        """Bring the limits in line with what a response says (see the module); never raises
        for what the headers hold."""
        found, quotas, rates = self._read(status, headers)
        for name, rate in rates.items():
            await self.limiter.set_rate(name, rate)
        charge = self._charges(status, found, quotas, await self.limiter.available())
        if charge:
            await self.limiter.charge(charge)


class SyncLLMLimiter(_Planner[SyncComposite]):
    """Requests/min and tokens/min for one LLM API key, for threads: the blocking twin of
    ``LLMLimiter`` (``with llm.call(estimate) as call``; the SDKs' sync clients take
    ``http_client=openai.DefaultHttpxClient(event_hooks={"response": [llm.on_response]})``)."""

    __doc__ = (__doc__ or "") + _LIMITER_DOC
    _make = SyncCompositeLimiter

    def call(self, estimate: int, *, timeout: float | None = None) -> SyncLLMCall:
        """Return the block for one call of ``estimate`` tokens (see LLMLimiter.call)."""
        return SyncLLMCall(self, estimate, timeout)

    def acquire(self, estimate: int, *, timeout: float | None = None) -> None:
        """Block for one request and ``estimate`` tokens; pair with ``settle``."""
        self.limiter.acquire({"requests": 1, "tokens": estimate}, timeout=timeout)
        with self._lock:
            self._acquired(estimate)

    def settle(self, estimate: int, used: int | None) -> None:
        """Settle a call acquired with ``estimate`` (see LLMLimiter.settle)."""
        with self._lock:
            owed = self._settled(estimate, used)
        if owed > 0:
            self.limiter.charge({"tokens": owed})
        elif owed < 0:
            self.limiter.refund({"tokens": -owed})

    def on_response(self, response: HttpResponse) -> None:
        """Observe an httpx response: the sync client's response event hook (see
        LLMLimiter.on_response)."""
        self.observe(response.status_code, response.headers.multi_items())

    def observe(self, status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """Bring the limits in line with what a response says (see LLMLimiter.observe)."""
        with self._lock:
            found, quotas, rates = self._read(status, headers)
            for name, rate in rates.items():
                self.limiter.set_rate(name, rate)
            charge = self._charges(status, found, quotas, self.limiter.available())
            if charge:
                self.limiter.charge(charge)
