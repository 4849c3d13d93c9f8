"""Rate: how many tokens per how much time, as an exact value.

The emission interval (nanoseconds per token) is kept as an exact fraction so that the
arithmetic in the core can run on integers and never drift, however long it runs. Every
input is bounded: a rate outside the ranges below is refused at once, and a rate string is
read in time linear in its length (a number's exponent is checked before it is expanded).

Units: ms, s, minute, hour, day, week (7 days), month (30 days, as the ``limits`` library
counts it) and year (365 days). A string of several limits (``"10/hour;100/day"``, separated
by ``;``, ``,`` or ``|`` as ``limits`` reads them) is read by ``parse_many``, which names each
limit after its period (``"hour"``, ``"day"``, ``"2_hours"``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = [
    "MAX_INTERVAL_NS",
    "MAX_LIMITS",
    "MAX_TOKENS",
    "MIN_INTERVAL_NS",
    "Rate",
    "RateLike",
    "parse_many",
    "several",
    "split_limits",
]

NS_PER_SECOND = 1_000_000_000

MAX_TOKENS = 2**48
"""The most tokens anything takes: a rate's token count, a capacity, one call's amount.

About 2.8e14. With intervals bounded as below, every sum the core forms stays a small
integer and every float it reports (tokens available, seconds to wait) stays finite."""
MIN_INTERVAL_NS = 1
"""The shortest emission interval: one token per nanosecond (1e9 tokens/s)."""
MAX_INTERVAL_NS = 3650 * 86_400 * NS_PER_SECOND
"""The longest emission interval: 3650 days, one token per 10 years (3.15e17 ns). The Redis
script keeps only 2^51 units exact (about 26 days of whole ns for a full bucket); a slower
limit is refused there by ``make_spec``, naming that bound."""
_RANGES = (
    f"a rate takes at most 2**48 ({MAX_TOKENS}) tokens per period, one token every "
    f"1 ns (1e9 tokens/s) to 3650 days (one per 10 years), e.g. '1000000/s' or '1/year'"
)
MAX_LIMITS = 32
"""The most limits one string may hold (``"10/s;500/hour;5000/day"`` holds three)."""
# The emission interval is reduced to a fraction whose denominator is at most this; any rate
# written with a few decimal digits is represented exactly.
_MAX_DENOMINATOR = 1_000_000

_UNITS: dict[str, Fraction] = {}
for _names, _seconds in (
    (("ms", "msec", "millisecond", "milliseconds"), Fraction(1, 1000)),
    (("s", "sec", "secs", "second", "seconds"), Fraction(1)),
    (("m", "min", "mins", "minute", "minutes"), Fraction(60)),
    (("h", "hr", "hrs", "hour", "hours"), Fraction(3600)),
    (("d", "day", "days"), Fraction(86400)),
    (("w", "wk", "wks", "week", "weeks"), Fraction(7 * 86400)),
    # As the limits library (and so Flask-Limiter and slowapi) counts a month.
    (("mo", "month", "months"), Fraction(30 * 86400)),
    # limits counts 360 days; a calendar year is what a reader of "1/year" expects.
    (("y", "yr", "yrs", "year", "years"), Fraction(365 * 86400)),
):
    for _name in _names:
        _UNITS[_name] = _seconds

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# One \s* between "/" and the unit whether or not a count stands there: two in a row around
# an optional group would let a regex engine split a run of spaces n ways (quadratic time).
_RATE_RE = re.compile(
    rf"^\s*(?P<tokens>{_NUMBER})\s*(?:/|per\b)\s*(?:(?P<count>{_NUMBER})\s*)?"
    rf"(?P<unit>[a-zA-Z]+)\s*$"
)
_LITERAL_RE = re.compile(r"(\d*)(?:\.(\d*))?(?:[eE]([+-]?)(\d+))?")
# A literal whose value lies outside 1e-400..1e400 is refused before it is expanded: no
# float (nor any rate in range) needs more, and "1e999999999" would be a billion digits.
_MAX_MAGNITUDE = 400
# Digits past the 40th significant one are dropped: every int in range (<= 2**48) has
# fewer, and any other value ends up a float, which keeps 17.
_MAX_DIGITS = 40
_FORMS = (
    "'5/s', '100/minute', '10 per 2 seconds', '1000/hour', '5000/day' or '1/month' "
    "(units: ms, s, minute, hour, day, week, month = 30 days, year = 365 days)"
)
# Periods by which limits are named, longest first: a period is named after the longest
# unit it is a whole number of ("hour", "2_hours", "90_seconds").
_PERIOD_NAMES = (
    ("year", Fraction(365 * 86400)),
    ("month", Fraction(30 * 86400)),
    ("week", Fraction(7 * 86400)),
    ("day", Fraction(86400)),
    ("hour", Fraction(3600)),
    ("minute", Fraction(60)),
    ("second", Fraction(1)),
    ("millisecond", Fraction(1, 1000)),
)
_SEPARATORS = ";,|"
_SPLIT_RE = re.compile(r"[;,|]")


def _exact(value: float | int | Fraction, what: str) -> Fraction:
    """Convert a positive finite number to a Fraction, reading floats as their decimal repr."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise TypeError(
            f"{what} must be a number, not {type(value).__name__} {_show(value)}; "
            f"e.g. Rate(5) or Rate(100, per=60), or Rate.parse('100/minute')"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be finite and > 0, got {value!r}; e.g. Rate(100, per=60)")
    exact = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
    if exact <= 0:
        raise ValueError(f"{what} must be > 0, got {_show(value)}; e.g. Rate(100, per=60)")
    return exact


