"""What every web front door shares (ASGI, WSGI, Flask, Django): the decisions, not the I/O.

Pure of frameworks and of network I/O: no ASGI, no WSGI, no socket. Each front door turns its
request (an ASGI scope, a WSGI environ) into plain values or a ``RequestView``, calls a
``Gate`` for the decisions (the cost of a route, the key, the headers, the refusal), and
does the sending itself. What lives here:

- key building blocks: the client's address, a header (hashed by default: ``hash_secret``),
  the first untrusted hop of ``X-Forwarded-For`` (``TrustedProxies``);
- route patterns (``/path``, ``/prefix/*``, ``POST /path``, templates ``/items/{item_id}``)
  and the check that each names a route of the app (``RouteTable``);
- the rate-limit header sets (``HEADER_MODES``) and the refusal response (``Refusal``,
  ``Response``, ``json_refusal``);
- configuration checks that fail at start-up with the value and what is allowed.

The one side effect is ``ThrottledLog``: a kind of problem is logged at most once per
interval, with a count of those left out, so that an attack cannot flood the log.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .._gcra import Limit
from .._keyed import Verdict

__all__ = [
    "HEADER_MODES",
    "SECRET_ENV",
    "UNKEYED",
    "Cost",
    "Gate",
    "HeaderKey",
    "HeaderMode",
    "RateLimitHeaders",
    "Refusal",
    "RefusalHook",
    "RequestView",
    "Response",
    "RouteTable",
    "ThrottledLog",
    "TrustedProxies",
    "bounded_key",
    "client_key",
    "check_cost",
    "check_max_wait",
    "check_header_mode",
    "hash_secret",
    "header_key_name",
    "json_refusal",
    "policy_header",
    "ratelimit_header",
    "retry_after",
    "secret_bytes",
]

Cost = int | Mapping[str, int]
"""Tokens a request takes: an int (0: exempt) or a mapping of limit name to tokens."""

UNKEYED = "ratekeeper:unkeyed"
"""The key shared by requests whose key function failed (``on_key_error="shared"``)."""

HeaderMode = Literal["ietf", "x-ratelimit", "both"]
HEADER_MODES: tuple[HeaderMode | None, ...] = ("ietf", "x-ratelimit", "both", None)
"""The header sets: the IETF draft's ``RateLimit``/``RateLimit-Policy``, the common
``X-RateLimit-Limit/Remaining/Reset``, both, or none (``Retry-After`` only, on refusals)."""

SECRET_ENV = "RATEKEEPER_KEY_SECRET"
"""The environment variable holding the secret that credentials are hashed with."""
_BUILTIN_SECRET = b"ratekeeper key hash v1"


class RequestView(Protocol):
    """A request as the shared key functions see it; each front door fills one in.

    ``header(name)`` takes a lower-case name and returns the header's value (several
    lines joined by ``", "``), or None when it is absent.
    """

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def client(self) -> str | None: ...

    def header(self, name: str) -> str | None: ...


# -- keys ----------------------------------------------------------------------------------------


def secret_bytes(secret: str | bytes | None) -> bytes:
    """Return the key that credentials are hashed with: ``secret``, else ``$RATEKEEPER_KEY_SECRET``.

    Without either, a fixed built-in key: raw values still never reach key names or logs and
    every process computes the same keys, but someone who can read the keys could test
    guesses of a weak credential; set a secret (the same in every process sharing a
    backend) to prevent that. Raises TypeError/ValueError for a secret that is not a
    non-empty str or bytes.
    """
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or _BUILTIN_SECRET
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes):
        raise TypeError(f"secret must be a str or bytes, not {type(secret).__name__}")
    if not secret:
        raise ValueError("secret must not be empty")
    return secret


def hash_secret(value: str, secret: bytes) -> str:
    """Return a credential's stand-in: HMAC-SHA-256 under ``secret``, 32 hex digits (128 bits).

    Distinct credentials get distinct keys (collisions are out of reach at 128 bits); the
    value cannot be read back from the key, nor tested without the secret.
    """
    digest = hmac.new(secret, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:32]


def header_key_name(name: object) -> str:
    """Return a header name checked and lower-cased; raise ValueError for an empty one."""
    if not isinstance(name, str) or not name or not name.isascii() or " " in name:
        raise ValueError(f"a header name is needed (ASCII, no spaces), got {name!r}")
    return name.lower()


class HeaderKey:
    """Key a request by a header: ``"<name>:<value>"``, the value hashed unless ``hashed=False``.

    ``of(view)`` returns the key, or None when the header is absent or empty (the front door
    applies its fallback). Hashing is on by default because such headers are usually
    credentials (API keys, ``Authorization``); turn it off only for values that are not
    secret (a tenant name), so that keys stay readable.
    """

    __slots__ = ("_prefix", "_secret", "name")

    def __init__(self, name: str, *, hashed: bool = True, secret: str | bytes | None = None):
        self.name = header_key_name(name)
        self._prefix = f"{self.name}:"
        self._secret = secret_bytes(secret) if hashed else None

    def key(self, value: str) -> str:
        """Return the key for a header value (hashed unless ``hashed=False``)."""
        if self._secret is not None:
            value = hash_secret(value, self._secret)
        return self._prefix + value

    def of(self, view: RequestView) -> str | None:
        """Return the request's key, or None when it has no such header."""
        value = view.header(self.name)
        return self.key(value) if value else None

    def missing(self) -> LookupError:
        """Return the error for a request without the header (and no fallback)."""
        return LookupError(f"the request has no {self.name} header")


