"""Flask extension: per-endpoint limits per key, configured the Flask way (``app.config``).

::

    app = Flask(__name__)
    app.config["RATEKEEPER_DEFAULT"] = "100/minute"     # every endpoint, per client address
    limiter = RateLimiter(app)

    @app.get("/search")
    @limiter.route_limit("10/minute", key="header:X-API-Key", cost=2)
    def search(): ...

A limit applies per Flask endpoint (its URL rule, whatever the concrete path), one bucket per
key. ``route_limit`` gives an endpoint its own limit (instead of the default);
``shared_limit`` gives several endpoints one limit; ``exempt`` takes an endpoint out. The state
lives in memory or on Redis (``RATEKEEPER_STORAGE = "redis://..."``), through the same
limiters as everywhere in ratekeeper; the keys, costs, headers and refusals are those of the
ASGI and WSGI middlewares. A key function that raises is logged on ``ratekeeper.flask`` and
the request limited under one shared key (or let through); a backend that is down gives
``503`` with ``Retry-After: 1`` (or lets requests through): never a 500.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

try:
    import flask
    from flask import Flask, Request, g
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.flask needs flask: pip install 'ratekeeper[flask]'",
        name="flask",
    ) from exc

from .._gcra import Limit
from ._rules import (
    DEFAULTS,
    Config,
    LimitSpec,
    Reader,
    Rule,
    accepted_headers,
    check,
    policy_name,
)
from ._web import (
    Cost,
    Gate,
    Refusal,
    RefusalHook,
    Response,
    check_header_mode,
    json_refusal,
)
from .wsgi import EnvironView

__all__ = ["CONFIG", "RateLimiter"]

logger = logging.getLogger("ratekeeper.flask")

F = TypeVar("F", bound=Callable[..., Any])
KeySpec = str | Callable[[Request], "str | None"]

CONFIG: dict[str, object] = {f"RATEKEEPER_{name}": value for name, value in DEFAULTS.items()}
CONFIG["RATEKEEPER_EXEMPT"] = ("static",)
"""The ``app.config`` keys the extension reads, with their defaults (see ``RateLimiter``)."""

_ATTRIBUTE = "__ratekeeper_limits__"
_EXEMPT = "exempt"
_HEADERS_KEY = "ratekeeper.headers"


def _user(request: Request) -> object:
    """Return the signed-in user's id: Flask-Login's ``current_user``, else ``g.user``."""
    login = sys.modules.get("flask_login")
    if login is not None:
        current = login.current_user
        if getattr(current, "is_authenticated", False):
            return current.get_id()
    user = g.get("user")
    if user is None:
        return None
    return getattr(user, "id", user)


READER: Reader[Request] = Reader(
    view=lambda request: EnvironView(request.environ),
    client=lambda request: request.environ.get("REMOTE_ADDR"),
    user=_user,
    arg=lambda request, name: (request.view_args or {}).get(name),
)


class _AppState:
    """What the extension keeps per app: the checked options and the rules per endpoint."""

    def __init__(self, app: Flask, limiter: RateLimiter) -> None:
        values = {name: app.config.get(name, default) for name, default in CONFIG.items()}
        values.update(limiter.overrides)
        if limiter.refusal_response is not None:
            values["RATEKEEPER_REFUSAL_RESPONSE"] = limiter.refusal_response
        self.config: Config[Request] = Config(
            {name.removeprefix("RATEKEEPER_"): value for name, value in values.items()},
            lambda name: f"RATEKEEPER_{name}",
            READER,
            logger,
        )
        self.plans: dict[str, tuple[Rule[Request], ...]] | None = None
        self.lock = threading.Lock()

    def plan(self, app: Flask) -> None:
        """Make every endpoint's rules (once, on the first request) and wrap the limited
        views; raise ValueError for a configuration naming an endpoint the app lacks."""
        with self.lock:
            if self.plans is not None:
                return
            plans = self._build(app)
            for endpoint, rules in plans.items():
                if rules:
                    view = app.view_functions[endpoint]
                    app.view_functions[endpoint] = self._wrap(app, view, rules)
            self.plans = plans

    def _endpoints(self, app: Flask, name: str, what: str) -> list[str]:
        """Return the endpoints a configuration entry names (an endpoint, or a URL rule)."""
        if name in app.view_functions:
            return [name]
        found = sorted({rule.endpoint for rule in app.url_map.iter_rules() if rule.rule == name})
        if not found:
            known = sorted(app.view_functions)
            raise ValueError(
                f"{what} names {name!r}, which is no endpoint or URL rule of the app; its "
                f"endpoints are {known}"
            )
        return found

    def _build(self, app: Flask) -> dict[str, tuple[Rule[Request], ...]]:
        config = self.config
        specs: dict[str, list[LimitSpec]] = {}
        exempt: set[str] = set()
        for name in config.exempt:
            if name == "static" and name not in app.view_functions:
                continue
            exempt.update(self._endpoints(app, name, "RATEKEEPER_EXEMPT"))
        for endpoint, view in app.view_functions.items():
            marks = getattr(view, _ATTRIBUTE, None)
            if marks == _EXEMPT:
                exempt.add(endpoint)
            elif marks:
                specs[endpoint] = list(marks)
        for name, spec in config.routes.items():
            for endpoint in self._endpoints(app, name, f"RATEKEEPER_ROUTES[{name!r}]"):
                specs.setdefault(endpoint, []).append(spec)
        costs: dict[str, Cost] = {}
        for name, cost in config.costs.items():
            for endpoint in self._endpoints(app, name, f"RATEKEEPER_COSTS[{name!r}]"):
                costs[endpoint] = cost
        plans: dict[str, tuple[Rule[Request], ...]] = {}
        for endpoint in app.view_functions:
            if endpoint in exempt:
                plans[endpoint] = ()
            elif endpoint in specs:
                plans[endpoint] = config.rules(policy_name(endpoint), specs[endpoint])
            else:
                plans[endpoint] = config.cost_rules(costs.get(endpoint, 1))
        return plans

    def _wrap(self, app: Flask, view: Any, rules: tuple[Rule[Request], ...]) -> Any:
        """Return ``view`` checking ``rules`` first: after every before_request hook (so that
        ``g.user`` is set), in the view's place, so a refusal is an ordinary response."""
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def limited_async_view(*args: Any, **kwargs: Any) -> Any:
                refused = self.apply(app, _current(), rules)
                if refused is not None:
                    return refused
                return await view(*args, **kwargs)

            return limited_async_view

        @functools.wraps(view)
        def limited_view(*args: Any, **kwargs: Any) -> Any:
            refused = self.apply(app, _current(), rules)
            if refused is not None:
                return refused
            return view(*args, **kwargs)

        return limited_view

    def apply(
        self, app: Flask, request: Request, rules: tuple[Rule[Request], ...]
    ) -> flask.Response | None:
        """Check a request against its rules; return the refusal, or None to go on."""
        refusal, granted = check(rules, request, request.method, request.path, self.config.max_wait)
        if refusal is not None:
            return _refuse(app, rules[0].gate, request, refusal)
        if granted and granted[0][0].gate.headers_on_accept:
            request.environ[_HEADERS_KEY] = accepted_headers(granted)
        return None