def _show(value: object) -> str:
    """Return a short repr for an error message, even of an int too long to print."""
    if isinstance(value, Fraction):
        return f"{_show(value.numerator)}/{_show(value.denominator)}"
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<an int of {value.bit_length()} bits>"
    text = repr(value) if isinstance(value, (int, float)) else object.__repr__(value)
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} chars)"


def _clip(text: str) -> str:
    """Return repr(text), shortened to fit an error message."""
    shown = repr(text)
    return shown if len(shown) <= 80 else f"{shown[:60]}...({len(text)} chars)"


def _literal(digits: str, text: str) -> Fraction:
    """Return the exact value of a decimal literal of ``_NUMBER``, in time linear in its length.

    Raises ValueError for a value beyond 1e400 or, other than 0, below 1e-400.
    """
    if not digits.isascii():  # \d matched other scripts' digits, which int() also reads
        digits = "".join(c if c in ".eE+-" else str(int(c)) for c in digits)
    match = _LITERAL_RE.fullmatch(digits)
    assert match is not None, "the rate pattern only lets literals through"
    whole, fraction, sign, exponent = match.groups(default="")
    significant = (whole + fraction).lstrip("0")
    if not significant:
        return Fraction(0)
    shift = -len(fraction)
    trimmed = significant.rstrip("0")
    shift += len(significant) - len(trimmed)
    exponent = exponent.lstrip("0")
    if len(exponent) > 9:  # past any magnitude allowed, whatever the digits: don't expand it
        exponent = "1" + "0" * 9
    shift += -int(exponent or "0") if sign == "-" else int(exponent or "0")
    magnitude = len(trimmed) + shift  # 10**(magnitude-1) <= value < 10**magnitude
    if not -_MAX_MAGNITUDE < magnitude <= _MAX_MAGNITUDE:
        raise ValueError(
            f"the number {_clip(digits)} in rate {_clip(text)} is out of range; {_RANGES}"
        )
    if len(trimmed) > _MAX_DIGITS:
        shift += len(trimmed) - _MAX_DIGITS
        trimmed = trimmed[:_MAX_DIGITS]
    if shift >= 0:
        return Fraction(int(trimmed) * 10**shift)
    return Fraction(int(trimmed), 10**-shift)