def client_key(view: RequestView) -> str:
    """Return the client's address; raise LookupError when there is none (a Unix socket)."""
    client = view.client
    if not client:
        raise LookupError("the request has no client address (a Unix socket?)")
    return client


class TrustedProxies:
    """Find the client behind trusted proxies: the first untrusted hop from the right.

    ``trusted`` lists the proxies' addresses or networks (``"10.0.0.0/8"``). A request from
    an untrusted peer is the peer (its ``X-Forwarded-For`` could be anything). From a trusted
    proxy, the header is read from the right, skipping trusted hops: the first untrusted
    address is the one the outermost trusted proxy saw, the only one nobody could forge. The
    leftmost entry is not used: any client can write it. Raises ValueError for a ``trusted``
    entry that is not an address or network.
    """

    __slots__ = ("_networks",)

    def __init__(self, trusted: Iterable[str]) -> None:
        if isinstance(trusted, str):
            trusted = [trusted]
        networks = []
        for entry in trusted:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except (TypeError, ValueError):
                raise ValueError(
                    f"trusted must hold IP addresses or networks, got {entry!r}"
                ) from None
        self._networks = tuple(networks)

    def trusts(self, address: str) -> bool:
        """Return whether ``address`` is one of the trusted proxies."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client(self, peer: str, forwarded: str | None) -> str:
        """Return the client's address given the peer's and the forwarded-for header value."""
        if not self.trusts(peer) or not forwarded:
            return peer
        for entry in reversed(forwarded.split(",")):
            hop = entry.strip()
            if hop and not self.trusts(hop):
                return hop
        return peer  # only trusted hops: the request came from inside


def bounded_key(key: str, max_length: int) -> str:
    """Return ``key``, or ``"sha256:<hex digest>"`` when it is longer than ``max_length``.

    A huge key (a huge header) then costs bounded memory, and distinct keys stay distinct.
    """
    if len(key) <= max_length:
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# -- costs and routes ----------------------------------------------------------------------------


def check_cost(cost: object, limits: Mapping[str, Limit], what: str) -> Cost:
    """Return a valid amount (0 means exempt); raise TypeError/ValueError naming ``what``.

    An int is taken from every limit without a weight (weighted ones take their weight); a
    mapping names the tokens per limit. Each amount is from 0 to that limit's capacity.
    """
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
        raise TypeError(f"{what} must be an int or a mapping of limit name to int, not {cost!r}")
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


_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")


def _template_regex(path: str) -> re.Pattern[str]:
    """Compile a route template (``/items/{item_id}``, ``/files/{rest:path}``) to a regex."""
    parts = []
    end = 0
    for match in _PARAM_RE.finditer(path):
        parts.append(re.escape(path[end : match.start()]))
        parts.append(".+" if match.group(2) == "path" else "[^/]+")
        end = match.end()
    parts.append(re.escape(path[end:]))
    return re.compile("".join(parts))


def _shape(path: str) -> str:
    """Return a template with its parameter names dropped: ``/items/{}`` for both spellings."""
    return _PARAM_RE.sub(lambda m: "{path}" if m.group(2) == "path" else "{}", path)


class RouteTable:
    """Map route patterns to values; find the value for a request's method and path.

    Patterns: ``"/path"`` (exact), ``"/items/{item_id}"`` (a template: a parameter matches
    one path segment, ``{name:path}`` the rest of the path), ``"/prefix/*"`` (a prefix), each
    optionally preceded by a method (``"POST /upload"``). Precedence: exact paths, then
    templates, then prefixes (longest first); within each, a method-specific entry wins over
    a general one. Raises TypeError/ValueError naming a malformed pattern.
    """

    __slots__ = ("_exact", "_prefixes", "_templates", "patterns")

    def __init__(self, entries: Mapping[str, Any]) -> None:
        self.patterns: dict[str, Any] = {}
        self._exact: dict[str, Any] = {}
        self._templates: list[tuple[str, re.Pattern[str], Any]] = []
        self._prefixes: list[tuple[str, str, Any]] = []
        for pattern, value in entries.items():
            method, path = self.parse(pattern)
            self.patterns[pattern] = value
            if path.endswith("*"):
                self._prefixes.append((method, path[:-1], value))
            elif _PARAM_RE.search(path):
                self._templates.append((method, _template_regex(path), value))
            else:
                self._exact[f"{method} {path}" if method else path] = value
        self._prefixes.sort(key=lambda item: (-len(item[1]), not item[0]))
        self._templates.sort(key=lambda item: not item[0])

    @staticmethod
    def parse(pattern: object) -> tuple[str, str]:
        """Return (METHOD or "", path) of a pattern; raise TypeError/ValueError if malformed."""
        if not isinstance(pattern, str):
            raise TypeError(f"a route pattern must be a str, not {pattern!r}")
        method, _, path = pattern.rpartition(" ")
        if not path.startswith("/") or (method and not method.isalpha()) or "*" in path[:-1]:
            raise ValueError(
                "a route pattern looks like '/path', '/items/{item_id}', '/prefix/*' or "
                f"'POST /path', got {pattern!r}"
            )
        return method.upper(), path

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def find(self, method: str, path: str, default: Any = None) -> Any:
        """Return the value for a request (its method and concrete path), or ``default``."""
        exact = self._exact
        if exact:
            value = exact.get(f"{method} {path}")
            if value is None:
                value = exact.get(path)
            if value is not None:
                return value
        for wanted, regex, value in self._templates:
            if (not wanted or wanted == method) and regex.fullmatch(path):
                return value
        for wanted, prefix, value in self._prefixes:
            if (not wanted or wanted == method) and path.startswith(prefix):
                return value
        return default

    def unknown(self, routes: Iterable[str]) -> list[str]:
        """Return the patterns that match none of ``routes`` (the app's path templates).

        A pattern matches a route when it is the same template (parameter names aside), a
        concrete path the template matches, or a prefix of the route (or of a mount point).
        """
        templates = list(routes)
        shapes = {_shape(route) for route in templates}
        regexes = [_template_regex(route) for route in templates]
        missing = []
        for pattern in self.patterns:
            _, path = self.parse(pattern)
            if path.endswith("*"):
                prefix = path[:-1]
                found = any(
                    route.startswith(prefix) or (route + "/").startswith(prefix)
                    for route in templates
                )
            else:
                found = _shape(path) in shapes or any(r.fullmatch(path) for r in regexes)
            if not found:
                missing.append(pattern)
        return missing


# -- headers -------------------------------------------------------------------------------------


def check_header_mode(headers: object) -> tuple[HeaderMode | None, bool]:
    """Return (header set, also on accepted responses) for a front door's ``headers`` value.

    ``False`` (the default): the IETF set on refusals only; ``True``: the IETF set on every
    response; ``"ietf"``, ``"x-ratelimit"`` or ``"both"``: that set on every response;
    ``None``: none (``Retry-After`` only, on refusals). Raises ValueError for anything else.
    """
    if headers is False:
        return "ietf", False
    if headers is True:
        return "ietf", True
    if headers is None:
        return None, False
    if isinstance(headers, str) and headers in HEADER_MODES:
        return headers, True
    raise ValueError(
        f"headers must be True, False, None, 'ietf', 'x-ratelimit' or 'both', got {headers!r}"
    )


def retry_after(verdict: Verdict) -> int:
    """Return the ``Retry-After`` seconds for a refusal: its wait rounded up, at least 1."""
    return max(1, -(-verdict.wait_ns // 1_000_000_000))


def _window(limit: Limit) -> int:
    """Return the seconds a bucket takes to refill from empty, rounded up (at least 1)."""
    return max(1, math.ceil(limit.capacity * limit.rate.interval - 1e-9))


def policy_header(limits: Mapping[str, Limit]) -> str:
    """Return the ``RateLimit-Policy`` value for ``limits``: ``"name";q=C;w=W`` each.

    ``q`` is the capacity and ``w`` the seconds the bucket takes to refill from empty,
    rounded up, so that a client keeping to ``q`` per ``w`` never exceeds the bucket.
    """
    return ", ".join(f'"{n}";q={limit.capacity};w={_window(limit)}' for n, limit in limits.items())


def _state(verdict: Verdict) -> list[tuple[int, int]]:
    """Return (whole tokens left, seconds until full) per limit; on a refusal t <= Retry-After."""
    cap = None if verdict.granted else retry_after(verdict)
    state = []
    for tokens, full_in in zip(verdict.available, verdict.full_in_ns, strict=True):
        reset = -(-full_in // 1_000_000_000)
        if cap is not None and reset > cap:
            reset = cap
        state.append((max(0, math.floor(tokens)), reset))
    return state


def ratelimit_header(limits: Mapping[str, Limit], verdict: Verdict) -> str:
    """Return the ``RateLimit`` value for a verdict: ``"name";r=R;t=T`` per limit.

    ``r``: whole tokens left (>= 0). ``t``: seconds until the bucket is full again, rounded
    up; on a refusal, at most the ``Retry-After`` seconds.
    """
    # On every accepted response when headers are on: one pass, no intermediate lists.
    cap = None if verdict.granted else retry_after(verdict)
    items = []
    for name, tokens, full_in in zip(limits, verdict.available, verdict.full_in_ns, strict=True):
        reset = -(-full_in // 1_000_000_000)
        if cap is not None and reset > cap:
            reset = cap
        items.append(f'"{name}";r={int(tokens) if tokens > 0 else 0};t={reset}')
    return ", ".join(items)


_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')


class RateLimitHeaders:
    """Build one header set for one set of limits: ``refusal`` and ``accepted`` header lists.

    ``"ietf"``: ``RateLimit-Policy`` and ``RateLimit`` (see ``policy_header`` and
    ``ratelimit_header``). ``"x-ratelimit"``: ``X-RateLimit-Limit`` (capacity),
    ``X-RateLimit-Remaining`` (whole tokens left) and ``X-RateLimit-Reset`` (the Unix time,
    in whole seconds rounded up, when the bucket is full again) of the limit with the fewest
    tokens left. A refusal always carries ``Retry-After``. Names are lower case.
    """

    __slots__ = ("_limits", "_mode", "_policy", "_policy_latin1")

    def __init__(self, limits: Mapping[str, Limit], mode: HeaderMode | None) -> None:
        self._limits = dict(limits)
        self._mode = mode
        self._policy = policy_header(self._limits)
        self._policy_latin1 = (b"ratelimit-policy", self._policy.encode("latin-1"))

    @property
    def mode(self) -> HeaderMode | None:
        """The header set."""
        return self._mode

    def accepted(self, verdict: Verdict, now: float) -> list[tuple[str, str]]:
        """Return the headers for an accepted request (``now``: the Unix time, for Reset)."""
        headers: list[tuple[str, str]] = []
        mode = self._mode
        if mode is None:
            return headers
        if mode != "x-ratelimit":
            headers.append(("ratelimit-policy", self._policy))
            headers.append(("ratelimit", ratelimit_header(self._limits, verdict)))
        if mode != "ietf":
            state = _state(verdict)
            # The limit with the fewest tokens left (the later reset on a tie) speaks.
            i = min(range(len(state)), key=lambda i: (state[i][0], -state[i][1]))
            remaining, reset = state[i]
            capacity = list(self._limits.values())[i].capacity
            headers.append(("x-ratelimit-limit", str(capacity)))
            headers.append(("x-ratelimit-remaining", str(remaining)))
            headers.append(("x-ratelimit-reset", str(math.ceil(now) + reset)))
        return headers

    def accepted_latin1(self, verdict: Verdict, now: float) -> list[tuple[bytes, bytes]]:
        """Return ``accepted``'s headers encoded for ASGI (the policy encoded once)."""
        if self._mode == "ietf":  # the common case, on every response: keep it short
            state = ratelimit_header(self._limits, verdict).encode("latin-1")
            return [self._policy_latin1, (b"ratelimit", state)]
        return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.accepted(verdict, now)]

    def refusal(self, verdict: Verdict, now: float) -> list[tuple[str, str]]:
        """Return the headers for a refusal: ``Retry-After`` and the set's headers."""
        return [("retry-after", str(retry_after(verdict))), *self.accepted(verdict, now)]

    def unique(self, existing: Sequence[tuple[str, str]]) -> RateLimitHeaders:
        """Return headers whose policy names differ from those already in ``existing``.

        When middlewares (or a middleware and a route limit) are stacked, each sends its own
        policies; a name already taken gets a suffix (``"default-2"``), so that a client can
        tell the policies apart and match each ``RateLimit`` item to its policy.
        """
        taken: set[str] = set()
        if not existing:
            return self
        for name, value in existing:
            if name.lower() == "ratelimit-policy":
                taken.update(_QUOTED_RE.findall(value))
        if not taken.intersection(self._limits):
            return self
        renamed: dict[str, Limit] = {}
        for name, limit in self._limits.items():
            new, n = name, 1
            while new in taken or new in renamed:
                n += 1
                new = f"{name}-{n}"
            renamed[new] = limit
        return RateLimitHeaders(renamed, self._mode)


