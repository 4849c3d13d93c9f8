"""Pure ASGI middleware that limits requests per key (Starlette, FastAPI, Litestar, Quart...).

``RateLimitMiddleware(app, limiter=KeyedLimiter("10/s", 20))`` takes tokens for each request
from the bucket of its key (by default the client's address) and refuses the request with
``429 Too Many Requests`` (a JSON body, ``Retry-After`` and the ``RateLimit`` /
``RateLimit-Policy`` headers of the IETF draft, draft-ietf-httpapi-ratelimit-headers-10/-11,
or the ``X-RateLimit-*`` set) when they are not there, or waits up to ``max_wait`` seconds
for them first. No framework is imported; the limiter may keep its state in memory or in a
shared backend. The decisions live in ``_web`` (shared with the WSGI front doors); this
module reads the ASGI scope and sends.

What it never does: turn an error into a silent 500. A key function that raises (or returns
something that is not a ``str``) is logged on ``ratekeeper.asgi`` and the request is limited
under one shared key (or let through, ``on_key_error="allow"``). A limiter that raises (a
backend that is down) is logged and answered ``503`` with ``Retry-After: 1`` (or let through,
``on_error="allow"``). Log lines of one kind are throttled to one per ``log_interval``
seconds, with a count of those left out, so that an attack cannot flood the log.

Headers. ``RateLimit-Policy: "<limit name>";q=<capacity>;w=<seconds to refill it>`` (``w``
rounded up: a client that keeps to it never exceeds the bucket). ``RateLimit: "<limit
name>";r=<whole tokens left>;t=<seconds until the bucket is full again>``; on a refusal
``t`` is at most ``Retry-After`` (the draft asks that ``Retry-After`` not end before ``t``),
and ``Retry-After`` is the seconds until the request's tokens are there, rounded up to >= 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from .._keyed import Limit, Verdict
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
    policy_header,
    ratelimit_header,
    retry_after,
)

__all__ = [
    "EXEMPT_ATTRIBUTE",
    "UNKEYED",
    "RateLimitMiddleware",
    "Refusal",
    "Response",
    "ScopeView",
    "client_address",
    "exempt",
    "forwarded_for",
    "header_key",
    "json_refusal",
    "policy_header",
    "ratelimit_header",
    "retry_after",
]

logger = logging.getLogger("ratekeeper.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[Scope], str | None]


class AsyncKeyedLimiter(Protocol):
    """What the middleware needs of a limiter: ``KeyedLimiter`` in memory or on Redis."""

    @property
    def limits(self) -> Mapping[str, Limit]: ...

    async def admit(self, key: str, tokens: Cost = 1, *, max_wait: float | None = 0.0) -> Verdict:
        """Take tokens for ``key`` within ``max_wait`` seconds, or refuse; see KeyedLimiter."""
        ...


# -- the request, as the shared key functions see it ----------------------------------------------


class ScopeView:
    """An ASGI scope seen as a ``RequestView`` (method, path, client, headers), read lazily.

    Also accepts a Starlette ``Request`` (any mapping over a scope).
    """

    __slots__ = ("scope",)

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.scope = scope

    @property
    def method(self) -> str:
        return str(self.scope.get("method", "GET"))

    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    @property
    def client(self) -> str | None:
        client = self.scope.get("client")
        return str(client[0]) if client else None

    def header(self, name: str) -> str | None:
        raw = name.encode("latin-1")
        values = [v.decode("latin-1") for k, v in self.scope.get("headers") or () if k == raw]
        return ", ".join(values) if values else None


# -- key functions -------------------------------------------------------------------------------


def client_address(scope: Scope) -> str:
    """Return the client's IP address from the ASGI scope: the default key.

    Raises LookupError when the server gives no client address (a Unix socket, some test
    clients). Behind a proxy every request has the proxy's address: use ``forwarded_for``.
    """
    client = scope.get("client")
    if not client:
        raise LookupError("the ASGI scope has no client address (a Unix socket?)")
    return str(client[0])


def header_key(
    name: str,
    *,
    fallback: KeyFunc | None = client_address,
    hashed: bool = True,
    secret: str | bytes | None = None,
) -> KeyFunc:
    """Return a key function that keys requests by a header, such as an API key.

    The key is ``"<name>:<value>"`` with the value replaced by its keyed hash (HMAC-SHA-256
    under ``secret``, else ``$RATEKEEPER_KEY_SECRET``, else a built-in key; 32 hex digits),
    so that credentials never reach a backend's key names or the logs; ``hashed=False``
    keeps values that are not secret readable. Without the header the key is
    ``fallback(scope)`` (by default the client's address), or, with ``fallback=None``, the
    key function raises LookupError (the middleware's ``on_key_error`` decides). Raises
    ValueError for an empty header name or secret.
    """
    header = HeaderKey(name, hashed=hashed, secret=secret)

    def key(scope: Scope) -> str | None:
        found = header.of(ScopeView(scope))
        if found is not None:
            return found
        if fallback is None:
            raise header.missing()
        return fallback(scope)

    return key


def forwarded_for(
    trusted: Iterable[str], *, header: str = "x-forwarded-for"
) -> Callable[[Scope], str]:
    """Return a key function for clients behind trusted proxies: the first untrusted hop.

    ``trusted`` lists the proxies' addresses or networks (``"10.0.0.0/8"``). A request from
    an untrusted peer is keyed by the peer's address (its ``X-Forwarded-For`` could be
    anything). From a trusted proxy, the header is read from the right, skipping trusted
    hops (see ``TrustedProxies``). Raises ValueError for a ``trusted`` entry that is not an
    address or network.
    """
    proxies = TrustedProxies(trusted)
    name = header.lower()

    def key(scope: Scope) -> str:
        return proxies.client(client_address(scope), ScopeView(scope).header(name))

    return key


# -- the middleware ------------------------------------------------------------------------------


EXEMPT_ATTRIBUTE = "__ratekeeper_exempt__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def exempt(endpoint: Endpoint) -> Endpoint:
    """Mark an endpoint that ``RateLimitMiddleware`` never limits (its route is exempt).

    A decorator: put it under the route decorator (``@app.get(...)``). The middleware finds
    the marked endpoints among the app's routes when it starts (Starlette, FastAPI).
    """
    setattr(endpoint, EXEMPT_ATTRIBUTE, True)
    return endpoint


class RouteInfo(NamedTuple):
    """A route of the app: its path template, methods (None: all) and whether it is exempt."""

    path: str
    methods: frozenset[str] | None
    exempt: bool


def app_routes(app: object) -> list[RouteInfo] | None:
    """Return the routes of the router inside ``app`` (Starlette, FastAPI), or None.

    Follows ``.app`` through the middlewares to the first object with ``routes``; a mount
    contributes its routes under its path, or ``<path>/{path:path}`` for a mounted app.
    """
    for _ in range(64):
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            return list(_routes(routes, ""))
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def _routes(routes: list[Any], prefix: str) -> Iterator[RouteInfo]:
    for route in routes:
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        endpoint = getattr(route, "endpoint", None)
        if endpoint is not None:
            methods = getattr(route, "methods", None)
            yield RouteInfo(
                prefix + path,
                frozenset(methods) if methods else None,
                bool(getattr(endpoint, EXEMPT_ATTRIBUTE, False)),
            )
            continue
        inner = getattr(route, "routes", None)
        if inner:
            yield from _routes(list(inner), prefix + path)
        else:
            yield RouteInfo(prefix + path.rstrip("/") + "/{path:path}", None, False)


class RateLimitMiddleware:
    """Limit an ASGI app's requests per key; refuse with 429 and the standard headers.

    Arguments (all but ``app`` and ``limiter`` keyword-only):

    ``limiter``
        a ``KeyedLimiter`` (in memory, or on a shared backend) giving each key its bucket.
    ``key``
        ``scope -> str | None``: the request's key (default ``client_address``; see also
        ``header_key`` and ``forwarded_for``). ``None`` means: do not limit this request.
    ``costs``
        tokens per route: a mapping from ``"/path"``, a template ``"/items/{item_id}"``,
        ``"/prefix/*"``, or any of these preceded by a method (``"POST /upload"``) to an
        amount (an int, or a mapping of limit name to tokens, as ``KeyedLimiter.acquire``
        takes); ``0`` exempts the route. Exact paths win over templates, templates over
        prefixes, longer prefixes over shorter ones, a method-specific entry over a general
        one. Or a function ``scope -> amount``. Unlisted routes cost ``default_cost`` (1).
        In a Starlette or FastAPI app each pattern must match one of the app's routes.
    ``exempt``
        routes never limited (same patterns): shorthand for a cost of 0.
    ``max_wait``
        seconds a request may wait for its tokens before it is refused (default 0: refuse at
        once). Waiting requests are served in arrival order within a key.
    ``headers``
        which rate-limit headers to send: ``False`` (default) the IETF draft's
        ``RateLimit``/``RateLimit-Policy`` on refusals only; ``True`` those on every
        response; ``"ietf"``, ``"x-ratelimit"`` (``X-RateLimit-Limit/Remaining/Reset``) or
        ``"both"`` that set on every response; ``None`` none. Refusals always carry
        ``Retry-After``. Stacked with another limiter, policy names are made unique.
    ``refusal_response``
        ``(scope, refusal) -> response`` builds the answer to a refusal (429, or 503 when the
        limiter failed): a ``Response``, or any ASGI response (a Starlette ``Response``); the
        refusal's headers it lacks are added. Default ``json_refusal``:
        ``{"detail": "Too Many Requests", "retry_after": N}``.
    ``on_key_error``
        ``"shared"`` (default): a request whose key function fails is limited under one key
        shared by all such requests, ``UNKEYED``; ``"allow"``: it is let through.
    ``on_error``
        ``"deny"`` (default): a request the limiter fails on is answered 503 with
        ``Retry-After: 1``; ``"allow"``: it is let through. Either way the error is logged.
    ``max_key_length``
        longer keys (a huge header) are replaced by ``"sha256:<hex digest>"``, so a key
        costs bounded memory and distinct keys stay distinct.

    Raises ValueError/TypeError at once for a bad argument (a cost above a limit's capacity,
    a route the app does not have, an unknown ``headers`` or ``on_error``...). Other scope
    types (lifespan) pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: AsyncKeyedLimiter,
        *,
        key: KeyFunc = client_address,
        costs: Mapping[str, Cost] | Callable[[Scope], Cost] | None = None,
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
            raise TypeError(f"app must be an ASGI application, not {app!r}")
        limits = getattr(limiter, "limits", None)
        if not callable(getattr(limiter, "admit", None)) or not limits:
            raise TypeError(
                f"limiter must be a KeyedLimiter (with admit and limits), not {limiter!r}"
            )
        if not callable(key):
            raise TypeError(f"key must be a function of the ASGI scope, not {key!r}")
        self._max_wait = check_max_wait(max_wait)
        if isinstance(exempt, str):
            raise TypeError(f"exempt must be a list of route patterns, not the str {exempt!r}")
        routes = app_routes(app)
        exempt = list(exempt)
        for route in routes or ():
            if route.exempt:  # marked with @exempt
                methods = sorted(route.methods) if route.methods else [""]
                exempt.extend(f"{method} {route.path}".lstrip() for method in methods)
        self._gate = Gate(
            limits,
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
        if routes is not None:
            self._gate.check_routes(route.path for route in routes)
        self.app = app
        self.limiter = limiter
        admit_now = getattr(limiter, "admit_now", None)
        self._admit_now: Callable[[str, Cost], Verdict | None] | None = (
            admit_now if callable(admit_now) and not max_wait else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        gate = self._gate
        ticket = gate.ticket(scope, scope.get("method", "GET"), scope.get("path", ""))
        if ticket is None:
            await self.app(scope, receive, send)
            return
        if isinstance(ticket, Refusal):  # the cost function failed
            await send_refusal(scope, receive, send, gate, ticket)
            return
        key, cost = ticket
        try:
            # A limiter that decides without awaiting (memory) is asked directly when the
            # request may not wait: no coroutine per request.
            verdict = self._admit_now(key, cost) if self._admit_now is not None else None
            if verdict is None:
                verdict = await self.limiter.admit(key, cost, max_wait=self._max_wait)
        except Exception as exc:
            await self._failed(scope, receive, send, "the limiter", exc)
            return
        if not verdict.granted:
            await send_refusal(scope, receive, send, gate, gate.refusal(verdict))
            return
        if gate.headers_on_accept and kind == "http":
            send = sending_headers(send, gate, verdict)
        await self.app(scope, receive, send)

    async def _failed(
        self, scope: Scope, receive: Receive, send: Send, what: str, exc: Exception
    ) -> None:
        gate = self._gate
        refusal = gate.failed(what, exc, scope.get("method", "GET"), scope.get("path", ""))
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await send_refusal(scope, receive, send, gate, refusal)

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware {self.limiter!r} max_wait={self._max_wait}>"


# -- sending -------------------------------------------------------------------------------------


def _encoded(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def sending_headers(send: Send, gate: Gate, verdict: Verdict) -> Send:
    """Return ``send`` adding the accepted request's rate-limit headers to the response.

    Policy names already in the response (another limiter, stacked) are not reused, and
    ``X-RateLimit-*`` headers already there (the innermost limiter's) are kept.
    """

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = message.get("headers") or []
            present = [(n, v) for n, v in raw if b"ratelimit" in n]
            if present:  # another limiter's (stacked): keep its names and X-RateLimit-*
                decoded = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in present]
                names = {n for n, _ in decoded}
                mine = _encoded(
                    (n, v)
                    for n, v in gate.headers.unique(decoded).accepted(verdict, time.time())
                    if n.startswith("ratelimit") or n not in names
                )
            else:
                mine = gate.headers.accepted_latin1(verdict, time.time())
            message["headers"] = [*raw, *mine]
        await send(message)

    return send_with_headers


async def send_refusal(
    scope: Scope, receive: Receive, send: Send, gate: Gate, refusal: Refusal
) -> None:
    """Send the response to a refusal: the hook's (or the default JSON one).

    A websocket is refused before it is accepted (a denial response where the server offers
    one, else a close with code 1008).
    """
    response = gate.respond(scope, refusal)
    if not isinstance(response, Response):
        if callable(response):  # an ASGI response (Starlette's): add what it lacks, send it
            headers = getattr(response, "headers", None)
            if headers is not None and hasattr(headers, "setdefault"):
                for name, value in refusal.headers:
                    headers.setdefault(name, value)
            if scope["type"] == "http":
                await response(scope, receive, send)
                return
        else:  # the hook returned something unusable: never a 500
            gate.log(
                logging.ERROR,
                "refusal_response",
                "ratekeeper: refusal_response must return a Response or an ASGI response, "
                f"not {response!r:.60}; sending the default",
                None,
            )
        response = json_refusal(scope, refusal)
    await send_response(scope, send, response)


async def send_response(scope: Scope, send: Send, response: Response) -> None:
    """Send a ``Response``; to a websocket, as a denial response or a close (1008)."""
    body = response.body
    headers = _encoded(response.headers)
    if not any(n == b"content-length" for n, _ in headers):
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
    status = response.status
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        reason = "Too Many Requests" if status == 429 else "Service Unavailable"
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
