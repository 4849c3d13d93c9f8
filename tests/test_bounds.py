"""Every input is bounded and every entry point total: in range, or refused at once.

The breaks reported in issue 9 each have a test here, then a property per entry point.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper import (
    AcquireTimeout,
    CompositeLimiter,
    Limit,
    Rate,
    SyncCompositeLimiter,
    SyncKeyedLimiter,
    SyncTokenBucket,
    TokenBucket,
)
from ratekeeper._gcra import Gcra, check_amount, check_capacity, check_tokens, seconds_to_ns
from ratekeeper._rate import MAX_INTERVAL_NS, MAX_TOKENS, MIN_INTERVAL_NS
from ratekeeper.testing import ManualClock

RANGE = r"2\*\*48 .* 1 ns .* 3650 days"
SLOWEST = 3650 * 86400  # seconds per token
FAST = settings(max_examples=100, deadline=200)


def refusal(call: Callable[[], object]) -> str | None:
    """Return the message of the ValueError ``call`` raises, or None if it returns."""
    try:
        call()
    except ValueError as exc:
        return str(exc)
    return None


def assert_finite(rate: Rate) -> None:
    assert str(rate)
    assert repr(rate)
    assert 0 < rate.interval < math.inf
    assert 0 < rate.per_second < math.inf
    assert 1 <= rate.default_capacity <= MAX_TOKENS
    assert MIN_INTERVAL_NS <= rate.ns_per_token <= MAX_INTERVAL_NS


# -- the reported breaks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1e999999999/s",
        "1e-999999999/s",
        "5 per 1e999999999 days",
        "5 per 1e-999999999 s",
        "1e99999999999999999999999999999/s",
        "0." + "0" * 100_000 + "1/s",
        "1" + "0" * 100_000 + "/s",
    ],
)
def test_parse_refuses_huge_exponents_at_once(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"out of range|too (many|fast|slow).*{RANGE}"):
        Rate.parse(text)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("n", [10_000, 100_000])
@pytest.mark.parametrize(
    "make",
    [
        lambda n: "5/" + " " * n + "1",  # spaces around an absent count: was quadratic
        lambda n: "5/" + " " * n + "s",
        lambda n: "1" * n + "x",
        lambda n: "5 per " + "1" * n + "!",
        lambda n: "1" * n + "e-" + str(n - 1) + "/s",
    ],
)
def test_parse_takes_linear_time(make: object, n: int) -> None:
    text = make(n)  # type: ignore[operator]
    start = time.perf_counter()
    message = refusal(lambda: Rate.parse(text))
    assert time.perf_counter() - start < 0.5
    assert message is None or len(message) < 400  # the text is clipped in the message


def test_parse_keeps_long_but_plain_literals() -> None:
    assert Rate.parse("1" + "0" * 60 + "e-60/s") == Rate(1)
    assert Rate.parse("0.0000000000000000000000000000000000000000000000000001e52/s") == Rate(1)
    assert Rate.parse("\u0661\u0660/s") == Rate(10)  # \d has always matched other scripts' digits
    assert Rate.parse("5/7s") == Rate(5, 7)


@pytest.mark.parametrize(
    "args",
    [
        (1, 10**400),
        (5e-324,),
        (1, SLOWEST + 0.001),
        (1e9 + 1,),
        (1, 1e300),
        (10**400,),
        (1e15,),
        (2**48 + 1, 2**48 + 1),
    ],
)
def test_rate_refuses_values_out_of_range_naming_it(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match=RANGE):
        Rate(*args)


def test_rate_refuses_an_int_too_long_to_print() -> None:
    with pytest.raises(ValueError, match="an int of 16610 bits"):
        Rate(1, per=10**5000)


@pytest.mark.parametrize(
    ("args", "ns"),
    [
        ((10**9,), 1),
        ((1, SLOWEST), MAX_INTERVAL_NS),
        ((MAX_TOKENS, MAX_TOKENS), 10**9),
        ((1e-300, 1e-300), 10**9),
        ((5, 0.001), 200_000),
    ],
)
def test_rate_accepts_the_bounds(args: tuple[float, ...], ns: int) -> None:
    rate = Rate(*args)
    assert rate.ns_per_token == ns
    assert_finite(rate)


@pytest.mark.parametrize("tokens", [10**400, MAX_TOKENS + 1])
def test_charge_refuses_amounts_beyond_the_maximum(tokens: int) -> None:
    limiter = SyncTokenBucket("1/s", clock=ManualClock())
    with pytest.raises(ValueError, match=r"from 1 to 2\*\*48"):
        limiter.charge(tokens)
    with pytest.raises(ValueError, match=r"from 1 to 2\*\*48"):
        limiter.refund(tokens)
    assert limiter.available() == 1


def test_the_largest_debt_at_the_slowest_rate_stays_finite_sync() -> None:
    limiter = SyncTokenBucket(Rate(1, per=SLOWEST), MAX_TOKENS, clock=ManualClock())
    for _ in range(3):
        limiter.charge(MAX_TOKENS)
    assert limiter.available() == -2 * MAX_TOKENS
    assert "tokens=" in repr(limiter)
    with pytest.raises(AcquireTimeout):
        limiter.acquire(timeout=1)
    assert limiter.refund(MAX_TOKENS) == MAX_TOKENS


async def test_the_largest_debt_at_the_slowest_rate_stays_finite_async() -> None:
    limiter = TokenBucket(Rate(1, per=SLOWEST), MAX_TOKENS, clock=ManualClock())
    limiter.charge_nowait(MAX_TOKENS)
    limiter.charge_nowait(MAX_TOKENS)
    assert limiter.available_nowait() == -MAX_TOKENS
    assert "tokens=" in repr(limiter)
    with pytest.raises(AcquireTimeout):
        await asyncio.wait_for(limiter.acquire(timeout=1), 5)
    assert limiter.statistics() is not None


TWO_LIMITS = {"requests": Limit("10/s", 10, weight=1), "tokens": Limit("100/s", 100)}


@pytest.mark.parametrize("tokens", [10**400, MAX_TOKENS + 1])
def test_composite_settles_no_mapped_amount_beyond_the_maximum(tokens: int) -> None:
    limiter = SyncCompositeLimiter(TWO_LIMITS, clock=ManualClock())
    for settle in (limiter.charge, limiter.refund):
        with pytest.raises(ValueError, match=r"cost of 'tokens' .* at most 2\*\*48"):
            settle({"tokens": tokens})
    assert limiter.available() == {"requests": 10, "tokens": 100}
    assert limiter.acquire({"tokens": 1}, timeout=1)
    assert "tokens=" in repr(limiter)


async def test_async_composite_settles_no_mapped_amount_beyond_the_maximum() -> None:
    limiter = CompositeLimiter(TWO_LIMITS, clock=ManualClock())
    with pytest.raises(ValueError, match=r"at most 2\*\*48"):
        await limiter.charge({"tokens": 10**400})
    assert await limiter.available() == {"requests": 10, "tokens": 100}


def test_keyed_settles_no_mapped_amount_beyond_the_maximum() -> None:
    limiter = SyncKeyedLimiter(limits=TWO_LIMITS, clock=ManualClock())
    with pytest.raises(ValueError, match=r"tokens for limit 'tokens' .* at most 2\*\*48"):
        limiter.charge("k", {"tokens": 10**400})
    assert limiter.acquire("k", {"tokens": 1}, timeout=1)


@FAST
@given(st.integers(min_value=-(10**500), max_value=10**500), st.booleans())
def test_check_amount_is_total(amount: int, capped: bool) -> None:
    capacity = 1000 if capped else None
    if 0 <= amount <= (1000 if capped else MAX_TOKENS):
        assert check_amount(amount, "cost", capacity) == amount
    else:
        with pytest.raises(ValueError, match="cost must be") as raised:
            check_amount(amount, "cost", capacity)
        assert len(str(raised.value)) < 200


@pytest.mark.parametrize("option", ["timeout", "retry_interval"])
@pytest.mark.parametrize("seconds", [1e12, 1e300, math.inf, math.nan, -1.0])
def test_redis_server_timings_beyond_a_day_are_refused_at_once(option: str, seconds: float) -> None:
    pytest.importorskip("redis")
    from ratekeeper.redis import RedisTokenBucket, SyncRedisKeyedBackend, SyncRedisTokenBucket

    url = "redis://127.0.0.1:1/0"  # never reached: the refusal comes first
    for make in (
        lambda: SyncRedisTokenBucket(url, "k", "1/s", **{option: seconds}),
        lambda: RedisTokenBucket(url, "k", "1/s", **{option: seconds}),
        lambda: SyncRedisKeyedBackend(url, {"default": Limit("1/s")}, **{option: seconds}),
    ):
        with pytest.raises(ValueError, match=rf"{option} must be .* at most 86400"):
            make()


@pytest.mark.parametrize("capacity", [0, MAX_TOKENS + 1, 10**400])
def test_capacity_out_of_range_is_refused_naming_the_range(capacity: int) -> None:
    with pytest.raises(ValueError, match=r"capacity must be an int from 1 to 2\*\*48"):
        check_capacity(capacity)


@pytest.mark.parametrize("seconds", [-1, 1e12 + 1e6, 10**400, math.inf, math.nan])
def test_seconds_to_ns_refuses_out_of_range(seconds: float) -> None:
    with pytest.raises(ValueError, match=r">= 0 and <= 1e12"):
        seconds_to_ns(seconds, "span")


def test_long_timeouts_still_mean_no_timeout() -> None:
    limiter = SyncTokenBucket("1/s", clock=ManualClock())
    assert limiter.acquire(timeout=1e300)
    assert limiter.try_acquire() is False


# -- properties per entry point -----------------------------------------------------------

RATE_TEXT = st.one_of(
    st.text(max_size=60),
    st.from_regex(
        r"\A\s*[0-9.eE+-]{1,30}\s*(/|per )\s*[0-9.eE+-]{0,30}\s*(s|ms|min|hour|days?|x)\s*\Z"
    ),
)


@FAST
@given(RATE_TEXT)
def test_parse_is_total_and_fast(text: str) -> None:
    message = refusal(lambda: assert_finite(Rate.parse(text)))
    assert message is None or len(message) < 400


NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.fractions(max_denominator=10**30),
    st.just(Fraction(1, 10**400)),
    st.none(),
    st.booleans(),
    st.text(max_size=5),
)


@FAST
@given(NUMBERS, st.one_of(st.just(1), NUMBERS))
def test_rate_is_total(tokens: object, per: object) -> None:
    numbers = [v for v in (tokens, per) if isinstance(v, (int, float, Fraction))]
    if len(numbers) < 2 or any(isinstance(v, bool) for v in numbers):
        with pytest.raises((TypeError, ValueError), match=r"must be (a number|(finite and )?> 0)"):
            Rate(tokens, per)  # type: ignore[arg-type]
        return
    message = refusal(lambda: assert_finite(Rate(tokens, per)))  # type: ignore[arg-type]
    assert message is None or len(message) < 400


@FAST
@given(st.one_of(st.integers(), st.integers(min_value=-(10**500), max_value=10**500)))
def test_check_tokens_is_total(tokens: int) -> None:
    if 1 <= tokens <= MAX_TOKENS:
        assert check_tokens(tokens) == tokens
    else:
        with pytest.raises(ValueError, match=r"tokens must be (>= 1|from 1 to 2\*\*48)"):
            check_tokens(tokens)


RATES = st.sampled_from(
    [Rate(10**9), Rate(1, per=SLOWEST), Rate(3), Rate(MAX_TOKENS, MAX_TOKENS), Rate(7, 3)]
)


@FAST
@given(
    RATES,
    st.integers(1, MAX_TOKENS),
    st.lists(
        st.tuples(
            st.sampled_from(["charge", "take", "refund"]),
            st.integers(1, MAX_TOKENS),
            st.integers(0, 10**21),
        ),
        max_size=8,
    ),
)
def test_accepted_amounts_keep_every_float_finite(
    rate: Rate, capacity: int, steps: list[tuple[str, int, int]]
) -> None:
    g = Gcra(rate, capacity, 0)
    now = 0
    for op, tokens, dt in steps:
        now += dt
        if op == "charge":
            g.charge_at(now, tokens)
        elif op == "take":
            g.reserve_at(now, min(tokens, capacity), max_wait_ns=10**9)
        else:
            assert math.isfinite(g.refund_at(now, tokens))
        assert math.isfinite(g.tokens_at(now))
        assert math.isfinite(g.wait_ns(now, min(tokens, capacity)) / 1e9)
        assert math.isfinite(g.full_in_ns(now) / 1e9)
        assert g.describe(now)


def test_rates_past_the_redis_bound_fail_there_clearly() -> None:
    from ratekeeper.redis._script import make_spec

    assert make_spec("k", "", Rate(1, per=7 * 86400), 1).burst == 7 * 86400 * 10**9
    for rate, capacity in ((Rate(1, per=SLOWEST), 1), (Rate(MAX_TOKENS, MAX_TOKENS), MAX_TOKENS)):
        with pytest.raises(ValueError, match="2\\^51"):
            make_spec("k", "", rate, capacity)
