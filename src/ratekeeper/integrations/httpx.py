"""httpx transports that keep a client under someone else's limit, and listen when told.

``httpx.AsyncClient(transport=RateLimitTransport(rate="10/s"))`` takes tokens from a
``TokenBucket`` before each request (``SyncRateLimitTransport`` and ``SyncTokenBucket`` for the
sync ``httpx.Client``). The server is listened to:

- ``429`` or ``503`` with ``Retry-After`` (seconds, or an HTTP date: measured from the
  response's ``Date`` when it has one, so clock skew does not matter) pauses the limit for
  that long: the bucket is charged into debt so that its next token comes no sooner, and
  every request queued behind waits too. Concurrent 429s pause once, not once each.
- Quota headers, on any response: the IETF ``RateLimit`` (draft -10/-11,
  ``"policy";r=0;t=5``, with ``RateLimit-Policy``; also the older ``RateLimit-Remaining``
  with ``RateLimit-Reset``), GitHub-style ``X-RateLimit-Limit/-Remaining/-Reset``, OpenAI's
  ``x-ratelimit-*-requests``/``-tokens`` and Anthropic's ``anthropic-ratelimit-*``. A quota
  of requests holds the client to what is left, less what is in flight; when none is left it
  waits for the reset of a window (GitHub, IETF), or for the next one a steadily refilled
  quota (OpenAI, Anthropic) gives back. A spent quota of tokens pauses until its reset.
  Never more than the client's own rate.
- A ``429`` without a usable ``Retry-After`` or quota (missing, malformed, negative) pauses
  for ``default_pause`` seconds (1.0): the documented safe default. A ``503`` without them is
  not taken as a rate signal (servers answer 503 for many reasons).
- Every pause is capped at ``max_pause`` seconds (60): a misconfigured or hostile server
  cannot stall the client for hours.
- Reading the headers never raises. A value that is malformed or out of range (a number of
  more than 15 digits, the bound RFC 8941 sets for integers; a date past year 9999) is
  ignored as if absent, and logged on the ``ratekeeper.headers`` logger: a warning the first
  time for each header, then at debug level.
- With ``aimd=Aimd(min_rate, max_rate)`` a rate signal also lowers the rate (times
  ``decrease``, once per round: responses to requests sent before the last decrease do not
  lower it again) and each successful response raises it by ``increase / rate``, i.e. by
  ``increase`` tokens/s per second of traffic at the full rate, within the bounds, through
  ``set_rate``. The capacity (burst) stays as configured.
- With ``retries=n`` a rate-limited response is retried up to n times (after the pause)
  when its body can be sent again; otherwise it is returned as it came.

``per_host=True`` gives each host (``host:port``) its own bucket, AIMD state and quotas.

The transports also serve clients of httpx2 (a fork with the same transport API, on which the
current OpenAI and Anthropic SDKs are built) when given an httpx2 transport to wrap:
``openai.DefaultAsyncHttpxClient(transport=RateLimitTransport(httpx2.AsyncHTTPTransport(),
rate=...))``. (Type checkers see an httpx transport there; it works by the shared API.)
The same rules drive ``ratekeeper.integrations.requests`` and ``ratekeeper.integrations.aiohttp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

try:
    import httpx
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.httpx needs httpx: pip install 'ratekeeper[httpx]'",
        name="httpx",
    ) from exc

from .._asyncio import TokenBucket
from .._threading import SyncTokenBucket
from ._governor import (
    ARGS_DOC,
    Adapter,
    Aimd,
    ClientOptions,
    _Governor,
    async_bucket,
    send_async,
    send_sync,
    sync_bucket,
)
from ._headers import Fields, fields, parse_ratelimit, parse_retry_after

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "Aimd",
    "RateLimitTransport",
    "SyncRateLimitTransport",
    "parse_ratelimit",
    "parse_retry_after",
]


def _host(request: httpx.Request) -> str:
    return request.url.netloc.decode("ascii", "replace")


def _replayable(request: httpx.Request) -> bool:
    # By name, not isinstance: httpx2 (a fork with the same transport API, which the current
    # OpenAI and Anthropic SDKs are built on) has its own ByteStream, as replayable.
    return type(request.stream).__name__ == "ByteStream"


def _answer(response: httpx.Response) -> tuple[int, Fields]:
    return response.status_code, fields(response.headers.multi_items())


async def _aclose(response: httpx.Response) -> None:
    await response.aclose()


def _close(response: httpx.Response) -> None:
    response.close()


class RateLimitTransport(Adapter[TokenBucket, httpx.Request], httpx.AsyncBaseTransport):
    """An httpx async transport that takes tokens before each request and heeds the server.

    Wraps ``transport`` (default ``httpx.AsyncHTTPTransport()``), which it closes with
    itself.
    """

    __doc__ = (__doc__ or "") + ARGS_DOC

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        limiter: TokenBucket | None = None,
        cost: int | Callable[[httpx.Request], int] = 1,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport
        self._governor = _Governor(async_bucket, limiter=limiter, cost=cost, **options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Wait for the request's tokens, send it, and act on what the response says.

        Raises AcquireTimeout if the tokens cannot come within ``timeout``, and whatever the
        wrapped transport raises.
        """
        return await send_async(
            self._governor,
            request,
            host=_host(request),
            replayable=_replayable,
            send=self._transport.handle_async_request,
            answer=_answer,
            discard=_aclose,
        )

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()


class SyncRateLimitTransport(Adapter[SyncTokenBucket, httpx.Request], httpx.BaseTransport):
    """An httpx sync transport that takes tokens before each request and heeds the server.

    The blocking twin of ``RateLimitTransport`` (a ``SyncTokenBucket``, FIFO among
    threads). Wraps ``transport`` (default ``httpx.HTTPTransport()``).
    """

    __doc__ = (__doc__ or "") + ARGS_DOC

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        limiter: SyncTokenBucket | None = None,
        cost: int | Callable[[httpx.Request], int] = 1,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._transport = httpx.HTTPTransport() if transport is None else transport
        self._governor = _Governor(sync_bucket, limiter=limiter, cost=cost, **options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Block for the request's tokens, send it, and act on what the response says.

        Raises AcquireTimeout if the tokens cannot come within ``timeout``, and whatever the
        wrapped transport raises.
        """
        return send_sync(
            self._governor,
            request,
            host=_host(request),
            replayable=_replayable,
            send=self._transport.handle_request,
            answer=_answer,
            discard=_close,
        )

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()