# -- refusals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A request the front door turns away: what a response hook is given.

    ``status``: 429 (limited) or 503 (the limiter failed and ``on_error="deny"``).
    ``retry_after``: whole seconds. ``headers``: the rate-limit headers to send, with
    ``Retry-After`` (lower-case names). ``detail``: the status's reason phrase. ``verdict``:
    the limiter's answer (None on a 503). ``limits``: the names of the limits involved.
    """

    status: int
    retry_after: int
    headers: tuple[tuple[str, str], ...]
    detail: str
    verdict: Verdict | None = None
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Response:
    """A response a front door sends as it stands: status, headers (str pairs) and body."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def with_headers(self, headers: Iterable[tuple[str, str]]) -> Response:
        """Return this response plus those of ``headers`` whose names it does not have."""
        have = {name.lower() for name, _ in self.headers}
        extra = tuple((n, v) for n, v in headers if n.lower() not in have)
        if not extra:
            return self
        return Response(self.status, self.headers + extra, self.body)


RefusalHook = Callable[[Any, Refusal], Any]
"""``(request, refusal) -> response``: builds the response to a refusal. ``request`` is the
front door's own (ASGI scope, Starlette Request, WSGI environ, Flask or Django request); the
response is a ``Response`` or one the framework can send (a Starlette Response...)."""


