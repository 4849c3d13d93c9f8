"""What would this limit do to my traffic? A replay of arrivals against a limit, in virtual time.

The replay runs the limiters' own engine (the scheduler behind ``TokenBucket`` and
``SyncTokenBucket``: same arithmetic, same FIFO, same fail-fast refusals) as a discrete-event
simulation. Pure: no clock, no sleeping, no asyncio; time jumps from one arrival or grant to
the next, so an hour of traffic replays in well under a second, and the same seed gives the
same arrivals and the same result.

Times are integer nanoseconds inside, float seconds in the summary. matplotlib (the ``plot``
extra) is imported only by ``plot()``.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from ._gcra import seconds_to_ns
from ._rate import NS_PER_SECOND, Rate
from ._scheduler import Scheduler, Waiter

__all__ = [
    "MODES",
    "PATTERNS",
    "Limit",
    "MissingExtra",
    "Result",
    "Summary",
    "Traffic",
    "generate",
    "max_excess",
    "plot",
    "read_csv",
    "render",
    "simulate",
]

PATTERNS = ("poisson", "bursty", "steady")
MODES = ("refuse", "wait")

_TIME_COLUMNS = ("time", "timestamp", "t", "ts", "at", "seconds", "arrival")
_WEIGHT_COLUMNS = ("tokens", "weight", "cost", "n", "count")


class MissingExtra(ImportError):
    """Raised when a feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(f"{feature} needs {module}: pip install 'ratekeeper[{extra}]'")
        self.extra = extra


# -- traffic ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """Arrivals to replay: sorted times (ns from the start) and the tokens each asks for."""

    times_ns: Sequence[int]
    tokens: Sequence[int]
    duration_ns: int
    description: str

    @property
    def requests(self) -> int:
        """The number of arrivals."""
        return len(self.times_ns)

    def as_dict(self) -> dict[str, object]:
        """Return a description as plain data (for --json), without the arrivals."""
        return {
            "description": self.description,
            "requests": self.requests,
            "tokens": sum(self.tokens),
            "duration": self.duration_ns / 1e9,
        }


