"""A short self-test of a backend: does this limiter keep its promise here, and how fast is it?

``run_check(None)`` tests the in-process ``TokenBucket``; ``run_check("redis://host:6379/0")``
tests ``ratekeeper.redis.RedisTokenBucket`` against that server. Each run connects, asks for a
burst of twice the capacity at once (exactly the capacity, plus what refilled meanwhile,
must be granted), waits for a few more tokens (each must come at its due time: never early,
at most ``tolerance`` late), checks that no time window saw more than capacity + rate x window,
and measures the latency of single decisions. It takes well under a second at the defaults.

Fresh keys are used on a shared server (``ratekeeper-check:<random>:*``); the backend lets
them expire.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import secrets
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ._asyncio import TokenBucket
from ._errors import BackendUnavailable
from ._rate import Rate
from ._simulate import max_excess

__all__ = [
    "EXIT_FAILED",
    "EXIT_MISSING",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CheckError",
    "CheckReport",
    "Step",
    "redact",
    "render",
    "render_error",
    "run_check",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_MISSING = 0, 1, 2, 3, 4

_SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys")

T = TypeVar("T")


class CheckError(Exception):
    """The check could not run: a bad URL (exit 2), an unreachable server (3), a missing
    extra or backend (4). ``steps`` holds what had been done before."""

    def __init__(self, message: str, exit_code: int, steps: list[Step] | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.steps = steps or []


@dataclass(frozen=True)
class Step:
    """One stage of the check and its verdict; figures are in seconds or tokens."""

    name: str
    ok: bool
    detail: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckReport:
    """The result of a check: what was tested, each step, and the verdict."""

    target: str
    rate: str
    capacity: int
    steps: list[Step]

    @property
    def ok(self) -> bool:
        """True if every step passed."""
        return all(step.ok for step in self.steps)

    def as_dict(self) -> dict[str, object]:
        """Return the report as plain data (for --json)."""
        return {
            "target": self.target,
            "rate": self.rate,
            "capacity": self.capacity,
            "ok": self.ok,
            "steps": [asdict(step) for step in self.steps],
        }


class _Limiter(Protocol):
    """What the check uses of a limiter; a backend's methods may be coroutines."""

    def try_acquire(self, tokens: int = 1) -> Any: ...

    def acquire(self, tokens: int = 1) -> Any: ...


