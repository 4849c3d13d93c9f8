"""Django middleware and view decorator: per-view limits per key, configured in settings.

::

    # settings.py
    MIDDLEWARE = [..., "ratekeeper.integrations.django.RateLimitMiddleware"]
    RATEKEEPER = {"DEFAULT": "100/minute", "ROUTES": {"api/search/": "10/minute"}}

    # views.py
    from ratekeeper.integrations.django import route_limit

    @route_limit("5/minute", key="user")
    def export(request): ...

A limit applies per URL pattern (its route, ``"items/<int:pk>/"``, whatever the concrete
path) or per decorated view, one bucket per key. The middleware applies ``DEFAULT`` and
``ROUTES`` to every view that is not decorated; ``route_limit`` and ``shared_limit`` work
with or without it, on function views and class-based views. The state lives in memory or
on Redis (``"STORAGE": "redis://..."``) through the same limiters as everywhere in
ratekeeper, and the keys, costs, headers and refusals are those of the other front doors.
A key function that raises is logged on ``ratekeeper.django`` and the request is limited
under one shared key (or let through); a backend that is down gives ``503`` with
``Retry-After: 1`` (or lets requests through): never a 500. Bad settings raise
``ImproperlyConfigured`` when the middleware is loaded (at start-up), naming the setting
and what is allowed.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

try:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.signals import setting_changed
    from django.http import HttpRequest, HttpResponse, HttpResponseBase
    from django.urls import URLPattern, URLResolver, get_resolver
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.integrations.django needs django: pip install 'ratekeeper[django]'",
        name="django",
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
from ._web import Cost, Gate, Refusal, Response, json_refusal
from .wsgi import EnvironView

__all__ = ["DEFAULTS", "RateLimitMiddleware", "exempt", "route_limit", "shared_limit"]

logger = logging.getLogger("ratekeeper.django")

V = TypeVar("V")
KeySpec = str | Callable[[HttpRequest], "str | None"]

_ATTRIBUTE = "ratekeeper_limits"
_EXEMPT = "exempt"
_HEADERS_KEY = "_ratekeeper_headers"


def _user(request: HttpRequest) -> object:
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


def _arg(request: HttpRequest, name: str) -> object:
    match = request.resolver_match
    return None if match is None else match.kwargs.get(name)


READER: Reader[HttpRequest] = Reader(
    view=lambda request: EnvironView(request.META),
    client=lambda request: request.META.get("REMOTE_ADDR"),
    user=_user,
    arg=_arg,
)


def _label(name: str) -> str:
    return f"settings.RATEKEEPER[{name!r}]"


class _Settings:
    """``settings.RATEKEEPER`` checked, with the rules made from it per URL pattern."""

    def __init__(self) -> None:
        given = getattr(settings, "RATEKEEPER", {})
        if not isinstance(given, Mapping):
            raise ImproperlyConfigured(f"settings.RATEKEEPER must be a dict, not {given!r}")
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"settings.RATEKEEPER has unknown keys {unknown}; it takes {sorted(DEFAULTS)}"
            )
        try:
            self.config: Config[HttpRequest] = Config(given, _label, READER, logger)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(str(exc)) from None
        self.plans: dict[str, tuple[Rule[HttpRequest], ...]] | None = None

    def view_rules(self, view: Any, specs: list[LimitSpec]) -> tuple[Rule[HttpRequest], ...]:
        """Return the rules of a decorated view (named after it unless ``name=`` is given)."""
        base = policy_name(f"{view.__module__}.{view.__qualname__}")
        try:
            return self.config.rules(base, specs)
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from None

    def plan(self) -> dict[str, tuple[Rule[HttpRequest], ...]]:
        """Return the rules per URL pattern (route) from ROUTES, COSTS and EXEMPT.

        Raises ImproperlyConfigured for a route or URL name the URLconf does not have, or a
        name given two different limits.
        """
        if self.plans is None:
            try:
                self.plans = self._build()
            except ValueError as exc:
                raise ImproperlyConfigured(str(exc)) from None
        return self.plans

    def _build(self) -> dict[str, tuple[Rule[HttpRequest], ...]]:
        config = self.config
        patterns = list(_patterns(get_resolver().url_patterns))
        known = {route for route, _ in patterns} | {name for _, name in patterns if name}
        given: tuple[tuple[str, Iterable[str]], ...] = (
            ("ROUTES", config.routes),
            ("COSTS", config.costs),
            ("EXEMPT", config.exempt),
        )
        for what, entries in given:
            unknown = sorted(set(entries) - known)
            if unknown:
                raise ValueError(
                    f"{_label(what)} names {unknown}, which are no URL pattern (route) or URL "
                    f"name of the URLconf; its routes are {sorted(r for r, _ in patterns)}"
                )
        plans: dict[str, tuple[Rule[HttpRequest], ...]] = {}
        for route, name in patterns:
            names = (route, name) if name else (route,)
            if any(n in config.exempt for n in names):
                plans[route] = ()
                continue
            specs = [config.routes[n] for n in names if n in config.routes]
            if specs:
                plans[route] = config.rules(policy_name(name or route), specs)
                continue
            cost = next((config.costs[n] for n in names if n in config.costs), 1)
            plans[route] = config.cost_rules(cost)
        return plans

    def apply(
        self, request: HttpRequest, rules: tuple[Rule[HttpRequest], ...]
    ) -> HttpResponseBase | None:
        """Check a request against its rules; return the refusal, or None to go on."""
        path = request.path_info or "/"
        max_wait = self.config.max_wait
        refusal, granted = check(rules, request, request.method or "GET", path, max_wait)
        if refusal is not None:
            return _refuse(rules[0].gate, request, refusal)
        if granted and granted[0][0].gate.headers_on_accept:
            headers = getattr(request, _HEADERS_KEY, None) or []
            setattr(request, _HEADERS_KEY, headers + accepted_headers(granted))
        return None


def _patterns(
    patterns: Iterable[Any], prefix: str = "", namespace: str = ""
) -> Iterator[tuple[str, str | None]]:
    """Yield (route, URL name) of every URL pattern, as ``resolver_match.route`` spells it."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = namespace + (f"{pattern.namespace}:" if pattern.namespace else "")
            yield from _patterns(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}{pattern.name}" if pattern.name else None
            yield prefix + str(pattern.pattern), name


