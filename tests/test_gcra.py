"""The pure arithmetic: tables of steps over fixed instants, one row per call."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ratekeeper import Rate
from ratekeeper._gcra import Gcra, check_capacity, check_tokens

S = 1_000_000_000  # one second in ns


def bucket(rate: float = 5, capacity: int = 5, initial: int | None = None) -> Gcra:
    return Gcra(Rate(rate), capacity, 0, initial)


def test_full_bucket_grants_capacity_then_refuses() -> None:
    g = bucket()
    assert [g.try_take(0, 1) for _ in range(6)] == [True] * 5 + [False]
    assert g.tokens_at(0) == 0


# (time in ms, tokens asked, granted?, tokens left after)
STEPS = [
    (0, 5, True, 0.0),
    (0, 1, False, 0.0),
    (199, 1, False, 0.995),
    (200, 1, True, 0.0),
    (300, 1, False, 0.5),
    (1000, 3, True, 1.0),
    (1000, 2, False, 1.0),
    (5000, 5, True, 0.0),
]


def test_table_of_decisions() -> None:
    g = bucket()
    for ms, tokens, granted, left in STEPS:
        now = ms * 1_000_000
        assert g.try_take(now, tokens) is granted, (ms, tokens)
        assert g.tokens_at(now) == pytest.approx(left), (ms, tokens)


def test_refused_call_changes_nothing() -> None:
    g = bucket()
    g.try_take(0, 5)
    before = (g._tat, g._granted)
    assert not g.try_take(100 * 1_000_000, 1)
    assert g.reserve_at(100 * 1_000_000, 5, max_wait_ns=0).granted is False
    assert (g._tat, g._granted) == before


def test_wait_ns_and_full_in() -> None:
    g = bucket()
    g.try_take(0, 5)
    assert g.wait_ns(0, 1) == S // 5
    assert g.wait_ns(0, 2, ahead=3) == S
    assert g.full_in_ns(0) == S
    assert g.full_in_ns(2 * S) == 0


def test_reserve_into_the_future_and_refuse_past_max_wait() -> None:
    g = bucket()
    assert g.reserve_at(0, 5) == (True, 0, 5)
    assert g.reserve_at(0, 2) == (True, 2 * S // 5, 7)
    # The next one would wait 0.6 s: refused with max_wait 0.5 s, and nothing changed.
    assert g.reserve_at(0, 1, max_wait_ns=S // 2) == (False, 3 * S // 5, 0)
    assert g.reserve_at(0, 1, max_wait_ns=3 * S // 5) == (True, 3 * S // 5, 8)


def test_charge_goes_into_debt_and_later_callers_wait() -> None:
    g = bucket()
    g.charge_at(0, 8)
    assert g.tokens_at(0) == -3
    assert g.wait_ns(0, 1) == 4 * S // 5
    assert not g.try_take(S // 2, 1)
    assert g.try_take(4 * S // 5, 1)


def test_refund_with_mark_is_exact_when_nothing_was_granted_since() -> None:
    g = bucket()
    g.try_take(0, 2)
    mark = g.reserve_at(0, 3).mark
    assert g.refund_at(S // 10, 3, mark) == 3
    assert g.tokens_at(S // 10) == pytest.approx(3.5)


def test_refund_with_mark_keeps_the_cost_of_later_grants() -> None:
    # One token every second, burst 1: k is granted at 0, another at 10 s. Undoing k at 10 s
    # must not give a token back: time paid k back long ago; giving one now would let two
    # tokens go at 10 s, a burst of 2 in a bucket of 1.
    g = Gcra(Rate(1), 1, 0)
    mark = g.reserve_at(0, 1).mark
    assert g.try_take(10 * S, 1)
    assert g.refund_at(10 * S, 1, mark) == 0
    assert not g.try_take(10 * S, 1)


def test_refund_is_partial_when_some_of_it_was_paid_back() -> None:
    g = Gcra(Rate(1), 2, 0)
    mark = g.reserve_at(0, 2).mark  # bucket empty at 0, full again at 2 s
    assert g.try_take(S, 1)  # one token refilled by 1 s, taken
    # Two tokens undone at 1 s, but one was granted later: at most 2 - 1 may be there now.
    assert g.refund_at(S, 2, mark) == 1
    assert g.tokens_at(S) == 1


def test_refund_never_fills_above_capacity() -> None:
    g = bucket()
    g.try_take(0, 1)
    assert g.refund_at(0, 4) == 1
    assert g.tokens_at(0) == 5
    assert g.refund_at(0, 1) == 0


def test_clock_going_backwards_grants_nothing_extra() -> None:
    g = bucket()
    g.try_take(10 * S, 5)
    assert not g.try_take(9 * S, 1)
    assert not g.try_take(0, 1)
    assert g.tokens_at(5 * S) <= 0


def test_exact_over_a_long_run_with_an_inexact_decimal_rate() -> None:
    # 3 tokens/s is 333,333,333.33... ns per token: integer units keep it exact forever. The
    # k-th token is there at ceil(k/3 s) in whole ns, not one ns earlier, for every k.
    g = Gcra(Rate(3), 2, 0, initial=0)
    for k in range(1, 30_001):
        due = -(-k * S // 3)
        assert not g.try_take(due - 1, 1), k
        assert g.try_take(due, 1), k
    assert g.tokens_at(10_000 * S) == 0


def test_initial_tokens() -> None:
    g = bucket(initial=0)
    assert g.tokens_at(0) == 0
    assert g.wait_ns(0, 1) == S // 5
    with pytest.raises(ValueError, match="initial must be an int from 0 to capacity=5"):
        bucket(initial=6)


def test_reconfigure_carries_the_balance_over() -> None:
    g = bucket()
    g.try_take(0, 3)  # 2 left
    g.reconfigure(0, Rate(1), 10)
    assert g.tokens_at(0) == 2
    assert g.wait_ns(0, 3) == S
    g.reconfigure(0, Rate(1), 1)  # capped at the new capacity
    assert g.tokens_at(0) == 1
    g.charge_at(0, 3)  # debt stays debt
    g.reconfigure(0, Rate(2), 5)
    assert g.tokens_at(0) == -2


def test_reconfigure_keeps_fractions_exact() -> None:
    g = Gcra(Rate(3), 3, 0)
    g.try_take(0, 1)
    g.reconfigure(S // 3, Rate(7), 7)
    assert Fraction(g.tokens_at(S // 3)).limit_denominator(1000) == 3


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "tokens must be >= 1, got 0"),
        (-2, ValueError, "tokens must be >= 1, got -2"),
        (True, TypeError, "must be an int >= 1, not bool"),
        (1.0, TypeError, "must be an int >= 1, not float"),
        ("1", TypeError, "not str"),
        (6, ValueError, "tokens=6 exceeds the capacity 5"),
    ],
)
def test_check_tokens(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        check_tokens(value, limit=5)


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError), (False, TypeError)]
)
def test_check_capacity(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="capacity must be"):
        check_capacity(value)


def test_refund_never_hands_a_booked_slot_to_a_second_caller() -> None:
    # Capacity 1 at 1/s: A, B, C reserve the slots at 0, 1 and 2 s. B is cancelled at 0.
    # Its slot cannot be handed out again by moving tat back: C is promised 2 s, and a
    # newcomer must not get 2 s too. (Counting the later grants from now did exactly that.)
    g = Gcra(Rate(1), 1, 0)
    g.reserve_at(0, 1)
    b = g.reserve_at(0, 1)
    c = g.reserve_at(0, 1)
    assert (b.wait_ns, c.wait_ns) == (S, 2 * S)
    g.refund_at(0, 1, b.mark)
    assert g.reserve_at(0, 1).wait_ns >= 3 * S
    # A plain refund is refused while a slot is booked ahead: the tokens may be a sleeper's.
    assert g.refund_at(S // 2, 1) == 0


def test_refund_in_debt_still_works_when_nothing_is_booked_ahead() -> None:
    g = bucket()
    mark = g.reserve_at(0, 5).mark
    g.charge_at(0, 5)  # debt: later callers wait, but no slot is promised to anyone
    assert g.tokens_at(0) == -5
    assert g.refund_at(0, 5, mark) == 5  # undone exactly; the charge keeps its cost
    assert g.tokens_at(0) == 0
    assert g.refund_at(0, 3) == 3  # the caller vouches for 3 unused tokens of the charge
    assert g.tokens_at(0) == 3