def json_refusal(request: object, refusal: Refusal) -> Response:
    """Return the default refusal: JSON ``{"detail": "Too Many Requests", "retry_after": N}``.

    With the refusal's headers (``Retry-After`` and the rate-limit set). Shorthand for what a
    ``refusal_response`` hook returns when none is given.
    """
    body = json.dumps(
        {"detail": refusal.detail, "retry_after": refusal.retry_after}, separators=(",", ":")
    ).encode()
    return Response(refusal.status, (*refusal.headers, ("content-type", "application/json")), body)


# -- logging -------------------------------------------------------------------------------------


class ThrottledLog:
    """Log a kind of problem at most once per ``interval`` seconds, counting the rest."""

    __slots__ = ("_interval", "_last", "_logger", "_skipped")

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
            raise ValueError(f"log_interval must be seconds >= 0, got {interval!r}")
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, level: int, kind: str, message: str, exc: BaseException | None) -> None:
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


# -- the gate ------------------------------------------------------------------------------------


def check_max_wait(max_wait: object) -> float:
    """Return ``max_wait`` as float seconds; raise TypeError/ValueError for a bad one."""
    if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)):
        raise TypeError(f"max_wait must be a number of seconds, not {max_wait!r}")
    if not 0 <= max_wait < math.inf:
        raise ValueError(f"max_wait must be finite seconds >= 0, got {max_wait!r}")
    return float(max_wait)