async def _settle(value: T | Awaitable[T], timeout: float) -> T:
    """Return ``value``, awaited within ``timeout`` if it is awaitable (backends are async).

    A plain value is returned as it is, so in-process calls are timed without overhead.
    """
    if inspect.isawaitable(value):
        return await asyncio.wait_for(value, timeout)
    return value


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by '***' (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


# -- backends ----------------------------------------------------------------------------------


class _Backend:
    """Where the limiters under test live. The memory backend is the in-process one."""

    target = "memory: in-process TokenBucket"

    async def connect(self) -> Step:
        return Step("connect", True, "in process: nothing to connect to")

    async def limiter(self, key: str, rate: Rate, capacity: int) -> _Limiter:
        return TokenBucket(rate, capacity, name=key)

    async def close(self) -> None:
        return None


class _RedisBackend(_Backend):
    """A Redis or Valkey server, reached with redis-py, limited by ratekeeper.redis."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise CheckError(
                f"cannot check {redact(url)!r}: the URL must start with redis://, rediss://, "
                "unix:// (or valkey://), e.g. redis://localhost:6379/0",
                EXIT_USAGE,
            )
        if parts.scheme.startswith("valkey"):
            url = "redis" + url[len("valkey") :]  # the same protocol
        self.url = url
        self.target = f"redis: {redact(url)}"
        self.timeout = timeout
        self.prefix = f"ratekeeper-check:{secrets.token_hex(4)}"
        self.client: Any = None
        self.limiters: list[_Limiter] = []

    async def connect(self) -> Step:
        try:
            redis_asyncio = importlib.import_module("redis.asyncio")
        except ImportError as exc:
            raise CheckError(
                "checking a Redis URL needs the redis client: pip install 'ratekeeper[redis]'",
                EXIT_MISSING,
            ) from exc
        try:
            self.client = redis_asyncio.Redis.from_url(
                self.url,
                socket_connect_timeout=self.timeout,
                socket_timeout=self.timeout,
                retry_on_timeout=False,
            )
        except ValueError as exc:
            raise CheckError(f"cannot use {redact(self.url)!r}: {exc}", EXIT_USAGE) from exc
        rtts: list[float] = []
        try:
            for _ in range(10):
                start = time.perf_counter()
                await asyncio.wait_for(self.client.ping(), self.timeout)
                rtts.append(time.perf_counter() - start)
            info = await asyncio.wait_for(self.client.info("server"), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis-py's ConnectionError, TimeoutError, auth errors...
            raise CheckError(
                f"cannot reach {redact(self.url)}: {_reason(exc)}. Is the server running, and "
                "are the host, port and password right?",
                EXIT_UNREACHABLE,
            ) from exc
        server = "valkey" if "valkey_version" in info else "redis"
        version = info.get("valkey_version") or info.get("redis_version") or "?"
        rtts.sort()
        return Step(
            "connect",
            True,
            f"{server} {version}; PING round trip p50 {_us(rtts[len(rtts) // 2])}, "
            f"max {_us(rtts[-1])}",
            {"ping_p50": rtts[len(rtts) // 2], "ping_max": rtts[-1]},
        )

    async def limiter(self, key: str, rate: Rate, capacity: int) -> _Limiter:
        cls = _redis_limiter_class()
        limiter = _open_redis_limiter(
            cls,
            self.client,
            self.url,
            key=f"{self.prefix}:{key}",
            rate=rate,
            capacity=capacity,
            timeout=self.timeout,
        )
        self.limiters.append(limiter)
        return limiter

    async def close(self) -> None:
        for limiter in self.limiters:
            close = getattr(limiter, "aclose", None) or getattr(limiter, "close", None)
            if close is not None:
                await _settle(close(), self.timeout)
        if self.client is not None:
            close = getattr(self.client, "aclose", None) or self.client.close
            await close()


def _redis_limiter_class() -> Any:
    """Return ``ratekeeper.redis.RedisTokenBucket``; raise CheckError (exit 4) if absent."""
    try:
        module = importlib.import_module("ratekeeper.redis")
        return module.RedisTokenBucket
    except (ImportError, AttributeError) as exc:
        raise CheckError(
            "the server answers, but this installation of ratekeeper has no Redis limiter "
            f"(ratekeeper.redis.RedisTokenBucket: {exc}); install a version with Redis "
            "support: pip install 'ratekeeper[redis]'",
            EXIT_MISSING,
        ) from exc


def _open_redis_limiter(
    cls: Any, client: Any, url: str, *, key: str, rate: Rate, capacity: int, timeout: float
) -> _Limiter:
    """Create a ``RedisTokenBucket`` (``cls``) for ``key`` on ``client``.

    ``RedisTokenBucket(client, key, rate, capacity, *, timeout=, name=)``; parameters are
    matched by name, so a later ``redis=``/``url=`` spelling, or a ``from_url(url, ...)``
    class method, works too.
    """
    values = {
        "client": client,
        "redis": client,
        "connection": client,
        "url": url,
        "key": key,
        "name": key,
        "rate": rate,
        "capacity": capacity,
        "timeout": timeout,
    }
    params = inspect.signature(cls).parameters
    if not any(name in params for name in ("client", "redis", "connection")) and hasattr(
        cls, "from_url"
    ):
        factory = cls.from_url
        params = inspect.signature(factory).parameters
    else:
        factory = cls
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, param in params.items():
        if name not in values:
            if param.default is inspect.Parameter.empty and param.kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                raise CheckError(
                    f"ratekeeper.redis.RedisTokenBucket takes a parameter {name!r} that the "
                    "check does not know how to fill; the check needs updating",
                    EXIT_MISSING,
                )
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(values[name])
        else:
            kwargs[name] = values[name]
    limiter: _Limiter = factory(*args, **kwargs)
    return limiter


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.rstrip(".")


# -- the check --------------------------------------------------------------------------------


def run_check(
    url: str | None,
    rate: Rate,
    capacity: int,
    *,
    timeout: float = 2.0,
    tolerance: float = 0.05,
    samples: int = 200,
) -> CheckReport:
    """Run the self-test against ``url`` (None: in memory) and return the report.

    Raises CheckError when the check cannot run (bad URL, unreachable server, missing
    extra); a check that runs but finds the limit broken returns a report with ``ok`` False.
    """
    backend = _Backend() if url is None else _RedisBackend(url, timeout)
    return asyncio.run(
        _run(backend, rate, capacity, timeout=timeout, tolerance=tolerance, samples=samples)
    )


async def _run(
    backend: _Backend,
    rate: Rate,
    capacity: int,
    *,
    timeout: float,
    tolerance: float,
    samples: int,
) -> CheckReport:
    steps: list[Step] = []
    try:
        steps.append(await backend.connect())
        limiter = await backend.limiter("envelope", rate, capacity)
        steps += await _envelope(limiter, rate, capacity, timeout, tolerance)
        # A limit far above what a sequential caller can ask: every decision is a grant.
        fast = await backend.limiter("latency", Rate(1_000_000), samples + 1)
        steps.append(await _latency(fast, samples, timeout))
    except CheckError as exc:
        exc.steps[:0] = steps
        raise
    except (BackendUnavailable, TimeoutError, OSError) as exc:
        raise CheckError(
            f"the backend stopped answering during the check: {_reason(exc)}",
            EXIT_UNREACHABLE,
            steps,
        ) from exc
    finally:
        await backend.close()
    return CheckReport(backend.target, str(rate), capacity, steps)


async def _envelope(
    limiter: _Limiter, rate: Rate, capacity: int, timeout: float, tolerance: float
) -> list[Step]:
    per_second = rate.per_second
    asks = 2 * capacity
    grants: list[tuple[int, int]] = []  # (ns since start, tokens), for the envelope
    start = time.perf_counter_ns()
    for _ in range(asks):
        sent = time.perf_counter_ns()
        granted = await _settle(limiter.try_acquire(1), timeout)
        if granted:
            # The decision was made between sending and the answer: take the midpoint.
            grants.append(((sent + time.perf_counter_ns()) // 2 - start, 1))
    elapsed = (time.perf_counter_ns() - start) / 1e9
    burst = len(grants)
    most = capacity + math.floor(per_second * elapsed) + 1
    burst_ok = capacity <= burst <= most
    steps = [
        Step(
            "burst",
            burst_ok,
            f"{asks} asked at once: {burst} granted, {asks - burst} refused "
            f"(expected {capacity}..{most} in {_ms(elapsed)})",
            {"asked": asks, "granted": burst, "expected_min": capacity, "expected_max": most},
        )
    ]
    # Waiting: token k after the burst is due when k + (burst - capacity) tokens have refilled.
    waits = min(capacity, 5)
    late: list[float] = []
    for k in range(1, waits + 1):
        due = (burst - capacity + k) / per_second
        await _settle(limiter.acquire(1), timeout + due)
        now = (time.perf_counter_ns() - start) / 1e9
        grants.append((round(now * 1e9), 1))
        late.append(now - due)
    # Early means granted before the tokens were there; allow a millisecond of timer and
    # clock granularity (a remote server's clock is compared with ours here).
    refill_ok = min(late) >= -0.001 and max(late) <= tolerance
    steps.append(
        Step(
            "refill",
            refill_ok,
            f"{waits} waited: each granted {_ms(min(late))} to {_ms(max(late))} after its due "
            f"time at {rate} (allowed: 0 to {_ms(tolerance)})",
            {"waited": waits, "min_late": min(late), "max_late": max(late)},
        )
    )
    excess = max_excess(grants, rate, capacity)
    steps.append(
        Step(
            "envelope",
            excess <= 0.5,
            "no window saw more than capacity + rate x window"
            if excess <= 0.5
            else f"a window saw {excess:.2f} tokens more than capacity + rate x window",
            {"excess_tokens": excess},
        )
    )
    return steps


async def _latency(limiter: _Limiter, samples: int, timeout: float) -> Step:
    times: list[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        await _settle(limiter.try_acquire(1), timeout)
        times.append(time.perf_counter() - start)
    times.sort()
    p50 = times[len(times) // 2]
    p99 = times[max(0, math.ceil(0.99 * len(times)) - 1)]
    return Step(
        "latency",
        True,
        f"try_acquire p50 {_us(p50)}, p99 {_us(p99)}, max {_us(times[-1])} "
        f"({samples} sequential calls, ~{1 / (sum(times) / len(times)):,.0f}/s)",
        {"p50": p50, "p99": p99, "max": times[-1], "samples": samples},
    )


# -- text ---------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:+.1f} ms" if seconds < 0 else f"{seconds * 1e3:.1f} ms"


def _us(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


def render(report: CheckReport) -> str:
    """Return the report as text: one line per step and the verdict."""
    lines = [f"ratekeeper check: {report.target}, rate {report.rate}, capacity {report.capacity}"]
    lines += [f"  {'ok  ' if s.ok else 'FAIL'}  {s.name:<9} {s.detail}" for s in report.steps]
    lines.append(f"verdict: {'OK' if report.ok else 'FAILED'}")
    return "\n".join(lines)


def render_error(error: CheckError, target: str) -> str:
    """Return the steps done before a CheckError, then the error, as text."""
    lines = [f"ratekeeper check: {target}"]
    lines += [f"  {'ok  ' if s.ok else 'FAIL'}  {s.name:<9} {s.detail}" for s in error.steps]
    lines.append(f"error: {error}")
    return "\n".join(lines)