def _decorator(spec: LimitSpec) -> Callable[[F], F]:
    """Return a decorator marking a view with ``spec`` (read when the rules are made)."""

    def decorate(view: F) -> F:
        marks = getattr(view, _ATTRIBUTE, None)
        if marks == _EXEMPT:
            raise ValueError(f"{view.__name__} is exempt; it cannot also be limited")
        setattr(view, _ATTRIBUTE, [spec, *(marks or ())])
        return view

    return decorate


def _current() -> Request:
    return flask.request._get_current_object()  # type: ignore[attr-defined,no-any-return]


class RateLimiter:
    """Limit a Flask app's requests per endpoint and key; refuse with 429 and the headers.

    ``RateLimiter(app)`` or ``RateLimiter()`` then ``init_app(app)`` (several apps may share
    one). Options come from ``app.config`` (keyword arguments override them, named as the
    keys without ``RATEKEEPER_`` and in lower case):

    ``RATEKEEPER_STORAGE``
        ``"memory://"`` (default; per process) or a Redis URL (``redis://host:6379/0``,
        options as for ``ratekeeper.sync_limiter``): limits shared by every process.
    ``RATEKEEPER_DEFAULT``
        the limit of every endpoint without its own (``"100/minute"``, several at once
        ``"10/second;100/minute"``, or ``(rate, capacity)``): one bucket per key shared by
        those endpoints, named ``"default"`` (``"default.second"``... for several).
        None (default): only decorated endpoints are limited.
    ``RATEKEEPER_KEY``
        how requests are keyed: ``"ip"`` (default), ``"header:X-API-Key"`` (the value
        hashed, else the address), ``"user"`` (Flask-Login's ``current_user`` or
        ``g.user``, else the address), ``"arg:<name>"`` (a view argument), or a function
        of the Flask request returning a str (None: not limited).
    ``RATEKEEPER_TRUSTED_PROXIES``
        addresses or networks of your proxies: ``"ip"`` is then the first untrusted hop of
        ``X-Forwarded-For``. ``RATEKEEPER_KEY_SECRET``: the secret header values are hashed
        with (default ``$RATEKEEPER_KEY_SECRET``, else a built-in one).
    ``RATEKEEPER_HEADERS``
        ``False`` (default; IETF headers on refusals), ``True``, ``"ietf"``,
        ``"x-ratelimit"``, ``"both"`` or ``None``, as for the ASGI middleware.
    ``RATEKEEPER_MAX_WAIT``, ``RATEKEEPER_ON_ERROR``, ``RATEKEEPER_ON_KEY_ERROR``
        seconds a request may wait for tokens (0); ``"deny"`` (503) or ``"allow"`` when the
        backend fails; ``"shared"`` or ``"allow"`` when a key function fails.
    ``RATEKEEPER_ROUTES``
        limits per endpoint (or URL rule) without decorators: ``{"search": "10/minute",
        "login": {"rate": "5/minute", "key": "ip", "cost": 1, "name": "auth"}}``.
    ``RATEKEEPER_COSTS`` / ``RATEKEEPER_EXEMPT``
        tokens per endpoint on the default limit (0: exempt); endpoints never limited
        (default ``["static"]``).
    ``RATEKEEPER_ENABLED``
        False turns every limit off (tests).

    ``refusal_response=(request, refusal) -> response`` builds the answer to a refusal (a
    ``Response``, or anything a Flask view may return); default ``json_refusal``.
    Raises ValueError/TypeError at ``init_app`` for a bad option, and on the first request
    for an endpoint the configuration names that the app does not have.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        refusal_response: RefusalHook | None = None,
        **options: Any,
    ) -> None:
        self.refusal_response = refusal_response
        self.overrides: dict[str, Any] = {}
        for name, value in options.items():
            key = "RATEKEEPER_" + name.upper()
            if key not in CONFIG:
                known = ", ".join(k.removeprefix("RATEKEEPER_").lower() for k in CONFIG)
                raise TypeError(f"RateLimiter() got an unknown option {name!r}; it takes {known}")
            self.overrides[key] = value
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``app.config``, check it, and limit the app's requests from now on.

        Raises ValueError/TypeError naming a bad option; ImportError for a Redis storage
        without the redis client.
        """
        state = _AppState(app, self)
        app.extensions["ratekeeper"] = state
        if not state.config.enabled:
            return
        default_rules = state.config.default_rules

        def before() -> Any:
            if state.plans is None:
                state.plan(app)  # wraps the limited views: their limits apply there
            request = _current()
            if request.endpoint is None and default_rules:
                # No route matched (404, 405): the default limit still counts the request.
                return state.apply(app, request, default_rules)
            return None

        def after(response: flask.Response) -> flask.Response:
            extra = flask.request.environ.pop(_HEADERS_KEY, None)
            if extra:
                response.headers.extend(extra)
            return response

        app.before_request(before)
        if check_header_mode(state.config.options["headers"])[1]:
            app.after_request(after)  # no headers on accepted responses: no hook on each

    def route_limit(
        self,
        rate: str | tuple[str, int] | Limit,
        *,
        capacity: int | None = None,
        cost: Cost | Callable[[Request], Cost] = 1,
        key: KeySpec | None = None,
    ) -> Callable[[F], F]:
        """Return a decorator giving a view a limit of its own, instead of the default.

        ``@limiter.route_limit("10/minute")``: counted per endpoint (its URL rule, whatever
        the path) and key; the policy name in the headers is the endpoint's. ``rate``:
        ``"10/minute"`` (bursts of 10; ``capacity`` for another burst size), several that
        all apply ``"10/second;100/minute"`` (policies ``<name>.second``, ``<name>.minute``),
        ``("10/minute", 20)`` or a ``Limit``. ``cost``: tokens per request (an int, or a
        function of the request). ``key``: as ``RATEKEEPER_KEY`` (default: that one).
        Several limits on one view all apply, all or nothing. Works above or below
        ``@app.route``, and in a ``MethodView``'s ``decorators``. Raises ValueError/TypeError
        at once for a bad rate, capacity, cost or key.
        """
        return _decorator(
            LimitSpec(
                rate, capacity=capacity, cost=cost, key=key, what="route_limit()", reader=READER
            )
        )

    def shared_limit(
        self,
        name: str,
        rate: str | tuple[str, int] | Limit,
        *,
        capacity: int | None = None,
        cost: Cost | Callable[[Request], Cost] = 1,
        key: KeySpec | None = None,
    ) -> Callable[[F], F]:
        """Return a decorator giving views one limit they share, named ``name``.

        ``@limiter.shared_limit("auth", "5/minute")`` on a login and a password-reset view:
        five requests a minute per key across both. Every use of a name must give the same
        rate. Otherwise as ``route_limit``; raises ValueError/TypeError also for a bad name.
        """
        return _decorator(
            LimitSpec(
                rate,
                capacity=capacity,
                cost=cost,
                key=key,
                name=name,
                what="shared_limit()",
                reader=READER,
            )
        )

    def exempt(self, view: F) -> F:
        """Mark a view as never limited (not even by ``RATEKEEPER_DEFAULT``); return it."""
        if getattr(view, _ATTRIBUTE, None):
            raise ValueError(f"{view.__name__} is limited; it cannot also be exempt")
        setattr(view, _ATTRIBUTE, _EXEMPT)
        return view

    def __repr__(self) -> str:
        return f"<RateLimiter options={sorted(self.overrides)}>"


def _refuse(app: Flask, gate: Gate, request: Request, refusal: Refusal) -> flask.Response:
    """Turn a refusal into a Flask response: the hook's, with the refusal's headers added."""
    answer = gate.respond(request, refusal)
    if isinstance(answer, Response):
        return flask.Response(answer.body, answer.status, list(answer.headers))
    try:
        response = app.make_response(answer)
    except Exception as exc:
        gate.log(
            logging.ERROR,
            "refusal_response",
            f"ratekeeper: the refusal_response hook returned {answer!r:.60}: {exc!r}; "
            "sending the default",
            exc,
        )
        default = json_refusal(request, refusal)
        return flask.Response(default.body, default.status, list(default.headers))
    for name, value in refusal.headers:
        if name not in response.headers:
            response.headers[name] = value
    return response
