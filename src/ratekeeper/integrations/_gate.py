"""The blocking engine of the WSGI front doors (WSGI middleware, Flask, Django).

A request is checked against its *rules*: each rule is one limit with a name (its policy
name in the headers), a key function and a cost. ``Gate.check`` takes each rule's tokens for
the request's key from a ``SyncKeyedLimiter`` (memory or Redis) and returns a ``Decision``:
go on (with the headers to add), refuse (429, ``Retry-After`` and the limit's headers), or
fail (503 when the limiter is down, unless ``on_error="allow"``). A refusal gives back the
tokens already taken by the request's earlier rules, so a refused request costs nothing.

What it never does: let an error become a 500. A key function that raises is logged and the
request is limited under one shared key (or let through, ``on_key_error="allow"``); a limiter
that raises is logged and answered 503 (or let through). Log lines of one kind are throttled.
No framework is imported here; the front doors turn a Decision into their own responses.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from .._config import _cluster_client, _parse, _redis_backend
from .._gcra import Limit
from .._keyed import SyncKeyedLimiter, Tokens, Verdict

R = TypeVar("R")
"""The request a front door passes to key and cost functions (an environ, a Flask or
Django request)."""

UNKEYED = "ratekeeper:unkeyed"
"""The key shared by requests whose key function failed (``on_key_error="shared"``)."""

HEADER_MODES = ("ietf", "x-ratelimit", "both", "none")
OnError = Literal["deny", "allow"]
OnKeyError = Literal["shared", "allow"]
HeaderMode = Literal["ietf", "x-ratelimit", "both", "none"]

_MAX_KEY_LENGTH = 128


def check_choice(value: object, allowed: Sequence[str], what: str) -> str:
    """Return ``value`` if it is one of ``allowed``; raise ValueError naming ``what``."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


def check_max_wait(max_wait: object, what: str = "max_wait") -> float:
    """Return ``max_wait`` as float seconds; raise TypeError/ValueError naming ``what``."""
    if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {max_wait!r}")
    if not 0 <= max_wait < math.inf:
        raise ValueError(f"{what} must be finite seconds >= 0, got {max_wait!r}")
    return float(max_wait)


def check_cost(cost: object, limits: Mapping[str, Limit], what: str) -> Tokens:
    """Return ``cost`` if the limits can take it (0: exempt); raise TypeError/ValueError.

    An int is taken from every limit without a weight (weighted ones take their weight); a
    mapping names the tokens per limit. Each amount is from 0 to its limit's capacity.
    """
    if isinstance(cost, Mapping):
        unknown = sorted(set(cost) - set(limits))
        if unknown:
            raise ValueError(f"{what} names no limit {unknown!r}; the limits are {sorted(limits)}")
        amounts = dict(cost)
    elif type(cost) is int:
        amounts = {name: cost for name, limit in limits.items() if limit.weight is None}
    else:
        raise TypeError(
            f"{what} must be an int (0: exempt) or a mapping of limit name to int, not {cost!r}"
        )
    for name, amount in amounts.items():
        if type(amount) is not int:
            raise TypeError(f"{what} must be made of ints, not {amount!r}")
        capacity = limits[name].capacity
        if not 0 <= amount <= capacity:
            raise ValueError(
                f"{what} must be from 0 to the capacity {capacity} of limit {name!r}, got {amount}"
            )
    if isinstance(cost, Mapping) and not any(amounts.values()):
        return 0  # takes nothing anywhere: exempt
    return cost