def generate(
    arrivals: Rate,
    duration: float,
    pattern: str = "poisson",
    *,
    seed: int = 1,
    tokens: int = 1,
    burst_factor: float = 4.0,
    burst_period: float | None = None,
) -> Traffic:
    """Return arrivals at a mean rate of ``arrivals`` requests for ``duration`` seconds.

    ``poisson``: independent arrivals (exponential gaps). ``steady``: evenly spaced.
    ``bursty``: on/off traffic with the same mean rate: ON periods at ``burst_factor`` times
    the mean rate, OFF periods idle, both of exponential length, one ON+OFF cycle lasting
    ``burst_period`` seconds on average (default: a tenth of the duration). Every request
    asks for ``tokens``. Raises ValueError for a pattern, duration or factor not allowed.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    duration_ns = seconds_to_ns(duration, "duration")
    if duration_ns == 0:
        raise ValueError("duration must be > 0 seconds")
    if type(tokens) is not int or tokens < 1:
        raise ValueError(f"tokens per request must be an int >= 1, got {tokens!r}")
    rng = random.Random(seed)
    per_second = arrivals.per_second
    times: list[float] = []
    if pattern == "steady":
        count = math.ceil(duration * per_second)
        times = [i / per_second for i in range(count) if i / per_second < duration]
    elif pattern == "poisson":
        t = rng.expovariate(per_second)
        while t < duration:
            times.append(t)
            t += rng.expovariate(per_second)
    else:
        if not burst_factor > 1:
            raise ValueError(f"burst factor must be > 1 (peak / mean rate), got {burst_factor}")
        period = duration / 10 if burst_period is None else burst_period
        if not 0 < period < math.inf:
            raise ValueError(f"burst period must be a number of seconds > 0, got {period}")
        mean_on = period / burst_factor
        mean_off = period - mean_on
        peak = per_second * burst_factor
        t = 0.0
        while t < duration:
            end = min(t + rng.expovariate(1 / mean_on), duration)
            t += rng.expovariate(peak)
            while t < end:
                times.append(t)
                t += rng.expovariate(peak)
            t = end + rng.expovariate(1 / mean_off)
    shape = {
        "poisson": "Poisson",
        "steady": "steady",
        "bursty": f"bursty (x{burst_factor:g} peaks)",
    }[pattern]
    weight = f", {tokens} tokens each" if tokens != 1 else ""
    seeded = "" if pattern == "steady" else f", seed {seed}"
    return Traffic(
        [round(t * NS_PER_SECOND) for t in times],
        [tokens] * len(times),
        duration_ns,
        f"{shape} arrivals at {arrivals} for {duration:g} s{weight}{seeded}",
    )


def read_csv(path: str | Path) -> Traffic:
    """Read arrivals from a CSV file: one row per request, a time and optionally a weight.

    The time is in seconds (any origin: the first arrival becomes 0) or an ISO 8601 date-time;
    the weight is the tokens the request asks for (default 1). A header row naming the
    columns (time/timestamp/t, tokens/weight/cost) is optional; without one the first column
    is the time and the second, if any, the weight. Blank lines and lines starting with '#'
    are skipped; rows need not be sorted. Raises OSError if the file cannot be read, and
    ValueError naming the line for a value that does not parse.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as file:
        rows = [
            (number, row)
            for number, row in enumerate(csv.reader(file), start=1)
            if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
        ]
    if not rows:
        raise ValueError(f"{path}: no arrivals (the file has no rows)")
    time_col, weight_col = 0, 1
    first_number, first = rows[0]
    if _parse_time(first[0]) is None:
        header = [cell.strip().lower() for cell in first]
        time_col = next((i for i, name in enumerate(header) if name in _TIME_COLUMNS), -1)
        if time_col < 0:
            raise ValueError(
                f"{path}, line {first_number}: cannot read the time {first[0]!r}, and no column "
                f"is named like a time ({', '.join(_TIME_COLUMNS)})"
            )
        weight_col = next((i for i, name in enumerate(header) if name in _WEIGHT_COLUMNS), -1)
        rows = rows[1:]
    arrivals: list[tuple[float, int]] = []
    for number, row in rows:
        cell = row[time_col].strip() if time_col < len(row) else ""
        t = _parse_time(cell)
        if t is None:
            raise ValueError(
                f"{path}, line {number}: cannot read the time {cell!r}; write seconds "
                "(e.g. 12.5) or an ISO 8601 date-time (e.g. 2024-05-01T12:00:00.250)"
            )
        weight = 1
        if 0 <= weight_col < len(row) and row[weight_col].strip():
            weight = _parse_weight(row[weight_col].strip(), f"{path}, line {number}")
        arrivals.append((t, weight))
    if not arrivals:
        raise ValueError(f"{path}: no arrivals (only a header)")
    arrivals.sort(key=lambda item: item[0])
    origin = arrivals[0][0]
    times = [round((t - origin) * NS_PER_SECOND) for t, _ in arrivals]
    return Traffic(
        times,
        [w for _, w in arrivals],
        max(times[-1], 1),
        f"{path.name}: {len(times)} requests over {times[-1] / 1e9:g} s",
    )


