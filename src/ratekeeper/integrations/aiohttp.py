"""An aiohttp client middleware that keeps a ``ClientSession`` under someone else's limit.

``aiohttp.ClientSession(middlewares=(RateLimitMiddleware(rate="10/s"),))`` (aiohttp 3.12 or
newer) takes tokens from a ``TokenBucket`` before each request the session sends, redirects
included, and listens to the server exactly as the httpx transports do: ``Retry-After``, the
IETF ``RateLimit`` fields and the providers' quota headers (GitHub-style ``X-RateLimit-*``,
OpenAI's, Anthropic's) pause the limit or hold it to what the server says is left; options
``per_host``, ``cost``, ``timeout``, ``aimd``, ``retries``, ``default_pause``, ``max_pause``
mean what they mean there (see ``ratekeeper.integrations.httpx``). A rate-limited response
is retried (``retries=n``) when its payload can be sent again (bytes, text, a seekable file;
not an async generator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

try:
    import aiohttp
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.aiohttp needs aiohttp: pip install 'ratekeeper[aiohttp]'",
        name="aiohttp",
    ) from exc

from .._asyncio import TokenBucket
from ._governor import ARGS_DOC, Adapter, ClientOptions, _Governor, async_bucket, send_async
from ._headers import Fields, fields

if TYPE_CHECKING:
    from aiohttp.client_middlewares import ClientHandlerType
    from typing_extensions import Unpack

__all__ = ["RateLimitMiddleware"]


def _host(request: aiohttp.ClientRequest) -> str:
    url = request.url
    port = url.explicit_port
    return f"{url.host}" if port is None else f"{url.host}:{port}"


def _replayable(request: aiohttp.ClientRequest) -> bool:
    body = request.body
    return isinstance(body, bytes) or not body.consumed


def _answer(response: aiohttp.ClientResponse) -> tuple[int, Fields]:
    return response.status, fields(response.headers.items())


async def _release(response: aiohttp.ClientResponse) -> None:
    response.release()


class RateLimitMiddleware(Adapter[TokenBucket, aiohttp.ClientRequest]):
    """An aiohttp client middleware that takes tokens before each request and heeds the
    server. Pass it in ``ClientSession(middlewares=...)`` (or per request)."""

    __doc__ = (__doc__ or "") + ARGS_DOC

    def __init__(
        self,
        *,
        limiter: TokenBucket | None = None,
        cost: int | Callable[[aiohttp.ClientRequest], int] = 1,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._governor = _Governor(async_bucket, limiter=limiter, cost=cost, **options)

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Wait for the request's tokens, send it, and act on what the response says.

        Raises AcquireTimeout if the tokens cannot come within ``timeout``, and whatever the
        session raises.
        """
        return await send_async(
            self._governor,
            request,
            host=_host(request),
            replayable=_replayable,
            send=handler,
            answer=_answer,
            discard=_release,
        )
