"""What a server says about its limits, read totally: one module for every client adapter.

Pure: no HTTP library, no I/O, no clock reads (the caller passes the wall-clock time), so the
httpx, requests and aiohttp adapters and the LLM helper read a response the same way. Each
family of headers becomes a list of ``Quota`` (per resource: limit, remaining, seconds until
the reset):

=============  ===========================================================================
``ratelimit``  IETF draft: ``RateLimit: "default";r=50;t=30`` with ``RateLimit-Policy:
               "default";q=100;w=60``; also the older ``RateLimit-Limit/-Remaining/-Reset``
``x-ratelimit`` GitHub and many more: ``X-RateLimit-Limit/-Remaining/-Reset`` (epoch seconds,
               or delta seconds when small), ``X-RateLimit-Used``, ``X-RateLimit-Resource``,
               ``X-RateLimit-Reset-After``
``openai``     ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as Go
               durations (``6m0s``, ``1s``, ``20ms``, ``1h2m3.5s``)
``anthropic``  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
               remaining,reset}``, resets as RFC 3339 times
=============  ===========================================================================

Every parser is total: it never raises, and a value that is malformed or out of range (an
integer of more than 15 digits, the bound RFC 8941 sets; a date past year 9999; a duration of
1e15 s or more) is ignored as if absent and logged on the ``ratekeeper.headers`` logger: a
warning the first time for each header, then at debug level. Every number returned is from 0
to under 1e15, so no server can make a client pause without bound (the adapters also cap
every pause at their ``max_pause``).
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "Quota",
    "fields",
    "parse_duration",
    "parse_ratelimit",
    "parse_ratelimit_policy",
    "parse_retry_after",
    "read_quotas",
]

logger = logging.getLogger("ratekeeper.headers")

Fields = Mapping[str, Sequence[str]]
"""A response's header fields: lower-case name -> its values, in order (see ``fields``)."""

# RFC 8941 integers have at most 15 digits; more is out of range, whatever the header. ASCII
# digits only: HTTP's DIGIT is 0-9, while \d would also read other scripts' digits.
_MAX_DIGITS = 15
_BOUND = 1e15
_SECONDS = re.compile(r"\s*([0-9]{1,15}(?:\.[0-9]+)?)\s*")
_COUNT = re.compile(r"\s*([0-9]{1,15})(?:\.[0-9]{0,15})?\s*")  # "599.0" (Reddit) reads 599
_INTEGER = re.compile(r"-?[0-9]+")
_PARAM = re.compile(r"\s*([a-z*][a-z0-9_.*-]*)\s*=\s*(.*?)\s*")
_TOKEN = re.compile(r"[A-Za-z0-9_.:/*-]{1,64}")
_DURATION = re.compile(r"(?:[0-9]{1,15}(?:\.[0-9]{1,15})?(?:h|ms|m|s|us|µs|ns))+")
_DURATION_PART = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,15})?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_RFC3339 = re.compile(
    r"\s*([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(\.[0-9]{1,30})?(Z|z|[+-][0-9]{2}:[0-9]{2})\s*"
)
# An X-RateLimit-Reset at or past this is epoch seconds (2001-09-09), below it delta seconds.
_EPOCH_FROM = 1e9
_warned: set[str] = set()  # the headers already warned about (see _ignored)
# The families whose quotas refill steadily and are whole again at the reset they announce
# (OpenAI's and Anthropic's documented behaviour); the others are windows.
REFILLED = frozenset({"openai", "anthropic"})


@dataclass(frozen=True)
class Quota:
    """One quota a server reported on a response.

    ``family``: which headers said it (``ratelimit``, ``x-ratelimit``, ``openai``,
    ``anthropic``). ``resource``: what it counts within the family (``requests``, ``tokens``,
    ``input-tokens``, ``output-tokens``; GitHub's ``core`` or ``search``; an IETF policy
    name). ``unit``: ``requests`` when each request takes one, else what it counts
    (``tokens``, ``content-bytes``). ``limit``, ``remaining``: counts, or None when not
    sent. ``reset``: seconds from the response until the quota is restored, or None.
    """

    family: str
    resource: str
    unit: str
    limit: int | None
    remaining: int | None
    reset: float | None

    @property
    def per_request(self) -> bool:
        """True when each request takes one of this quota."""
        return self.unit == "requests"

    @property
    def refill_rate(self) -> float | None:
        """Return the provider's refill rate (units per second) when the quota refills
        steadily and is whole again at its reset (OpenAI's and Anthropic's, as they
        document), with limit, remaining and reset all known; else None (a window, which
        gives nothing back before its reset, or not enough said)."""
        if self.family not in REFILLED or self.limit is None or self.remaining is None:
            return None
        if not self.reset or self.remaining >= self.limit:
            return None
        return (self.limit - self.remaining) / self.reset


