"""Rate: how many tokens per how much time, as an exact value.

The emission interval (nanoseconds per token) is kept as an exact fraction so that the
arithmetic in the core can run on integers and never drift, however long it runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["Rate", "RateLike"]

NS_PER_SECOND = 1_000_000_000
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
):
    for _name in _names:
        _UNITS[_name] = _seconds

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RATE_RE = re.compile(
    rf"^\s*(?P<tokens>{_NUMBER})\s*(?:/|per\b)\s*(?P<count>{_NUMBER})?\s*(?P<unit>[a-zA-Z]+)\s*$"
)
_FORMS = "'5/s', '100/minute', '10 per 2 seconds', '1000/hour', '5000/day'"


def _exact(value: float | int | Fraction, what: str) -> Fraction:
    """Convert a positive finite number to a Fraction, reading floats as their decimal repr."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be finite and > 0, got {value!r}")
    exact = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
    if exact <= 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    return exact


@dataclass(frozen=True)
class Rate:
    """A rate of ``tokens`` per ``per`` seconds, e.g. ``Rate(5)``, ``Rate(100, per=60)``.

    ``Rate.parse("100/minute")`` reads the usual text forms. Raises ValueError for a rate that
    is zero, negative or not finite, and TypeError for a value that is not a number.
    """

    tokens: float
    per: float = 1.0
    ns_per_token: Fraction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = _exact(self.tokens, "rate tokens")
        per = _exact(self.per, "rate period 'per' (seconds)")
        interval = (per * NS_PER_SECOND / tokens).limit_denominator(_MAX_DENOMINATOR)
        if interval <= 0:
            raise ValueError(f"rate {self.tokens}/{self.per}s is too fast: over 1e15 tokens/s")
        object.__setattr__(self, "ns_per_token", interval)

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Read a rate such as '5/s', '100/minute', '10 per 2 seconds' or '5000/day'.

        Raises ValueError naming the text and the accepted forms when it does not parse.
        """
        if not isinstance(text, str):
            raise TypeError(f"a rate string is needed, not {type(text).__name__} {text!r}")
        match = _RATE_RE.match(text)
        unit = _UNITS.get(match["unit"].lower()) if match else None
        if match is None or unit is None:
            raise ValueError(f"cannot read the rate {text!r}; write it like {_FORMS}")
        count = Fraction(match["count"]) if match["count"] else Fraction(1)
        if count <= 0:
            raise ValueError(f"the period in rate {text!r} must be > 0")
        tokens = Fraction(match["tokens"])
        if tokens <= 0:
            raise ValueError(f"the token count in rate {text!r} must be > 0")
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
        for name, seconds in (("s", 1), ("minute", 60), ("hour", 3600), ("day", 86400)):
            if self.per == seconds:
                return f"{tokens}/{name}"
        return f"{tokens} per {_num(self.per)}s"


def _plain(value: Fraction) -> float:
    """Return an int-valued Fraction as int, else as float (both exact enough for Rate)."""
    return int(value) if value.denominator == 1 else float(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


RateLike = Rate | str | float | int
