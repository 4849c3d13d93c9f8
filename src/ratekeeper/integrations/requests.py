"""A ``requests`` transport adapter that keeps a Session under someone else's limit.

``session.mount("https://", RateLimitAdapter(rate="10/s"))`` takes tokens from a
``SyncTokenBucket`` before each request sent through that prefix (FIFO among threads), and
listens to the server exactly as the httpx transports do: ``Retry-After``, the IETF
``RateLimit`` fields and the providers' quota headers (GitHub-style ``X-RateLimit-*``,
OpenAI's, Anthropic's) pause the limit or hold it to what the server says is left; options
``per_host``, ``cost``, ``timeout``, ``aimd``, ``retries``, ``default_pause``, ``max_pause``
mean what they mean there (see ``ratekeeper.integrations.httpx``).

It is an ``HTTPAdapter``: ``pool_connections``, ``pool_maxsize``, ``max_retries`` and
``pool_block`` are passed on. A rate-limited response is retried (``retries=n``) only when
its body is bytes, text or empty: a generator or a file cannot be sent twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

try:
    import requests
    from requests.adapters import HTTPAdapter
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.requests needs requests: pip install 'ratekeeper[requests]'",
        name="requests",
    ) from exc

from .._threading import SyncTokenBucket
from ._governor import ARGS_DOC, Adapter, ClientOptions, _Governor, send_sync, sync_bucket
from ._headers import Fields, fields

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["RateLimitAdapter"]


def host_of(url: str) -> str:
    """Return ``host`` or ``host:port`` (a port given in the URL) for a URL; never raises."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: requests will say so itself
        return parts.netloc
    name = parts.hostname or ""
    return name if port is None else f"{name}:{port}"


def _replayable(request: requests.PreparedRequest) -> bool:
    return request.body is None or isinstance(request.body, (bytes, str))


def _answer(response: requests.Response) -> tuple[int, Fields]:
    return response.status_code, fields(response.headers.items())


class RateLimitAdapter(Adapter[SyncTokenBucket, requests.PreparedRequest], HTTPAdapter):
    """A ``requests`` adapter that takes tokens before each request and heeds the server.

    Mount it on a ``requests.Session`` for the URL prefixes to limit.
    """

    __doc__ = (__doc__ or "") + ARGS_DOC

    def __init__(
        self,
        *,
        limiter: SyncTokenBucket | None = None,
        cost: int | Callable[[requests.PreparedRequest], int] = 1,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        max_retries: Any = 0,
        pool_block: bool = False,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._governor = _Governor(sync_bucket, limiter=limiter, cost=cost, **options)
        super().__init__(pool_connections, pool_maxsize, max_retries, pool_block)

    def send(  # noqa: PLR0917 (HTTPAdapter.send's own signature)
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Block for the request's tokens, send it, and act on what the response says.

        Raises AcquireTimeout if the tokens cannot come within ``timeout`` (the limiter's;
        the ``timeout`` here is requests' own), and whatever ``HTTPAdapter.send`` raises.
        """

        def forward(prepared: requests.PreparedRequest) -> requests.Response:
            return super(RateLimitAdapter, self).send(
                prepared, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )

        return send_sync(
            self._governor,
            request,
            host=host_of(request.url or ""),
            replayable=_replayable,
            send=forward,
            answer=_answer,
            discard=requests.Response.close,
        )
