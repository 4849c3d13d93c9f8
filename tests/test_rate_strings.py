"""Rate strings as people moving from limits, Flask-Limiter and slowapi write them.

Several limits in one string (``"10/hour;100/day"``), the units month and year, and the
rule every refusal keeps: its message shows an example that is itself accepted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper import (
    CompositeLimiter,
    KeyedLimiter,
    Limit,
    Rate,
    SyncCompositeLimiter,
    SyncKeyedLimiter,
    limiter,
    sync_limiter,
)
from ratekeeper._gcra import named_limits
from ratekeeper._rate import MAX_LIMITS, parse_many
from ratekeeper.testing import ManualClock

DAY = 86400

# -- what is accepted -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/hour;100/day", {"hour": Rate(10, 3600), "day": Rate(100, DAY)}),
        ("10/hour, 100/day", {"hour": Rate(10, 3600), "day": Rate(100, DAY)}),
        ("10/hour|100/day", {"hour": Rate(10, 3600), "day": Rate(100, DAY)}),
        (
            " 1/second ; 5 per minute | 100 per 2 hours ,1000/day ",
            {
                "second": Rate(1),
                "minute": Rate(5, 60),
                "2_hours": Rate(100, 7200),
                "day": Rate(1000, DAY),
            },
        ),
        ("1 per month", {"month": Rate(1, 30 * DAY)}),
        ("1/year", {"year": Rate(1, 365 * DAY)}),
        ("2/week;5 per 2 weeks", {"week": Rate(2, 7 * DAY), "2_weeks": Rate(5, 14 * DAY)}),
        ("100 per 24 hours", {"day": Rate(100, DAY)}),  # named by the period, not its spelling
        ("60 per 90 s", {"90_seconds": Rate(60, 90)}),
        ("3 per 0.5 s", {"500_milliseconds": Rate(3, 0.5)}),
        ("1 per 0.0005 s", {"0.0005_seconds": Rate(1, 0.0005)}),
        ("5/s", {"second": Rate(5)}),  # one rate is a composite of one
        ("10 per 12 months", {"12_months": Rate(10, 360 * DAY)}),  # limits' year: 360 days
    ],
)
def test_parse_many_reads_the_limits_forms_and_names_by_period(
    text: str, expected: dict[str, Rate]
) -> None:
    assert parse_many(text) == expected
    limits = Limit.parse_many(text)
    assert list(limits) == list(expected)
    assert {name: lim.rate for name, lim in limits.items()} == expected
    # Each bursts up to its token count, as a single rate does.
    assert all(lim.capacity == lim.rate.default_capacity for lim in limits.values())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1/ms", Fraction(1, 1000)), ("1/w", 7 * DAY), ("1/mo", 30 * DAY), ("1/months", 30 * DAY)]
    + [(f"1/{unit}", 365 * DAY) for unit in ("y", "yr", "yrs", "year", "years")],
)
def test_units_have_their_documented_length(text: str, seconds: Fraction) -> None:
    assert Rate.parse(text).ns_per_token == seconds * 10**9


@pytest.mark.parametrize(
    ("rate", "text"),
    [(Rate(1, 7 * DAY), "1/week"), (Rate(3, 30 * DAY), "3/month"), (Rate(2, 365 * DAY), "2/year")],
)
def test_str_names_the_long_units_and_reads_back(rate: Rate, text: str) -> None:
    assert str(rate) == text
    assert Rate.parse(text) == rate


def test_the_longest_interval_stays_3650_days() -> None:
    assert Rate.parse("1 per 10 years").interval == 3650 * DAY
    with pytest.raises(ValueError, match=r"too slow.*3650 days.*e\.g\. '1000000/s' or '1/year'"):
        Rate.parse("1 per 11 years")


@settings(max_examples=60, deadline=None)
@given(
    rates=st.lists(
        st.tuples(
            st.integers(1, 10**6),
            st.integers(1, 500),
            st.sampled_from(["s", "second", "minute", "hours", "day", "week", "month", "year"]),
        ),
        min_size=1,
        max_size=6,
    ),
    separators=st.lists(st.sampled_from([";", ",", "|", " ; ", ", ", " | "]), min_size=6),
)
def test_parse_many_is_the_rates_one_by_one(
    rates: list[tuple[int, int, str]], separators: list[str]
) -> None:
    texts = [f"{tokens} per {count} {unit}" for tokens, count, unit in rates]
    joined = texts[0] + "".join(
        sep + text for sep, text in zip(separators, texts[1:], strict=False)
    )
    try:
        one_by_one = [Rate.parse(text) for text in texts]
    except ValueError:  # too slow (over 3650 days a token): refused in the string too
        with pytest.raises(ValueError, match=r"too slow|two rates per"):  # whichever is first
            parse_many(joined)
        return
    names = [rate.period_name for rate in one_by_one]
    if len(set(names)) < len(names):
        with pytest.raises(ValueError, match=r"two rates per .* e\.g\. '"):
            parse_many(joined)
        return
    assert parse_many(joined) == dict(zip(names, one_by_one, strict=True))


# -- where it is accepted -------------------------------------------------------------------


async def test_composite_limiters_take_the_string(clock: ManualClock) -> None:
    for make in (CompositeLimiter, SyncCompositeLimiter):
        limits = make("10/hour;100/day", clock=clock)
        assert limits.limits == {"hour": Limit("10/hour"), "day": Limit("100/day")}
    composite = CompositeLimiter("2/s|5/minute", clock=clock)
    granted = [await composite.try_acquire() for _ in range(3)]
    assert granted == [True, True, False]  # the per-second limit's burst of 2
    clock.advance(1)
    assert await composite.try_acquire({"second": 1, "minute": 1})
    assert await composite.available() == {"second": 1.0, "minute": 2.0 + 1 / 12}


async def test_keyed_limiters_take_the_string(clock: ManualClock) -> None:
    for limits in (
        KeyedLimiter("1/s;2/minute", clock=clock).limits,
        KeyedLimiter(limits="1/s;2/minute", clock=clock).limits,
        SyncKeyedLimiter("1/s;2/minute", clock=clock).limits,
        SyncKeyedLimiter(limits="1/s;2/minute", clock=clock).limits,
    ):
        assert limits == {"second": Limit("1/s"), "minute": Limit("2/minute")}
    keyed = KeyedLimiter("1/s;2/minute", clock=clock)
    assert await keyed.try_acquire("a")
    clock.advance(1)
    assert await keyed.try_acquire("a")
    clock.advance(1)
    assert not await keyed.try_acquire("a")  # the minute's 2 are spent
    assert await keyed.try_acquire("b")
    # One rate stays one limit named "default", as before.
    assert list(KeyedLimiter("5/s").limits) == ["default"]
    with pytest.raises(TypeError, match=r"capacity goes with one rate.*Limit\('10/hour', 5\)"):
        KeyedLimiter("1/s;2/minute", 5)


def test_limiter_takes_parse_many_and_refuses_a_string_of_several() -> None:
    composite = limiter(Limit.parse_many("10/hour;100/day"))
    assert isinstance(composite, CompositeLimiter)
    assert list(composite.limits) == ["hour", "day"]
    assert isinstance(sync_limiter(Limit.parse_many("1/s,1/day")), SyncCompositeLimiter)
    for make, name in ((limiter, "limiter"), (sync_limiter, "sync_limiter")):
        with pytest.raises(ValueError, match=rf"{name}\(Limit.parse_many\('10/hour;100/day'\)\)"):
            make("10/hour;100/day")


# -- what is refused, and how it says so -----------------------------------------------------

_EXAMPLE = re.compile(r"(?:e\.g\.|like|such as) ('[^']*'|[A-Z]\w*\([^()]*\)|\{[^{}]*\}|\([^()]*\))")


def accepted_example(message: str) -> object:
    """Return the first example in ``message`` (after "e.g.", "like", "such as"), accepted."""
    found = _EXAMPLE.search(message)
    assert found, f"no example in {message!r}"
    value = eval(found[1], {"Rate": Rate, "Limit": Limit})  # our own message
    if isinstance(value, str):
        return Limit.parse_many(value)
    if isinstance(value, tuple):
        return Limit(*value)
    if isinstance(value, dict):
        return named_limits(value)
    assert isinstance(value, (Rate, Limit))
    return value


REFUSED: list[tuple[Callable[[], object], str]] = [
    (lambda: Rate.parse("1/fortnight"), "cannot read the rate"),
    (lambda: Rate.parse("five/s"), "cannot read the rate"),
    (lambda: Rate.parse("10/hour;100/day"), "several limits"),
    (lambda: Rate.parse("0/s"), "token count"),
    (lambda: Rate.parse("5 per 0 s"), "period"),
    (lambda: Rate.parse("1e999/s"), "out of range"),
    (lambda: Rate.parse("1 per 11 years"), "too slow"),
    (lambda: Rate.parse("2e9/s"), "too fast"),
    (lambda: Rate.parse(5), "a rate string"),  # type: ignore[arg-type]
    (lambda: Rate(0), "must be > 0"),
    (lambda: Rate(float("nan")), "finite"),
    (lambda: Rate("5"), "must be a number"),  # type: ignore[arg-type]
    (lambda: Rate(2**49), "too many"),
    (lambda: parse_many("10/hour;;100/day"), "empty part"),
    (lambda: parse_many("10/hour;"), "empty part"),
    (lambda: parse_many(";".join(f"1 per {n} s" for n in range(1, 40))), "more than 32"),
    (lambda: parse_many("10/s;20 per second"), "two rates per second"),
    (lambda: parse_many("1,000/s"), "in the limits '1,000/s': cannot read the rate '1'"),
    (lambda: parse_many(b"1/s"), "limits as a string"),  # type: ignore[arg-type]
    (lambda: named_limits({}), "non-empty mapping"),
    (lambda: named_limits({"a b": "1/s"}), "name"),
    (lambda: named_limits({"a": ("1/s", 1, 2)}), "expected \\(rate, capacity\\)"),
    (lambda: CompositeLimiter("1/s;1/fortnight"), "cannot read the rate"),
    (lambda: limiter("10/hour;100/day"), "holds several limits"),
    (lambda: limiter({"a": "1/s"}, 5), "capacity= is for a single rate"),  # type: ignore[call-overload]
    (lambda: KeyedLimiter("1/s;1/day", 3), "capacity goes with one rate"),
]


@pytest.mark.parametrize(("call", "match"), REFUSED)
def test_every_refusal_shows_an_accepted_example(call: Callable[[], object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match) as caught:
        call()
    accepted_example(str(caught.value))


def test_a_redis_refusal_shows_a_capacity_that_fits() -> None:
    pytest.importorskip("redis")
    from ratekeeper.redis._script import make_spec

    with pytest.raises(ValueError, match="capacity of at most 868 at this rate") as caught:
        make_spec("k", "month", "1000/month", None)
    make_spec("k", "month", "1000/month", 868)
    accepted_example(str(caught.value))
    with pytest.raises(ValueError, match="at least one token per 26 days"):
        make_spec("k", "year", "1/year", None)


# -- bounded ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda n: ";" * n,
        lambda n: "1/s" + " " * n + ";",
        lambda n: "1/s;" + " " * n,
        lambda n: "1 per " + "1" * n + " s;2/s",
        lambda n: "|".join(["1/s"] * (n // 4)),
    ],
)
def test_parse_many_takes_linear_time(make: Callable[[int], str]) -> None:
    text = make(100_000)
    start = time.perf_counter()
    with pytest.raises(ValueError):
        parse_many(text)
    assert time.perf_counter() - start < 0.5
    assert MAX_LIMITS == 32


# -- the command line ------------------------------------------------------------------------


def test_the_cli_reads_month_and_year_and_refuses_several_with_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ratekeeper.cli import main

    args = ["simulate", "--arrivals", "1/day", "--duration", "1", "--json"]
    assert main([*args, "--rate", "12/year"]) == 0
    assert '"12/year' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main([*args, "--rate", "10/hour;100/day"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "holds several limits; this command runs one limit" in error
    accepted_example(error)


def test_route_limits_read_the_string_as_every_composite_does() -> None:
    pytest.importorskip("starlette")
    from ratekeeper.integrations.starlette import RouteLimiter

    routes = RouteLimiter()
    for text in ("10/second;100/hour", "10/second, 100/hour", "10/second | 100/hour"):
        limits = routes.route_limit(text).limits
        assert limits == {"second": Limit("10/s"), "hour": Limit("100/hour")}
    for text, match in (("10/second;;100/hour", "empty part"), ("1/s;2/s", "two rates")):
        with pytest.raises(ValueError, match=match) as caught:
            routes.route_limit(text)
        accepted_example(str(caught.value))
