"""Per-route limits for the blocking front doors (Flask, Django): rules, storage, key specs.

A request is checked against its *rules*: each rule is one ``SyncKeyedLimiter`` and the
``_web.Gate`` that says how a request is keyed and costed, and what headers and refusal it
gets. ``check`` takes each rule's tokens in turn; a refusal gives back the tokens the earlier
rules took, so a refused request costs nothing. ``Storage`` makes the rules' limiters from a
storage URL (``memory://``, ``redis://...``); ``key_function`` turns the configuration's key
specs (``"ip"``, ``"header:X-API-Key"``, ``"user"``, ``"arg:item_id"``) into functions.

No framework is imported here; the framework modules adapt their requests and responses.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from .._config import _cluster_client, _parse, _redis_backend
from .._gcra import _NAME_RE, Limit
from .._keyed import SyncKeyedLimiter, Verdict
from ._web import (
    Cost,
    Gate,
    HeaderKey,
    Refusal,
    RequestView,
    TrustedProxies,
    check_cost,
    check_header_mode,
    check_max_wait,
)

R = TypeVar("R")
"""The request a front door passes to key and cost functions (a Flask or Django request)."""

RULE_NAME_HELP = "1-64 letters, digits or '_.:-'"


def parse_limits(value: object, what: str) -> tuple[Limit, ...]:
    """Return the limits of ``"5/minute"``, ``"10/second;100/minute"``, ``("5/minute", 10)``
    or a Limit; raise naming ``what``.

    A string may hold several rates (``;``, ``,`` or ``|`` between them, as
    ``Limit.parse_many`` reads them): a request must fit in all of them. Raises ValueError
    for a bad rate string or capacity, TypeError for another kind of value.
    """
    if isinstance(value, Limit):
        return (value,)
    if isinstance(value, (str, tuple)):
        try:
            if isinstance(value, str):
                return tuple(Limit.parse_many(value).values())
            return (Limit(*value),)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: {exc}") from None
    raise TypeError(
        f"{what} must be a rate such as '5/minute' (several: '10/second;100/minute'), a "
        f"(rate, capacity) pair or a Limit, not {value!r}"
    )


def named(name: str, limits: Sequence[Limit]) -> dict[str, Limit]:
    """Return a rule's limits by policy name: ``name`` for one, ``name.<period>`` for several."""
    if len(limits) == 1:
        return {name: limits[0]}
    periods = [limit.rate.period_name for limit in limits]
    return {f"{name[: 63 - len(p)]}.{p}": limit for p, limit in zip(periods, limits, strict=True)}


class Storage:
    """Make the limiters of one app from a storage URL: ``memory://`` or ``redis://...``.

    Each rule gets its own ``SyncKeyedLimiter`` with its limits named after the rule; on Redis
    they share one client and a rule's buckets are ``prefix + "{" + key + "}:" + rule name``,
    so every process using the same server and prefix shares each rule's limits. The URL's
    options (``prefix``, ``timeout``, ``on_failure``, ``fallback_share``, ``retry_interval``)
    are those of ``ratekeeper.sync_limiter``. Raises ValueError for a bad URL, ImportError
    when the redis client is missing.
    """

    def __init__(self, url: str = "memory://") -> None:
        parsed = _parse(url)
        self.scheme = parsed.scheme
        self._options: dict[str, Any] = dict(parsed.options)
        self._client: Any = None
        self._limiters: list[SyncKeyedLimiter] = []
        if parsed.scheme != "memory":
            assert parsed.url is not None
            timeout = float(self._options.get("timeout", 0.5))
            if parsed.cluster:
                self._client = _cluster_client(parsed.url, timeout, True)
            else:
                self._client = _redis_backend()._sync._resolve_client(parsed.url, timeout)[0]

    def limiter(self, name: str, limits: Mapping[str, Limit]) -> SyncKeyedLimiter:
        """Return a new limiter for one rule: ``limits`` per key, under the name ``name``."""
        if self._client is None:
            made = SyncKeyedLimiter(limits=limits, name=name)
        else:
            backend = _redis_backend().SyncRedisKeyedBackend(self._client, limits, **self._options)
            made = SyncKeyedLimiter(backend=backend, name=name)
        self._limiters.append(made)
        return made

    def close(self) -> None:
        """Close the limiters and the Redis client. Idempotent."""
        for made in self._limiters:
            made.close()
        if self._client is not None:
            self._client.close()

    def __repr__(self) -> str:
        return f"<Storage {self.scheme}:// limiters={len(self._limiters)}>"


