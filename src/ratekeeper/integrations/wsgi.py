"""WSGI middleware that limits requests per key (any WSGI app: Flask, Django, Bottle, Pyramid...).

``RateLimitMiddleware(app, limiter=SyncKeyedLimiter("10/s", 20))`` takes tokens for each
request from the bucket of its key (by default the client's address) and refuses the request
with ``429 Too Many Requests`` (a JSON body, ``Retry-After`` and the rate-limit headers), or
waits up to ``max_wait`` seconds for them first (the worker thread sleeps). It is the
blocking twin of ``ratekeeper.integrations.asgi.RateLimitMiddleware``, with the same options
and the same decisions (``_web``); the limiter may keep its state in memory or on Redis
(``SyncRedisKeyedBackend``). No framework is imported.

What it never does: turn an error into a 500. A key function that raises is logged on
``ratekeeper.wsgi`` and the request is limited under one shared key (or let through,
``on_key_error="allow"``); a limiter that raises (a backend down) is logged and answered
``503`` with ``Retry-After: 1`` (or let through, ``on_error="allow"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, Literal

from .._keyed import SyncKeyedLimiter
from ._rules import Rule, accepted_headers, check
from ._web import (
    UNKEYED,
    Cost,
    Gate,
    HeaderKey,
    HeaderMode,
    Refusal,
    RefusalHook,
    Response,
    TrustedProxies,
    check_max_wait,
    json_refusal,
)

__all__ = [
    "UNKEYED",
    "EnvironView",
    "RateLimitMiddleware",
    "Refusal",
    "Response",
    "client_address",
    "forwarded_for",
    "header_key",
    "json_refusal",
]

logger = logging.getLogger("ratekeeper.wsgi")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
KeyFunc = Callable[[Environ], str | None]


class EnvironView:
    """A WSGI environ seen as a ``RequestView`` (method, path, client, headers), read lazily.

    Flask's ``request.environ`` and Django's ``request.META`` are such environs.
    """

    __slots__ = ("environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self.environ = environ

    @property
    def method(self) -> str:
        return str(self.environ.get("REQUEST_METHOD", "GET"))

    @property
    def path(self) -> str:
        return str(self.environ.get("PATH_INFO", "")) or "/"

    @property
    def client(self) -> str | None:
        address = self.environ.get("REMOTE_ADDR")
        return str(address) if address else None

    def header(self, name: str) -> str | None:
        if name == "content-type":
            value = self.environ.get("CONTENT_TYPE")
        elif name == "content-length":
            value = self.environ.get("CONTENT_LENGTH")
        else:
            value = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
        return str(value) if value else None


# -- key functions -------------------------------------------------------------------------------


def client_address(environ: Environ) -> str:
    """Return the client's IP address (``REMOTE_ADDR``): the default key.

    Raises LookupError when the server gives none. Behind a proxy every request has the
    proxy's address: use ``forwarded_for``.
    """
    address = environ.get("REMOTE_ADDR")
    if not address:
        raise LookupError("the WSGI environ has no REMOTE_ADDR")
    return str(address)


def header_key(
    name: str,
    *,
    fallback: KeyFunc | None = client_address,
    hashed: bool = True,
    secret: str | bytes | None = None,
) -> KeyFunc:
    """Return a key function that keys requests by a header, such as an API key.

    As ``ratekeeper.integrations.asgi.header_key``: ``"<name>:<value>"`` with the value
    replaced by its keyed hash (HMAC-SHA-256 under ``secret``, else
    ``$RATEKEEPER_KEY_SECRET``, else a built-in key) unless ``hashed=False``; without the
    header, ``fallback(environ)``, or with ``fallback=None`` a LookupError (``on_key_error``
    decides). Raises ValueError for an empty header name or secret.
    """
    header = HeaderKey(name, hashed=hashed, secret=secret)

    def key(environ: Environ) -> str | None:
        found = header.of(EnvironView(environ))
        if found is not None:
            return found
        if fallback is None:
            raise header.missing()
        return fallback(environ)

    return key


def forwarded_for(trusted: Iterable[str], *, header: str = "x-forwarded-for") -> KeyFunc:
    """Return a key function for clients behind trusted proxies: the first untrusted hop.

    As ``ratekeeper.integrations.asgi.forwarded_for`` (see ``TrustedProxies``). Raises
    ValueError for a ``trusted`` entry that is not an address or network.
    """
    proxies = TrustedProxies(trusted)
    name = header.lower()

    def key(environ: Environ) -> str:
        return proxies.client(client_address(environ), EnvironView(environ).header(name))

    return key


# -- the middleware ------------------------------------------------------------------------------


def status_line(status: int) -> str:
    """Return a WSGI status line (``"429 Too Many Requests"``) for a status code."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


