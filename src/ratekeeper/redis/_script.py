"""The wire format of ``gcra.lua``: limits as integer triples, requests encoded in batches.

Pure: no I/O, no clock. The asyncio and the blocking limiters both build their server calls
here, and the differential tests drive the script through the same functions, so the Lua
arithmetic is checked exactly as the limiters use it.

The script counts time in units of 1/scale ns, where a rate's emission interval is exactly
``cost / scale`` ns (as in ``Gcra``). Lua numbers are doubles, exact for integers only
below 2^53: ``make_spec`` refuses a limit whose full bucket would span more than 2^51 units,
and the script refuses (status 2) any decision that would put a bucket more than 2^52 units
ahead, so every sum it forms stays exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from typing import Any

from .._gcra import check_capacity
from .._rate import NS_PER_SECOND, Rate, RateLike

__all__ = [
    "CHARGE",
    "MAX_AHEAD",
    "MAX_BURST",
    "NO_MARK",
    "PAD",
    "REFUND",
    "RESERVE",
    "SCRIPT",
    "SET_LIMIT",
    "STATE",
    "TAKE_SCRIPT",
    "Request",
    "Spec",
    "cut",
    "encode",
    "make_spec",
    "parse",
    "rate_of",
    "single_take_wire",
    "single_wire",
    "split",
    "take_wire",
]

SCRIPT: str = resources.files(__package__).joinpath("gcra.lua").read_text("utf-8")
"""The Lua source; its opening comment is the KEYS/ARGV/return contract."""
TAKE_SCRIPT: str = resources.files(__package__).joinpath("gcra_take.lua").read_text("utf-8")
"""The common case of SCRIPT, short: one reserve on one key and one limit (``take_wire``)."""

MAX_AHEAD = 2**52
"""The script never lets a bucket run further ahead of now than this many units."""
MAX_BURST = 2**51
"""The largest full bucket (capacity * cost units) a limit may have; also bounds a charge."""

RESERVE, CHARGE, REFUND, STATE, SET_LIMIT, PAD = b"R", b"C", b"F", b"S", b"K", b"P"
NO_MARK = -1
"""Mark epoch of a refund that names no grant (the caller vouches the tokens went unused)."""

# Statuses in the script's reply.
DONE, REFUSED, BEYOND, WRONGTYPE = 1, 0, 2, 3


@dataclass(frozen=True)
class Spec:
    """One limit as the script sees it: its key and its exact integer parameters."""

    key: str
    name: str
    rate: Rate
    capacity: int
    weight: int | None
    cost: int
    scale: int
    burst: int

    @property
    def conf(self) -> str:
        """The limit as the script reads it: 'cost scale capacity'."""
        return f"{self.cost} {self.scale} {self.capacity}"

    def tokens(self, ahead: int) -> float:
        """Return the tokens in the bucket when it is ``ahead`` units ahead of now."""
        if ahead <= 0:
            return float(self.capacity)
        return (self.burst - ahead) / self.cost

    def full_in(self, ahead: int) -> float:
        """Return seconds until the bucket is full, when it is ``ahead`` units ahead of now."""
        return -(-ahead // self.scale) / NS_PER_SECOND if ahead > 0 else 0.0

    @property
    def horizon(self) -> float:
        """The longest wait (seconds) the script can queue on this limit."""
        return MAX_AHEAD / self.scale / NS_PER_SECOND


def make_spec(
    key: str, name: str, rate: RateLike, capacity: int | None, weight: int | None = None
) -> Spec:
    """Check a limit and return its Spec.

    Raises TypeError/ValueError for a bad rate or capacity, and ValueError naming the limit
    when its numbers could not stay exact in the script's double arithmetic.
    """
    rate = Rate.of(rate)
    capacity = check_capacity(rate.default_capacity if capacity is None else capacity)
    cost = rate.ns_per_token.numerator
    scale = rate.ns_per_token.denominator
    burst = capacity * cost
    label = f"{name!r} on key {key!r}" if name else f"on key {key!r}"
    if burst > MAX_BURST:
        most = MAX_BURST // cost
        if most >= 1:
            fits = f"a capacity of at most {most} at this rate"
        elif scale == 1:
            fits = "a rate of at least one token per 26 days"
        else:
            fits = "a rate whose interval is a simpler fraction of a nanosecond"
        raise ValueError(
            f"limit {label}: capacity={capacity} at {rate} spans {burst} units of 1/{scale} ns, "
            f"more than the 2^51 that Redis's Lua numbers (doubles) keep exact (a full bucket "
            f"spans at most about 26 days); use {fits}, e.g. '1000/day' (capacity 1000)"
        )
    if weight is not None and (type(weight) is not int or not 1 <= weight <= capacity):
        raise ValueError(
            f"limit {label}: weight must be None (the call's tokens) or an int from 1 to "
            f"capacity={capacity}, got {weight!r}"
        )
    return Spec(key, name, rate, capacity, weight, cost, scale, burst)


def rate_of(cost: int, scale: int) -> Rate:
    """Return a Rate of exactly ``cost / scale`` ns per token, in whole tokens per second,
    minute, hour or day where one of those fits (for display: ``5/s``, ``100/minute``)."""
    per_token = Fraction(cost, scale)
    for per in (1, 60, 3600, 86400):
        tokens = per * NS_PER_SECOND / per_token
        if tokens.denominator == 1:
            rate = Rate(int(tokens), per)
            if rate.ns_per_token == per_token:
                return rate
    return Rate(float(NS_PER_SECOND / per_token))


def adopted_spec(spec: Spec, cost: int, scale: int, capacity: int) -> Spec:
    """Return ``spec`` with the limit a key holds at the server (``cost scale capacity``)."""
    return Spec(
        spec.key,
        spec.name,
        rate_of(cost, scale),
        capacity,
        spec.weight,
        cost,
        scale,
        capacity * cost,
    )


class Request:
    """One decision for the script: an op over one or more limits, and who waits for it.

    ``items`` holds (spec, tokens, mark epoch, mark count) per limit, and for SET_LIMIT
    (spec, cost, scale, capacity) of the new limit (the same four numbers on the wire);
    ``future`` is the
    asyncio future (or other waiter) its reply goes to, None when nobody waits for it;
    ``wire``, when set, is ``encode([request])`` built ahead (for the hot paths).
    """

    __slots__ = ("future", "items", "max_wait", "op", "owner", "wire")

    def __init__(
        self,
        op: bytes,
        items: tuple[tuple[Spec, int, int, int], ...],
        max_wait: int = -1,
        owner: Any = None,
    ) -> None:
        self.op = op
        self.items = items
        self.max_wait = max_wait
        self.owner = owner
        self.future: Any = None
        self.wire: tuple[list[str], list[Any]] | None = None  # encode([self]), if prebuilt

    @property
    def width(self) -> int:
        """The number of integers this request's reply takes."""
        return 2 + 3 * len(self.items)


