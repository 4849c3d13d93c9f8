"""The arithmetic of the token bucket, as GCRA on exact integers.

Pure: no clock reads, no I/O, no asyncio, no threads. Every method takes the time as an
argument (``now_ns``, integer nanoseconds of some monotonic clock) and changes nothing but
this object's fields. Should a caller's clock run backwards, decisions never grant more than
at the latest time, and settling calls (refund, reconfigure) happen at the latest time seen.

Units. The rate's emission interval is an exact fraction ``cost / scale`` nanoseconds per
token. The core counts time in units of ``1/scale`` ns, so one token costs exactly ``cost``
units, a full bucket spans ``burst = capacity * cost`` units, and ``tat`` (the theoretical
arrival time: when the bucket will be full again) is an integer. Nothing is ever rounded
while tokens come and go, so nothing drifts.

The rules it keeps:
- n tokens may go at ``now`` iff ``max(tat, now) + n*cost - burst <= now``; taking them sets
  ``tat = max(tat, now) + n*cost``. A refused call changes nothing.
- ``charge`` takes tokens without the check: the balance may go below zero (debt) and later
  callers wait for it to be paid back.
- ``reserve_at`` may book tokens for a slot ahead of now (a caller sleeps until then);
  ``booked`` remembers the latest such slot, because it is promised: no later decision may
  move it.
- ``refund`` gives tokens back. Undoing a known grant (by its mark) never gives back more
  than is provably still outstanding: tokens granted after it keep their cost, counted from
  the latest booked slot if one lies ahead, and a grant that time has already paid back
  returns nothing (see ``refund_at``). So cancelling a grant can never open a burst, nor
  hand a promised slot to a second caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from ._rate import MAX_TOKENS, NS_PER_SECOND, Rate, RateLike, _show, parse_many

__all__ = [
    "CompositeDecision",
    "Cost",
    "CompositeGcra",
    "Decision",
    "Gcra",
    "KINDS",
    "Limit",
    "LimitsLike",
    "LimitsMapping",
    "check_capacity",
    "named_limits",
    "check_tokens",
]


class Decision(NamedTuple):
    """The answer to "may these tokens go?": granted, after how long, and the refund mark."""

    granted: bool
    wait_ns: int
    mark: int


def check_tokens(tokens: object, what: str = "tokens", limit: int | None = None) -> int:
    """Return ``tokens`` if it is an int from 1 to ``MAX_TOKENS`` (and <= limit).

    ``MAX_TOKENS`` is 2**48 (about 2.8e14), for every amount: a call's tokens, a charge, a
    refund, a weight. Raises TypeError for a value that is not an int (bools and floats are
    refused, not coerced) and ValueError, naming the value and the range, for one outside it.
    """
    if type(tokens) is not int:
        raise TypeError(f"{what} must be an int >= 1, not {type(tokens).__name__} {_show(tokens)}")
    if tokens < 1:
        raise ValueError(f"{what} must be >= 1, got {_show(tokens)}")
    if limit is not None and tokens > limit:
        raise ValueError(
            f"{what}={_show(tokens)} exceeds the capacity {limit}: such a request could never "
            f"be granted; ask for at most {limit}, or use a larger capacity"
        )
    if tokens > MAX_TOKENS:
        raise ValueError(f"{what} must be from 1 to 2**48 ({MAX_TOKENS}), got {_show(tokens)}")
    return tokens


def check_amount(amount: object, what: str, capacity: int | None = None) -> int:
    """Return ``amount`` if it is an int from 0 to ``MAX_TOKENS`` (and <= capacity).

    One limit's share of a cost given per limit (a mapping), where 0 means "not this
    limit". Raises TypeError for a value that is not an int, ValueError naming the value
    and the range for one outside it.
    """
    if type(amount) is not int:
        raise TypeError(f"{what} must be an int >= 0, not {type(amount).__name__} {_show(amount)}")
    if capacity is not None and amount > capacity:
        raise ValueError(
            f"{what} must be from 0 to its capacity {capacity}, got {_show(amount)}: it could "
            "never be granted"
        )
    if not 0 <= amount <= MAX_TOKENS:
        top = "2**48" if capacity is None else f"its capacity {capacity}"
        raise ValueError(
            f"{what} must be an int >= 0 (from 0 to {top}; at most 2**48 = {MAX_TOKENS}), "
            f"got {_show(amount)}"
        )
    return amount


def check_capacity(capacity: object) -> int:
    """Return ``capacity`` if it is an int from 1 to ``MAX_TOKENS`` (2**48).

    Raises TypeError/ValueError naming the value and the range.
    """
    if type(capacity) is not int:
        raise TypeError(
            f"capacity must be an int >= 1 (the burst size in tokens), "
            f"not {type(capacity).__name__} {_show(capacity)}"
        )
    if not 1 <= capacity <= MAX_TOKENS:
        raise ValueError(
            f"capacity must be an int from 1 to 2**48 ({MAX_TOKENS}) (the burst size in "
            f"tokens), got {_show(capacity)}"
        )
    return capacity


@dataclass(frozen=True, init=False)
class Limit:
    """One limit of several: ``rate`` tokens per second, bursts up to ``capacity``.

    ``kind="bucket"`` (the default) is a token bucket; ``kind="sliding"`` is a sliding
    window: at most ``capacity`` tokens in any window of ``capacity / rate`` seconds (so
    ``Limit("60/minute", kind="sliding")`` is at most 60 in any 60 s), see SlidingWindow;
    ``kind="fixed"`` is a fixed window aligned to the wall clock in UTC (at most ``capacity``
    per calendar window: ``Limit("1000/day", kind="fixed")`` resets at 00:00 UTC), see
    FixedWindow.

    ``weight=None`` (the default): a call takes its ``tokens`` from this limit; an int: a
    call takes that many tokens whatever it asks for (e.g. 1 for a requests-per-minute
    limit next to a tokens-per-minute one), and settling a cost afterwards (``charge`` or
    ``refund`` with an int) leaves it alone. The same value serves the in-memory, keyed and
    Redis composites. Raises ValueError/TypeError for a bad rate, capacity or weight.
    """

    rate: Rate
    capacity: int
    weight: int | None
    kind: str

    def __init__(
        self,
        rate: RateLike,
        capacity: int | None = None,
        weight: int | None = None,
        *,
        kind: str = "bucket",
    ) -> None:
        rate = Rate.of(rate)
        capacity = rate.default_capacity if capacity is None else check_capacity(capacity)
        if weight is not None:
            check_tokens(weight, "weight", capacity)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "kind", kind)

    def __str__(self) -> str:
        weight = "" if self.weight is None else f" weight={self.weight}"
        kind = "" if self.kind == "bucket" else f" kind={self.kind}"
        return f"{self.rate} capacity={self.capacity}{weight}{kind}"

    @classmethod
    def parse_many(cls, text: str) -> dict[str, Limit]:
        """Read several limits from one string, e.g. ``"10/hour;100/day"``, named by period.

        The separators are ``;``, ``,`` and ``|``, as in the ``limits`` library (and so
        Flask-Limiter and slowapi). Each limit is named after its period (``{"hour": ...,
        "day": ...}``; ``"10 per 2 hours"`` is ``"2_hours"``) and bursts up to its token
        count, as a single rate does. Raises TypeError/ValueError, showing an accepted
        example, as ``ratekeeper._rate.parse_many`` does (an empty part, two rates of one
        period, more than 32 rates, or a rate that does not parse).
        """
        return {name: cls(rate) for name, rate in parse_many(text).items()}


KINDS = ("bucket", "sliding", "fixed")
"""The kinds of limit: a token bucket (GCRA), a sliding window (an exact log), or a fixed
window aligned to the wall clock (a counter)."""

LimitsMapping = Mapping[str, "Limit | RateLike | tuple[RateLike, int]"]
"""Several limits by name (see ``LimitsLike``)."""
LimitsLike = LimitsMapping | str
"""Several limits by name, e.g. ``{"requests": Limit("60/minute", weight=1), "tokens":
Limit("90000/minute")}``: a call must fit in all of them. A value may also be a rate, or a
(rate, capacity) pair. A string holds one or more rates named by period, as
``Limit.parse_many`` reads it: ``"10/hour;100/day"`` is ``{"hour": ..., "day": ...}``."""

_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def named_limits(limits: object, kinds: tuple[str, ...] = ("bucket",)) -> dict[str, Limit]:
    """Return ``limits`` as {name: Limit}; raise TypeError/ValueError naming a bad entry,
    or a limit whose kind is not among ``kinds`` (what the caller can serve).

    A string is read by ``Limit.parse_many`` (``"10/hour;100/day"``).
    """
    if isinstance(limits, str):
        return Limit.parse_many(limits)
    if not isinstance(limits, Mapping) or not limits:
        raise TypeError(
            "limits must be a non-empty mapping of name to Limit (or rate, or (rate, "
            f'capacity)), e.g. {{"requests": Limit("60/minute", weight=1)}}, or a string '
            f"such as '10/hour;100/day'; got {limits!r:.80}"
        )
    named = {}
    for name, given in limits.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(
                "a limit's name must be 1-64 letters, digits or '_.:-', e.g. "
                f"{{'requests': '60/s'}}, got {name!r:.80}"
            )
        if isinstance(given, Limit):
            named[name] = given
        elif isinstance(given, tuple):
            if len(given) != 2:
                raise ValueError(
                    f"limit {name!r}: expected (rate, capacity), e.g. ('10/s', 20), "
                    f"got {given!r:.80}"
                )
            named[name] = Limit(*given)
        else:
            named[name] = Limit(given)
        if named[name].kind not in kinds:
            raise ValueError(
                f"limit {name!r}: kind={named[name].kind!r} is not supported here (this "
                f"limiter takes kind {' or '.join(map(repr, kinds))}); windows work alone "
                "(SlidingWindow, FixedWindow, RedisSlidingWindow, RedisFixedWindow) and in "
                "CompositeLimiter / SyncCompositeLimiter"
            )
    return named


class LimitState:
    """What the arithmetic of every kind of limit reports: its rate and capacity."""

    if TYPE_CHECKING:
        _rate: Rate
        _capacity: int
    else:
        __slots__ = ()

    @property
    def rate(self) -> Rate:
        """The current rate."""
        return self._rate

    @property
    def capacity(self) -> int:
        """The current capacity (burst size) in tokens."""
        return self._capacity


class Gcra(LimitState):
    """The state of one token bucket and the decisions on it, in exact integer units."""

    kind = "bucket"

    __slots__ = (
        "_booked",
        "_burst",
        "_capacity",
        "_cost",
        "_granted",
        "_latest",
        "_rate",
        "_scale",
        "_shift",
        "_tat",
    )

    def __init__(self, rate: Rate, capacity: int, now_ns: int, initial: int | None = None) -> None:
        self._granted = 0  # tokens granted or charged since creation (never decreases)
        self._booked = 0  # units: the latest slot booked ahead by reserve_at (0: none yet)
        # Refund marks count ``_granted + _shift``: a capacity raise adds to the shift, so a
        # grant made under the lower capacity cannot be given back beyond it.
        self._shift = 0
        self._latest = now_ns  # the latest time a settling call saw (see refund_at)
        self._configure(rate, capacity)
        if initial is None:
            initial = capacity
        elif type(initial) is not int:
            raise TypeError(
                f"initial must be an int from 0 to capacity={capacity}, "
                f"not {type(initial).__name__} {initial!r}"
            )
        elif not 0 <= initial <= capacity:
            raise ValueError(
                f"initial must be an int from 0 to capacity={capacity}, got {initial!r}"
            )
        self._tat = now_ns * self._scale + (capacity - initial) * self._cost

    def _configure(self, rate: Rate, capacity: int) -> None:
        check_capacity(capacity)  # before any field changes: a refused change changes nothing
        self._rate = rate
        self._capacity = capacity
        self._scale = rate.ns_per_token.denominator
        self._cost = rate.ns_per_token.numerator
        self._burst = self._capacity * self._cost

    # -- reading -------------------------------------------------------------------------

    def tokens_at(self, now_ns: int) -> float:
        """Return the tokens available at ``now_ns``; negative while in debt."""
        ahead = self._tat - now_ns * self._scale
        if ahead <= 0:
            return float(self._capacity)
        return (self._burst - ahead) / self._cost

    def full_in_ns(self, now_ns: int) -> int:
        """Return nanoseconds until the bucket is full again (0 when it is full)."""
        ahead = self._tat - now_ns * self._scale
        return -(-ahead // self._scale) if ahead > 0 else 0

    def wait_ns(self, now_ns: int, tokens: int, ahead: int = 0) -> int:
        """Return nanoseconds until ``ahead + tokens`` tokens can have been granted (ceil)."""
        due = self._tat + (ahead + tokens) * self._cost - self._burst - now_ns * self._scale
        return -(-due // self._scale) if due > 0 else 0

    def due_ns(self, tokens: int, now_ns: int = 0) -> int:
        """Return when (ns, rounded up) ``tokens`` more can have been granted; may be past.

        ``now_ns`` is not needed here (a sliding window's plan uses it).
        """
        return -(-(self._tat + tokens * self._cost - self._burst) // self._scale)

    def _idle_mark(self) -> int:
        """Return the refund mark of a grant of nothing (a composite's untouched limit)."""
        return self._granted + self._shift

    def _late_credit(self) -> int:
        """Return how far (units) before now a queue may account a late waiter's grant.

        One interval less one ns: credited up to that, the grants of any one instant are
        accounted within less than an interval of each other, so they hold at most
        ``capacity`` tokens (see ``_scheduler``). At least the rounding of a due time up to
        whole ns (``scale - 1``), which is not lateness; always below one interval, as an
        interval is at least 1 ns.
        """
        return max(self._cost - self._scale, self._scale - 1)

    # -- deciding ------------------------------------------------------------------------

    def try_take(self, now_ns: int, tokens: int) -> bool:
        """Take ``tokens`` if they are there at ``now_ns``; return whether they were taken."""
        now = now_ns * self._scale
        tat = self._tat
        if tat < now:
            tat = now
        tat += tokens * self._cost
        if tat - now > self._burst:
            return False  # refused: nothing changes, not even the latest time
        if now_ns > self._latest:
            self._latest = now_ns
        self._tat = tat
        self._granted += tokens
        return True

    def reserve_at(self, now_ns: int, tokens: int, max_wait_ns: int | None = None) -> Decision:
        """Reserve ``tokens`` for the earliest time they can go, if that is within max_wait.

        Returns Decision(granted, wait_ns, mark): when granted, the tokens are taken now for
        use ``wait_ns`` from now (0: at once); when not, nothing changed and ``wait_ns`` says
        how long the wait would have been. Shorthand for try_take when ``max_wait_ns`` is 0.
        """
        now = now_ns * self._scale
        tat = self._tat
        if tat < now:
            tat = now
        due = tat + tokens * self._cost - self._burst - now
        wait_ns = -(-due // self._scale) if due > 0 else 0
        if max_wait_ns is not None and wait_ns > max_wait_ns:
            return Decision(False, wait_ns, 0)
        if now_ns > self._latest:
            self._latest = now_ns
        if wait_ns:
            self._book((now_ns + wait_ns) * self._scale)
        # For tokens <= capacity the grant time is never after max(tat, now), so committing
        # at ``now`` is committing at the grant time.
        return Decision(True, wait_ns, self._commit_units(now, tokens))

    def _book(self, slot: int) -> None:
        """Remember a slot (units) promised to a sleeper: refunds must not hand it out again."""
        if slot > self._booked:
            self._booked = slot

    def _commit_units(self, at: int, tokens: int) -> int:
        """Take ``tokens`` at time ``at`` (units) unconditionally; return the grant's mark.

        The mark is ``_granted`` after this grant: ``refund_at`` uses it to tell which tokens were
        granted after this one.
        """
        if self._tat < at:
            self._tat = at  # the bucket is full at ``at``: it cannot hold more
        self._tat += tokens * self._cost
        self._granted += tokens
        return self._granted + self._shift

    def charge_at(self, now_ns: int, tokens: int) -> int:
        """Take ``tokens`` now even if that puts the bucket in debt; return the grant's mark."""
        if now_ns > self._latest:
            self._latest = now_ns
        return self._commit_units(now_ns * self._scale, tokens)

    def refund_at(self, now_ns: int, tokens: int, mark: int | None = None) -> float:
        """Give back up to ``tokens`` taken earlier; return how many went back (may be partial).

        With ``mark`` (returned when the grant being undone was made) the refund is exact if
        nothing was granted since. Tokens granted since keep their cost: they are in use at
        ``now`` at the latest, or at the latest booked slot if one lies ahead, so the bucket
        is never made to hold more than that leaves. The same bound returns nothing for a
        grant that time has already paid back. Without a mark the caller vouches that
        ``tokens`` of the outstanding ones went unused; while a slot is booked ahead nothing
        goes back (the tokens could be a sleeper's, whose slot is promised). Tokens never go
        above the capacity.
        """
        # Time must not run backwards; if a caller's clock does, settle at the latest time
        # seen, or an earlier one would count refill that was never there.
        if now_ns < self._latest:
            now_ns = self._latest
        now = now_ns * self._scale
        tat = self._tat
        if tat <= now:
            return 0.0  # full: nothing is outstanding
        booked = self._booked
        if mark is None:
            if booked > now:
                return 0.0
            floor = now
        else:
            later = max(self._granted + self._shift - mark, 0)
            floor = (booked if booked > now else now) + later * self._cost
        new_tat = max(tat - tokens * self._cost, floor)
        if new_tat >= tat:
            return 0.0  # nothing goes back: nothing changes
        self._latest = now_ns
        self._tat = new_tat
        return (tat - new_tat) / self._cost

    def reconfigure(self, now_ns: int, rate: Rate, capacity: int) -> None:
        """Change rate and capacity at ``now_ns``, carrying the balance over.

        The tokens available now stay available (capped at the new capacity); debt stays debt
        in tokens. Refund marks of earlier grants stay valid: their later tokens are counted
        at the new cost, and a capacity raise counts as that many tokens granted later, so a
        grant made under the lower capacity never gives back what that capacity had capped.
        """
        check_capacity(capacity)  # before anything moves: a refused change changes nothing
        if now_ns < self._latest:
            now_ns = self._latest
        self._latest = now_ns
        balance = Fraction(self._burst - max(self._tat - now_ns * self._scale, 0), self._cost)
        booked_ns = -(-self._booked // self._scale)
        old_capacity = self._capacity
        self._configure(rate, capacity)
        if self._capacity > old_capacity:
            self._shift += self._capacity - old_capacity
        self._booked = booked_ns * self._scale
        balance = min(balance, Fraction(self._capacity))
        deficit_units = (self._capacity - balance) * self._cost  # exact in the new units
        self._tat = now_ns * self._scale + -(-deficit_units.numerator // deficit_units.denominator)

    def describe(self, now_ns: int) -> str:
        """Return 'RATE capacity=C tokens=T' for repr()."""
        return f"{self._rate} capacity={self._capacity} tokens={self.tokens_at(now_ns):.3g}"


MAX_SECONDS = 10**12
"""The longest span ``seconds_to_ns`` accepts: 1e12 s (about 31,700 years). Timeouts of 1e9 s
or more mean "no timeout" before they get here; the bound keeps clocks and sums finite."""


def seconds_to_ns(seconds: float, what: str) -> int:
    """Convert a number of seconds from 0 to ``MAX_SECONDS`` to integer ns (rounded up).

    Raises TypeError for a value that is not an int or float, and ValueError naming the value
    and the range for NaN, a negative value or one above 1e12.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(seconds).__name__}")
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(
            f"{what} must be a finite number of seconds >= 0 and <= 1e12, got {_show(seconds)}"
        )
    # Read a float as the decimal it prints as (as Rate does): 0.067 s is 67,000,000 ns, not
    # the 67,000,001 its binary value rounds up to.
    exact = Fraction(repr(seconds)) if isinstance(seconds, float) else Fraction(seconds)
    return -(-exact.numerator * NS_PER_SECOND // exact.denominator)


def signed_seconds_to_ns(seconds: float, what: str) -> int:
    """Convert a number of seconds from -1e12 to 1e12 to integer ns (its size rounded up, as
    ``seconds_to_ns``). Raises TypeError for a value that is not an int or float, ValueError
    naming the value for NaN or one out of range."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {seconds!r:.80}")
    ns = seconds_to_ns(abs(seconds), what)
    return -ns if seconds < 0 else ns


class Cost(tuple[int, ...]):
    """A composite request's tokens, one amount per limit, added and subtracted per limit.

    A tuple so it is light and hashable; ``+`` and ``-`` work limit by limit (not as tuple
    concatenation), and it is false when it takes nothing anywhere. The queue adds costs up
    with the same operators it uses for plain ints.
    """

    __slots__ = ()

    def __add__(self, other: tuple[int, ...]) -> Cost:  # type: ignore[override]
        return Cost(map(int.__add__, self, other))

    def __sub__(self, other: tuple[int, ...]) -> Cost:
        return Cost(map(int.__sub__, self, other))

    def __bool__(self) -> bool:
        return any(self)


if TYPE_CHECKING:
    from ._fixed import FixedCounter
    from ._window import SlidingLog

Part: TypeAlias = "Gcra | SlidingLog | FixedCounter"
"""One limit of a composite: a bucket or a window, with the same hooks."""


def make_part(limit: Limit, now_ns: int) -> Part:
    """Return the arithmetic for ``limit`` at ``now_ns``: a Gcra, a SlidingLog or a
    FixedCounter (aligned by the adapter's ``realign``)."""
    if limit.kind == "bucket":
        return Gcra(limit.rate, limit.capacity, now_ns)
    # Imported here: both modules import this one.
    from ._fixed import FixedCounter  # noqa: PLC0415
    from ._window import SlidingLog  # noqa: PLC0415

    if limit.kind == "fixed":
        return FixedCounter(limit.rate, limit.capacity, now_ns)
    return SlidingLog(limit.rate, limit.capacity, now_ns)


class CompositeDecision(NamedTuple):
    """Decision for several limits at once: ``marks`` holds one refund mark per limit."""

    granted: bool
    wait_ns: int
    marks: tuple[int, ...]


class CompositeGcra:
    """Several token buckets decided together: a request goes only when it fits in all.

    Pure, like Gcra. A request's cost is a tuple of tokens, one per limit (0 = not charged
    on that limit), e.g. (1, 1500) for "one request and 1,500 LLM tokens". Each limit is an
    exact Gcra of its own; their due times are compared in whole nanoseconds (rounded up, so
    the composite is never early on any limit).
    """

    __slots__ = ("_credit", "_names", "_parts", "_scale", "_weights")

    def __init__(self, limits: LimitsLike, now_ns: int) -> None:
        named = named_limits(limits, KINDS)
        self._names = tuple(named)
        self._parts = tuple(make_part(lim, now_ns) for lim in named.values())
        self._weights = tuple(lim.weight for lim in named.values())
        self._scale = 1  # the queue above works in whole ns
        self._credit = self._credit_ns()

    def _credit_ns(self) -> int:
        """Return the late-timer credit (ns) that keeps every limit to its capacity at one
        instant: below the shortest interval of the buckets, none with a window (a window
        records a grant when it is made)."""
        return min(
            -(-part._cost // part._scale) - 1 if type(part) is Gcra else 0 for part in self._parts
        )

    def _late_credit(self) -> int:
        """Return how far (ns) before now a queue may account a late waiter's grant (see
        ``Gcra._late_credit``)."""
        return self._credit

    @property
    def names(self) -> tuple[str, ...]:
        """The limits' names, in order."""
        return self._names

    @property
    def parts(self) -> tuple[Part, ...]:
        """The limits' own buckets (read them; change them only through this object)."""
        return self._parts

    def check_cost(self, cost: Mapping[str, int] | int | None, settling: bool = False) -> Cost:
        """Return a cost as a tuple per limit; raise ValueError/TypeError naming the problem.

        A mapping names the tokens per limit (unnamed limits: 0). An int ``n`` (``None``: 1)
        takes ``n`` from each limit without a weight, and its weight from each weighted one;
        when ``settling`` (charge, refund) weighted limits are left alone instead. Each
        amount must be an int >= 0, at most the limit's capacity unless settling, and at
        least one must be >= 1.
        """
        capped = not settling
        if cost is None:
            cost = 1
        if isinstance(cost, Mapping):
            unknown = set(cost) - set(self._names)
            if unknown:
                raise ValueError(
                    f"unknown limit name(s) {sorted(unknown)}; the limits are {list(self._names)}"
                )
            values = tuple(cost.get(name, 0) for name in self._names)
        else:
            check_tokens(cost, "cost")
            values = tuple(
                cost if weight is None else 0 if settling else weight for weight in self._weights
            )
        for name, value, part in zip(self._names, values, self._parts, strict=True):
            check_amount(value, f"cost of {name!r}", part._capacity if capped else None)
        if not any(values):
            raise ValueError(f"a cost must take at least one token somewhere, got {cost!r}")
        return Cost(values)

    def zero(self) -> Cost:
        """Return the cost that takes nothing."""
        return Cost((0,) * len(self._parts))

    def _due_units(
        self, cost: tuple[int, ...], ahead: tuple[int, ...] | None = None, now_ns: int = 0
    ) -> int:
        """Return when (ns) ``ahead`` then ``cost`` can all have gone (ceil, on every limit)."""
        due = None
        for index, part in enumerate(self._parts):
            tokens = cost[index] + (ahead[index] if ahead is not None else 0)
            if tokens:
                if type(part) is Gcra:  # inlined: the common case, on every decision
                    ns = -(-(part._tat + tokens * part._cost - part._burst) // part._scale)
                else:
                    ns = part.due_ns(tokens, now_ns)
                if due is None or ns > due:
                    due = ns
        assert due is not None, "check_cost refuses costs of nothing"
        return due

    def wait_ns(
        self, now_ns: int, cost: tuple[int, ...], ahead: tuple[int, ...] | None = None
    ) -> int:
        """Return ns until ``ahead`` then ``cost`` can have been granted on every limit."""
        due = self._due_units(cost, ahead, now_ns) - now_ns
        return due if due > 0 else 0

    def _commit_units(self, at: int, cost: tuple[int, ...]) -> tuple[int, ...]:
        """Take ``cost`` at ``at`` (ns) on every limit; return the marks."""
        return tuple(
            part._commit_units(at * part._scale, tokens) if tokens else part._idle_mark()
            for part, tokens in zip(self._parts, cost, strict=True)
        )

    def try_take(self, now_ns: int, cost: tuple[int, ...]) -> bool:
        """Take ``cost`` if it fits in every limit now; all or nothing."""
        if self.wait_ns(now_ns, cost):
            return False
        self._commit_units(now_ns, cost)
        return True

    def reserve_at(
        self, now_ns: int, cost: tuple[int, ...], max_wait_ns: int | None = None
    ) -> CompositeDecision:
        """Reserve ``cost`` on every limit for the earliest time all allow, within max_wait."""
        own = [p.wait_ns(now_ns, n) if n else 0 for p, n in zip(self._parts, cost, strict=True)]
        wait = max(own)
        if max_wait_ns is not None and wait > max_wait_ns:
            return CompositeDecision(False, wait, ())
        # Every limit counts the tokens as taken at the grant time: a bucket that sets that
        # time commits now (as Gcra.reserve_at), one that could have served earlier commits
        # at the grant time, or it would look full again while the tokens are in use; a
        # window records them at the grant time, when they are used.
        marks = []
        for part, tokens, own_wait in zip(self._parts, cost, own, strict=True):
            if not tokens:
                marks.append(part._idle_mark())
                continue
            at = now_ns if own_wait == wait and part.kind == "bucket" else now_ns + wait
            marks.append(part._commit_units(at * part._scale, tokens))
            if wait:
                part._book((now_ns + wait) * part._scale)
        return CompositeDecision(True, wait, tuple(marks))

    def charge_at(self, now_ns: int, cost: tuple[int, ...]) -> tuple[int, ...]:
        """Take ``cost`` now on every limit even into debt; return the marks."""
        return self._commit_units(now_ns, cost)

    def refund_at(
        self, now_ns: int, cost: tuple[int, ...], mark: tuple[int, ...] | None = None
    ) -> dict[str, float]:
        """Give ``cost`` back limit by limit (see Gcra.refund_at); return the tokens returned
        per limit."""
        return {
            name: part.refund_at(now_ns, tokens, None if mark is None else mark[index])
            if tokens
            else 0.0
            for index, (name, part, tokens) in enumerate(
                zip(self._names, self._parts, cost, strict=True)
            )
        }

    def tokens_at(self, now_ns: int) -> dict[str, float]:
        """Return the tokens available per limit at ``now_ns``."""
        return {n: p.tokens_at(now_ns) for n, p in zip(self._names, self._parts, strict=True)}

    def full_in_ns(self, now_ns: int) -> int:
        """Return ns until every limit is full again."""
        return max(part.full_in_ns(now_ns) for part in self._parts)

    def realign(self, now_ns: int, skew_ns: int) -> int | None:
        """Give the fixed windows a new wall-clock skew (see FixedCounter.realign); return
        when (ns) to realign next, or None if no limit is a fixed window."""
        from ._fixed import FixedCounter  # noqa: PLC0415 (_fixed imports this module)

        due = [p.realign(now_ns, skew_ns) for p in self._parts if isinstance(p, FixedCounter)]
        return min(due) if due else None

    @property
    def limits(self) -> dict[str, Limit]:
        """The limits, by name (current rates and capacities)."""
        return {
            name: Limit(part.rate, part.capacity, weight, kind=part.kind)
            for name, part, weight in zip(self._names, self._parts, self._weights, strict=True)
        }

    def reconfigure_limit(self, now_ns: int, name: str, rate: Rate, capacity: int) -> None:
        """Change one limit's rate and capacity, carrying its balance over."""
        if name not in self._names:
            raise ValueError(f"unknown limit {name!r}; the limits are {list(self._names)}")
        part = self._parts[self._names.index(name)]
        part.reconfigure(now_ns, rate, capacity)
        self._credit = self._credit_ns()

    def describe(self, now_ns: int) -> str:
        """Return 'name=RATE/C tokens=T, ...' for repr()."""
        return ", ".join(
            f"{name}={part._rate} capacity={part._capacity} tokens={part.tokens_at(now_ns):.3g}"
            for name, part in zip(self._names, self._parts, strict=True)
        )
