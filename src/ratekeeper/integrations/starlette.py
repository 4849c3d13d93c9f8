"""Per-route rate limits for Starlette and FastAPI: a decorator and a FastAPI dependency.

``limiter = RouteLimiter()`` (in memory; ``storage="redis://..."`` for Redis or Valkey) makes
route limits. Each counts per route (its path template and methods) and per key (by default
the client's address), unless it is a shared limit, which counts per key across every route
that uses it::

    @app.get("/items/{item_id}")
    @limiter.route_limit("5/minute")                   # the decorator (under the route's)
    async def read_item(item_id: int): ...

    @app.get("/search", dependencies=[Depends(limiter.depends("10/minute", cost=2))])
    async def search(q: str): ...

    uploads = limiter.shared_limit("uploads", "100/hour")   # one budget, several routes

A refusal is the front door's answer (JSON ``{"detail": "Too Many Requests", "retry_after":
N}`` with ``Retry-After``, by default; see ``_web``). The decorator returns it in place of
the endpoint's response. The dependency raises ``RateLimitExceeded`` (an ``HTTPException``):
FastAPI answers it with its status and headers, and with the refusal's own body once
``rate_limit_exceeded_handler`` is installed for it. Works with ``RateLimitMiddleware`` or
without it; imports Starlette (FastAPI is not needed).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, NamedTuple, TypeVar

try:
    from starlette.concurrency import run_in_threadpool
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.starlette needs starlette: pip install 'ratekeeper[starlette]'",
        name="starlette",
    ) from exc
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response as StarletteResponse

from .._gcra import Limit, named_limits
from .._keyed import KeyedLimiter, Verdict
from ._web import (
    Cost,
    Gate,
    HeaderMode,
    Refusal,
    RefusalHook,
    Response,
    bounded_key,
    check_max_wait,
    json_refusal,
)
from .asgi import (
    client_address,
    exempt,
    forwarded_for,
    header_key,
    retry_after,
)

__all__ = [
    "RateLimitExceeded",
    "RouteLimit",
    "RouteLimiter",
    "client_address",
    "exempt",
    "forwarded_for",
    "header_key",
    "path_param",
    "rate_limit_exceeded_handler",
    "retry_after",
    "user_key",
]

logger = logging.getLogger("ratekeeper.asgi")

KeyFunc = Callable[[Any], "str | None"]
RateSpec = str | Limit | Mapping[str, "Limit | str"]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

_REQUEST = "ratekeeper_request"
_RESPONSE = "ratekeeper_response"
_MAX_BUCKET_KEY = 200  # under the backends' 256 characters, with the route appended


# -- keys from the request ----------------------------------------------------------------------


def path_param(name: str) -> KeyFunc:
    """Return a key function keying requests by a path parameter: ``"<name>:<value>"``.

    Route limits only (the parameters are known once the route matched). Raises
    LookupError for a request whose route has no such parameter (``on_key_error`` decides).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a path parameter name is needed, got {name!r}")

    def key(request: Any) -> str:
        params = request.get("path_params") or {}
        if name not in params:
            raise LookupError(f"the route has no path parameter {name!r}")
        return f"{name}:{params[name]}"

    return key


def user_key(*, fallback: KeyFunc | None = client_address) -> KeyFunc:
    """Return a key function keying authenticated requests by user: ``"user:<identity>"``.

    Reads ``scope["user"]`` as Starlette's ``AuthenticationMiddleware`` sets it (its
    ``identity``, else ``display_name``). Anonymous requests get ``fallback(request)`` (the
    client's address), or, with ``fallback=None``, LookupError (``on_key_error`` decides).
    """

    def key(request: Any) -> str | None:
        user = request.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            try:
                identity = user.identity
            except (AttributeError, NotImplementedError):
                identity = user.display_name
            return f"user:{identity}"
        if fallback is None:
            raise LookupError("the request has no authenticated user")
        return fallback(request)

    return key


# -- refusals -----------------------------------------------------------------------------------


