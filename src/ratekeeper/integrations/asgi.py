"""Pure ASGI middleware that limits requests per key (Starlette, FastAPI, Litestar, Quart...).

``RateLimitMiddleware(app, limiter=KeyedLimiter("10/s", 20))`` takes tokens for each request
from the bucket of its key (by default the client's address) and refuses the request with
``429 Too Many Requests``, ``Retry-After`` and the ``RateLimit`` / ``RateLimit-Policy``
headers of the IETF draft (draft-ietf-httpapi-ratelimit-headers-10/-11) when they are not
there, or waits up to ``max_wait`` seconds for them first. No framework is imported; the
limiter may keep its state in memory or in a shared backend.

What it never does: turn an error into a silent 500. A key function that raises (or returns
something that is not a ``str``) is logged on ``ratekeeper.asgi`` and the request is limited
under one shared key (or let through, ``on_key_error="allow"``). A limiter that raises (a
backend that is down) is logged and answered ``503`` with ``Retry-After: 1`` (or let through,
``on_error="allow"``). Log lines of one kind are throttled to one per ``log_interval``
seconds, with a count of those left out, so that an attack cannot flood the log.

Headers. ``RateLimit-Policy: "<limit name>";q=<capacity>;w=<seconds to refill it>`` (``w``
rounded up: a client that keeps to it never exceeds the bucket). ``RateLimit: "<limit
name>";r=<whole tokens left>;t=<seconds until the bucket is full again>`` on accepted
responses when ``headers=True``; on a refusal ``r`` is the whole tokens left, ``t`` is at
most ``Retry-After`` (the draft asks that ``Retry-After`` not end before ``t``), and
``Retry-After`` is the seconds until the request's tokens are there, rounded up to >= 1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Literal, Protocol

from .._keyed import Limit, Verdict

__all__ = [
    "RateLimitMiddleware",
    "client_address",
    "forwarded_for",
    "header_key",
    "policy_header",
    "ratelimit_header",
]

logger = logging.getLogger("ratekeeper.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[Scope], str | None]
Cost = int | Mapping[str, int]
"""Tokens a request takes: an int (0: exempt) or a mapping of limit name to tokens."""

UNKEYED = "ratekeeper:unkeyed"
"""The key shared by requests whose key function failed (``on_key_error="shared"``)."""


class AsyncKeyedLimiter(Protocol):
    """What the middleware needs of a limiter: ``KeyedLimiter`` in memory or on Redis."""

    @property
    def limits(self) -> Mapping[str, Limit]: ...

    async def admit(self, key: str, tokens: Cost = 1, *, max_wait: float | None = 0.0) -> Verdict:
        """Take tokens for ``key`` within ``max_wait`` seconds, or refuse; see KeyedLimiter."""
        ...


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


def header_key(name: str, *, fallback: KeyFunc | None = client_address) -> KeyFunc:
    """Return a key function that keys requests by a header, such as an API key.

    The key is ``"<name>:<value>"``. Without the header the key is ``fallback(scope)`` (by
    default the client's address), or, with ``fallback=None``, the key function raises
    LookupError (the middleware's ``on_key_error`` decides). Hash secrets before they reach
    a shared backend's key names: wrap the function, or use a hashed header.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a header name is needed, got {name!r}")
    raw = name.lower().encode("latin-1")
    prefix = f"{name.lower()}:"

    def key(scope: Scope) -> str | None:
        for header, value in scope.get("headers") or ():
            if header == raw and value:
                decoded: str = value.decode("latin-1")
                return prefix + decoded
        if fallback is None:
            raise LookupError(f"the request has no {name} header")
        return fallback(scope)

    return key


def forwarded_for(
    trusted: Iterable[str], *, header: str = "x-forwarded-for"
) -> Callable[[Scope], str]:
    """Return a key function for clients behind trusted proxies: the first untrusted hop.

    ``trusted`` lists the proxies' addresses or networks (``"10.0.0.0/8"``). A request from
    an untrusted peer is keyed by the peer's address (its ``X-Forwarded-For`` could be
    anything). From a trusted proxy, the header is read from the right, skipping trusted
    hops: the first untrusted address is the one the outermost trusted proxy saw, the only
    one nobody could forge. The leftmost entry is not used: any client can write it. Raises
    ValueError for a ``trusted`` entry that is not an address or network.
    """
    networks = []
    for entry in trusted:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError):
            raise ValueError(f"trusted must hold IP addresses or networks, got {entry!r}") from None
    raw = header.lower().encode("latin-1")

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    def key(scope: Scope) -> str:
        peer = client_address(scope)
        if not is_trusted(peer):
            return peer
        hops: list[str] = []
        for name, value in scope.get("headers") or ():
            if name == raw:
                hops.extend(hop.strip() for hop in value.decode("latin-1").split(","))
        for hop in reversed(hops):
            if hop and not is_trusted(hop):
                return hop
        return peer  # only trusted hops: the request came from inside

    return key


# -- headers -------------------------------------------------------------------------------------


def policy_header(limits: Mapping[str, Limit]) -> str:
    """Return the ``RateLimit-Policy`` value for ``limits``: ``"name";q=C;w=W`` each.

    ``q`` is the capacity and ``w`` the seconds the bucket takes to refill from empty,
    rounded up, so that a client keeping to ``q`` per ``w`` never exceeds the bucket.
    """
    items = []
    for name, limit in limits.items():
        window = max(1, math.ceil(limit.capacity * limit.rate.interval - 1e-9))
        items.append(f'"{name}";q={limit.capacity};w={window}')
    return ", ".join(items)


def ratelimit_header(limits: Mapping[str, Limit], verdict: Verdict) -> str:
    """Return the ``RateLimit`` value for a verdict: ``"name";r=R;t=T`` per limit.

    ``r``: whole tokens left (>= 0). ``t``: seconds until the bucket is full again, rounded
    up; on a refusal, at most the ``Retry-After`` seconds.
    """
    cap = None if verdict.granted else retry_after(verdict)
    items = []
    for name, tokens, full_in in zip(limits, verdict.available, verdict.full_in_ns, strict=True):
        remaining = max(0, math.floor(tokens))
        reset = -(-full_in // 1_000_000_000)
        if cap is not None and reset > cap:
            reset = cap
        items.append(f'"{name}";r={remaining};t={reset}')
    return ", ".join(items)


def retry_after(verdict: Verdict) -> int:
    """Return the ``Retry-After`` seconds for a refusal: its wait rounded up, at least 1."""
    return max(1, -(-verdict.wait_ns // 1_000_000_000))


# -- the middleware ------------------------------------------------------------------------------


class _ThrottledLog:
    """Log a kind of problem at most once per ``interval`` seconds, counting the rest."""

    __slots__ = ("_interval", "_last", "_skipped")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, level: int, kind: str, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        self._last[kind] = now
        if skipped and last is not None:
            message += f" ({skipped} more like this in the last {now - last:.0f}s)"
        logger.log(level, message, exc_info=exc)


class RateLimitMiddleware:
    """Limit an ASGI app's requests per key; refuse with 429 and the standard headers.

    Arguments (all but ``app`` and ``limiter`` keyword-only):

    ``limiter``
        a ``KeyedLimiter`` (in memory, or on a shared backend) giving each key its bucket.
    ``key``
        ``scope -> str | None``: the request's key (default ``client_address``; see also
        ``header_key`` and ``forwarded_for``). ``None`` means: do not limit this request.
    ``costs``
        tokens per route: a mapping from ``"/path"``, ``"/prefix/*"``, or either preceded by
        a method (``"POST /upload"``) to an amount (an int, or a mapping of limit name to
        tokens, as ``KeyedLimiter.acquire`` takes); ``0`` exempts the route. Exact paths
        win over prefixes, longer prefixes over shorter ones, a method-specific entry over
        a general one. Or a function ``scope -> amount``. Unlisted routes cost
        ``default_cost`` (1).
    ``exempt``
        routes never limited (same patterns): shorthand for a cost of 0.
    ``max_wait``
        seconds a request may wait for its tokens before it is refused (default 0: refuse at
        once). Waiting requests are served in arrival order within a key.
    ``headers``
        also send ``RateLimit`` and ``RateLimit-Policy`` on accepted responses.
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
    an unknown ``on_error``...). Other scope types (lifespan) pass through untouched.
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
        headers: bool = False,
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
        if on_key_error not in ("shared", "allow"):
            raise ValueError(f"on_key_error must be 'shared' or 'allow', got {on_key_error!r}")
        if on_error not in ("deny", "allow"):
            raise ValueError(f"on_error must be 'deny' or 'allow', got {on_error!r}")
        if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)):
            raise TypeError(f"max_wait must be a number of seconds, not {max_wait!r}")
        if not 0 <= max_wait < math.inf:
            raise ValueError(f"max_wait must be finite seconds >= 0, got {max_wait!r}")
        if type(max_key_length) is not int or max_key_length < 16:
            raise ValueError(f"max_key_length must be an int >= 16, got {max_key_length!r}")
        self.app = app
        self.limiter = limiter
        self._limits: dict[str, Limit] = dict(limits)
        self._key = key
        self._max_wait = float(max_wait)
        admit_now = getattr(limiter, "admit_now", None)
        self._admit_now: Callable[[str, Cost], Verdict | None] | None = (
            admit_now if callable(admit_now) and not max_wait else None
        )
        self._headers = bool(headers)
        self._share_on_key_error = on_key_error == "shared"
        self._deny_on_error = on_error == "deny"
        self._max_key_length = max_key_length
        self._log = _ThrottledLog(log_interval)
        self._default_cost = self._checked_cost(default_cost, "default_cost")
        self._cost_function: Callable[[Scope], Cost] | None = None
        self._exact: dict[str, Cost] = {}
        self._prefixes: list[tuple[str, Cost]] = []
        table: dict[str, Cost] = {}
        if callable(costs):
            self._cost_function = costs
        elif costs is not None:
            if not isinstance(costs, Mapping):
                raise TypeError(f"costs must be a mapping or a function, not {costs!r}")
            table.update(costs)
        for pattern in exempt:
            table[pattern] = 0
        for pattern, cost in table.items():
            self._add_route(pattern, self._checked_cost(cost, f"the cost of {pattern!r}"))
        self._prefixes.sort(key=lambda item: -len(item[0]))
        # One cost for every request (no routes listed): skip the lookup.
        self._fixed_cost: Cost | None = (
            self._default_cost
            if self._cost_function is None and not self._exact and not self._prefixes
            else None
        )
        policy = policy_header(self._limits).encode("latin-1")
        self._policy = (b"ratelimit-policy", policy)

    def _checked_cost(self, cost: object, what: str) -> Cost:
        """Return a valid amount (0 means exempt); raise TypeError/ValueError naming it.

        An int is taken from every limit without a weight (weighted ones take their weight);
        a mapping names the tokens per limit.
        """
        limits = self._limits
        if type(cost) is int:
            amounts = {n: cost for n, limit in limits.items() if limit.weight is None}
        elif isinstance(cost, Mapping):
            unknown = set(cost) - set(limits)
            if unknown:
                raise ValueError(
                    f"{what} names no limit {sorted(unknown)}: the limits are {sorted(limits)}"
                )
            amounts = dict(cost)
        else:
            raise TypeError(
                f"{what} must be an int or a mapping of limit name to int, not {cost!r}"
            )
        for name, amount in amounts.items():
            if type(amount) is not int:
                raise TypeError(f"{what} must be made of ints, not {amount!r}")
            capacity = limits[name].capacity
            if not 0 <= amount <= capacity:
                raise ValueError(
                    f"{what} must be from 0 to the capacity {capacity} of limit {name!r}, "
                    f"got {amount}"
                )
        if isinstance(cost, Mapping) and not any(amounts.values()):
            return 0  # takes nothing anywhere: exempt
        return cost

    def _add_route(self, pattern: str, cost: Cost) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"a route pattern must be a str, not {pattern!r}")
        method, _, path = pattern.rpartition(" ")
        if not path.startswith("/") or (method and not method.isalpha()):
            raise ValueError(
                f"a route pattern looks like '/path', '/prefix/*' or 'POST /path', got {pattern!r}"
            )
        route = f"{method.upper()} {path}" if method else path
        if path.endswith("*"):
            self._prefixes.append((route[:-1], cost))
        else:
            self._exact[route] = cost

    def _cost(self, scope: Scope) -> Cost:
        if self._cost_function is not None:
            return self._checked_cost(self._cost_function(scope), "the cost function's result")
        path: str = scope.get("path", "")
        exact = self._exact
        if exact:
            method = scope.get("method", "GET")
            cost = exact.get(f"{method} {path}")
            if cost is None:
                cost = exact.get(path)
            if cost is not None:
                return cost
        if self._prefixes:
            method = scope.get("method", "GET")
            for prefix, cost in self._prefixes:
                if prefix[0] == "/":
                    if path.startswith(prefix):
                        return cost
                elif f"{method} {path}".startswith(prefix):
                    return cost
        return self._default_cost

    def _odd_key(self, scope: Scope, key: object) -> str | None:
        """Deal with a key that is not a plain short str: hash it, refuse it, or pass None."""
        if key is None:
            return None
        if type(key) is not str:
            error = TypeError(f"the key function returned {type(key).__name__} {key!r:.60}")
            return self._key_failed(scope, error)
        # Too long (a huge header): a digest keeps memory bounded and keys distinct.
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def _key_failed(self, scope: Scope, exc: Exception) -> str | None:
        """Log a key function's failure; return the key to use instead (None: no limit)."""
        shared = self._share_on_key_error
        action = "limiting it under the shared key" if shared else "letting it through"
        self._log(
            logging.WARNING,
            "key",
            f"ratekeeper: the key function failed for {scope.get('method', '')} "
            f"{scope.get('path', '')}: {exc!r}; {action} (on_key_error)",
            exc,
        )
        return UNKEYED if shared else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        cost = self._fixed_cost
        if cost is None:
            try:
                cost = self._cost(scope)
            except Exception as exc:
                await self._failed(scope, receive, send, "the cost function", exc)
                return
            if not cost:
                await self.app(scope, receive, send)
                return
        try:
            key = self._key(scope)
        except Exception as exc:
            key = self._key_failed(scope, exc)
        else:
            if type(key) is not str or len(key) > self._max_key_length:
                key = self._odd_key(scope, key)
        if key is None:
            await self.app(scope, receive, send)
            return
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
            await self._refuse(scope, send, verdict)
            return
        if self._headers and kind == "http":
            send = self._sending_headers(send, verdict)
        await self.app(scope, receive, send)

    def _sending_headers(self, send: Send, verdict: Verdict) -> Send:
        state = (b"ratelimit", ratelimit_header(self._limits, verdict).encode("latin-1"))
        policy = self._policy

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), policy, state]
            await send(message)

        return send_with_headers

    async def _refuse(self, scope: Scope, send: Send, verdict: Verdict) -> None:
        headers = [
            (b"retry-after", str(retry_after(verdict)).encode("latin-1")),
            self._policy,
            (b"ratelimit", ratelimit_header(self._limits, verdict).encode("latin-1")),
        ]
        await _respond(scope, send, 429, b"Too Many Requests\n", headers)

    async def _failed(
        self, scope: Scope, receive: Receive, send: Send, what: str, exc: Exception
    ) -> None:
        action = "answering 503" if self._deny_on_error else "letting the request through"
        self._log(
            logging.ERROR,
            what,
            f"ratekeeper: {what} failed for {scope.get('method', '')} {scope.get('path', '')}: "
            f"{exc!r}; {action} (on_error)",
            exc,
        )
        if self._deny_on_error:
            await _respond(scope, send, 503, b"Service Unavailable\n", [(b"retry-after", b"1")])
        else:
            await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware {self.limiter!r} max_wait={self._max_wait}>"


async def _respond(
    scope: Scope, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Send a short plain-text response; a websocket is refused before it is accepted."""
    headers = [
        *headers,
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("latin-1")),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": body.decode().strip()})