@dataclass(frozen=True)
class Rate:
    """A rate of ``tokens`` per ``per`` seconds, e.g. ``Rate(5)``, ``Rate(100, per=60)``.

    ``Rate.parse("100/minute")`` reads the usual text forms. Raises TypeError for a value that
    is not a number, and ValueError, naming the value and the range, for a rate that is zero,
    negative or not finite, or outside these bounds:

    - ``tokens`` at most ``MAX_TOKENS`` = 2**48 (about 2.8e14);
    - the emission interval ``per / tokens`` from ``MIN_INTERVAL_NS`` = 1 ns (a rate of at
      most 1e9 tokens/s) to ``MAX_INTERVAL_NS`` = 3650 days (one token per 10 years).

    So ``per`` is at most 2**48 times 10 years, and ``str()``, ``interval`` and
    ``per_second`` of any Rate are finite. The Redis backend has a tighter bound of its own
    (capacity * interval, see ``make_spec``), refused there with its own message.
    """

    tokens: float
    per: float = 1.0
    ns_per_token: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = _exact(self.tokens, "rate tokens")
        per = _exact(self.per, "rate period 'per' (seconds)")
        if tokens > MAX_TOKENS:
            raise ValueError(f"rate tokens={_show(self.tokens)} is too many: {_RANGES}")
        exact = per * NS_PER_SECOND / tokens
        if not MIN_INTERVAL_NS <= exact <= MAX_INTERVAL_NS:
            pace = "fast" if exact < MIN_INTERVAL_NS else "slow"
            raise ValueError(
                f"rate {_show(self.tokens)} per {_show(self.per)}s is too {pace}: {_RANGES}"
            )
        # Both bounds are integers, so the nearest fraction stays within them.
        interval = exact.limit_denominator(_MAX_DENOMINATOR)
        object.__setattr__(self, "ns_per_token", interval)

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Read a rate such as '5/s', '100/minute', '10 per 2 seconds' or '1 per month'.

        Units: ms, s, minute, hour, day, week, month (30 days) and year (365 days), with
        the usual abbreviations and plurals. Several rates in one string (``"10/hour;100/day"``)
        are for composites: see ``parse_many``.

        Raises ValueError naming the text and the accepted forms when it does not parse, and
        naming the range when a number in it is out of range (see the class). Takes time
        linear in the text's length.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"a rate string such as '5/s' is needed, not {type(text).__name__} {_show(text)}"
            )
        match = _RATE_RE.match(text)
        unit = _UNITS.get(match["unit"].lower()) if match else None
        if match is None or unit is None:
            if several(text):
                raise ValueError(
                    f"cannot read the rate {_clip(text)}: a Rate is one rate, e.g. '10/hour'; "
                    "several limits in one string (e.g. '10/hour;100/day') make a composite: "
                    "CompositeLimiter('10/hour;100/day') or Limit.parse_many('10/hour;100/day')"
                )
            raise ValueError(f"cannot read the rate {_clip(text)}; write it like {_FORMS}")
        count = _literal(match["count"], text) if match["count"] else Fraction(1)
        if count <= 0:
            raise ValueError(
                f"the period in rate {_clip(text)} must be > 0, e.g. '10 per 2 seconds'"
            )
        tokens = _literal(match["tokens"], text)
        if tokens <= 0:
            raise ValueError(f"the token count in rate {_clip(text)} must be > 0, e.g. '1/s'")
        return cls(_plain(tokens), _plain(count * unit))

    @classmethod
    def of(cls, value: RateLike) -> Rate:
        """Accept a Rate, a rate string, or a number of tokens per second."""
        if isinstance(value, Rate):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls(value)

    @property
    def per_second(self) -> float:
        """Tokens per second, as a float (for display and statistics)."""
        return float(NS_PER_SECOND / self.ns_per_token)

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return float(self.ns_per_token / NS_PER_SECOND)

    @property
    def default_capacity(self) -> int:
        """The burst a rate implies when no capacity is given: its token count, at least 1."""
        return max(1, math.floor(self.tokens))

    def __str__(self) -> str:
        tokens = _num(self.tokens)
        for name, seconds in (
            ("s", 1),
            ("minute", 60),
            ("hour", 3600),
            ("day", 86400),
            ("week", 7 * 86400),
            ("month", 30 * 86400),
            ("year", 365 * 86400),
        ):
            if self.per == seconds:
                return f"{tokens}/{name}"
        return f"{tokens} per {_num(self.per)}s"

    @property
    def period_name(self) -> str:
        """Name the period: "second", "hour", "2_hours", "90_seconds" (see ``parse_many``)."""
        per = _exact(self.per, "rate period")
        for name, seconds in _PERIOD_NAMES:
            count = per / seconds
            if count.denominator == 1:
                return name if count == 1 else f"{count}_{name}s"
        return f"{_num(self.per)}_seconds"