def fields(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Return a response's header fields as {lower-case name: [values]}, in order.

    ``items`` is every (name, value) pair, repeated names included: httpx's
    ``headers.multi_items()``, aiohttp's and requests' ``headers.items()``.
    """
    found: dict[str, list[str]] = {}
    for name, value in items:
        found.setdefault(name.lower(), []).append(value)
    return found


def _first(headers: Fields, name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _ignored(header: str, value: str, why: str) -> None:
    """Log that a header value was ignored: a warning the first time per header, then debug.

    Once per header, because a server that sends garbage sends it on every response.
    """
    level = logging.DEBUG if header in _warned else logging.WARNING
    _warned.add(header)
    logger.log(level, "ignoring %s %s %.80r (logged once as a warning)", why, header, value)


# -- single values --------------------------------------------------------------------------


def parse_retry_after(
    value: str, date: str | None = None, now: float | None = None
) -> float | None:
    """Return the seconds a ``Retry-After`` value asks for, or None if it is malformed.

    Accepts delay-seconds (``"120"``, at most 15 digits; a decimal fraction is tolerated) and
    HTTP dates (years 1 to 9999). A date is measured from ``date`` (the response's ``Date``
    header) when that parses, else from ``now`` (default: the wall clock); a date in the past
    means 0. Never raises: anything else is None (and logged, see the module), so the result
    is always None or from 0 to under 1e15.
    """
    match = _SECONDS.fullmatch(value)
    if match:
        return float(match[1])
    when = _http_date(value)
    if when is None:
        _ignored("Retry-After", value, "a malformed or out-of-range")
        return None
    return max(0.0, when - _base(date, time.time() if now is None else now))


def _http_date(value: str) -> float | None:
    """Return an HTTP date as a POSIX timestamp, or None when it does not parse."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        return parsed.timestamp() if parsed.tzinfo is not None else None
    except (TypeError, ValueError, IndexError, OverflowError):  # e.g. year 0 or 10000
        return None


def _base(date: str | None, now: float) -> float:
    """Return the time a response was made: its ``Date`` when that parses, else ``now``.

    Measuring an absolute reset from the server's own Date makes clock skew irrelevant; Date
    is truncated to the second, which only makes the wait longer, never shorter.
    """
    base = _http_date(date) if date else None
    return now if base is None else base


def _precise_base(date: str | None, now: float) -> float:
    """Return the time to measure a precise absolute reset (an RFC 3339 time, epoch
    seconds) from: ``now`` while the response's ``Date`` agrees with it (Date's whole
    seconds would lose the precision), the Date when the two clocks disagree by more."""
    base = _base(date, now)
    return now if -0.5 <= now - base <= 1.5 else base


def parse_duration(value: str) -> float | None:
    """Return the seconds of a Go-style duration (``6m0s``, ``1s``, ``20ms``, ``1h2m3.5s``).

    Units h, m, s, ms, us (or µs), ns; each number at most 15 digits (and 15 decimals).
    Never raises: anything else, or a total of 1e15 s or more, is None (and logged).
    """
    text = value.strip()
    if len(text) > 100 or _DURATION.fullmatch(text) is None:
        _ignored("duration", value, "a malformed")
        return None
    total = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    if total >= _BOUND:
        _ignored("duration", value, "an out-of-range")
        return None
    return total


def _rfc3339(value: str) -> float | None:
    """Return an RFC 3339 time as a POSIX timestamp, or None when it does not parse."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    fraction = float(match[7]) if match[7] else 0.0
    zone = match[8]
    try:
        offset = timezone.utc
        if zone not in ("Z", "z"):
            sign = -1 if zone[0] == "-" else 1
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            offset = timezone(sign * timedelta(hours=hours, minutes=minutes))
        second = min(second, 59)  # a leap second reads as :59
        stamp = datetime(year, month, day, hour, minute, second, tzinfo=offset)
        return stamp.timestamp() + fraction
    except (ValueError, OverflowError):  # month 13, an offset of 24:00 or more, year 0
        return None


def _count(header: str, value: str | None) -> int | None:
    if value is None:
        return None
    match = _COUNT.fullmatch(value)
    if match is None:
        _ignored(header, value, "a malformed or out-of-range")
        return None
    return int(match[1])


def _delta(header: str, value: str | None) -> float | None:
    if value is None:
        return None
    match = _SECONDS.fullmatch(value)
    if match is None:
        _ignored(header, value, "a malformed or out-of-range")
        return None
    return float(match[1])


def _until(header: str, value: str | None, base: float) -> float | None:
    """Return the seconds from ``base`` until the RFC 3339 time ``value`` (0 if past)."""
    if value is None:
        return None
    when = _rfc3339(value)
    if when is None:
        _ignored(header, value, "a malformed or out-of-range")
        return None
    return min(max(0.0, when - base), _BOUND - 1)


# -- structured-field lists (the IETF headers) -----------------------------------------------


def _items(header: str, value: str) -> list[tuple[str, dict[str, int | str]]]:
    """Read a structured-field list leniently: ``[(name, {param: int or str}), ...]``.

    An item with a negative integer or one of more than 15 digits is left out and logged;
    parameters that are neither integers nor strings (``pk=:...:``) are skipped.
    """
    items: list[tuple[str, dict[str, int | str]]] = []
    for member in _split_list(value):
        name, *params = member.split(";")
        name = name.strip().strip('"')
        if not name:
            continue
        values: dict[str, int | str] = {}
        usable = True
        for param in params:
            match = _PARAM.fullmatch(param.lower())
            if match is None:
                continue
            key, text = match.groups()
            if _INTEGER.fullmatch(text):
                if text.startswith("-") or len(text) > _MAX_DIGITS:
                    usable = False
                    break
                values[key] = int(text)
            elif len(text) >= 2 and text[0] == text[-1] == '"':
                values[key] = text[1:-1]
        if not usable:
            _ignored(header, member, "a negative or out-of-range item of")
            continue
        items.append((name, values))
    return items


def _split_list(value: str) -> list[str]:
    """Split a structured-field list on commas outside quoted strings."""
    members: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            members.append("".join(current))
            current = []
        else:
            current.append(char)
    members.append("".join(current))
    return [m for m in members if m.strip()]


def _int(params: Mapping[str, int | str], key: str) -> int | None:
    value = params.get(key)
    return value if isinstance(value, int) else None


def parse_ratelimit(value: str) -> list[tuple[str, int | None, int | None]]:
    """Read a ``RateLimit`` field: ``[(policy, r, t), ...]``, malformed items left out.

    The draft's syntax is a structured-field list, ``"default";r=50;t=30, "daily";r=1``;
    a bare token as the policy name is accepted too. ``r`` or ``t`` is None when absent.
    Never raises: an item with a negative integer or one of more than 15 digits (RFC 8941's
    bound) is left out and logged (see the module), so every ``r`` and ``t`` is from 0 to
    under 1e15.
    """
    return [
        (name, _int(params, "r"), _int(params, "t")) for name, params in _items("RateLimit", value)
    ]


def parse_ratelimit_policy(value: str) -> list[tuple[str, int | None, int | None, str | None]]:
    """Read a ``RateLimit-Policy`` field: ``[(policy, q, w, qu), ...]``, malformed items out.

    ``"default";q=100;w=60;qu="requests"`` (draft -08 on); the older ``100;w=60`` (the
    quota as the item) reads as policy ``"100"`` with ``q=100``. ``q`` (quota), ``w``
    (window, seconds) and ``qu`` (quota unit) are None when absent. Never raises, as
    ``parse_ratelimit``.
    """
    policies = []
    for name, params in _items("RateLimit-Policy", value):
        quota = _int(params, "q")
        if quota is None and name.isascii() and name.isdigit() and len(name) <= _MAX_DIGITS:
            quota = int(name)
        unit = params.get("qu")
        policies.append((name, quota, _int(params, "w"), unit if isinstance(unit, str) else None))
    return policies


# -- the families ----------------------------------------------------------------------------


def read_quotas(headers: Fields, now: float) -> list[Quota]:
    """Return every quota the response's headers report, from every family they use.

    ``headers`` as ``fields`` makes them; ``now`` is the wall-clock POSIX time. Absolute
    resets (epoch seconds, RFC 3339 times) are measured from ``now`` while the response's
    ``Date`` agrees with it to within its whole seconds, else from the Date (the clocks
    disagree: the server's own is the one its resets are on). Never raises; see the module
    for what is ignored.
    """
    return [
        *_ietf(headers),
        *_x_ratelimit(headers, now),
        *_openai(headers),
        *_anthropic(headers, now),
    ]


def _ietf(headers: Fields) -> list[Quota]:
    policies = {}
    for value in headers.get("ratelimit-policy", ()):
        for name, quota, _, unit in parse_ratelimit_policy(value):
            policies[name] = (quota, unit or "requests")
    quotas = []
    for value in headers.get("ratelimit", ()):
        for name, remaining, reset in parse_ratelimit(value):
            limit, unit = policies.get(name, (None, "requests"))
            quotas.append(Quota("ratelimit", name, unit, limit, remaining, reset))
    if quotas:
        return quotas
    # The older drafts: RateLimit-Limit ("100" or "100, 100;w=60"), -Remaining, -Reset.
    left = _count("RateLimit-Remaining", _first(headers, "ratelimit-remaining"))
    until = _delta("RateLimit-Reset", _first(headers, "ratelimit-reset"))
    if left is None and until is None:
        return []
    limit_text = _first(headers, "ratelimit-limit")
    if limit_text is not None:
        limit_text = re.split("[,;]", limit_text, maxsplit=1)[0]
    limit = _count("RateLimit-Limit", limit_text)
    return [Quota("ratelimit", "default", "requests", limit, left, until)]


def _x_ratelimit(headers: Fields, now: float) -> list[Quota]:
    limit = _count("X-RateLimit-Limit", _first(headers, "x-ratelimit-limit"))
    remaining = _count("X-RateLimit-Remaining", _first(headers, "x-ratelimit-remaining"))
    used = _count("X-RateLimit-Used", _first(headers, "x-ratelimit-used"))
    if remaining is None and limit is not None and used is not None:
        remaining = max(0, limit - used)
    if limit is None and remaining is None:
        return []
    reset = _delta("X-RateLimit-Reset-After", _first(headers, "x-ratelimit-reset-after"))
    if reset is None:
        stamp = _delta("X-RateLimit-Reset", _first(headers, "x-ratelimit-reset"))
        if stamp is not None:
            if stamp >= _EPOCH_FROM:
                stamp = max(0.0, stamp - _precise_base(_first(headers, "date"), now))
            reset = stamp
    resource = _first(headers, "x-ratelimit-resource")
    if resource is not None and _TOKEN.fullmatch(resource.strip()) is None:
        _ignored("X-RateLimit-Resource", resource, "a malformed")
        resource = None
    name = "default" if resource is None else resource.strip()
    return [Quota("x-ratelimit", name, "requests", limit, remaining, reset)]


def _openai(headers: Fields) -> list[Quota]:
    quotas = []
    for kind in ("requests", "tokens"):
        limit = _count(f"x-ratelimit-limit-{kind}", _first(headers, f"x-ratelimit-limit-{kind}"))
        remaining = _count(
            f"x-ratelimit-remaining-{kind}", _first(headers, f"x-ratelimit-remaining-{kind}")
        )
        if limit is None and remaining is None:
            continue
        text = _first(headers, f"x-ratelimit-reset-{kind}")
        reset = None if text is None else parse_duration(text)
        quotas.append(Quota("openai", kind, kind, limit, remaining, reset))
    return quotas


def _anthropic(headers: Fields, now: float) -> list[Quota]:
    quotas = []
    base: float | None = None  # the Date is read once, and only if a reset needs it
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        prefix = f"anthropic-ratelimit-{kind}"
        limit = _count(f"{prefix}-limit", _first(headers, f"{prefix}-limit"))
        remaining = _count(f"{prefix}-remaining", _first(headers, f"{prefix}-remaining"))
        if limit is None and remaining is None:
            continue
        text = _first(headers, f"{prefix}-reset")
        if text is not None and base is None:
            base = _precise_base(_first(headers, "date"), now)
        reset = None if base is None else _until(f"{prefix}-reset", text, base)
        quotas.append(Quota("anthropic", kind, kind, limit, remaining, reset))
    return quotas