class Gate:
    """One front door's configuration, checked at start-up, and the decisions it makes.

    A front door (the ASGI or WSGI middleware, a route decorator) asks it for a request's
    cost (``cost``), its key (``key``, with key functions that fail handled), the headers of
    an accepted request (``accepted_headers``), and the response to a refusal or a failure
    (``refused``, ``failed``); it does the I/O itself. The options are those the front
    doors document (``costs``, ``exempt``, ``default_cost``, ``headers``,
    ``refusal_response``, ``on_key_error``, ``on_error``, ``max_key_length``,
    ``log_interval``). Raises TypeError/ValueError naming a bad option.
    """

    def __init__(
        self,
        limits: Mapping[str, Limit],
        *,
        key: Callable[[Any], object],
        costs: Mapping[str, Cost] | Callable[[Any], Cost] | None = None,
        exempt: Iterable[str] = (),
        default_cost: Cost = 1,
        headers: bool | HeaderMode | None = False,
        refusal_response: RefusalHook | None = None,
        on_key_error: Literal["shared", "allow"] = "shared",
        on_error: Literal["deny", "allow"] = "deny",
        max_key_length: int = 128,
        log_interval: float = 10.0,
        logger: logging.Logger,
    ) -> None:
        if not limits:
            raise TypeError("a gate needs the limiter's limits")
        if not callable(key):
            raise TypeError(f"key must be a function of the request, not {key!r}")
        if on_key_error not in ("shared", "allow"):
            raise ValueError(f"on_key_error must be 'shared' or 'allow', got {on_key_error!r}")
        if on_error not in ("deny", "allow"):
            raise ValueError(f"on_error must be 'deny' or 'allow', got {on_error!r}")
        if type(max_key_length) is not int or max_key_length < 16:
            raise ValueError(f"max_key_length must be an int >= 16, got {max_key_length!r}")
        if refusal_response is not None and not callable(refusal_response):
            raise TypeError(
                f"refusal_response must be a function (request, refusal) -> response, "
                f"not {refusal_response!r}"
            )
        if isinstance(exempt, str):
            raise TypeError(f"exempt must be a list of route patterns, not the str {exempt!r}")
        self.limits: dict[str, Limit] = dict(limits)
        self.key_function = key
        self.share_on_key_error = on_key_error == "shared"
        self.deny_on_error = on_error == "deny"
        self.max_key_length = max_key_length
        self.log = ThrottledLog(logger, log_interval)
        mode, self.headers_on_accept = check_header_mode(headers)
        self.headers = RateLimitHeaders(self.limits, mode)
        self.refusal_response: RefusalHook = refusal_response or json_refusal
        self.default_cost = check_cost(default_cost, self.limits, "default_cost")
        self.cost_function: Callable[[Any], Cost] | None = None
        table: dict[str, Cost] = {}
        if callable(costs):
            self.cost_function = costs
        elif costs is not None:
            if not isinstance(costs, Mapping):
                raise TypeError(f"costs must be a mapping or a function, not {costs!r}")
            table.update(costs)
        for pattern in exempt:
            table[pattern] = 0
        self.routes = RouteTable(
            {p: check_cost(c, self.limits, f"the cost of {p!r}") for p, c in table.items()}
        )
        # One cost for every request (no routes listed): the front door skips the lookup.
        self.fixed_cost: Cost | None = (
            self.default_cost if self.cost_function is None and not self.routes else None
        )

    def check_routes(self, routes: Iterable[str]) -> None:
        """Raise ValueError when a ``costs``/``exempt`` pattern names none of ``routes``."""
        routes = list(routes)
        unknown = self.routes.unknown(routes)
        if unknown:
            raise ValueError(
                f"costs/exempt name routes the app does not have: {unknown}; "
                f"its routes are {sorted(set(routes))}"
            )

    def ticket(self, request: object, method: str, path: str) -> tuple[str, Cost] | Refusal | None:
        """Return what to ask the limiter for a request: (key, cost); None: let it through.

        A failing cost function is logged and gives the 503 ``Refusal`` (or None, with
        ``on_error="allow"``); a failing key function is handled as ``key`` says. The first
        step of every front door; the second is the limiter's call, the third ``refusal``
        or ``accepted_headers``.
        """
        cost = self.fixed_cost
        if cost is None:
            try:
                cost = self.cost(request, method, path)
            except Exception as exc:
                return self.failed("the cost function", exc, method, path)
            if not cost:
                return None
        key = self.key(request, method, path)
        return None if key is None else (key, cost)

    def cost(self, request: object, method: str, path: str) -> Cost:
        """Return the tokens a request takes (0: exempt); raise what the cost function raises."""
        if self.cost_function is not None:
            cost = self.cost_function(request)
            return check_cost(cost, self.limits, "the cost function's result")
        return self.routes.find(method, path, self.default_cost)  # type: ignore[no-any-return]

    def key(self, request: object, method: str, path: str) -> str | None:
        """Return the request's key (None: do not limit it); a failing key function is logged.

        A key function that raises, or returns something other than a ``str`` or None, is
        logged and the request gets ``UNKEYED`` (``on_key_error="shared"``) or None
        (``"allow"``). A key over ``max_key_length`` is replaced by its SHA-256.
        """
        try:
            key = self.key_function(request)
        except Exception as exc:
            return self.key_failed(method, path, exc)
        if type(key) is str:
            return key if len(key) <= self.max_key_length else bounded_key(key, self.max_key_length)
        if key is None:
            return None
        error = TypeError(f"the key function returned {type(key).__name__} {key!r:.60}")
        return self.key_failed(method, path, error)

    def key_failed(self, method: str, path: str, exc: Exception) -> str | None:
        """Log a key function's failure; return the key to use instead (None: no limit)."""
        shared = self.share_on_key_error
        action = "limiting it under the shared key" if shared else "letting it through"
        self.log(
            logging.WARNING,
            "key",
            f"ratekeeper: the key function failed for {method} {path}: {exc!r}; "
            f"{action} (on_key_error)",
            exc,
        )
        return UNKEYED if shared else None

    def accepted_headers(self, verdict: Verdict) -> list[tuple[str, str]]:
        """Return the headers for an accepted request (empty unless asked for)."""
        if not self.headers_on_accept:
            return []
        return self.headers.accepted(verdict, time.time())

    def refusal(self, verdict: Verdict) -> Refusal:
        """Return the refusal (429) of a request the limiter refused."""
        return Refusal(
            429,
            retry_after(verdict),
            tuple(self.headers.refusal(verdict, time.time())),
            "Too Many Requests",
            verdict,
            tuple(self.limits),
        )

    def failed(self, what: str, exc: Exception, method: str, path: str) -> Refusal | None:
        """Log a failure of ``what``; return the 503 refusal, or None to let the request in."""
        deny = self.deny_on_error
        action = "answering 503" if deny else "letting the request through"
        self.log(
            logging.ERROR,
            what,
            f"ratekeeper: {what} failed for {method} {path}: {exc!r}; {action} (on_error)",
            exc,
        )
        if not deny:
            return None
        return Refusal(
            503, 1, (("retry-after", "1"),), "Service Unavailable", None, tuple(self.limits)
        )

    def respond(self, request: object, refusal: Refusal) -> Any:
        """Return the hook's response to a refusal; a hook that fails gives the default.

        A ``Response`` gets the refusal's headers it lacks (``Retry-After`` is always sent);
        a framework's response is returned as it is, for the front door to complete.
        """
        try:
            response = self.refusal_response(request, refusal)
        except Exception as exc:
            self.log(
                logging.ERROR,
                "refusal_response",
                f"ratekeeper: the refusal_response hook failed: {exc!r}; sending the default",
                exc,
            )
            return json_refusal(request, refusal)
        if isinstance(response, Response):
            return response.with_headers(refusal.headers)
        return response