class RateLimitMiddleware:
    """Limit a WSGI app's requests per key; refuse with 429 and the standard headers.

    The arguments are those of the ASGI middleware, with WSGI's environ for the scope:

    ``limiter``
        a ``SyncKeyedLimiter`` (in memory, or on Redis with ``SyncRedisKeyedBackend``).
    ``key``
        ``environ -> str | None``: the request's key (default ``client_address``; see also
        ``header_key`` and ``forwarded_for``). ``None`` means: do not limit this request.
    ``costs``
        tokens per route: a mapping from ``"/path"``, a template ``"/items/{item_id}"``,
        ``"/prefix/*"``, or any of these preceded by a method (``"POST /upload"``) to an
        amount (an int, or a mapping of limit name to tokens); ``0`` exempts. Or a function
        ``environ -> amount``. Unlisted routes cost ``default_cost`` (1).
    ``exempt``
        routes never limited (same patterns): shorthand for a cost of 0.
    ``max_wait``
        seconds a request may wait for its tokens before it is refused (default 0). The
        worker thread sleeps meanwhile; waiting requests are served in arrival order.
    ``headers``
        ``False`` (default) the IETF ``RateLimit``/``RateLimit-Policy`` on refusals only;
        ``True`` those on every response; ``"ietf"``, ``"x-ratelimit"``
        (``X-RateLimit-Limit/Remaining/Reset``) or ``"both"`` that set on every response;
        ``None`` none. Refusals always carry ``Retry-After``.
    ``refusal_response``
        ``(environ, refusal) -> Response`` builds the answer to a refusal (429, or 503 when
        the limiter failed); the refusal's headers it lacks are added. Default
        ``json_refusal``: ``{"detail": "Too Many Requests", "retry_after": N}``.
    ``on_key_error`` / ``on_error`` / ``max_key_length`` / ``log_interval``
        as in the ASGI middleware.

    Raises ValueError/TypeError at once for a bad argument (a cost above a limit's capacity,
    an unknown ``headers`` or ``on_error``...).
    """

    def __init__(
        self,
        app: WSGIApp,
        limiter: SyncKeyedLimiter,
        *,
        key: KeyFunc = client_address,
        costs: Mapping[str, Cost] | Callable[[Environ], Cost] | None = None,
        exempt: Iterable[str] = (),
        default_cost: Cost = 1,
        max_wait: float = 0.0,
        headers: bool | HeaderMode | None = False,
        refusal_response: RefusalHook | None = None,
        on_key_error: Literal["shared", "allow"] = "shared",
        on_error: Literal["deny", "allow"] = "deny",
        max_key_length: int = 128,
        log_interval: float = 10.0,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application, not {app!r}")
        if not isinstance(limiter, SyncKeyedLimiter):
            raise TypeError(f"limiter must be a SyncKeyedLimiter, not {limiter!r}")
        self._max_wait = check_max_wait(max_wait)
        self._gate = Gate(
            limiter.limits,
            key=key,
            costs=costs,
            exempt=exempt,
            default_cost=default_cost,
            headers=headers,
            refusal_response=refusal_response,
            on_key_error=on_key_error,
            on_error=on_error,
            max_key_length=max_key_length,
            log_interval=log_interval,
            logger=logger,
        )
        self.app = app
        self.limiter = limiter
        self._rules: tuple[Rule[Environ], ...] = (Rule(limiter, self._gate),)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        refusal, granted = check(self._rules, environ, method, path, self._max_wait)
        if refusal is not None:
            return send_refusal(environ, start_response, self._gate, refusal)
        if not granted or not self._gate.headers_on_accept:
            return self.app(environ, start_response)
        extra = accepted_headers(granted)

        def start_with_headers(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            return start_response(status, [*headers, *extra], *exc)

        return self.app(environ, start_with_headers)

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware {self.limiter!r} max_wait={self._max_wait}>"


def send_refusal(
    environ: Environ, start_response: StartResponse, gate: Gate, refusal: Refusal
) -> Iterable[bytes]:
    """Answer a refusal with the hook's ``Response`` (the default's if it returns another)."""
    response = gate.respond(environ, refusal)
    if not isinstance(response, Response):
        gate.log(
            logging.ERROR,
            "refusal_response",
            f"ratekeeper: the refusal_response hook returned {response!r:.60}, not a Response; "
            "sending the default",
            None,
        )
        response = json_refusal(environ, refusal)
    body = response.body
    start_response(
        status_line(response.status),
        [*response.headers, ("content-length", str(len(body)))],
    )
    return [body]
