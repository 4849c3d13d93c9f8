"""Limiters from configuration: a storage URL names the backend, the calling code stays the same.

``limiter("5/s", storage=os.environ["RATE_STORAGE"], key="api")`` returns a ``TokenBucket``
for ``memory://`` and a ``RedisTokenBucket`` for ``redis://cache:6379/0?timeout=0.2``; a
mapping of limits (``Limit.parse_many("10/hour;100/day")`` is one) returns the composite
form; ``sync_limiter`` returns the blocking twins.
The URL grammar::

    memory://
    (redis|rediss|valkey|valkeys)[+cluster]://[user:password@]host[:port][/db][?options]

``valkey`` is ``redis`` and ``valkeys`` is ``rediss`` (TLS): Valkey speaks the protocol.
``+cluster`` makes a Redis Cluster client with the URL's host as its first node. ratekeeper's
query options are ``prefix``, ``timeout`` (seconds), ``on_failure`` (closed, open,
fallback), ``fallback_share`` and ``retry_interval`` (seconds); every other query option
is redis-py's (``db``, ``socket_keepalive``, ``ssl_ca_certs``...) and goes, with the rest
of the URL, to redis-py's ``from_url``. Keyword options override the URL's.

The rule it keeps: refuse what is unknown. Every mistake in a URL is a ValueError naming
the part that is wrong and what is allowed, raised before any client is made; a password
in the URL is never repeated in a message.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast, overload
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

from ._asyncio import CompositeLimiter, TokenBucket
from ._errors import BackendUnavailable
from ._gcra import LimitsMapping
from ._rate import RateLike, several
from ._threading import SyncCompositeLimiter, SyncTokenBucket
from .contract import AsyncBucket, AsyncComposite, SyncBucket, SyncComposite

__all__ = ["SCHEMES", "limiter", "sync_limiter"]

# scheme -> (the scheme redis-py is given, whether it is a cluster)
_REDIS_SCHEMES: dict[str, tuple[str, bool]] = {
    "redis": ("redis", False),
    "rediss": ("rediss", False),
    "valkey": ("redis", False),
    "valkeys": ("rediss", False),
    "redis+cluster": ("redis", True),
    "rediss+cluster": ("rediss", True),
    "valkey+cluster": ("redis", True),
    "valkeys+cluster": ("rediss", True),
}
SCHEMES = ("memory", *_REDIS_SCHEMES)
"""The storage URL schemes ``limiter`` and ``sync_limiter`` accept."""

_POLICIES = ("closed", "open", "fallback")

# The keywords each kind of limiter takes besides rate, capacity and key.
_MEMORY_KEYWORDS = frozenset({"clock", "name", "on_event", "initial"})
_MEMORY_COMPOSITE_KEYWORDS = _MEMORY_KEYWORDS - {"initial"}
_REDIS_KEYWORDS = frozenset(
    {"prefix", "timeout", "on_failure", "fallback_share", "retry_interval", "name"}
)


def _number(name: str, value: str, *, low: float, allow_low: bool, high: float | None) -> float:
    """Return ``value`` as a finite float within bounds; raise ValueError naming the option."""
    allowed = f"{'>=' if allow_low else '>'} {low:g}" + (f" and <= {high:g}" if high else "")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if (
        not math.isfinite(number)
        or number < low
        or (number == low and not allow_low)
        or (high is not None and number > high)
    ):
        raise ValueError(
            f"storage URL option {name}={value!r}: must be a number {allowed}"
        ) from None
    return number


def _policy(name: str, value: str) -> str:
    if value not in _POLICIES:
        raise ValueError(
            f"storage URL option {name}={value!r}: must be one of {', '.join(_POLICIES)}"
        )
    return value


# ratekeeper's query options and how each value is read.
_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "prefix": lambda _name, value: value,
    "timeout": lambda name, value: _number(name, value, low=0, allow_low=False, high=None),
    "on_failure": _policy,
    "fallback_share": lambda name, value: _number(name, value, low=0, allow_low=False, high=1),
    "retry_interval": lambda name, value: _number(name, value, low=0, allow_low=True, high=None),
}


@dataclass(frozen=True)
class _Storage:
    """A parsed storage URL: where the limits live and ratekeeper's options for them."""

    scheme: str
    url: str | None = None  # for redis-py: its scheme, without ratekeeper's options
    cluster: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def _shown(storage: str, parts: SplitResult) -> str:
    """Return ``storage`` for a message, its password (if any) replaced by ``***``."""
    if parts.password is None:
        return storage
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _parse(storage: str) -> _Storage:
    """Parse a storage URL; raise ValueError naming the part that is wrong (see the module)."""
    if not isinstance(storage, str):
        raise TypeError(f"storage must be a URL string such as 'memory://', not {storage!r}")
    parts = urlsplit(storage)
    shown = _shown(storage, parts)
    if parts.scheme == "memory":
        if parts.netloc or parts.path:
            raise ValueError(
                f"storage {shown!r}: memory:// takes no host or path (write 'memory://')"
            )
        if parts.query or parts.fragment:
            raise ValueError(
                f"storage {shown!r}: memory:// takes no options in the URL; pass "
                f"{', '.join(sorted(_MEMORY_KEYWORDS))} as keywords"
            )
        return _Storage("memory")
    if parts.scheme not in _REDIS_SCHEMES:
        found = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(
            f"storage {shown!r}: {found}; the storage URL's scheme must be one of "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    if parts.fragment:
        raise ValueError(f"storage {shown!r}: a storage URL takes no fragment ('#...')")
    try:
        parts.port  # noqa: B018 (reading it checks it)
    except ValueError:
        raise ValueError(f"storage {shown!r}: the port must be a number") from None
    target, cluster = _REDIS_SCHEMES[parts.scheme]
    options: dict[str, Any] = {}
    seen: set[str] = set()
    kept: list[str] = []
    for piece in parts.query.split("&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition("=")
        name, value = unquote_plus(raw_name), unquote_plus(raw_value)
        if name in seen:
            raise ValueError(f"storage {shown!r}: option {name!r} is given more than once")
        seen.add(name)
        if name in _OPTIONS:
            options[name] = _OPTIONS[name](name, value)
        elif name in _redis_py_options():
            kept.append(piece)  # verbatim: redis-py decodes it as it always does
        else:
            raise ValueError(
                f"storage {shown!r}: unknown option {name!r}; ratekeeper's are "
                f"{', '.join(_OPTIONS)}, and redis-py's connection options (db, "
                "socket_keepalive, ssl_ca_certs, client_name...) pass through to it"
            )
    url = urlunsplit(parts._replace(scheme=target, query="&".join(kept)))
    return _Storage(parts.scheme, url, cluster, options)


def _redis_py_options() -> frozenset[str]:
    """Return the names redis-py's client takes, which its ``from_url`` reads from a query."""
    redis = _redis_client()
    return frozenset(inspect.signature(redis.Redis.__init__).parameters) - {"self"}


def _redis_client() -> ModuleType:
    """Return the ``redis`` module; raise ImportError with the install line when it is absent."""
    try:
        import redis  # noqa: PLC0415 (an optional dependency)
    except ImportError as exc:
        raise ImportError(
            "a redis:// or valkey:// storage needs the redis client: "
            "pip install 'ratekeeper[redis]'"
        ) from exc
    return redis


def _check_keywords(options: Mapping[str, Any], allowed: frozenset[str], scheme: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"{', '.join(unknown)}: not an option of a {scheme}:// limiter; "
            f"it takes {', '.join(sorted(allowed))}"
        )


def _build(
    rate: Any,
    capacity: int | None,
    storage: str,
    key: str | None,
    options: dict[str, Any],
    *,
    sync: bool,
) -> Any:
    """Return the limiter ``storage`` names: the one engine behind limiter and sync_limiter."""
    if isinstance(rate, str) and several(rate):
        # The type of what is returned follows the argument's type, never a string's text.
        name = "sync_limiter" if sync else "limiter"
        raise ValueError(
            f"{name}({rate!r:.60}) holds several limits; a str is one rate (e.g. '10/hour'). "
            f"For several, pass them as limits: {name}(Limit.parse_many('10/hour;100/day'))"
        )
    composite = isinstance(rate, Mapping)
    if composite and capacity is not None:
        raise TypeError(
            "capacity= is for a single rate; in a mapping of limits each carries its own, "
            "as Limit(rate, capacity) or (rate, capacity), e.g. {'hour': Limit('10/hour', 5)}"
        )
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str naming the limit, not {type(key).__name__}")
    parsed = _parse(storage)
    if parsed.scheme == "memory":
        _check_keywords(
            options, _MEMORY_COMPOSITE_KEYWORDS if composite else _MEMORY_KEYWORDS, "memory"
        )
        if key is not None:
            options = {"name": key, **options}
        if composite:
            return (SyncCompositeLimiter if sync else CompositeLimiter)(rate, **options)
        return (SyncTokenBucket if sync else TokenBucket)(rate, capacity, **options)

    if key is None:
        raise ValueError(
            f"a {parsed.scheme}:// limiter needs key=: the name of the limit at the server, "
            "shared by every limiter given the same key"
        )
    _check_keywords(options, _REDIS_KEYWORDS, parsed.scheme)
    backend = _redis_backend()
    if sync:
        cls = backend.SyncRedisCompositeLimiter if composite else backend.SyncRedisTokenBucket
    else:
        cls = backend.RedisCompositeLimiter if composite else backend.RedisTokenBucket
    kwargs = {**parsed.options, **options}
    args = (rate,) if composite else (rate, capacity)
    assert parsed.url is not None
    if not parsed.cluster:
        # A URL: the limiter makes the client (redis-py's from_url) and owns it.
        return cls(parsed.url, key, *args, **kwargs)
    timeout = kwargs.get("timeout", inspect.signature(cls).parameters["timeout"].default)
    client = _cluster_client(parsed.url, timeout, sync)
    try:
        made = cls(client, key, *args, **kwargs)
    except BaseException:
        if sync:  # the blocking client connects as it is made; the asyncio one has not yet
            client.close()
        raise
    made._owned = True  # it made the client: close()/aclose() closes it
    return made


def _redis_backend() -> ModuleType:
    """Return ``ratekeeper.redis``; raise ImportError when the redis client is absent."""
    _redis_client()
    from . import redis as backend  # noqa: PLC0415 (needs the optional client)

    return backend


def _cluster_client(url: str, timeout: float, sync: bool) -> Any:
    """Return a Redis Cluster client for ``url``, its calls bounded as a limiter's own are."""
    redis = _redis_client()
    from redis.backoff import NoBackoff  # noqa: PLC0415

    if sync:
        from redis.cluster import RedisCluster  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415
    else:
        from redis.asyncio.cluster import RedisCluster  # type: ignore[assignment]  # noqa: PLC0415
        from redis.asyncio.retry import Retry  # type: ignore[assignment]  # noqa: PLC0415
    try:
        return RedisCluster.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),  # as for a single server: one reconnect, at once
        )
    except ValueError as exc:
        raise ValueError(f"bad Redis Cluster URL: {exc}") from None
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        # Only the blocking client connects as it is made.
        raise BackendUnavailable(f"cannot reach the Redis Cluster: {exc}") from exc