class RateLimitExceeded(HTTPException):
    """Raised by a route limit's dependency to refuse a request (429, or 503 on a failure).

    An ``HTTPException``: without a handler FastAPI answers ``{"detail": "Too Many
    Requests"}`` with the status and headers (``Retry-After`` and the rate-limit set). With
    ``rate_limit_exceeded_handler`` installed, the response is the refusal's own (the
    default JSON body with ``retry_after``, or your ``refusal_response``'s).
    """

    def __init__(self, refusal: Refusal, response: StarletteResponse) -> None:
        super().__init__(refusal.status, refusal.detail, dict(refusal.headers))
        self.refusal = refusal
        self.response = response


async def rate_limit_exceeded_handler(request: Request, exc: Exception) -> StarletteResponse:
    """Answer a ``RateLimitExceeded`` with its refusal's response.

    Install it with ``app.add_exception_handler(RateLimitExceeded,
    rate_limit_exceeded_handler)``. Re-raises any other exception.
    """
    if not isinstance(exc, RateLimitExceeded):
        raise exc
    return exc.response


def _starlette_response(response: Any, refusal: Refusal) -> StarletteResponse:
    """Return a hook's answer as a Starlette response, with the refusal's headers it lacks."""
    if isinstance(response, Response):
        headers = dict(response.with_headers(refusal.headers).headers)
        return StarletteResponse(response.body, response.status, headers)
    if isinstance(response, StarletteResponse):
        for name, value in refusal.headers:
            response.headers.setdefault(name, value)
        return response
    raise TypeError(
        f"refusal_response must return a Response or a Starlette Response, not {response!r}"
    )


# -- route limits -------------------------------------------------------------------------------


def _limits(rate: object, capacity: int | None) -> dict[str, Limit]:
    """Return the named limits of a route limit's ``rate``; raise TypeError/ValueError.

    A string holds one or more rates named by period (``"5/minute"`` is ``{"minute": ...}``,
    ``"10/second;1000/day"`` two limits), as ``Limit.parse_many`` reads it.
    """
    if isinstance(rate, Limit):
        if capacity is not None:
            raise TypeError("capacity goes with a rate string; a Limit carries its own")
        return {rate.rate.period_name: rate}
    if isinstance(rate, str):
        limits = Limit.parse_many(rate)
        if capacity is None:
            return limits
        if len(limits) > 1:
            raise TypeError(f"capacity goes with one rate, not {rate!r}")
        ((name, limit),) = limits.items()
        return {name: Limit(limit.rate, capacity)}
    if isinstance(rate, Mapping):
        if capacity is not None:
            raise TypeError("capacity goes with one rate; with several, give each Limit's own")
        return named_limits(rate)
    raise TypeError(
        "a route limit's rate is a string ('5/minute', '10/second;1000/day'), a Limit, or "
        f"a mapping of name to Limit, not {rate!r}"
    )


_route_ids: dict[int, tuple[object, str]] = {}


def _route_id(scope: Mapping[str, Any]) -> str:
    """Return the route a request matched: ``"GET,HEAD /items/{item_id}"`` (its path if none).

    Computed once per route object (kept alive in the cache, so that its id stays its own).
    """
    route = scope.get("route")
    cached = _route_ids.get(id(route))
    if cached is not None and cached[0] is route:
        return cached[1]
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return f"{scope.get('method', 'GET')} {scope.get('path', '')}"
    methods = getattr(route, "methods", None)
    found = f"{','.join(sorted(methods)) if methods else '*'} {path}"
    _route_ids[id(route)] = (route, found)
    return found


class Refused(NamedTuple):
    """A refusal and the Starlette response that answers it."""

    refusal: Refusal
    response: StarletteResponse


Decision = tuple["Verdict | None", "Refused | None"]
"""A route limit's answer: (the granted verdict or None, the refusal or None). The verdict is
None for a request that is not limited, or granted when no headers need it."""

_GO_ON: Decision = (None, None)


class _Pending(NamedTuple):
    """A request whose limiter must be awaited (Redis, or a request that may wait)."""

    key: str
    cost: Cost


