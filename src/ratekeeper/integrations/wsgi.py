"""WSGI middleware that limits requests per key (any WSGI app: Flask, Django, Bottle, Pyramid...).

``RateLimitMiddleware(app, limiter=SyncKeyedLimiter("10/s", 20))`` takes tokens for each
request from the bucket of its key (by default the client's address) and refuses the request
with ``429 Too Many Requests``, ``Retry-After`` and the rate-limit headers, or waits up to
``max_wait`` seconds for them first (the worker thread sleeps). It is the blocking twin of
``ratekeeper.integrations.asgi.RateLimitMiddleware``, with the same options; the limiter may
keep its state in memory or on Redis (``SyncRedisKeyedBackend``).

What it never does: turn an error into a 500. A key function that raises is logged on
``ratekeeper.wsgi`` and the request is limited under one shared key (or let through,
``on_key_error="allow"``); a limiter that raises (a backend down) is logged and answered
``503`` with ``Retry-After: 1`` (or let through, ``on_error="allow"``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._keyed import SyncKeyedLimiter, Tokens
from ._gate import Decision, Gate, Rule, check_cost

__all__ = ["RateLimitMiddleware", "client_address", "refusal_body"]

logger = logging.getLogger("ratekeeper.wsgi")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
KeyFunc = Callable[[Environ], str | None]

_REASONS = {429: "429 Too Many Requests", 503: "503 Service Unavailable"}


def client_address(environ: Environ) -> str:
    """Return the client's IP address (``REMOTE_ADDR``): the default key.

    Raises LookupError when the server gives none. Behind a proxy every request has the
    proxy's address: key by the forwarded address of trusted proxies instead.
    """
    address = environ.get("REMOTE_ADDR")
    if not address:
        raise LookupError("the WSGI environ has no REMOTE_ADDR")
    return str(address)


def refusal_body(decision: Decision) -> tuple[bytes, str]:
    """Return the default body of a refusal and its content type: a small JSON object.

    429: ``{"error": "rate_limited", "detail": "Too Many Requests", "retry_after": N}``;
    503: ``{"error": "unavailable", "detail": "Service Unavailable", "retry_after": 1}``.
    """
    limited = decision.status == 429
    body = {
        "error": "rate_limited" if limited else "unavailable",
        "detail": "Too Many Requests" if limited else "Service Unavailable",
        "retry_after": decision.retry_after,
    }
    return json.dumps(body).encode(), "application/json"


class RateLimitMiddleware:
    """Limit a WSGI app's requests per key; refuse with 429 and the standard headers.

    Arguments (all but ``app`` and ``limiter`` keyword-only):

    ``limiter``
        a ``SyncKeyedLimiter`` (in memory, or on Redis with ``SyncRedisKeyedBackend``).
    ``key``
        ``environ -> str | None``: the request's key (default ``client_address``); ``None``
        means: do not limit this request.
    ``costs``
        tokens per route: a mapping from ``"/path"``, ``"/prefix/*"``, or either preceded by
        a method (``"POST /upload"``) to an amount (an int, or a mapping of limit name to
        tokens); ``0`` exempts. Exact paths win over prefixes, longer prefixes over shorter
        ones, a method-specific entry over a general one. Unlisted routes cost
        ``default_cost`` (1).
    ``exempt``
        routes never limited (same patterns): shorthand for a cost of 0.
    ``max_wait``
        seconds a request may wait for its tokens before it is refused (default 0).
    ``headers``
        ``"ietf"`` (default: ``RateLimit`` and ``RateLimit-Policy``), ``"x-ratelimit"``
        (``X-RateLimit-Limit/Remaining/Reset``), ``"both"`` or ``"none"``: on accepted and
        refused responses. ``Retry-After`` is always on a refusal.
    ``on_key_error`` / ``on_error``
        ``"shared"``/``"allow"`` and ``"deny"``/``"allow"``, as in the ASGI middleware.
    ``response``
        ``(environ, decision) -> (body, content_type)``: the body of a 429 or 503 (default
        ``refusal_body``, a small JSON object). The status and headers stay ratekeeper's.

    Raises ValueError/TypeError at once for a bad argument (a cost above a limit's capacity,
    an unknown header mode...).
    """

    def __init__(
        self,
        app: WSGIApp,
        limiter: SyncKeyedLimiter,
        *,
        key: KeyFunc = client_address,
        costs: Mapping[str, Tokens] | None = None,
        exempt: Iterable[str] = (),
        default_cost: Tokens = 1,
        max_wait: float = 0.0,
        headers: str = "ietf",
        on_key_error: str = "shared",
        on_error: str = "deny",
        response: Callable[[Environ, Decision], tuple[bytes, str]] | None = None,
        log_interval: float = 10.0,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application, not {app!r}")
        if response is not None and not callable(response):
            raise TypeError(f"response must be a function (environ, decision), not {response!r}")
        self.app = app
        self.limiter = limiter
        self._gate: Gate[Environ] = Gate(
            max_wait=max_wait,
            headers=headers,
            on_key_error=on_key_error,
            on_error=on_error,
            logger=logger,
            log_interval=log_interval,
        )
        self._response = response
        self._default = Rule(limiter, key, default_cost)
        table: dict[str, Tokens] = {}
        if costs is not None:
            if not isinstance(costs, Mapping):
                raise TypeError(f"costs must be a mapping of route to tokens, not {costs!r}")
            table.update(costs)
        for pattern in exempt:
            table[pattern] = 0
        self._exact: dict[str, Rule[Environ] | None] = {}
        self._prefixes: list[tuple[str, Rule[Environ] | None]] = []
        for pattern, cost in table.items():
            self._add_route(pattern, cost, key)
        self._prefixes.sort(key=lambda item: -len(item[0]))

    def _add_route(self, pattern: str, cost: Tokens, key: KeyFunc) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"a route pattern must be a str, not {pattern!r}")
        method, _, path = pattern.rpartition(" ")
        if not path.startswith("/") or (method and not method.isalpha()):
            raise ValueError(
                f"a route pattern looks like '/path', '/prefix/*' or 'POST /path', got {pattern!r}"
            )
        checked = check_cost(cost, self._default.limits, f"the cost of {pattern!r}")
        rule = Rule(self.limiter, key, checked) if checked else None
        route = f"{method.upper()} {path}" if method else path
        if path.endswith("*"):
            self._prefixes.append((route[:-1], rule))
        else:
            self._exact[route] = rule

    def _rule(self, environ: Environ) -> Rule[Environ] | None:
        path: str = environ.get("PATH_INFO", "") or "/"
        exact = self._exact
        if exact:
            method = environ.get("REQUEST_METHOD", "GET")
            for candidate in (f"{method} {path}", path):
                if candidate in exact:
                    return exact[candidate]
        if self._prefixes:
            method_path = f"{environ.get('REQUEST_METHOD', 'GET')} {path}"
            for prefix, rule in self._prefixes:
                if (path if prefix[0] == "/" else method_path).startswith(prefix):
                    return rule
        return self._default

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        rule = self._rule(environ)
        if rule is None:
            return self.app(environ, start_response)
        decision = self._gate.check((rule,), environ, environ_what(environ))
        if decision.status is not None:
            return self._refuse(environ, start_response, decision)
        if not decision.headers:
            return self.app(environ, start_response)
        extra = list(decision.headers)

        def start_with_headers(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            return start_response(status, [*headers, *extra], *exc)

        return self.app(environ, start_with_headers)

    def _refuse(
        self, environ: Environ, start_response: StartResponse, decision: Decision
    ) -> Iterable[bytes]:
        body, content_type = refusal_body(decision)
        if self._response is not None:
            try:
                body, content_type = self._response(environ, decision)
            except Exception as exc:  # the hook's bug must not become a 500
                self._gate.log_failure("the response hook", environ_what(environ), exc)
        start_response(
            _REASONS[decision.status or 503],
            [
                *decision.headers,
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware {self.limiter!r} max_wait={self._gate.max_wait}>"


def environ_what(environ: Environ) -> str:
    """Return ``"METHOD /path"`` for a log line."""
    return f"{environ.get('REQUEST_METHOD', '')} {environ.get('PATH_INFO', '')}"