class Rule(Generic[R]):
    """One limiter applied to some requests, with the Gate that keys and costs them."""

    __slots__ = ("gate", "limiter", "name")

    def __init__(self, limiter: SyncKeyedLimiter, gate: Gate) -> None:
        self.limiter = limiter
        self.gate = gate
        self.name = ", ".join(limiter.limits)

    def __repr__(self) -> str:
        return f"<Rule {self.name} {self.limiter!r}>"


Granted = list[tuple[Rule[Any], str, Cost, "Verdict | None"]]
"""What a request was granted: (rule, key, cost, its Verdict, or None when no headers need it)."""


def check(
    rules: Sequence[Rule[R]], request: R, method: str, path: str, max_wait: float
) -> tuple[Refusal | None, Granted]:
    """Take each rule's tokens for ``request``; return (refusal or None, what was granted).

    A refusal (429, or 503 when a limiter or cost function failed and ``on_error="deny"``)
    gives back what the earlier rules took. Never raises for a key function, a cost
    function or a limiter that fails: each rule's Gate logs it and decides.
    """
    granted: Granted = []
    for rule in rules:
        gate = rule.gate
        ticket = gate.ticket(request, method, path)
        if ticket is None:
            continue  # exempt, or not keyed
        if isinstance(ticket, Refusal):
            give_back(granted, gate)
            return ticket, []
        key, cost = ticket
        try:
            # With no headers on accepted responses, a grant needs no Verdict: the limiter's
            # bool is enough (a refusal asks again, for the Verdict that says how long).
            if not max_wait and not gate.headers_on_accept and rule.limiter.try_acquire(key, cost):
                granted.append((rule, key, cost, None))
                continue
            verdict = rule.limiter.admit(key, cost, max_wait=max_wait)
        except Exception as exc:
            refusal = gate.failed("the limiter", exc, method, path)
            if refusal is None:
                continue
            give_back(granted, gate)
            return refusal, []
        if not verdict.granted:
            give_back(granted, gate)
            return gate.refusal(verdict), []
        granted.append((rule, key, cost, verdict))
    return None, granted


def give_back(granted: Granted, gate: Gate) -> None:
    """Refund what a refused request's earlier rules took (a failure is logged, not raised)."""
    for rule, key, cost, _ in granted:
        try:
            rule.limiter.refund(key, cost)
        except Exception as exc:
            gate.log(logging.WARNING, "refund", f"ratekeeper: a refund failed: {exc!r}", exc)


def accepted_headers(granted: Granted) -> list[tuple[str, str]]:
    """Return the headers of an accepted request: each rule's, one line per header name.

    ``RateLimit`` and ``RateLimit-Policy`` list every rule's policies (their names are
    unique); ``X-RateLimit-*`` are those of the rule with the fewest tokens left.
    """
    joined: dict[str, list[str]] = {}
    tightest: tuple[int, list[tuple[str, str]]] | None = None
    for rule, _, _, verdict in granted:
        if verdict is None:
            continue
        headers = rule.gate.accepted_headers(verdict)
        x_headers = []
        for name, value in headers:
            if name.startswith("x-"):
                x_headers.append((name, value))
            else:
                joined.setdefault(name, []).append(value)
        if x_headers:
            remaining = int(dict(x_headers)["x-ratelimit-remaining"])
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, x_headers)
    merged = [(name, ", ".join(values)) for name, values in joined.items()]
    return merged + (tightest[1] if tightest else [])