@overload
def limiter(
    rate: LimitsMapping,
    capacity: None = ...,
    *,
    storage: str = ...,
    key: str | None = ...,
    **options: Any,
) -> AsyncComposite: ...


@overload
def limiter(
    rate: RateLike,
    capacity: int | None = ...,
    *,
    storage: str = ...,
    key: str | None = ...,
    **options: Any,
) -> AsyncBucket: ...


def limiter(
    rate: RateLike | LimitsMapping,
    capacity: int | None = None,
    *,
    storage: str = "memory://",
    key: str | None = None,
    **options: Any,
) -> AsyncBucket | AsyncComposite:
    """Return the asyncio limiter ``storage`` names, for ``rate`` or a mapping of limits.

    ``memory://`` gives a ``TokenBucket`` (a mapping: a ``CompositeLimiter``), ``key`` its
    name; ``redis://``, ``valkey://`` and the rest give a ``RedisTokenBucket`` (a mapping: a
    ``RedisCompositeLimiter``) on a client it makes and owns (``aclose()`` closes it), and
    limiters given the same URL and ``key`` share one limit at the server. ``options`` are
    the limiter's keywords (``clock=``, ``on_event=`` in memory; ``timeout=``,
    ``on_failure=``... at a server) and override the URL's. Several limits in one string, as
    the ``limits`` library writes them, are ``limiter(Limit.parse_many("10/hour;100/day"))``
    (named ``"hour"`` and ``"day"``): the returned type follows the argument's type, so a
    ``str`` is always one rate and a string holding several is a ValueError saying so.

    Raises ValueError for a bad URL (naming the part and what is allowed), a Redis storage
    without ``key`` or a string of several limits, TypeError for a keyword the limiter does
    not take, ImportError when a Redis storage is named and the redis client is not
    installed, and what the limiter's constructor raises for a bad rate or capacity.
    """
    return cast(
        "AsyncBucket | AsyncComposite", _build(rate, capacity, storage, key, options, sync=False)
    )


@overload
def sync_limiter(
    rate: LimitsMapping,
    capacity: None = ...,
    *,
    storage: str = ...,
    key: str | None = ...,
    **options: Any,
) -> SyncComposite: ...


@overload
def sync_limiter(
    rate: RateLike,
    capacity: int | None = ...,
    *,
    storage: str = ...,
    key: str | None = ...,
    **options: Any,
) -> SyncBucket: ...


def sync_limiter(
    rate: RateLike | LimitsMapping,
    capacity: int | None = None,
    *,
    storage: str = "memory://",
    key: str | None = None,
    **options: Any,
) -> SyncBucket | SyncComposite:
    """Return the blocking limiter ``storage`` names, for ``rate`` or a mapping of limits.

    The blocking twin of ``limiter``: ``SyncTokenBucket``/``SyncCompositeLimiter`` in
    memory, ``SyncRedisTokenBucket``/``SyncRedisCompositeLimiter`` at a server (``close()``
    closes the client it made). Raises as ``limiter`` does, and BackendUnavailable when a
    ``+cluster`` URL's cluster cannot be reached (the blocking client connects as it is made).
    """
    return cast(
        "SyncBucket | SyncComposite", _build(rate, capacity, storage, key, options, sync=True)
    )