class RouteLimit:
    """One route limit (made by ``RouteLimiter``): a decorator, and ``depends`` for FastAPI.

    ``limiter`` is its ``KeyedLimiter`` (in memory or on Redis); ``limits`` its limits by
    name (the policy names of its headers); ``shared``: whether it counts across routes.
    """

    def __init__(
        self,
        limiter: KeyedLimiter,
        *,
        shared: bool,
        max_wait: float,
        gate: Gate,
    ) -> None:
        self.limiter = limiter
        self.limits = dict(limiter.limits)
        self.shared = shared
        self._max_wait = max_wait
        self._gate = gate
        # A limiter that decides without awaiting (memory) is asked directly when requests
        # may not wait: no coroutine per request.
        self._admit_now = limiter.admit_now if not max_wait else None
        # With no headers on accepted responses, a grant needs no Verdict: a bool will do.
        self._try_now = (
            limiter.try_acquire_now if not max_wait and not gate.headers_on_accept else None
        )
        # The route of the last request and the suffix of its buckets' keys: a limit serves
        # one route, or a few, so the route's id is built once, not per request.
        self._last_route: tuple[object, str] = (None, "")
        self.depends = self._dependency()

    async def check(self, request: HTTPConnection) -> Decision:
        """Decide on a request: (the granted verdict or None, the refusal or None).

        Never raises for a failing key function, cost function or limiter: those are logged
        and answered as configured (``on_key_error``, ``on_error``).
        """
        decided = self._decide(request)
        if isinstance(decided, _Pending):
            return await self._admit(request, decided)
        return decided

    def _decide(self, request: HTTPConnection) -> Decision | _Pending:
        """``check`` as far as it goes without awaiting: all of it for a memory limiter."""
        gate = self._gate
        scope = request.scope
        ticket = gate.ticket(request, scope.get("method", "GET"), scope.get("path", ""))
        if ticket is None:
            return _GO_ON
        if isinstance(ticket, Refusal):
            return None, self._refused(request, ticket)
        key, cost = ticket
        if not self.shared:
            route = scope.get("route")
            last, suffix = self._last_route
            if route is None or route is not last:
                suffix = "|" + _route_id(scope)
                if route is not None:
                    self._last_route = (route, suffix)
            key += suffix
            if len(key) > _MAX_BUCKET_KEY:
                key = bounded_key(key, _MAX_BUCKET_KEY)
        try:
            if self._try_now is not None and self._try_now(key, cost):
                return _GO_ON
            # Refused (then the Verdict says for how long), or the limiter must be awaited.
            verdict = self._admit_now(key, cost) if self._admit_now is not None else None
        except Exception as exc:
            return self._failed(request, exc)
        if verdict is None:
            return _Pending(key, cost)
        if not verdict.granted:
            return None, self._refused(request, gate.refusal(verdict))
        return verdict, None

    async def _admit(self, request: HTTPConnection, pending: _Pending) -> Decision:
        """The rest of ``check`` for a limiter that must be awaited."""
        try:
            verdict = await self.limiter.admit(pending.key, pending.cost, max_wait=self._max_wait)
        except Exception as exc:
            return self._failed(request, exc)
        if not verdict.granted:
            return None, self._refused(request, self._gate.refusal(verdict))
        return verdict, None

    def _failed(self, request: HTTPConnection, exc: Exception) -> Decision:
        scope = request.scope
        method, path = scope.get("method", "GET"), scope.get("path", "")
        refusal = self._gate.failed("the limiter", exc, method, path)
        return None, None if refusal is None else self._refused(request, refusal)

    def _refused(self, request: HTTPConnection, refusal: Refusal) -> Refused:
        answer = self._gate.respond(request, refusal)
        try:
            return Refused(refusal, _starlette_response(answer, refusal))
        except TypeError as exc:  # the hook returned something unusable: never a 500
            self._gate.log(
                logging.ERROR, "refusal_response", f"ratekeeper: {exc}; sending the default", exc
            )
            return Refused(refusal, _starlette_response(json_refusal(request, refusal), refusal))

    def add_headers(self, response: StarletteResponse, verdict: Verdict | None) -> None:
        """Add an accepted request's rate-limit headers to ``response`` (when enabled).

        Policy names another limit already put there are not reused; ``X-RateLimit-*``
        headers already there (the innermost limit's) are kept.
        """
        gate = self._gate
        if verdict is None or not gate.headers_on_accept:
            return
        headers = response.headers
        present = [(n, v) for n, v in headers.items() if "ratelimit" in n]
        names = {n for n, _ in present}
        for name, value in gate.headers.unique(present).accepted(verdict, time.time()):
            if name.startswith("ratelimit") or name not in names:
                headers.append(name, value)

    def __call__(self, endpoint: Endpoint) -> Endpoint:
        """Limit an endpoint: put this under the route decorator (``@app.get(...)``).

        The endpoint may be async or not, with or without a ``request`` parameter (one is
        added to what FastAPI sees). A refusal is returned in place of its response.
        Raises TypeError for something that is not a function.
        """
        if not callable(endpoint) or inspect.isclass(endpoint):
            raise TypeError(f"route_limit decorates an endpoint function, not {endpoint!r}")
        signature = _resolved_signature(endpoint)
        params = signature.parameters
        # FastAPI passes the request (and the response) to one parameter each: use the
        # endpoint's own if it has them, else add ours (then taken out before the call).
        request_name = _parameter_of(params, HTTPConnection) or _REQUEST
        response_name = _parameter_of(params, StarletteResponse) or _RESPONSE
        passes_request = request_name in params
        passes_response = response_name in params
        is_async = inspect.iscoroutinefunction(inspect.unwrap(endpoint))
        headers_on_accept = self._gate.headers_on_accept
        decide = self._decide

        @functools.wraps(endpoint)
        async def limited(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get(request_name) if passes_request else kwargs.pop(_REQUEST, None)
            response = kwargs.get(response_name) if passes_response else kwargs.pop(_RESPONSE, None)
            if request is None:
                request = next(
                    (a for a in (*args, *kwargs.values()) if isinstance(a, HTTPConnection)),
                    None,
                )
            if request is None:
                raise TypeError(f"{endpoint.__qualname__} was called without its request")
            decided = decide(request)
            if isinstance(decided, _Pending):
                decided = await self._admit(request, decided)
            verdict, refused = decided
            if refused is not None:
                return refused.response
            if is_async:
                result = await endpoint(*args, **kwargs)
            else:
                result = await run_in_threadpool(endpoint, *args, **kwargs)
            if verdict is not None and headers_on_accept:
                if isinstance(result, StarletteResponse):
                    self.add_headers(result, verdict)
                elif response is not None:
                    self.add_headers(response, verdict)
            return result

        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
            for name, annotation, present in (
                (_REQUEST, Request, passes_request),
                # the response only to add headers to it: FastAPI makes one per parameter
                (_RESPONSE, StarletteResponse, passes_response or not self._gate.headers_on_accept),
            )
            if not present
        ]
        kept = [p for p in params.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        var_keyword = [p for p in params.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
        limited.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*kept, *extra, *var_keyword]
        )
        return limited  # type: ignore[return-value]

    def _dependency(self) -> Callable[..., Awaitable[None]]:
        decide = self._decide

        # An async function, so that FastAPI calls it in the event loop (not in a thread),
        # and with the fewest parameters: FastAPI resolves each one on every request.
        async def rate_limit(request: Request, response: StarletteResponse | None = None) -> None:
            decided = decide(request)
            if isinstance(decided, _Pending):
                decided = await self._admit(request, decided)
            verdict, refused = decided
            if refused is not None:
                raise RateLimitExceeded(*refused)
            if response is not None:
                self.add_headers(response, verdict)

        # Real classes, not strings, for FastAPI to read; the response only when headers
        # go on accepted responses (FastAPI resolves each parameter on every request).
        parameters = [
            inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)
        ]
        if self._gate.headers_on_accept:
            parameters.append(
                inspect.Parameter(
                    "response", inspect.Parameter.KEYWORD_ONLY, annotation=StarletteResponse
                )
            )
        rate_limit.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return rate_limit

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "per route"
        return f"<RouteLimit {', '.join(self.limits)} {kind} {self.limiter!r}>"