# -- key specs -------------------------------------------------------------------------------------


KEY_SPECS = "'ip', 'header:<name>', 'user', 'arg:<name>' or a function of the request"


class Reader(Generic[R]):
    """How a framework's request is read by the key specs: its environ, user and URL args.

    ``view(request)``: the request as a ``RequestView``; ``client(request)``: the peer's
    address (``REMOTE_ADDR``) or None, read directly (the default key, on every request);
    ``user(request)``: the signed-in user's id or None; ``arg(request, name)``: a URL
    parameter or None.
    """

    __slots__ = ("arg", "client", "user", "view")

    def __init__(
        self,
        view: Callable[[R], RequestView],
        client: Callable[[R], object],
        user: Callable[[R], object],
        arg: Callable[[R, str], object],
    ) -> None:
        self.view = view
        self.client = client
        self.user = user
        self.arg = arg


def key_function(
    spec: object,
    reader: Reader[R],
    *,
    trusted: Collection[str] = (),
    secret: str | bytes | None = None,
    what: str = "key",
) -> Callable[[R], str | None]:
    """Return the key function a spec names; raise ValueError/TypeError for a bad spec.

    ``"ip"``: the client's address (behind ``trusted`` proxies, the first untrusted hop of
    ``X-Forwarded-For``); ``"header:<name>"``: the header's value, hashed (HMAC under
    ``secret``), else the address; ``"user"``: ``"user:<id>"`` of the signed-in user, else
    the address; ``"arg:<name>"``: ``"<name>:<value>"`` of a URL parameter; a callable is
    used as it is; a str with dots and no colon is a function's dotted path.
    """
    if isinstance(spec, str) and "." in spec and ":" not in spec:
        spec = imported(spec, what)
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{what} must be {KEY_SPECS}, not {spec!r}")
    view, client, user, arg = reader.view, reader.client, reader.user, reader.arg
    proxies = TrustedProxies(trusted) if trusted else None

    def address(request: R) -> str:
        peer = client(request)
        if not peer:
            raise LookupError("the request has no client address (a Unix socket?)")
        if proxies is None:
            return str(peer)
        return proxies.client(str(peer), view(request).header("x-forwarded-for"))

    kind, _, name = spec.partition(":")
    if spec == "ip":
        return address
    if kind == "header" and name:
        header = HeaderKey(name, secret=secret)

        def by_header(request: R) -> str:
            found = header.of(view(request))
            return found if found is not None else address(request)

        return by_header
    if spec == "user":

        def by_user(request: R) -> str:
            found = user(request)
            return f"user:{found}" if found is not None else address(request)

        return by_user
    if kind == "arg" and name:
        prefix = f"{name}:"

        def by_arg(request: R) -> str:
            value = arg(request, name)
            if value is None:
                raise LookupError(f"the route has no parameter {name!r}")
            return prefix + str(value)

        return by_arg
    raise ValueError(f"{what} must be {KEY_SPECS}, got {spec!r}")


def imported(path: str, what: str) -> Any:
    """Return the object a dotted path names (``"myapp.limits.tenant_key"``); raise ValueError."""
    module, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"{what}: cannot import {path!r}: {exc}") from None


def policy_name(text: str) -> str:
    """Return a valid policy name for a view or route: readable, with a digest if long."""
    name = "".join(c if c.isalnum() or c in "_.:-" else "_" for c in text).strip("_") or "route"
    if len(name) > 64:
        name = name[:55] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name


# -- configuration ---------------------------------------------------------------------------------