def _parse_time(cell: str) -> float | None:
    cell = cell.strip()
    try:
        value = float(cell)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) else None
    try:
        return datetime.fromisoformat(cell.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _parse_weight(cell: str, where: str) -> int:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not (value >= 1 and value.is_integer()):
        raise ValueError(f"{where}: the weight must be a whole number >= 1, got {cell!r}")
    return int(value)


# -- the limit and the replay ----------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """A limit to try: a rate, a capacity, and what a caller does when tokens are short.

    ``mode="refuse"``: the caller gives up at once (``try_acquire``). ``mode="wait"``: it
    queues (``acquire``), and with ``max_wait`` it is refused at once when the wait would be
    longer (``acquire(timeout=max_wait)``).
    """

    rate: Rate
    capacity: int
    mode: str = "refuse"
    max_wait: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if type(self.capacity) is not int or self.capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {self.capacity!r}")
        if self.max_wait is not None:
            seconds_to_ns(self.max_wait, "max wait")

    @property
    def label(self) -> str:
        """Return a short description such as '10/s, capacity 20, wait up to 0.5 s'."""
        if self.mode == "refuse":
            how = "refuse at once"
        elif self.max_wait is None:
            how = "wait"
        else:
            how = f"wait up to {self.max_wait:g} s"
        return f"{self.rate}, capacity {self.capacity}, {how}"

    def as_dict(self) -> dict[str, object]:
        """Return the limit as plain data (for --json)."""
        return {
            "rate": str(self.rate),
            "rate_per_second": self.rate.per_second,
            "capacity": self.capacity,
            "mode": self.mode,
            "max_wait": self.max_wait,
        }


@dataclass(frozen=True)
class Summary:
    """What the limit did to the traffic. Waits are in seconds, over granted requests."""

    requests: int
    requested_tokens: int
    granted: int
    granted_tokens: int
    immediate: int
    delayed: int
    refused: int
    refused_tokens: int
    wait_p50: float
    wait_p99: float
    wait_max: float
    wait_mean: float
    span: float
    """Seconds from the start to the end of the traffic or the last grant, if later."""
    utilisation: float
    """Granted tokens / (rate x span): how much of the limit's throughput was used."""
    offered_load: float
    """Requested tokens / (rate x span)."""
    max_queue: int
    """Most requests waiting at once (0 in refuse mode)."""
    envelope_excess: float
    """Most tokens granted in any window beyond capacity + rate x window (0: kept)."""

    def as_dict(self) -> dict[str, object]:
        """Return the summary as plain data (for --json)."""
        return asdict(self)


@dataclass(frozen=True)
class Result:
    """The replay of one traffic against one limit: the summary and the trace to plot."""

    limit: Limit
    summary: Summary
    grant_ns: Sequence[int] = field(repr=False)
    """Per request (in arrival order): when it was granted, or -1 if refused."""
    level: Sequence[tuple[int, float]] = field(repr=False)
    """Tokens in the bucket just before and after each change, as (ns, tokens)."""
    queue: Sequence[tuple[int, int]] = field(repr=False)
    """Requests waiting, after each change, as (ns, count)."""

    def as_dict(self) -> dict[str, object]:
        """Return the limit and the summary as plain data (for --json)."""
        return {"limit": self.limit.as_dict(), "summary": self.summary.as_dict()}


class _Request(Waiter):
    __slots__ = ("index",)

    def __init__(self, tokens: int, index: int) -> None:
        super().__init__(tokens, 0)
        self.index = index


def simulate(limit: Limit, traffic: Traffic) -> Result:
    """Replay ``traffic`` against ``limit`` and return what happened.

    Decisions are the limiters' own: a request is granted at once when the tokens are there
    and nobody waits; otherwise it is refused (mode "refuse", or a wait beyond ``max_wait``)
    or queued, and queued requests are granted in arrival order at their due times. The
    bucket starts full. Raises ValueError if a request asks for more than the capacity.
    """
    largest = max(traffic.tokens, default=0)
    if largest > limit.capacity:
        raise ValueError(
            f"a request asks for {largest} tokens, more than the capacity {limit.capacity}: "
            "it could never be granted; raise the capacity or lower the weights"
        )
    scheduler = Scheduler(limit.rate, limit.capacity, 0)
    max_wait_ns = None if limit.max_wait is None else seconds_to_ns(limit.max_wait, "max wait")
    refuse = limit.mode == "refuse"
    grant_ns = [-1] * traffic.requests
    grants: list[tuple[int, int]] = []  # (ns, tokens) in time order
    level: list[tuple[int, float]] = [(0, float(limit.capacity))]
    queue: list[tuple[int, int]] = [(0, 0)]
    max_queue = 0

    def release_until(now_ns: int) -> None:
        while (due := scheduler.head_due_ns()) is not None and due <= now_ns:
            level.append((due, scheduler.tokens_at(due)))
            for waiter in scheduler.release_due(due):
                grant_ns[waiter.index] = due  # type: ignore[attr-defined]
                grants.append((due, waiter.tokens))
            level.append((due, scheduler.tokens_at(due)))
            queue.append((due, scheduler._waiting))

    for index, (now, tokens) in enumerate(zip(traffic.times_ns, traffic.tokens, strict=True)):
        release_until(now)
        delay, ahead = scheduler.plan(now, tokens, 0)
        if delay == 0 and ahead == 0:
            level.append((now, scheduler.tokens_at(now)))
            scheduler.grant_now(now, tokens)
            level.append((now, scheduler.tokens_at(now)))
            grant_ns[index] = now
            grants.append((now, tokens))
        elif refuse or (max_wait_ns is not None and delay > max_wait_ns):
            scheduler.reject(now, tokens)
        else:
            scheduler.enqueue(_Request(tokens, index), now)
            waiting = scheduler._waiting
            queue.append((now, waiting))
            if waiting > max_queue:
                max_queue = waiting
    release_until(2**62)  # let the queue drain

    end_ns = max(traffic.duration_ns, grants[-1][0] if grants else 0)
    level.append((end_ns, scheduler.tokens_at(end_ns)))
    summary = _summarise(
        limit, traffic, grant_ns=grant_ns, grants=grants, end_ns=end_ns, max_queue=max_queue
    )
    return Result(limit, summary, grant_ns, level, queue)


def _summarise(
    limit: Limit,
    traffic: Traffic,
    *,
    grant_ns: Sequence[int],
    grants: Sequence[tuple[int, int]],
    end_ns: int,
    max_queue: int,
) -> Summary:
    waits = sorted((g - a) / 1e9 for g, a in zip(grant_ns, traffic.times_ns, strict=True) if g >= 0)
    granted = len(waits)
    granted_tokens = sum(tokens for _, tokens in grants)
    requested_tokens = sum(traffic.tokens)
    delayed = sum(1 for w in waits if w > 0)
    quota = limit.rate.per_second * end_ns / 1e9  # tokens the rate allows over the span
    return Summary(
        requests=traffic.requests,
        requested_tokens=requested_tokens,
        granted=granted,
        granted_tokens=granted_tokens,
        immediate=granted - delayed,
        delayed=delayed,
        refused=traffic.requests - granted,
        refused_tokens=requested_tokens - granted_tokens,
        wait_p50=_percentile(waits, 0.50),
        wait_p99=_percentile(waits, 0.99),
        wait_max=waits[-1] if waits else 0.0,
        wait_mean=sum(waits) / granted if granted else 0.0,
        span=end_ns / 1e9,
        utilisation=granted_tokens / quota if quota else 0.0,
        offered_load=requested_tokens / quota if quota else 0.0,
        max_queue=max_queue,
        envelope_excess=max_excess(grants, limit.rate, limit.capacity),
    )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Return the nearest-rank percentile of sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def max_excess(grants: Sequence[tuple[int, int]], rate: Rate, capacity: int) -> float:
    """Return the most tokens granted in any time window beyond ``capacity + rate x window``.

    ``grants`` are (ns, tokens) in time order. 0.0 means the envelope was kept in every
    window [s, t]; a positive value is the worst over-admission, in tokens. Exact (integer
    arithmetic) and linear in the number of grants.
    """
    # With the interval a/b ns per token, a window [t_j, t_i] holding the grants j..i keeps
    # the envelope iff (G_i - G_{j-1}) * a <= capacity * a + (t_i - t_j) * b, where G is the
    # running total: i.e. G_i*a - t_i*b <= capacity*a + min_j (G_{j-1}*a - t_j*b).
    a = rate.ns_per_token.numerator
    b = rate.ns_per_token.denominator
    best = None  # min over j <= i of G_{j-1}*a - t_j*b
    total = 0
    worst = 0
    for t, tokens in grants:
        start = total * a - t * b
        if best is None or start < best:
            best = start
        total += tokens
        excess = total * a - t * b - capacity * a - best
        if excess > worst:
            worst = excess
    return worst / a


# -- text ------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "0 ms"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _share(part: int, whole: int) -> str:
    return f"({part / whole:.1%})" if whole else ""


def render(traffic: Traffic, results: Sequence[Result]) -> str:
    """Return the summary table: one column per limit, one row per figure."""
    names = ["A", "B"] if len(results) == 2 else [""] * len(results)
    rows: list[tuple[str, list[str]]] = [
        (
            "limit",
            [
                f"{n + ': ' if n else ''}{r.limit.label}"
                for n, r in zip(names, results, strict=True)
            ],
        ),
    ]

    def row(label: str, cell: list[str]) -> None:
        rows.append((label, cell))

    sums = [r.summary for r in results]
    row("requests", [f"{s.requests} ({s.requested_tokens} tokens)" for s in sums])
    row("granted", [f"{s.granted} {_share(s.granted, s.requests)}" for s in sums])
    row("  at once", [f"{s.immediate}" for s in sums])
    row("  after a wait", [f"{s.delayed}" for s in sums])
    row("refused", [f"{s.refused} {_share(s.refused, s.requests)}" for s in sums])
    row("wait p50", [_duration(s.wait_p50) for s in sums])
    row("wait p99", [_duration(s.wait_p99) for s in sums])
    row("wait max", [_duration(s.wait_max) for s in sums])
    row("longest queue", [f"{s.max_queue} requests" for s in sums])
    row("utilisation", [f"{s.utilisation:.1%} of rate x {s.span:.4g} s" for s in sums])
    row("offered load", [f"{s.offered_load:.1%}" for s in sums])
    row(
        "envelope",
        ["kept" if s.envelope_excess == 0 else f"EXCEEDED by {s.envelope_excess:g}" for s in sums],
    )
    width = max(len(label) for label, _ in rows) + 2
    columns = [max(len(cells[i]) for _, cells in rows) + 3 for i in range(len(results))]
    lines = [f"ratekeeper simulate: {traffic.description} (virtual time)", ""]
    for label, cells in rows:
        text = label.ljust(width) + "".join(c.ljust(w) for c, w in zip(cells, columns, strict=True))
        lines.append(text.rstrip())
    lines += [
        "",
        "Waits are over granted requests (immediate grants wait 0). Utilisation: granted tokens",
        "/ (rate x span); the full bucket at the start can take it a little above 100%.",
        "Envelope: no window [s, t] granted more than capacity + rate x (t - s).",
    ]
    return "\n".join(lines)


# -- the plot --------------------------------------------------------------------------------


def _nice_step(span: float, bins: int) -> float:
    """Return a round bin width (1, 2 or 5 x 10^k seconds) giving about ``bins`` bins."""
    raw = max(span / bins, 1e-9)
    power: float = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power  # pragma: no cover


def level_curve(result: Result) -> tuple[list[float], list[float]]:
    """Return the bucket level over time as an exact polyline (seconds, tokens).

    Between changes the bucket refills at the rate until it is full, so a point is inserted
    where it reaches the capacity.
    """
    per_ns = result.limit.rate.per_second / 1e9
    capacity = float(result.limit.capacity)
    xs: list[float] = []
    ys: list[float] = []
    previous: tuple[int, float] | None = None
    for t, tokens in result.level:
        if previous is not None and t > previous[0] and previous[1] < capacity:
            full_at = previous[0] + (capacity - previous[1]) / per_ns
            if full_at < t:
                xs.append(full_at / 1e9)
                ys.append(capacity)
        xs.append(t / 1e9)
        ys.append(tokens)
        previous = (t, tokens)
    return xs, ys


def plot(traffic: Traffic, results: Sequence[Result], path: str | Path, *, dpi: int = 80) -> None:
    """Draw arrivals, grants and the bucket level over time into a PNG at ``path``.

    One column per result (two for a comparison), three rows: tokens per second asked,
    granted and refused against the rate; cumulative tokens against the envelope
    capacity + rate x t; tokens in the bucket (and, when callers wait, the queue). Raises
    MissingExtra if matplotlib is not installed, OSError if the file cannot be written.
    """
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415  (optional extra, imported lazily)
    except ImportError as exc:
        raise MissingExtra("--plot", "matplotlib", "plot") from exc

    span = max(r.summary.span for r in results)
    step = _nice_step(span, 60)
    nbins = max(1, math.ceil(span / step - 1e-9))
    columns = len(results)
    fig = Figure(figsize=(5.6 * columns + 1.2, 7.2), dpi=dpi, layout="constrained")
    axes = fig.subplots(3, columns, sharex=True, squeeze=False)
    # Rates and totals are compared on one scale; buckets of different sizes each on their own.
    same_capacity = len({r.limit.capacity for r in results}) == 1
    for row in range(3 if same_capacity else 2):
        for col in range(1, columns):
            axes[row][col].sharey(axes[row][0])
    fig.suptitle(
        f"ratekeeper simulate: {traffic.description} ({traffic.requests:,} requests)",
        fontsize=11,
    )
    names = ["A", "B"] if columns == 2 else [""] * columns
    times_s = [t / 1e9 for t in traffic.times_ns]
    for col, (name, result) in enumerate(zip(names, results, strict=True)):
        limit, s = result.limit, result.summary
        top, mid, low = axes[0][col], axes[1][col], axes[2][col]
        head = f"{name}: " if name else ""
        top.set_title(
            f"{head}{limit.label}\ngranted {s.granted / max(s.requests, 1):.0%}, refused "
            f"{s.refused / max(s.requests, 1):.0%}, wait p99 {_duration(s.wait_p99)}, "
            f"utilisation {s.utilisation:.0%}",
            fontsize=9.5,
        )
        # Row 1: rates per bin.
        asked = [0.0] * nbins
        given = [0.0] * nbins
        refused = [0.0] * nbins
        for t_ns, tokens, g_ns in zip(
            traffic.times_ns, traffic.tokens, result.grant_ns, strict=True
        ):
            asked[min(int(t_ns / 1e9 / step), nbins - 1)] += tokens / step
            if g_ns >= 0:
                given[min(int(g_ns / 1e9 / step), nbins - 1)] += tokens / step
            else:
                refused[min(int(t_ns / 1e9 / step), nbins - 1)] += tokens / step
        edges = [i * step for i in range(nbins + 1)]
        top.stairs(asked, edges, fill=True, color="#cfcfcf", label="asked")
        top.stairs(given, edges, color="#1f5fbf", linewidth=1.4, label="granted")
        if s.refused:
            top.stairs(refused, edges, color="#d62728", linewidth=1.0, label="refused")
        top.axhline(
            limit.rate.per_second,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"rate {limit.rate}",
        )
        # Row 2: cumulative tokens against the envelope.
        cum_asked = _cumulative(times_s, traffic.tokens, span)
        grants = sorted(
            (g / 1e9, tokens)
            for g, tokens in zip(result.grant_ns, traffic.tokens, strict=True)
            if g >= 0
        )
        cum_given = _cumulative([g for g, _ in grants], [k for _, k in grants], span)
        mid.plot(*cum_asked, color="#9a9a9a", drawstyle="steps-post", label="asked")
        mid.plot(*cum_given, color="#1f5fbf", drawstyle="steps-post", label="granted")
        rate = limit.rate.per_second
        mid.plot(
            [0, span],
            [limit.capacity, limit.capacity + rate * span],
            color="black",
            linestyle="--",
            linewidth=1,
            label="envelope: capacity + rate x t",
        )
        # Row 3: the bucket, and the queue when callers wait.
        xs, ys = level_curve(result)
        low.plot(xs, ys, color="#2a9d3a", linewidth=0.8, label="tokens in the bucket")
        low.axhline(limit.capacity, color="black", linestyle=":", linewidth=1)
        low.set_ylim(bottom=min(0.0, *ys))
        if limit.mode == "wait" and s.max_queue:
            twin = low.twinx()
            qx = [t / 1e9 for t, _ in result.queue] + [span]
            qy = [n for _, n in result.queue] + [result.queue[-1][1]]
            twin.fill_between(qx, qy, step="post", color="#f4a261", alpha=0.35, linewidth=0)
            twin.set_ylabel("requests waiting", color="#c46a12", fontsize=9)
            twin.tick_params(axis="y", labelcolor="#c46a12", labelsize=8)
            twin.set_ylim(bottom=0)
        if col == 0:
            top.set_ylabel("tokens / s")
            mid.set_ylabel("tokens so far")
            low.set_ylabel("tokens in bucket")
            top.legend(loc="best", fontsize=8, framealpha=0.85)
            mid.legend(loc="upper left", fontsize=8, framealpha=0.85)
        low.set_xlabel("seconds (virtual time)")
        for ax in (top, mid, low):
            ax.grid(True, color="#e6e6e6", linewidth=0.6)
            ax.tick_params(labelsize=8)
            ax.set_xlim(0, span)
    # PNG whatever the name says; the file is written where asked, and nothing else is made
    # (no parent directory). A write that fails part-way leaves no half file behind.
    target = Path(path)
    existed = target.exists()
    try:
        fig.savefig(target, dpi=dpi, format="png")
    except BaseException:
        if not existed and target.is_file():
            target.unlink()
        raise


def _cumulative(
    times: Sequence[float], tokens: Sequence[int], end: float
) -> tuple[list[float], list[int]]:
    """Return the running total of ``tokens`` over ``times`` as steps from 0 to ``end``."""
    xs = [0.0]
    ys = [0]
    total = 0
    for t, k in zip(times, tokens, strict=True):
        total += k
        xs.append(t)
        ys.append(total)
    xs.append(end)
    ys.append(total)
    return xs, ys