def parse_limit(value: object, what: str) -> Limit:
    """Return a Limit from ``"5/minute"``, ``("5/minute", 10)`` or a Limit; raise naming it."""
    try:
        if isinstance(value, Limit):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return Limit(value[0], value[1])
        if isinstance(value, str):
            return Limit(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from None
    raise TypeError(
        f"{what} must be a rate string such as '5/minute', a (rate, capacity) pair or a "
        f"Limit, not {value!r}"
    )


# -- where the limits live -----------------------------------------------------------------------


class Storage:
    """Make the limiters of one app from a storage URL: ``memory://`` or ``redis://...``.

    Each rule gets its own ``SyncKeyedLimiter`` (one limit each); on Redis they share one
    client, and a rule's buckets are ``prefix + "{" + key + "}:" + rule name``, so every
    process using the same server and prefix shares each rule's limits. The URL's options
    (``prefix``, ``timeout``, ``on_failure``, ``fallback_share``, ``retry_interval``) are those
    of ``ratekeeper.sync_limiter``. Raises ValueError for a bad URL, ImportError when the
    redis client is missing.
    """

    def __init__(self, url: str = "memory://") -> None:
        parsed = _parse(url)
        self.url = url
        self._options: dict[str, Any] = dict(parsed.options)
        self._client: Any = None
        self._limiters: list[SyncKeyedLimiter] = []
        if parsed.scheme != "memory":
            assert parsed.url is not None
            timeout = float(self._options.get("timeout", 0.5))
            if parsed.cluster:
                self._client = _cluster_client(parsed.url, timeout, True)
            else:
                redis = _redis_backend()
                self._client = redis._sync._resolve_client(parsed.url, timeout)[0]

    @property
    def shared(self) -> bool:
        """True when the limits live at a server (shared by processes)."""
        return self._client is not None

    def limiter(self, name: str, limit: Limit) -> SyncKeyedLimiter:
        """Return a new limiter for one rule: ``limit`` per key, its policy name ``name``."""
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
        parts = urlsplit(self.url)
        return f"<Storage {parts.scheme}:// rules={len(self._limiters)}>"


# -- rules and decisions ---------------------------------------------------------------------------


class Rule(Generic[R]):
    """Limits applied to some requests: a limiter, a key function and a cost.

    ``cost``: tokens as ``SyncKeyedLimiter.admit`` takes them (an int, or a mapping of limit
    name to tokens; 0 exempts), or a function of the request returning them. The limiter's
    limit names are the policy names in the headers. Raises TypeError/ValueError for a cost
    the limiter cannot take.
    """

    __slots__ = ("cost", "key", "limiter", "limits", "name")

    def __init__(
        self,
        limiter: SyncKeyedLimiter,
        key: Callable[[R], str | None],
        cost: Tokens | Callable[[R], Tokens] = 1,
    ) -> None:
        if not isinstance(limiter, SyncKeyedLimiter):
            raise TypeError(f"limiter must be a SyncKeyedLimiter, not {limiter!r}")
        if not callable(key):
            raise TypeError(f"key must be a function of the request, not {key!r}")
        self.limiter = limiter
        self.limits: dict[str, Limit] = limiter.limits
        self.name = ", ".join(self.limits)
        self.key = key
        self.cost: Tokens | Callable[[R], Tokens] = (
            cost if callable(cost) else check_cost(cost, self.limits, "cost")
        )

    def __repr__(self) -> str:
        return f"<Rule {self.name} cost={self.cost!r}>"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a front door does with a request.

    ``status`` None: go on (add ``headers`` to the response); 429: refused (``retry_after``
    seconds, ``rule`` is the limit that refused); 503: the limiter failed.
    """

    status: int | None
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: int = 0
    rule: str | None = None


GO = Decision(None)


def retry_after(verdict: Verdict) -> int:
    """Return the ``Retry-After`` seconds for a refusal: its wait rounded up, at least 1."""
    return max(1, -(-verdict.wait_ns // 1_000_000_000))


def _window(limit: Limit) -> int:
    return max(1, math.ceil(limit.capacity * limit.rate.interval - 1e-9))


def rate_headers(
    mode: str, verdicts: Sequence[tuple[Mapping[str, Limit], Verdict]], refused: int | None
) -> list[tuple[str, str]]:
    """Return the rate-limit headers for the verdicts of a request's rules.

    ``"ietf"``: ``RateLimit-Policy`` (``"name";q=capacity;w=seconds to refill``) and
    ``RateLimit`` (``"name";r=whole tokens left;t=seconds until full``), one item per limit;
    ``"x-ratelimit"``: ``X-RateLimit-Limit/Remaining/Reset`` of the limit with the fewest
    tokens left; ``"both"``; ``"none"``. On a refusal (``refused`` = Retry-After seconds)
    ``t`` and ``Reset`` are at most ``Retry-After``.
    """
    if mode == "none" or not verdicts:
        return []
    headers: list[tuple[str, str]] = []
    tightest: tuple[int, int, Limit] | None = None
    policies, states = [], []
    for limits, verdict in verdicts:
        for (name, limit), tokens, full_in in zip(
            limits.items(), verdict.available, verdict.full_in_ns, strict=True
        ):
            remaining = max(0, math.floor(tokens))
            reset = -(-full_in // 1_000_000_000)
            if refused is not None and reset > refused:
                reset = refused
            policies.append(f'"{name}";q={limit.capacity};w={_window(limit)}')
            states.append(f'"{name}";r={remaining};t={reset}')
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, reset, limit)
    if mode in ("ietf", "both"):
        headers.append(("RateLimit-Policy", ", ".join(policies)))
        headers.append(("RateLimit", ", ".join(states)))
    if mode in ("x-ratelimit", "both"):
        assert tightest is not None
        remaining, reset, limit = tightest
        headers.append(("X-RateLimit-Limit", str(limit.capacity)))
        headers.append(("X-RateLimit-Remaining", str(remaining)))
        headers.append(("X-RateLimit-Reset", str(reset)))
    return headers


class ThrottledLog:
    """Log a kind of problem at most once per ``interval`` seconds, counting the rest."""

    __slots__ = ("_interval", "_last", "_logger", "_skipped")

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
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
        self._logger.log(level, message, exc_info=exc)


class Gate(Generic[R]):
    """Check requests against rules; the options every WSGI front door shares.

    ``max_wait``: seconds a request may wait for its tokens (0: refuse at once).
    ``headers``: ``"ietf"``, ``"x-ratelimit"``, ``"both"`` or ``"none"`` (accepted and
    refused responses; ``Retry-After`` is always on a refusal). ``on_key_error``:
    ``"shared"`` or ``"allow"``; ``on_error``: ``"deny"`` (503) or ``"allow"``.
    Raises ValueError/TypeError for a bad option.
    """

    def __init__(
        self,
        *,
        max_wait: float = 0.0,
        headers: str = "ietf",
        on_key_error: str = "shared",
        on_error: str = "deny",
        logger: logging.Logger,
        log_interval: float = 10.0,
    ) -> None:
        self.max_wait = check_max_wait(max_wait)
        self.headers = check_choice(headers, HEADER_MODES, "headers")
        check_choice(on_key_error, ("shared", "allow"), "on_key_error")
        check_choice(on_error, ("deny", "allow"), "on_error")
        self._share_on_key_error = on_key_error == "shared"
        self._deny_on_error = on_error == "deny"
        self._log = ThrottledLog(logger, log_interval)
        self._no_headers = self.headers == "none"

    def check(self, rules: Sequence[Rule[R]], request: R, what: str) -> Decision:
        """Take the tokens of each rule for ``request``; return what to do with it.

        ``what`` names the request in log lines (``"GET /path"``). Never raises for a key
        function, a cost function or a limiter that fails: see the class.
        """
        granted: list[tuple[Rule[R], str, Tokens, Verdict]] = []
        for rule in rules:
            cost = rule.cost
            if type(cost) is not int:
                try:
                    cost = check_cost(cost(request), rule.limits, "the cost function's result")  # type: ignore[operator]
                except Exception as exc:
                    return self._failed(granted, what, f"the cost of {rule.name!r}", exc)
            if not cost:
                continue  # exempt
            try:
                key = rule.key(request)
            except Exception as exc:
                key = self._key_failed(what, exc)
            else:
                if type(key) is not str or len(key) > _MAX_KEY_LENGTH or not key:
                    key = self._odd_key(what, key)
            if key is None:
                continue
            try:
                verdict = rule.limiter.admit(key, cost, max_wait=self.max_wait)
            except Exception as exc:
                return self._failed(granted, what, f"the limiter of {rule.name!r}", exc)
            if not verdict.granted:
                self._give_back(granted)
                wait = retry_after(verdict)
                shown = [(r.limits, v) for r, _, _, v in granted]
                shown.append((rule.limits, verdict))
                headers = [("Retry-After", str(wait)), *rate_headers(self.headers, shown, wait)]
                return Decision(429, tuple(headers), wait, rule.name)
            granted.append((rule, key, cost, verdict))
        if self._no_headers or not granted:
            return GO
        shown = [(r.limits, v) for r, _, _, v in granted]
        return Decision(None, tuple(rate_headers(self.headers, shown, None)))

    def log_failure(self, part: str, what: str, exc: Exception) -> None:
        """Log that ``part`` (a user's hook) failed for request ``what``; the default is used."""
        self._log(
            logging.ERROR,
            part,
            f"ratekeeper: {part} failed for {what}: {exc!r}; using the default",
            exc,
        )

    def _give_back(self, granted: list[tuple[Rule[R], str, Tokens, Verdict]]) -> None:
        # A refused request costs nothing: the earlier rules' tokens go back.
        for rule, key, cost, _ in granted:
            try:
                rule.limiter.refund(key, cost)
            except Exception as exc:
                self._log(logging.WARNING, "refund", f"ratekeeper: a refund failed: {exc!r}", exc)

    def _odd_key(self, what: str, key: object) -> str | None:
        """Deal with a key that is not a plain short str: hash it, refuse it, or pass None."""
        if key is None:
            return None
        if type(key) is not str or not key:
            error = TypeError(f"the key function returned {type(key).__name__} {key!r:.60}")
            return self._key_failed(what, error)
        # Too long (a huge header): a digest keeps memory bounded and keys distinct.
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def _key_failed(self, what: str, exc: Exception) -> str | None:
        """Log a key function's failure; return the key to use instead (None: no limit)."""
        shared = self._share_on_key_error
        action = "limiting it under the shared key" if shared else "letting it through"
        self._log(
            logging.WARNING,
            "key",
            f"ratekeeper: the key function failed for {what}: {exc!r}; {action} (on_key_error)",
            exc,
        )
        return UNKEYED if shared else None

    def _failed(
        self,
        granted: list[tuple[Rule[R], str, Tokens, Verdict]],
        what: str,
        part: str,
        exc: Exception,
    ) -> Decision:
        deny = self._deny_on_error
        action = "answering 503" if deny else "letting the request through"
        self._log(
            logging.ERROR,
            part,
            f"ratekeeper: {part} failed for {what}: {exc!r}; {action} (on_error)",
            exc,
        )
        if not deny:
            return GO
        self._give_back(granted)
        return Decision(503, (("Retry-After", "1"),), 1)


def rules_summary(rules: Mapping[str, Limit]) -> str:
    """Return ``name=rate capacity=C`` for each rule, for a repr."""
    return ", ".join(f"{name}={limit}" for name, limit in rules.items())


__all__ = [
    "GO",
    "HEADER_MODES",
    "UNKEYED",
    "Decision",
    "Gate",
    "Rule",
    "Storage",
    "check_choice",
    "check_cost",
    "check_max_wait",
    "parse_limit",
    "rate_headers",
    "retry_after",
]