class LimitSpec:
    """One limit asked for by a view's decorator or by a ``ROUTES`` entry, checked.

    Raises ValueError/TypeError naming ``what`` for a bad rate, key, cost or name.
    """

    __slots__ = ("cost", "key", "limits", "name")

    def __init__(
        self,
        rate: object,
        *,
        capacity: object = None,
        key: object = None,
        cost: object = 1,
        name: object = None,
        what: str,
        reader: Reader[Any],
    ) -> None:
        if capacity is not None:
            if not isinstance(rate, str):
                raise TypeError(f"{what}: capacity goes with a rate string, not {rate!r}")
            if len(parse_limits(rate, what)) > 1:
                raise TypeError(f"{what}: capacity goes with one rate, not {rate!r}")
            rate = (rate, capacity)
        self.limits = parse_limits(rate, what)
        if key is not None:
            key_function(key, reader, what=f"{what}: key")  # a bad spec fails now
        self.key = key
        self.cost: Any = (
            cost
            if callable(cost)
            else check_cost(cost, named("limit", self.limits), f"{what}: cost")
        )
        if name is not None and (not isinstance(name, str) or not _NAME_RE.fullmatch(name)):
            raise ValueError(f"{what}: name must be {RULE_NAME_HELP}, got {name!r}")
        self.name: str | None = name

    @classmethod
    def entry(cls, entry: object, what: str, reader: Reader[Any]) -> LimitSpec:
        """Return the spec of a ``ROUTES`` entry: a rate, or ``{"rate", "key", "cost", "name"}``."""
        if not isinstance(entry, Mapping):
            return cls(entry, what=what, reader=reader)
        unknown = set(entry) - {"rate", "capacity", "key", "cost", "name"}
        if unknown or "rate" not in entry:
            raise ValueError(
                f"{what} takes 'rate' and optionally 'capacity', 'key', 'cost', 'name'; got "
                f"{sorted(entry)}"
            )
        return cls(
            entry["rate"],
            capacity=entry.get("capacity"),
            key=entry.get("key"),
            cost=entry.get("cost", 1),
            name=entry.get("name"),
            what=what,
            reader=reader,
        )


DEFAULTS: dict[str, object] = {
    "ENABLED": True,
    "STORAGE": "memory://",
    "DEFAULT": None,
    "KEY": "ip",
    "TRUSTED_PROXIES": (),
    "KEY_SECRET": None,
    "HEADERS": False,
    "MAX_WAIT": 0.0,
    "ON_ERROR": "deny",
    "ON_KEY_ERROR": "shared",
    "ROUTES": {},
    "COSTS": {},
    "EXEMPT": (),
    "REFUSAL_RESPONSE": None,
}
"""The options of the Flask and Django front doors and their defaults (``RATEKEEPER_<NAME>``
in Flask's ``app.config``, ``RATEKEEPER = {"<NAME>": ...}`` in Django's settings)."""


