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
  reads
  OpenAI's ``x-ratelimit-*-requests``/``-tokens``, Anthropic's ``anthropic-ratelimit-*``, the
  IETF ``RateLimit`` and ``X-RateLimit-*``, and ``Retry-After`` on a 429: the local limits then
  hold at most what the provider says is left, less what is still in flight. OpenAI's and
  Anthropic's quotas refill steadily and are full again at their reset, which tells their
  rate: a limit whose configured rate is faster follows the provider's (``set_rate``), and
  stays under the quota's limit by the reset; a window (``X-RateLimit-*``, ``RateLimit``)
  gives nothing back before its reset, so the limits wait for it. Never more than the
  configured limits: the headers only lower them. Garbage in the headers is ignored (see
  ``ratekeeper.integrations.httpx``), every pause is capped at ``max_pause`` seconds.
- ``limiter=`` takes any asyncio composite with limits named ``requests`` and ``tokens``
  (``RedisCompositeLimiter`` to share one key's quota between processes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol

from ._asyncio import CompositeLimiter
from ._clock import Clock
from ._gcra import Limit
from ._rate import Rate
from .contract import AsyncComposite
from .integrations._governor import check_seconds
from .integrations._headers import Quota, fields, parse_retry_after, read_quotas


class _Headers(Protocol):
    def multi_items(self) -> list[tuple[str, str]]: ...


class HttpResponse(Protocol):
    """What ``on_response`` reads: an httpx (or httpx2) ``Response``."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> _Headers: ...


__all__ = ["LLMCall", "LLMLimiter", "estimate_tokens"]

_CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and BPE tokenizers
_PER_MESSAGE = 4  # the role and separators each chat message costs
# The families whose quotas refill steadily and are full again at the reset they announce
# (OpenAI's and Anthropic's documented behaviour); the others are windows.
_REFILLED = frozenset({"openai", "anthropic"})
_NAMES = ("requests", "tokens")


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
            else:
                chars += sum(len(str(part.get("text", ""))) for part in content)
    return math.ceil(chars / _CHARS_PER_TOKEN) + _PER_MESSAGE * messages + max_tokens


class LLMCall:
    """One call's place in an ``LLMLimiter``: ``async with llm.call(estimate) as call``."""

    __slots__ = ("_estimate", "_llm", "_timeout", "_used", "entered")

    def __init__(self, llm: LLMLimiter, estimate: int, timeout: float | None) -> None:
        self._llm = llm
        self._estimate = estimate
        self._timeout = timeout
        self._used: int | None = None
        self.entered = False

    def used(self, tokens: int) -> None:
        """Report the tokens the reply says the call used (``usage.total_tokens``).

        Raises TypeError/ValueError for anything but an int >= 0.
        """
        if type(tokens) is not int or tokens < 0:
            raise TypeError(f"used tokens must be an int >= 0, not {tokens!r}")
        self._used = tokens

    async def __aenter__(self) -> LLMCall:
        await self._llm.acquire(self._estimate, timeout=self._timeout)
        self.entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._llm.settle(self._estimate, self._used)


class LLMLimiter:
    """Requests/min and tokens/min for one LLM API key (see the module).

    Give ``requests_per_minute`` and ``tokens_per_minute`` (bursts: a minute's worth), or
    ``limiter=`` a composite with limits named ``requests`` and ``tokens``. A 429 without a
    usable ``Retry-After`` pauses for ``default_pause`` seconds; no pause lasts more than
    ``max_pause``. Raises TypeError/ValueError for bad arguments.
    """

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        limiter: AsyncComposite | None = None,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        if limiter is None:
            if requests_per_minute is None or tokens_per_minute is None:
                raise TypeError("give requests_per_minute and tokens_per_minute, or limiter=")
            limiter = CompositeLimiter(
                {
                    "requests": Limit(Rate(requests_per_minute, 60), weight=1),
                    "tokens": Limit(Rate(tokens_per_minute, 60)),
                },
                clock=clock,
            )
        elif requests_per_minute is not None or tokens_per_minute is not None or clock:
            raise TypeError("give either the rates (and clock) or limiter=, not both")
        elif not set(_NAMES) <= set(limiter.limits):
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

    def __repr__(self) -> str:
        return f"<LLMLimiter {self.limiter!r} in_flight={self._calls}>"

    @staticmethod
    def estimate(prompt: str | Iterable[Mapping[str, Any]], max_tokens: int = 0) -> int:
        """Shorthand for ``estimate_tokens``."""
        return estimate_tokens(prompt, max_tokens)

    def call(self, estimate: int, *, timeout: float | None = None) -> LLMCall:
        """Return the block for one call of ``estimate`` tokens (see the module).

        Entering it raises AcquireTimeout if ``timeout`` cannot be met, ValueError if the
        estimate is above the tokens limit's capacity.
        """
        return LLMCall(self, estimate, timeout)

    async def acquire(self, estimate: int, *, timeout: float | None = None) -> None:
        """Wait for one request and ``estimate`` tokens; pair with ``settle``."""
        await self.limiter.acquire({"requests": 1, "tokens": estimate}, timeout=timeout)
        self._calls += 1
        self._tokens += estimate

    async def settle(self, estimate: int, used: int | None) -> None:
        """Settle a call acquired with ``estimate``: charge or refund the difference with
        ``used`` (None: keep the estimate)."""
        self._calls = max(0, self._calls - 1)
        self._tokens = max(0, self._tokens - estimate)
        if used is None or used == estimate:
            return
        if used > estimate:
            await self.limiter.charge({"tokens": used - estimate})
        else:
            await self.limiter.refund({"tokens": estimate - used})

    async def on_response(self, response: HttpResponse) -> None:
        """Observe an httpx response: use it as the client's response event hook.

        ``httpx.AsyncClient(event_hooks={"response": [llm.on_response]})``; for the OpenAI
        and Anthropic SDKs, ``http_client=openai.DefaultAsyncHttpxClient(event_hooks=...)``
        (their client class, whichever httpx package the SDK version uses). Shorthand for
        ``observe(response.status_code, response.headers.multi_items())``.
        """
        await self.observe(response.status_code, response.headers.multi_items())

    async def _follow(self, quotas: list[Quota]) -> None:
        """Lower a limit's rate to the provider's refill rate when that is slower (and back up
        to the configured rate when it is not): a steadily refilled quota says its rate, as
        what is missing over the time it takes to come back."""
        for name in ("requests", "tokens"):
            refills = [
                (q.limit - q.remaining) / q.reset
                for q in quotas
                if q.family in _REFILLED
                and q.per_request == (name == "requests")
                and q.limit is not None
                and q.remaining is not None
                and q.remaining < q.limit
                and q.reset
            ]
            if not refills:
                continue
            wanted = min(*refills, self._configured[name])
            current = self.limiter.limits[name].rate.per_second
            if abs(wanted - current) > 0.05 * current:
                await self.limiter.set_rate(name, Rate(float(f"{wanted:.4g}")))

    async def observe(
        self, status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> None:
        """Bring the limits in line with what a response says (see the module); never raises
        for what the headers hold."""
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        found = fields(pairs)
        available = await self.limiter.available()
        limits = self.limiter.limits
        wait = 0.0
        if status == 429:
            self.limited += 1
            values = found.get("retry-after")
            date = found.get("date")
            said = parse_retry_after(values[0], date[0] if date else None) if values else None
            wait = self._default_pause if said is None else said
        quotas = read_quotas(found, time.time())
        await self._follow(quotas)
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
            if quota.family in _REFILLED:
                # Refilled steadily, full again at the reset: never past the limit by then.
                if quota.limit is not None:
                    target = min(target, quota.limit - in_flight - rate * reset)
            else:
                # A window: nothing comes back before the reset.
                target -= rate * reset
            targets[name] = min(targets.get(name, target), target)
        if wait > 0:
            wait = min(wait, self._max_pause)
            for name in ("requests", "tokens"):
                # The next token no sooner than ``wait`` seconds from now.
                pause = 1 - wait * limits[name].rate.per_second
                targets[name] = min(targets.get(name, pause), pause)
        charge = {}
        for name, target in targets.items():
            excess = math.ceil(available[name] - target - 1e-9)
            if excess >= 1:
                charge[name] = excess
        if charge:
            await self.limiter.charge(charge)