def _parameter_of(params: Mapping[str, inspect.Parameter], kind: type) -> str | None:
    """Return the name of the parameter annotated with ``kind`` (or a subclass), if any."""
    for name, param in params.items():
        if inspect.isclass(param.annotation) and issubclass(param.annotation, kind):
            return name
    return None


def _resolved_signature(endpoint: Callable[..., Any]) -> inspect.Signature:
    """Return the endpoint's signature with string annotations resolved where they can be."""
    signature = inspect.signature(endpoint)
    try:
        hints = typing.get_type_hints(inspect.unwrap(endpoint), include_extras=True)
    except Exception:  # an annotation that does not resolve: leave them to the framework
        return signature
    return signature.replace(
        parameters=[
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
        ]
    )


class RouteLimiter:
    """Make per-route limits for Starlette and FastAPI apps, in memory or on Redis.

    ``route_limit(rate)`` gives a limit counted per route and key (use it as a decorator,
    or its ``.depends`` with FastAPI's ``Depends``); ``depends(rate)`` is shorthand for
    ``route_limit(rate).depends``; ``shared_limit(name, rate)`` gives one counted per key
    across every route that uses it; ``exempt`` marks an endpoint that
    ``RateLimitMiddleware`` must not limit.

    Options (keyword-only), the defaults of every limit it makes:

    ``key``
        ``request -> str | None``: the request's key (default ``client_address``; also
        ``header_key``, ``forwarded_for``, ``user_key``, ``path_param``). None: not limited.
    ``storage``
        ``"memory://"`` (default: this process), a ``redis://``/``rediss://``/``unix://``
        URL, or a ``redis.asyncio`` client: every process using the same server and
        ``prefix`` shares the limits. ``redis_options``: passed to ``RedisKeyedBackend``
        (``timeout``, ``on_failure``...).
    ``headers``, ``refusal_response``, ``on_key_error``, ``on_error``, ``max_wait``,
    ``max_key_length``, ``log_interval``
        as for ``RateLimitMiddleware``.

    Raises TypeError/ValueError at once for a bad option, and at decoration (start-up) for
    a bad rate, cost or key.
    """

    def __init__(
        self,
        *,
        key: KeyFunc = client_address,
        storage: Any = "memory://",
        prefix: str = "ratekeeper:route:",
        redis_options: Mapping[str, Any] | None = None,
        headers: bool | HeaderMode | None = False,
        refusal_response: RefusalHook | None = None,
        on_key_error: Literal["shared", "allow"] = "shared",
        on_error: Literal["deny", "allow"] = "deny",
        max_wait: float = 0.0,
        max_key_length: int = 128,
        log_interval: float = 10.0,
    ) -> None:
        self._options: dict[str, Any] = {
            "headers": headers,
            "refusal_response": refusal_response,
            "on_key_error": on_key_error,
            "on_error": on_error,
            "max_key_length": max_key_length,
            "log_interval": log_interval,
        }
        self._key = key
        self._max_wait = check_max_wait(max_wait)
        Gate({"check": Limit("1/s")}, key=key, logger=logger, **self._options)  # check now
        self._client: Any = None
        self._owns_client = False
        self._prefix = prefix
        self._redis_options = dict(redis_options or {})
        if isinstance(storage, str):
            scheme = storage.partition("://")[0]
            if storage == "memory://":
                pass
            elif scheme in ("redis", "rediss", "unix"):
                import redis.asyncio  # noqa: PLC0415 (an optional extra)

                self._client = redis.asyncio.Redis.from_url(storage)
                self._owns_client = True
            else:
                raise ValueError(
                    "storage must be 'memory://', a redis://, rediss:// or unix:// URL, or a "
                    f"redis.asyncio client, got {storage!r}"
                )
        else:
            self._client = storage
        if redis_options and self._client is None:
            raise TypeError("redis_options go with a Redis storage")
        self._shared: dict[str, RouteLimit] = {}
        self.routes: list[RouteLimit] = []

    def _make(
        self,
        limits: dict[str, Limit],
        *,
        shared: bool,
        cost: Cost | Callable[[Any], Cost],
        key: KeyFunc | None,
        max_wait: float | None,
    ) -> RouteLimit:
        costs = cost if callable(cost) else None
        gate = Gate(
            limits,
            key=self._key if key is None else key,
            costs=costs,
            default_cost=1 if callable(cost) else cost,
            logger=logger,
            **self._options,
        )
        if self._client is None:
            limiter = KeyedLimiter(limits=limits)
        else:
            from ..redis import RedisKeyedBackend  # noqa: PLC0415 (an optional extra)

            backend = RedisKeyedBackend(
                self._client, limits, prefix=self._prefix, **self._redis_options
            )
            limiter = KeyedLimiter(backend=backend)
        wait = self._max_wait if max_wait is None else check_max_wait(max_wait)
        route = RouteLimit(limiter, shared=shared, max_wait=wait, gate=gate)
        self.routes.append(route)
        return route

    def route_limit(
        self,
        rate: RateSpec,
        *,
        capacity: int | None = None,
        cost: Cost | Callable[[Any], Cost] = 1,
        key: KeyFunc | None = None,
        max_wait: float | None = None,
    ) -> RouteLimit:
        """Return a limit counted per route and key: ``@limiter.route_limit("5/minute")``.

        ``rate``: ``"5/minute"`` (bursts of 5), with ``capacity`` for another burst size;
        several at once, all or nothing: ``"10/second;1000/day"`` or ``{"burst":
        Limit("10/s"), "day": Limit("1000/day")}``. The names are the policy names of the
        headers; a string's rates are named by period (``"minute"``, ``"day"``).
        ``cost``: the tokens each request takes (an int, a mapping of limit name to tokens,
        or a function of the request). ``key``, ``max_wait``: this route's own. Raises
        TypeError/ValueError for a bad rate, capacity or cost.
        """
        return self._make(
            _limits(rate, capacity), shared=False, cost=cost, key=key, max_wait=max_wait
        )

    def depends(
        self,
        rate: RateSpec,
        *,
        capacity: int | None = None,
        cost: Cost | Callable[[Any], Cost] = 1,
        key: KeyFunc | None = None,
        max_wait: float | None = None,
    ) -> Callable[..., Awaitable[None]]:
        """Return a FastAPI dependency limiting a route: ``Depends(limiter.depends("5/minute"))``.

        Shorthand for ``route_limit(...).depends``; raises as ``route_limit`` does.
        """
        return self.route_limit(
            rate, capacity=capacity, cost=cost, key=key, max_wait=max_wait
        ).depends

    def shared_limit(
        self,
        name: str,
        rate: RateSpec,
        *,
        capacity: int | None = None,
        cost: Cost | Callable[[Any], Cost] = 1,
        key: KeyFunc | None = None,
        max_wait: float | None = None,
    ) -> RouteLimit:
        """Return a limit counted per key across every route that uses it.

        ``uploads = limiter.shared_limit("uploads", "100/hour")``, then ``@uploads`` on each
        route (or ``Depends(uploads.depends)``). ``name`` is its policy name (letters,
        digits, ``_.:-``); a name already used raises ValueError. ``cost`` is per use
        (``uploads`` takes the same budget wherever it is used). Raises as ``route_limit``.
        """
        if name in self._shared:
            raise ValueError(f"a shared limit named {name!r} exists already: use it again")
        limits = _limits(rate, capacity)
        if len(limits) == 1:
            limits = named_limits({name: next(iter(limits.values()))})
        else:
            limits = named_limits({f"{name}.{n}": limit for n, limit in limits.items()})
        route = self._make(limits, shared=True, cost=cost, key=key, max_wait=max_wait)
        self._shared[name] = route
        return route

    exempt = staticmethod(exempt)

    async def aclose(self) -> None:
        """Close every limit it made (later requests are answered as ``on_error`` says), send
        what their Redis backends still queue, and close the client it opened from a URL."""
        for route in self.routes:
            route.limiter.close()
            backend = route.limiter.backend
            aclose = getattr(backend, "aclose", None)
            if aclose is not None:
                await aclose()
        if self._owns_client and self._client is not None:
            await self._client.aclose()

    def __repr__(self) -> str:
        where = "memory" if self._client is None else "redis"
        return f"<RouteLimiter {where} limits={len(self.routes)}>"
