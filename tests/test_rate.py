"""Rate: parsing, exactness, errors."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from ratekeeper import Rate


@pytest.mark.parametrize(
    ("text", "tokens", "per"),
    [
        ("5/s", 5, 1),
        ("5/second", 5, 1),
        ("5 per second", 5, 1),
        ("100/minute", 100, 60),
        ("100/min", 100, 60),
        ("10 per 2 seconds", 10, 2),
        ("10/2s", 10, 2),
        ("1000/hour", 1000, 3600),
        ("5000/day", 5000, 86400),
        ("0.5/s", 0.5, 1),
        ("250/ms", 250, 0.001),
        ("  7 / 3 s ", 7, 3),
    ],
)
def test_parse_accepts_the_usual_forms(text: str, tokens: float, per: float) -> None:
    rate = Rate.parse(text)
    assert rate.ns_per_token == Fraction(per) * 10**9 / Fraction(tokens) or math.isclose(
        float(rate.ns_per_token), per * 1e9 / tokens
    )


@pytest.mark.parametrize("text", ["5", "x/s", "5/fortnight", "-1/s", "5//s", "", "five/s"])
def test_parse_refuses_other_text_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"cannot read the rate .*'5/s'"):
        Rate.parse(text)


@pytest.mark.parametrize("text", ["0/s", "5/0s"])
def test_parse_refuses_zero(text: str) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        Rate.parse(text)


@pytest.mark.parametrize(
    "args", [(0,), (-1,), (float("nan"),), (float("inf"),), (5, 0), (5, -1), (5, float("nan"))]
)
def test_rate_refuses_non_positive_or_non_finite(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match=r"must be (finite and )?> 0"):
        Rate(*args)


@pytest.mark.parametrize("value", [True, "5", None, [5]])
def test_rate_refuses_non_numbers(value: object) -> None:
    with pytest.raises(TypeError, match="must be a number"):
        Rate(value)  # type: ignore[arg-type]


def test_intervals_are_exact_fractions() -> None:
    assert Rate(3).ns_per_token == Fraction(10**9, 3)
    assert Rate(5).ns_per_token == 200_000_000
    assert Rate(0.1).ns_per_token == 10**10  # read as the decimal 0.1, not its binary value
    assert Rate(100, per=60).ns_per_token == 600_000_000


def test_of_accepts_rate_string_and_number() -> None:
    rate = Rate(5)
    assert Rate.of(rate) is rate
    assert Rate.of("5/s") == Rate(5, 1)
    assert Rate.of(5.0).per_second == 5.0


def test_str_and_properties() -> None:
    assert str(Rate.parse("100/minute")) == "100/minute"
    assert str(Rate(10, per=2)) == "10 per 2s"
    assert Rate(4).interval == 0.25
    assert Rate(0.5).default_capacity == 1
    assert Rate.parse("100/minute").default_capacity == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5e3/h", Rate(1500, 3600)),
        (".5/s", Rate(0.5)),
        ("5 per .5 s", Rate(5, 0.5)),
        ("5/1e-3s", Rate(5, 0.001)),
        ("2E+1 per 1E1 seconds", Rate(20, 10)),
        ("1e9/s", Rate(10**9)),
        ("1 per 3650 days", Rate(1, 3650 * 86400)),
    ],
)
def test_parse_keeps_decimal_and_exponent_forms(text: str, expected: Rate) -> None:
    assert Rate.parse(text) == expected


@pytest.mark.parametrize("text", ["2e9/s", "1 per 3651 days", "1e15/s", "3e14 per 1e20 s"])
def test_parse_refuses_rates_out_of_range_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match=r"too (fast|slow|many).*1 ns .* to 3650 days"):
        Rate.parse(text)