def several(text: str) -> bool:
    """Return True if ``text`` holds a separator of several limits (``;``, ``,`` or ``|``)."""
    return any(sep in text for sep in _SEPARATORS)


def split_limits(text: str) -> list[str]:
    """Return the rates of a limit string as written, stripped, in order (see ``parse_many``)."""
    return [part.strip() for part in _SPLIT_RE.split(text)]


def parse_many(text: str) -> dict[str, Rate]:
    """Read one or more rates separated by ``;``, ``,`` or ``|``, named after their periods.

    ``parse_many("10/hour;100/day")`` is ``{"hour": Rate(10, 3600), "day": Rate(100,
    86400)}``: each rate is named by ``Rate.period_name``, the longest unit its period is a
    whole number of (``"10 per 2 hours"``: ``"2_hours"``; ``"60 per 90 s"``: ``"90_seconds"``),
    so ``"100/day"`` and ``"100 per 24 hours"`` name the same limit. Raises TypeError for a
    value that is not a str, and ValueError, showing an accepted example, for an empty part,
    more than ``MAX_LIMITS`` rates, two rates of the same period, or a rate ``Rate.parse``
    refuses. Takes time linear in the text's length.
    """
    if not isinstance(text, str):
        raise TypeError(
            f"limits as a string such as '10/hour;100/day' are needed, not "
            f"{type(text).__name__} {text!r:.80}"
        )
    if sum(text.count(sep) for sep in _SEPARATORS) >= MAX_LIMITS:
        raise ValueError(
            f"the limits {_clip(text)} hold more than {MAX_LIMITS} rates; write at most "
            f"{MAX_LIMITS}, e.g. '10/s;500/hour;5000/day'"
        )
    rates: dict[str, Rate] = {}
    parts = split_limits(text)
    for part in parts:
        if not part:
            raise ValueError(
                f"the limits {_clip(text)} have an empty part; separate rates by one ';', ',' "
                "or '|', e.g. '10/hour;100/day'"
            )
        try:
            rate = Rate.parse(part)
        except ValueError as exc:
            if len(parts) == 1:
                raise
            raise ValueError(f"in the limits {_clip(text)}: {exc}") from None
        name = rate.period_name
        if name in rates:
            raise ValueError(
                f"the limits {_clip(text)} give two rates per {name.replace('_', ' ')} "
                f"({rates[name]} and {rate}); the smaller one alone decides: keep it, e.g. "
                f"'{min(rates[name], rate, key=lambda r: r.tokens)}'"
            )
        rates[name] = rate
    return rates


def _plain(value: Fraction) -> float:
    """Return an int-valued Fraction as int, else as float (both exact enough for Rate)."""
    return int(value) if value.denominator == 1 else float(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


RateLike = Rate | str | float | int