class Config(Generic[R]):
    """A front door's options, checked, and the rules made from them (one limiter per name).

    ``values`` maps the names of ``DEFAULTS`` to values; ``label(name)`` spells an option as
    its framework does, for messages. Raises ValueError/TypeError naming the option for a
    bad value, ImportError for a Redis storage without the redis client.
    """

    def __init__(
        self,
        values: Mapping[str, object],
        label: Callable[[str], str],
        reader: Reader[R],
        logger: logging.Logger,
    ) -> None:
        config = {**DEFAULTS, **values}
        self.label = label
        self.reader = reader
        self.enabled = bool(config["ENABLED"])
        try:
            self.max_wait = check_max_wait(config["MAX_WAIT"])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{label('MAX_WAIT')}: {exc}") from None
        self.trusted = tuple(_strings(config["TRUSTED_PROXIES"], label("TRUSTED_PROXIES")))
        self.secret: Any = config["KEY_SECRET"]
        self.key = self.key_function(config["KEY"], label("KEY"))
        hook = config["REFUSAL_RESPONSE"]
        if isinstance(hook, str):
            hook = imported(hook, label("REFUSAL_RESPONSE"))
        self.options: dict[str, Any] = {
            "headers": config["HEADERS"],
            "on_error": config["ON_ERROR"],
            "on_key_error": config["ON_KEY_ERROR"],
            "refusal_response": hook,
            "logger": logger,
        }
        default = config["DEFAULT"]
        self.default = None if default is None else parse_limits(default, label("DEFAULT"))
        self.routes = {
            str(route): LimitSpec.entry(entry, f"{label('ROUTES')}[{route!r}]", reader)
            for route, entry in _mapping(config["ROUTES"], label("ROUTES")).items()
        }
        self.costs: dict[str, Cost] = {}
        for route, cost in _mapping(config["COSTS"], label("COSTS")).items():
            what = f"{label('COSTS')}[{route!r}]"
            if self.default is None:
                raise ValueError(f"{what}: costs apply to {label('DEFAULT')}, which is not set")
            self.costs[str(route)] = check_cost(cost, named("default", self.default), what)
        self.exempt = set(_strings(config["EXEMPT"], label("EXEMPT")))
        for name, allowed in (
            ("ON_ERROR", ("deny", "allow")),
            ("ON_KEY_ERROR", ("shared", "allow")),
        ):
            if config[name] not in allowed:
                raise ValueError(
                    f"{label(name)} must be {' or '.join(map(repr, allowed))}, got {config[name]!r}"
                )
        if hook is not None and not callable(hook):
            raise TypeError(
                f"{label('REFUSAL_RESPONSE')} must be a function (request, refusal), not {hook!r}"
            )
        try:
            check_header_mode(config["HEADERS"])
        except ValueError as exc:
            raise ValueError(f"{label('HEADERS')}: {exc}") from None
        self.storage = Storage(_string(config["STORAGE"], label("STORAGE")))
        self._shared: dict[str, tuple[tuple[Limit, ...], SyncKeyedLimiter]] = {}
        self._lock = threading.Lock()
        self.default_rules: tuple[Rule[R], ...] = ()
        if self.default is not None:
            self.default_rules = (self.rule("default", self.default, None, 1),)

    def key_function(self, spec: object, what: str = "key") -> Callable[[R], str | None]:
        """Return the key function of a spec, with this configuration's proxies and secret."""
        return key_function(spec, self.reader, trusted=self.trusted, secret=self.secret, what=what)

    def rule(self, name: str, limits: tuple[Limit, ...], key: object, cost: object) -> Rule[R]:
        """Return a rule; rules of one name share one limiter, and must give it one rate.

        Raises ValueError when ``name`` was given other limits before.
        """
        by_name = named(name, limits)
        with self._lock:
            if name in self._shared:
                known, limiter = self._shared[name]
                if known != limits:
                    raise ValueError(
                        f"the limit named {name!r} is given twice with different rates: "
                        f"{';'.join(map(str, known))} and {';'.join(map(str, limits))}; a "
                        "shared limit has one rate"
                    )
            else:
                limiter = self.storage.limiter(name, by_name)
                self._shared[name] = (limits, limiter)
        keyed = self.key if key is None else self.key_function(key)
        costs = {"costs": cost} if callable(cost) else {"default_cost": cost}
        return Rule(limiter, Gate(by_name, key=keyed, **costs, **self.options))

    def rules(self, base: str, specs: Sequence[LimitSpec]) -> tuple[Rule[R], ...]:
        """Return the rules of a view or route: each spec's, named ``base`` (then base-2...)
        unless it has a ``name``."""
        made = []
        for n, spec in enumerate(specs, 1):
            name = spec.name or (base if n == 1 else f"{base[:60]}-{n}")
            made.append(self.rule(name, spec.limits, spec.key, spec.cost))
        return tuple(made)

    def cost_rules(self, cost: Cost) -> tuple[Rule[R], ...]:
        """Return the rules of a route that costs ``cost`` on the default limit (0: none)."""
        if not cost or self.default is None:
            return ()
        if cost == 1:
            return self.default_rules
        return (self.rule("default", self.default, None, cost),)

    def close(self) -> None:
        """Close the storage (its limiters and Redis client)."""
        self.storage.close()


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {value!r}")
    return value


def _strings(value: object, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a list of str, not {value!r}")
    return [_string(item, what) for item in value]


def _mapping(value: object, what: str) -> Mapping[object, object]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict of route to a value, not {value!r}")
    return value