def encode(
    requests: list[Request],
    now_us: int | None = None,
    floors: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[str], list[Any]]:
    """Return (KEYS, ARGV) for one script call deciding ``requests`` in order.

    Each key is sent once, with the parameters of the first request naming it (one key
    must mean one limit); if later ones name it with others, the script is asked to report
    the limit the key holds, so that every owner in the batch can adopt it. ``now_us``
    replaces the server's TIME: for tests only. ``floors``: per key, (the latest slot (server
    time, ns) the sender's process knows to be booked there, the key's epoch then); a key
    that lost its state since is put back empty at that slot (see the script).
    """
    index: dict[str, int] = {}
    keys: list[str] = []
    conf: list[str] = []
    first: list[Spec] = []
    disagree: set[int] = set()
    body: list[str] = []
    append = body.append
    for request in requests:
        op = request.op
        items = request.items
        if op == RESERVE:
            append(f"R {len(items)} {request.max_wait}")
        else:
            append(f"{op.decode()} {len(items)}")
        for spec, tokens, mark_e, mark_g in items:
            i = index.get(spec.key)
            if i is None:
                keys.append(spec.key)
                i = index[spec.key] = len(keys)
                conf.append(spec.conf)
                first.append(spec)
            elif spec is not first[i - 1] and spec.conf != first[i - 1].conf:
                disagree.add(i)
            if op == STATE:
                append(str(i))
            elif op in (REFUND, SET_LIMIT):
                append(f"{i} {tokens} {mark_e} {mark_g}")
            else:
                append(f"{i} {tokens}")
    for i in disagree:  # the callers disagree: the reply must say what the key holds
        spec = first[i - 1]
        conf[i - 1] = f"{spec.cost} {spec.scale} -{spec.capacity}"
    args = ["" if now_us is None else str(now_us), " ".join(conf), " ".join(body)]
    if floors:
        sent = [
            f"{i} {ns // 1000} {ns % 1000} {epoch}"
            for key, (ns, epoch) in floors.items()
            if (i := index.get(key)) is not None
        ]
        if sent:
            args.append(" ".join(sent))
    return keys, args