_state: _Settings | None = None
_state_lock = threading.Lock()


def _settings() -> _Settings:
    """Return the checked settings (made once; again after a test changes RATEKEEPER)."""
    global _state
    state = _state
    if state is None:
        with _state_lock:
            if _state is None:
                _state = _Settings()
            state = _state
    return state


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _state
    if setting in ("RATEKEEPER", "ROOT_URLCONF"):
        with _state_lock:
            if _state is not None:
                _state.config.close()
            _state = None


setting_changed.connect(_reset)


def _refuse(gate: Gate, request: HttpRequest, refusal: Refusal) -> HttpResponseBase:
    """Turn a refusal into a Django response: the hook's, with the refusal's headers added."""
    answer = gate.respond(request, refusal)
    if not isinstance(answer, (Response, HttpResponseBase)):
        gate.log(
            logging.ERROR,
            "refusal_response",
            f"ratekeeper: the refusal_response hook returned {answer!r:.60}, not a response; "
            "sending the default",
            None,
        )
        answer = json_refusal(request, refusal)
    if isinstance(answer, Response):
        return HttpResponse(answer.body, status=answer.status, headers=dict(answer.headers))
    for name, value in refusal.headers:
        if not answer.has_header(name):
            answer[name] = value
    return answer


def _add_headers(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    for name, value in getattr(request, _HEADERS_KEY, None) or ():
        if not response.has_header(name):
            response[name] = value
    return response


# -- the middleware ------------------------------------------------------------------------------


class RateLimitMiddleware:
    """Limit every view per URL pattern and key, from ``settings.RATEKEEPER``.

    Put it after ``AuthenticationMiddleware`` (so that ``"user"`` keys see the user). The
    settings (all optional):

    ``STORAGE``
        ``"memory://"`` (default; per process) or a Redis URL (``"redis://host:6379/0"``,
        options as for ``ratekeeper.sync_limiter``): limits shared by every process.
    ``DEFAULT``
        the limit of every view without its own (``"100/minute"``, several at once
        ``"10/second;100/minute"``, or ``(rate, capacity)``): one bucket per key shared by
        those views, named ``"default"`` (``"default.second"``... for several). None
        (default): only ``ROUTES`` and decorated views are limited.
    ``KEY``
        ``"ip"`` (default), ``"header:X-API-Key"`` (the value hashed, else the address),
        ``"user"`` (the signed-in user's pk, else the address), ``"arg:<name>"`` (a URL
        keyword argument), or a function of the request (or its dotted path).
    ``TRUSTED_PROXIES`` / ``KEY_SECRET``
        your proxies' addresses or networks (``"ip"`` is then the first untrusted hop of
        ``X-Forwarded-For``); the secret header values are hashed with.
    ``HEADERS``
        ``False`` (default; IETF headers on refusals), ``True``, ``"ietf"``,
        ``"x-ratelimit"``, ``"both"`` or ``None``, as for the ASGI middleware.
    ``MAX_WAIT`` / ``ON_ERROR`` / ``ON_KEY_ERROR``
        seconds a request may wait for tokens (0); ``"deny"`` (503) or ``"allow"`` when the
        backend fails; ``"shared"`` or ``"allow"`` when a key function fails.
    ``ROUTES``
        limits per URL pattern, by route (``"items/<int:pk>/"``, as in ``urls.py``, with
        the prefixes of ``include``) or URL name (``"shop:item"``): ``"10/minute"`` or
        ``{"rate": ..., "key": ..., "cost": ..., "name": ...}``; the same ``name`` shares
        one limit.
    ``COSTS`` / ``EXEMPT``
        tokens per route or URL name on the default limit (0: exempt); routes never
        limited by the middleware.
    ``REFUSAL_RESPONSE``
        ``(request, refusal) -> response`` (or its dotted path): a ``Response`` or any
        ``HttpResponse``; default ``json_refusal``.
    ``ENABLED``
        False turns the middleware and the decorators off (tests).

    Raises ImproperlyConfigured when it is loaded (at start-up) for a bad setting, naming
    it, or for a route or URL name the URLconf does not have.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        self.settings = _settings()
        if self.settings.config.enabled:
            self.settings.plan()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if hasattr(request, _HEADERS_KEY):
            _add_headers(request, response)
        return response

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponseBase | None:
        state = self.settings
        if not state.config.enabled or getattr(view, _ATTRIBUTE, None) is not None:
            return None  # decorated (or exempt): the decorator decides
        view_class = getattr(view, "view_class", None)
        if view_class is not None and getattr(view_class, _ATTRIBUTE, None) is not None:
            return None
        match = request.resolver_match
        plans = state.plans if state.plans is not None else state.plan()
        default = state.config.default_rules
        rules = default if match is None else plans.get(match.route, default)
        if not rules:
            return None
        return state.apply(request, rules)


# -- the decorators ------------------------------------------------------------------------------


def route_limit(
    rate: str | tuple[str, int] | Limit,
    *,
    capacity: int | None = None,
    cost: Cost | Callable[[HttpRequest], Cost] = 1,
    key: KeySpec | None = None,
) -> Callable[[V], V]:
    """Return a decorator giving a view a limit of its own (instead of the middleware's).

    ``@route_limit("10/minute")``: counted per view and key; the policy name in the headers
    is the view's dotted name. ``rate``: ``"10/minute"`` (bursts of 10; ``capacity`` for
    another burst size), several that all apply ``"10/second;100/minute"`` (policies
    ``<name>.second``, ``<name>.minute``), ``("10/minute", 20)`` or a ``Limit``.
    ``cost``: tokens per request (an int, or a function of the request). ``key``: as
    ``KEY`` in the settings (default: that one). Several limits on one view all apply, all
    or nothing. Decorates a function view, a class-based view (its ``dispatch``), or a
    method through ``method_decorator``.
    Works without the middleware; takes the storage and options from
    ``settings.RATEKEEPER``. Raises ValueError/TypeError at once for a bad rate, capacity,
    cost or key.
    """
    return _decorator(
        LimitSpec(rate, capacity=capacity, cost=cost, key=key, what="route_limit()", reader=READER)
    )


def shared_limit(
    name: str,
    rate: str | tuple[str, int] | Limit,
    *,
    capacity: int | None = None,
    cost: Cost | Callable[[HttpRequest], Cost] = 1,
    key: KeySpec | None = None,
) -> Callable[[V], V]:
    """Return a decorator giving views one limit they share, named ``name``.

    ``@shared_limit("auth", "5/minute")`` on a login and a password-reset view: five
    requests a minute per key across both (and across ``ROUTES`` entries of that name).
    Every use of a name must give the same rate. Otherwise as ``route_limit``; raises
    ValueError/TypeError also for a bad name.
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


def _decorator(spec: LimitSpec) -> Callable[[V], V]:
    def decorate(view: V) -> V:
        if inspect.isclass(view):
            view.dispatch = _limit_view(view.dispatch, spec, view, method=True)  # type: ignore[attr-defined]
            _mark(view, spec)
            return view
        wrapped: V = _limit_view(view, spec, view)
        return wrapped

    return decorate


def _mark(target: Any, spec: LimitSpec) -> None:
    marks = getattr(target, _ATTRIBUTE, None)
    if marks == _EXEMPT:
        raise ValueError(f"{target.__qualname__} is exempt; it cannot also be limited")
    setattr(target, _ATTRIBUTE, [spec, *(marks or ())])


def _limit_view(view: Any, spec: LimitSpec, owner: Any, method: bool = False) -> Any:
    """Return ``view`` checking its limits first (the limits are made on its first call)."""
    specs = getattr(view, "_ratekeeper_specs", None)
    if specs is not None:  # stacked: one wrapper holds every limit
        specs.insert(0, spec)
        return view
    specs = [spec]
    # The rules are made on the first call, from the settings of the time (again if a test
    # changes them): (the settings, their rules for this view).
    made: list[Any] = [None, ()]

    def checked(request: HttpRequest) -> HttpResponseBase | None:
        state = _settings()
        if not state.config.enabled:
            return None
        if made[0] is not state:
            made[1] = state.view_rules(owner, specs)
            made[0] = state
        rules: tuple[Rule[HttpRequest], ...] = made[1]
        return state.apply(request, rules)

    if method:

        @functools.wraps(view)
        def dispatch(self: Any, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            refused = checked(request)
            if refused is not None:
                return refused
            response = view(self, request, *args, **kwargs)
            return _add_headers(request, response) if hasattr(request, _HEADERS_KEY) else response

        wrapper: Any = dispatch
    else:

        @functools.wraps(view)
        def limited_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            refused = checked(request)
            if refused is not None:
                return refused
            response = view(request, *args, **kwargs)
            return _add_headers(request, response) if hasattr(request, _HEADERS_KEY) else response

        wrapper = limited_view
    wrapper._ratekeeper_specs = specs
    setattr(wrapper, _ATTRIBUTE, specs)
    return wrapper


def exempt(view: V) -> V:
    """Mark a view (function or class) as never limited by the middleware; return it."""
    if getattr(view, _ATTRIBUTE, None):
        raise ValueError(f"{getattr(view, '__qualname__', view)!r} is limited; it cannot be exempt")
    setattr(view, _ATTRIBUTE, _EXEMPT)
    return view
