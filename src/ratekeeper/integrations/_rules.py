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

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any, Generic, TypeVar

from .._config import _cluster_client, _parse, _redis_backend
from .._gcra import _NAME_RE, Limit
from .._keyed import SyncKeyedLimiter, Verdict
from ._web import Cost, Gate, HeaderKey, Refusal, RequestView, TrustedProxies, client_key

R = TypeVar("R")
"""The request a front door passes to key and cost functions (a Flask or Django request)."""

RULE_NAME_HELP = "1-64 letters, digits or '_.:-'"


def parse_limit(value: object, what: str) -> Limit:
    """Return a Limit from ``"5/minute"``, ``("5/minute", 10)`` or a Limit; raise naming it.

    Raises ValueError for a bad rate string or capacity, TypeError for another kind of value.
    """
    if isinstance(value, Limit):
        return value
    if isinstance(value, (str, tuple)):
        try:
            return Limit(value) if isinstance(value, str) else Limit(*value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: {exc}") from None
    raise TypeError(
        f"{what} must be a rate such as '5/minute', a (rate, capacity) pair or a Limit, "
        f"not {value!r}"
    )


class Storage:
    """Make the limiters of one app from a storage URL: ``memory://`` or ``redis://...``.

    Each rule gets its own ``SyncKeyedLimiter`` with one limit named after the rule; on Redis
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

    def limiter(self, name: str, limit: Limit) -> SyncKeyedLimiter:
        """Return a new limiter for one rule: ``limit`` per key, under the name ``name``."""
        if self._client is None:
            made = SyncKeyedLimiter(limits={name: limit}, name=name)
        else:
            backend = _redis_backend().SyncRedisKeyedBackend(
                self._client, {name: limit}, **self._options
            )
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


Granted = list[tuple[Rule[Any], str, Cost, Verdict]]


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
        part = "the cost function"
        try:
            cost = gate.fixed_cost
            if cost is None:
                cost = gate.cost(request, method, path)
            if not cost:
                continue  # exempt
            key = gate.key(request, method, path)  # never raises: the gate decides
            if key is None:
                continue
            part = "the limiter"
            verdict = rule.limiter.admit(key, cost, max_wait=max_wait)
        except Exception as exc:
            refusal = gate.failed(part, exc, method, path)
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


def key_function(
    spec: object,
    *,
    view: Callable[[R], RequestView],
    user: Callable[[R], object],
    arg: Callable[[R, str], object],
    trusted: Collection[str] = (),
    secret: str | bytes | None = None,
    what: str = "key",
) -> Callable[[R], str | None]:
    """Return the key function a spec names; raise ValueError/TypeError for a bad spec.

    ``"ip"``: the client's address (behind ``trusted`` proxies, the first untrusted hop of
    ``X-Forwarded-For``); ``"header:<name>"``: the header's value, hashed (HMAC under
    ``secret``), else the address; ``"user"``: ``"user:<id>"`` of the signed-in user, else
    the address; ``"arg:<name>"``: ``"<name>:<value>"`` of a URL parameter; a callable is
    used as it is. ``view``, ``user`` and ``arg`` read the framework's request.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{what} must be {KEY_SPECS}, not {spec!r}")
    proxies = TrustedProxies(trusted) if trusted else None

    def address(request: R) -> str:
        seen = view(request)
        peer = client_key(seen)
        if proxies is None:
            return peer
        return proxies.client(peer, seen.header("x-forwarded-for"))

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


def check_rule_name(name: object, what: str) -> str:
    """Return a rule's name (its policy name in the headers); raise ValueError if malformed."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{what} must be {RULE_NAME_HELP}, got {name!r}")
    return name