def single_wire(spec: Spec, op: bytes, tokens: int, max_wait: int) -> tuple[list[str], list[Any]]:
    """Return ``encode([Request(op, ((spec, tokens, ...),), max_wait)])``, built directly."""
    head = f"R 1 {max_wait}" if op == RESERVE else f"{op.decode()} 1"
    return [spec.key], ["", spec.conf, f"{head} 1 {tokens}"]


def take_wire(request: Request) -> tuple[list[str], list[Any]] | None:
    """Return (KEYS, ARGV) for TAKE_SCRIPT if ``request`` is its case, else None.

    Its case: a reserve on one key (taken now, or a slot booked within its maximum wait).
    TAKE_SCRIPT answers it as SCRIPT answers ``encode([request])``, or with an empty reply,
    changing nothing, when the key is not a plain bucket: then ask SCRIPT.
    """
    if request.op != RESERVE or len(request.items) != 1:
        return None
    spec, tokens, _, _ = request.items[0]
    return single_take_wire(spec, tokens, request.max_wait)


def single_take_wire(spec: Spec, tokens: int, max_wait: int = 0) -> tuple[list[str], list[Any]]:
    """Return (KEYS, ARGV) for TAKE_SCRIPT reserving ``tokens`` on ``spec``'s key within
    ``max_wait`` ns (-1: any wait; 0: now or never)."""
    conf = [str(spec.cost), str(spec.scale), str(spec.capacity)]
    return [spec.key], ["", *conf, str(tokens), str(max_wait)]


def parse(reply: bytes | str) -> list[int]:
    """Return the integers of the script's reply (a string of space-separated integers)."""
    return list(map(int, reply.split()))


def cut(values: list[int], requests: list[Request]) -> tuple[list[list[int]], list[int]]:
    """Cut the script's integers into one reply per request (without ``now``), and the
    trailer: (key index, cost, scale, capacity) for each key whose own limit differs from
    the one sent. Raises ValueError for a reply of the wrong length."""
    out = []
    pos = 1
    for request in requests:
        end = pos + 2 + 3 * len(request.items)
        out.append(values[pos:end])
        pos = end
    if pos > len(values) or (len(values) - pos) % 4:
        raise ValueError(f"the script answered {len(values)} numbers, {pos} (+4n) were expected")
    return out, values[pos:]


def split(reply: bytes | str | list[int], requests: list[Request]) -> list[list[int]]:
    """Cut the script's reply (or its integers) into one list per request, without ``now``
    (and without the trailer of keys' own limits: see ``cut``)."""
    return cut(reply if isinstance(reply, list) else parse(reply), requests)[0]
