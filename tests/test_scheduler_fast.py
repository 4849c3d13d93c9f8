"""The one-bucket scheduler's own release loop against the generic one, decision for decision.

``Scheduler.release_due`` writes ``Queue.release_due`` out for one bucket (it runs once per
grant under saturation); both must grant the same waiters at the same instants, leave the
bucket in the same state and count the same statistics, whatever the queue holds: several
priority classes, removed waiters, abandoned ones, large requests, late and early timers.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper import Rate
from ratekeeper._scheduler import GRANTED, QUEUED, Queue, Scheduler, Waiter

MS = 1_000_000


class _Waiter(Waiter):
    __slots__ = ("enqueued_ns", "gone", "mark", "priority", "state", "tokens")

    def __init__(self, tokens: int, priority: int, gone: bool) -> None:
        super().__init__(tokens, priority)
        self.gone = gone  # abandoned once queued (a cancelled task's future)

    def abandoned(self) -> bool:
        return self.gone


steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("enqueue"),
            st.integers(1, 4),
            st.sampled_from([0, 0, 0, 1, -1]),
            st.booleans(),
        ),
        st.tuples(st.just("remove"), st.integers(0, 30)),
        st.tuples(st.just("release"), st.integers(-MS, 30 * MS)),
    ),
    max_size=60,
)


def _state(s: Scheduler, granted: list[Waiter]) -> tuple[Any, ...]:
    return (
        [(w.tokens, w.priority, w.mark, w.state) for w in granted],
        s._tat,
        s._granted,
        s.snapshot(),
        [(p, e[1], e[2], [w.state for w in e[0]]) for p, e in sorted(s._queues.items())],
        s._levels,
    )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    rate=st.sampled_from([Rate(1000), Rate(3), Rate(50_000), Rate(7, per=60)]),
    capacity=st.integers(4, 6),
    script=steps,
)
def test_fast_release_loop_matches_the_generic_one(
    rate: Rate, capacity: int, script: list[tuple[Any, ...]]
) -> None:
    fast = Scheduler(rate, capacity, 0, initial=0)
    slow = Scheduler(rate, capacity, 0, initial=0)
    now = 0
    queued: list[tuple[_Waiter, _Waiter]] = []
    for step in script:
        if step[0] == "enqueue":
            _, tokens, priority, gone = step
            pair = (_Waiter(tokens, priority, gone), _Waiter(tokens, priority, gone))
            assert fast.enqueue(pair[0], now) == slow.enqueue(pair[1], now)
            queued.append(pair)
        elif step[0] == "remove" and queued:
            a, b = queued[step[1] % len(queued)]
            assert fast.remove(a) == slow.remove(b)
        elif step[0] == "release":
            # Late by up to 30 ms, or (a step back) granting waiters a hair before they queued.
            now += step[1]
            got = fast.release_due(now)
            want = Queue.release_due(slow, now)
            assert _state(fast, got) == _state(slow, want)
            assert all(w.state == GRANTED for w in got)
    for _ in range(len(queued) + 1):  # the rest, a few at each instant
        now += 10**11
        assert _state(fast, fast.release_due(now)) == _state(slow, Queue.release_due(slow, now))
    assert not fast._waiting and not slow._waiting
    assert all(a.state != QUEUED for a, _ in queued)
