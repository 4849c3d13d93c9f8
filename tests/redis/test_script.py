"""The Lua script against the Python core: the same decisions from the same times.

The reference is the core's ``Gcra`` itself (and ``CompositeGcra``, through LocalLimits):
one arithmetic, in Python and in Lua.

Times are given to the script in whole microseconds through its test-only ``now``
argument (then it sets no TTL), and to ``Gcra`` as the same instants in ns. Every decision
is compared: granted, wait_ns, mark, tokens left, tokens refunded.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratekeeper import Rate
from ratekeeper._gcra import Gcra
from ratekeeper.redis._local import LocalLimits
from ratekeeper.redis._script import (
    CHARGE,
    MAX_AHEAD,
    NO_MARK,
    REFUND,
    RESERVE,
    SCRIPT,
    STATE,
    TAKE_SCRIPT,
    Request,
    Spec,
    encode,
    make_spec,
    single_take_wire,
    single_wire,
    split,
    take_wire,
)

T0 = 1_700_000_000_000_000  # us: a realistic server time, so the sizes are realistic too
RATES = [
    Rate(5),
    Rate(7),
    Rate(3, per=7),
    Rate(12.345),
    Rate.parse("1000/hour"),
    Rate(0.3),
    Rate(200),
    Rate(1e6),
]

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Script:
    """The script on a real server, driven at given times."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.script = client.register_script(SCRIPT)
        self.short = client.register_script(TAKE_SCRIPT)
        self.short_answered = 0

    def call(
        self,
        requests: list[Request],
        now_us: int | None,
        floors: dict[str, tuple[int, int]] | None = None,
        *,
        short: bool = False,
    ) -> list[list[int]]:
        """Decide ``requests`` in one call; with ``short``, as the limiters do: the short
        script first when it is its case (and no floors go with it), the full one when it
        answers ""."""
        wire = take_wire(requests[0]) if short and len(requests) == 1 and not floors else None
        if wire is not None:
            keys, args = wire
            reply = self.short(keys, ["" if now_us is None else str(now_us), *args[1:]])
            if reply:
                self.short_answered += 1
                return split(reply, requests)
        keys, args = encode(requests, now_us, floors)
        return split(self.script(keys, args), requests)


@pytest.fixture
def script(sync_client: redis.Redis) -> Script:
    return Script(sync_client)


def reserve(spec: Spec, tokens: int, max_wait: int | None) -> Request:
    return Request(RESERVE, ((spec, tokens, 0, 0),), -1 if max_wait is None else max_wait)


def refund(spec: Spec, tokens: int, mark: tuple[int, int] | None) -> Request:
    epoch, count = mark if mark is not None else (NO_MARK, 0)
    return Request(REFUND, ((spec, tokens, epoch, count),))


# -- tables ------------------------------------------------------------------------------


def test_a_burst_then_waits_in_order(script: Script, key: str) -> None:
    spec = make_spec(key, "", "5/s", 3)
    replies = script.call([reserve(spec, 1, None) for _ in range(5)], T0)
    assert [(r[0], r[1], r[3]) for r in replies] == [
        (1, 0, 1),
        (1, 0, 2),
        (1, 0, 3),
        (1, 200_000_000, 4),
        (1, 400_000_000, 5),
    ]
    assert spec.tokens(replies[-1][4]) == -2.0


def test_a_wait_beyond_max_wait_is_refused_and_changes_nothing(script: Script, key: str) -> None:
    spec = make_spec(key, "", "5/s", 1)
    [first] = script.call([reserve(spec, 1, 0)], T0)
    [refused] = script.call([reserve(spec, 1, 199_999_999)], T0)
    assert refused[:2] == [0, 200_000_000]
    assert refused[2:] == first[2:]  # state as it was
    [granted] = script.call([reserve(spec, 1, 200_000_000)], T0)
    assert granted[:2] == [1, 200_000_000]


def test_time_comes_from_the_server(script: Script, key: str) -> None:
    spec = make_spec(key, "", "1/minute", 1)
    before = time.time_ns() // 1000
    [[status, wait, epoch, count, ahead]] = script.call([reserve(spec, 1, 0)], None)
    after = time.time_ns() // 1000
    assert (status, wait, count) == (1, 0, 1)
    assert before - 1_000_000 <= epoch <= after + 1_000_000  # the server's TIME, in us
    assert ahead == 60 * 10**9


def test_the_key_expires_when_the_bucket_is_full_again(
    script: Script, sync_client: redis.Redis, key: str
) -> None:
    spec = make_spec(key, "", "10/s", 5)
    script.call([reserve(spec, 5, 0)], None)
    assert 490 <= sync_client.pttl(key) <= 501  # 5 tokens at 100 ms each, + 1 ms
    script.call([refund(spec, 5, None)], None)
    assert sync_client.pttl(key) <= 1  # full again: the key goes at once


def test_a_mark_of_an_expired_key_refunds_nothing(
    script: Script, sync_client: redis.Redis, key: str
) -> None:
    spec = make_spec(key, "", "100/s", 1)
    [[_, _, epoch, count, _]] = script.call([reserve(spec, 1, 0)], None)
    deadline = time.monotonic() + 2
    while sync_client.exists(key):  # 10 ms until full, then the key expires
        assert time.monotonic() < deadline
        time.sleep(0.005)
    [[_, _, new_epoch, new_count, _]] = script.call([reserve(spec, 1, 0)], None)
    assert new_epoch > epoch and new_count == 1
    # Same count as the old mark, but of the old epoch: the bucket was full in between.
    [[status, _, _, back, _]] = script.call([refund(spec, 1, (epoch, count))], None)
    assert (status, back) == (1, 0)
    [[_, _, _, back, _]] = script.call([refund(spec, 1, (new_epoch, new_count))], None)
    assert 0 < back <= spec.cost  # what time has not paid back yet


def test_a_charge_past_the_horizon_is_refused(script: Script, key: str) -> None:
    spec = make_spec(key, "", Rate(12.345), 10)  # scale 2469: the horizon is ~30 minutes
    assert 1000 < spec.horizon < 3000
    tokens = MAX_AHEAD // spec.cost + 1
    [[status, code, *_]] = script.call([Request(CHARGE, ((spec, tokens, 0, 0),))], T0)
    assert (status, code) == (2, 1)
    [[status, wait, *_]] = script.call([reserve(spec, 10, None)], T0)
    assert (status, wait) == (1, 0)  # nothing was charged


def test_a_limit_too_large_for_exact_doubles_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"limit 'tokens' on key 'k'.*2\^51"):
        make_spec("k", "tokens", Rate(1, per=86400 * 365), 10**6, None)
    with pytest.raises(ValueError, match="weight"):
        make_spec("k", "r", "5/s", 5, 6)


def test_a_wrong_type_at_a_key_refuses_only_its_requests(
    script: Script, sync_client: redis.Redis, key: str
) -> None:
    sync_client.hset(key + "-hash", "x", "1")
    sync_client.set(key + "-str", "someone else's value")
    bad = make_spec(key + "-hash", "", "5/s", 5)
    alien = make_spec(key + "-str", "", "5/s", 5)
    good = make_spec(key, "", "5/s", 5)
    replies = script.call([reserve(bad, 1, 0), reserve(alien, 1, 0), reserve(good, 1, 0)], T0)
    assert replies[0][:2] == [3, 1]
    assert replies[1][:2] == [3, 2]
    assert replies[2][:2] == [1, 0]
    assert sync_client.get(key + "-str") == b"someone else's value"  # left alone


def test_a_refund_never_lets_a_newcomer_share_a_booked_slot(script: Script, key: str) -> None:
    spec = make_spec(key, "", "1/s", 1)
    a, b, c = script.call([reserve(spec, 1, None) for _ in range(3)], T0)
    assert [a[1], b[1], c[1]] == [0, 10**9, 2 * 10**9]
    # B (slot 1 s) cancels: C keeps 2 s, so nothing can go back without a newcomer at 2 s.
    [[_, _, _, back, _]] = script.call([refund(spec, 1, (b[2], b[3]))], T0)
    assert back == 0
    [d] = script.call([reserve(spec, 1, None)], T0)
    assert d[1] == 3 * 10**9
    # C, the last one, cancels: its slot can go back exactly.
    [[_, _, _, back, _]] = script.call([refund(spec, 1, (d[2], d[3]))], T0)
    assert back == spec.cost


def test_the_prebuilt_wire_of_the_hot_paths_is_the_encoding() -> None:
    spec = make_spec("k", "", "5/s", 5)
    for max_wait in (0, -1, 123):
        expected = encode([Request(RESERVE, ((spec, 1, NO_MARK, 0),), max_wait)])
        assert single_wire(spec, RESERVE, 1, max_wait) == expected
    expected = encode([Request(CHARGE, ((spec, 3, NO_MARK, 0),))])
    assert single_wire(spec, CHARGE, 3, -1) == expected


def test_state_reads_without_writing(script: Script, sync_client: redis.Redis, key: str) -> None:
    spec = make_spec(key, "", "5/s", 5)
    [[status, _, _, count, ahead]] = script.call([Request(STATE, ((spec, 0, 0, 0),))], T0)
    assert (status, count, ahead) == (1, 0, 0)
    assert not sync_client.exists(key)


# -- hypothesis: random traces against Gcra ------------------------------------------------


def _step(capacity: int) -> st.SearchStrategy[tuple[Any, ...]]:
    dt = st.one_of(st.just(0), st.integers(0, 50_000), st.integers(0, 4_000_000))
    wait = st.one_of(st.none(), st.just(0), st.integers(0, 5_000_000_000))
    tokens = st.integers(1, capacity)
    return st.one_of(
        st.tuples(dt, st.just("reserve"), tokens, wait),
        st.tuples(dt, st.just("charge"), st.integers(1, 2 * capacity), st.none()),
        st.tuples(dt, st.just("refund"), tokens, st.one_of(st.none(), st.integers(0, 60))),
    )


@st.composite
def traces(draw: st.DrawFn) -> tuple[Rate, int, list[tuple[Any, ...]]]:
    rate = draw(st.sampled_from(RATES))
    capacity = draw(st.integers(1, 8))
    steps = draw(st.lists(_step(capacity), min_size=1, max_size=40))
    return rate, capacity, steps


def _run_trace(
    script: Script,
    rate: Rate,
    capacity: int,
    steps: list[tuple[Any, ...]],
    batched: bool,
    *,
    floors: bool = False,
    short: bool = False,
) -> None:
    """Hold the script to Gcra over ``steps``; with ``floors``, each call also carries the
    latest slot booked so far, as the limiters send it (a no-op while the key lives)."""
    key = f"diff-{uuid.uuid4().hex}"
    spec = make_spec(key, "", rate, capacity)
    gcra: Gcra | None = None
    marks: list[tuple[int, tuple[int, int]]] = []  # (Gcra mark, script mark) of grants
    floor: dict[str, tuple[int, int]] = {}
    now = T0
    # Steps at the same instant go in one call when batched: the script must decide a batch
    # exactly as the same requests one call each.
    groups: list[tuple[int, list[tuple[Any, ...]]]] = []
    for step in steps:
        now += step[0]
        if batched and groups and groups[-1][0] == now:
            groups[-1][1].append(step)
        else:
            groups.append((now, [step]))
    try:
        for at, group in groups:
            now_ns = at * 1000
            if gcra is None:
                gcra = Gcra(rate, capacity, now_ns)
            requests: list[Request] = []
            expected: list[tuple[Any, ...]] = []
            for _, op, tokens, arg in group:
                if op == "reserve":
                    requests.append(reserve(spec, tokens, arg))
                    decision = gcra.reserve_at(now_ns, tokens, arg)
                    expected.append(("reserve", decision.granted, decision.wait_ns, decision.mark))
                elif op == "charge":
                    requests.append(Request(CHARGE, ((spec, tokens, 0, 0),)))
                    expected.append(("charge", True, 0, gcra.charge_at(now_ns, tokens)))
                else:
                    pick = marks[arg % len(marks)] if arg is not None and marks else None
                    requests.append(refund(spec, tokens, None if pick is None else pick[1]))
                    back = gcra.refund_at(now_ns, tokens, None if pick is None else pick[0])
                    expected.append(("refund", True, 0, back))
                expected[-1] += (gcra.tokens_at(now_ns),)
            replies = script.call(requests, at, floor if floors else None, short=short)
            for (op, granted, wait_ns, value, _tokens_left), reply in zip(
                expected, replies, strict=False
            ):
                status, wait, epoch, count, ahead = reply
                if op == "refund":
                    got: tuple[Any, ...] = (True, 0, count / spec.cost)
                else:
                    got = (status == 1, wait, count if status == 1 else value)
                    if status == 1:
                        marks.append((value, (epoch, count)))
                        if op == "reserve" and wait:
                            floor[key] = max(floor.get(key, (0, 0)), (at * 1000 + wait, epoch))
                assert status in (0, 1)
                assert got == (granted, wait_ns, value), (op, reply)
        assert gcra is not None
        [[_, _, _, _, ahead]] = script.call([Request(STATE, ((spec, 0, 0, 0),))], now)
        assert spec.tokens(ahead) == gcra.tokens_at(now * 1000)
    finally:
        script.client.delete(key)


@SETTINGS
@given(trace=traces())
def test_random_traces_decide_as_gcra(
    script: Script, trace: tuple[Rate, int, list[tuple[Any, ...]]]
) -> None:
    _run_trace(script, *trace, batched=False)


@SETTINGS
@given(trace=traces())
def test_random_traces_decide_as_gcra_when_batched(
    script: Script, trace: tuple[Rate, int, list[tuple[Any, ...]]]
) -> None:
    _run_trace(script, *trace, batched=True)


@SETTINGS
@given(trace=traces())
def test_random_traces_decide_as_gcra_with_the_booked_floors_sent(
    script: Script, trace: tuple[Rate, int, list[tuple[Any, ...]]]
) -> None:
    _run_trace(script, *trace, batched=True, floors=True)


@pytest.mark.parametrize("rate", [Rate(5), Rate(12.345), Rate(3, per=7)])
def test_a_vanished_key_is_put_back_empty_at_the_latest_booked_slot(
    script: Script, sync_client: redis.Redis, key: str, rate: Rate
) -> None:
    """After state loss, a caller's request carries the latest slot it knows booked (and
    the key's epoch then): the new bucket is the old one as it was then, empty at that slot
    (Gcra with its tat a burst past it), so neither the sleepers nor a fresh burst come on
    top of what was granted."""
    spec = make_spec(key, "", rate, 3)
    replies = script.call([reserve(spec, 1, None) for _ in range(6)], T0)
    slot = T0 * 1000 + replies[-1][1]  # the last sleeper's slot
    epoch = replies[-1][2]
    assert replies[-1][1] > 0
    model = Gcra(rate, 3, T0 * 1000)
    for _ in range(6):
        model.reserve_at(T0 * 1000, 1, None)
    lost_tat = model._tat
    for later_us in (0, 1_000, replies[-1][1] // 2000):
        sync_client.delete(key)  # FLUSHALL, eviction, a restart without persistence...
        now_ns = (T0 + later_us) * 1000
        model = Gcra(rate, 3, now_ns)
        # The bucket as it was before the loss (within the 1 ns the slot was rounded up).
        model._tat = slot * model._scale + spec.burst
        assert lost_tat <= model._tat < lost_tat + model._scale
        expected = [model.reserve_at(now_ns, 1, None).wait_ns for _ in range(4)]
        floors = {key: (slot, epoch)}
        got = script.call([reserve(spec, 1, None) for _ in range(4)], T0 + later_us, floors)
        assert [r[1] for r in got] == expected
        if later_us == 0:  # the next slot: one interval after the last one booked
            assert abs(now_ns + got[0][1] - slot - rate.ns_per_token) <= 1
    # While the key keeps its epoch, a floor is a no-op: the key knows better (a refund
    # may have taken it below what a caller last saw).
    [state] = script.call([Request(STATE, ((spec, 0, 0, 0),))], T0 + 5, None)
    [again] = script.call([Request(STATE, ((spec, 0, 0, 0),))], T0 + 5, {key: (slot * 2, state[2])})
    assert again[4] == state[4]
    # A key recreated since (another epoch) is lifted to the floor.
    sync_client.delete(key)
    [fresh] = script.call([reserve(spec, 1, None)], T0)  # no floor: a full bucket, as before
    assert fresh[1] == 0
    [lifted] = script.call([reserve(spec, 1, None)], T0, {key: (slot, epoch - 1)})
    assert lifted[1] > 0 and T0 * 1000 + lifted[1] > slot


def test_after_state_loss_only_the_slots_booked_after_the_first_callers_last_reply_repeat(
    script: Script, sync_client: redis.Redis, key: str
) -> None:
    """The bound, at fixed instants (10/s, capacity 3; times in ms): processes A and B
    share the key; A's last reply before the loss showed B's first two slots, not the two
    B booked after it. A calls first after the loss: the bucket comes back empty at the
    slot A saw (200), so only B's later slots (300, 400) can be handed out again; B's next
    request lifts the recreated key to its own floor, and nothing repeats after that."""
    spec = make_spec(key, "", Rate(10), 3)
    ms = 1000  # us
    floors: dict[str, dict[str, tuple[int, int]]] = {"A": {}, "B": {}}

    def call(who: str, at_ms: int, max_wait: int | None, n: int = 1) -> list[int]:
        replies = script.call(
            [reserve(spec, 1, max_wait) for _ in range(n)], T0 + at_ms * ms, floors[who]
        )
        for _status, _wait, epoch, _count, ahead in replies:  # as Core._saw
            if ahead > spec.burst:
                slot = (T0 + at_ms * ms) * 1000 + (ahead - spec.burst) // spec.scale
                floors[who][key] = max(floors[who].get(key, (0, 0)), (slot, epoch))
        return [(T0 + at_ms * ms) * 1000 + r[1] - T0 * 1000 for r in replies if r[0] == 1]

    def slots_ms(slots: list[int]) -> list[int]:
        return [slot // 1_000_000 for slot in slots]

    assert slots_ms(call("A", 0, None, 3)) == [0, 0, 0]  # the burst
    assert slots_ms(call("B", 0, None, 2)) == [100, 200]
    assert call("A", 1, 0) == []  # refused; A's last reply shows slots up to 200
    assert slots_ms(call("B", 2, None, 2)) == [300, 400]  # after A's last reply
    sync_client.delete(key)  # the loss
    # A first: empty at 200, so its next slot, 300, is B's too (B's 300 and 400 may be
    # granted again: the bound's excess, 2 tokens).
    assert slots_ms(call("A", 3, None)) == [300]
    # B lifts the recreated key (another epoch) to its floor: empty at 400, 500 next (400
    # without the lift).
    assert slots_ms(call("B", 4, None)) == [500]
    assert slots_ms(call("A", 5, None)) == [600]


@SETTINGS
@given(trace=traces())
def test_random_traces_decide_as_gcra_with_the_short_script(
    script: Script, trace: tuple[Rate, int, list[tuple[Any, ...]]]
) -> None:
    # Every reserve on one key goes to gcra_take.lua, the rest to gcra.lua, on the same
    # key: the two read and write one state, and both decide as Gcra.
    _run_trace(script, *trace, batched=False, short=True)


def test_the_short_script_writes_what_the_full_one_writes(
    script: Script, sync_client: redis.Redis, key: str
) -> None:
    cases = ((Rate(5), 3), (Rate(3, per=7), 2), (Rate(1e6), 8))
    waits = (0, None, 300_000_000)  # take now or refuse; any wait; a wait up to 0.3 s
    for (rate, capacity), max_wait in itertools.product(cases, waits):
        specs = [
            make_spec(f"{key}-{rate}-{max_wait}-{n}", "", rate, capacity) for n in ("full", "short")
        ]
        # From a missing key through grants, refusals (or slots booked ahead) and refill.
        for step in range(6):
            now = T0 + step * 150_000
            full = script.call([reserve(specs[0], 1 + step % 2, max_wait)], now)
            short = script.call([reserve(specs[1], 1 + step % 2, max_wait)], now, short=True)
            assert short == full
            assert sync_client.get(specs[0].key) == sync_client.get(specs[1].key)
    assert script.short_answered == 54


def test_the_short_script_leaves_other_keys_to_the_full_one(
    script: Script, sync_client: redis.Redis, key: str
) -> None:
    sync_client.hset(key + "-hash", "x", "1")
    sync_client.set(key + "-str", "someone else's value")
    sync_client.set(key + "-own", f"{T0} {T0} 0 0 0 200000000 1 5")  # holds its own limit
    for suffix in ("-hash", "-str", "-own"):
        spec = make_spec(key + suffix, "", "5/s", 5)
        keys, args = single_take_wire(spec, 1)
        assert script.short(keys, [str(T0), *args[1:]]) == b""
    assert sync_client.get(key + "-str") == b"someone else's value"
    assert sync_client.get(key + "-own") == f"{T0} {T0} 0 0 0 200000000 1 5".encode()
    # The full script then decides: a refusal for the others, the key's own limit for it.
    assert script.call([reserve(make_spec(key + "-str", "", "5/s", 5), 1, 0)], T0, short=True)[0][
        :2
    ] == [3, 1]


# -- hypothesis: composites against LocalLimits ---------------------------------------------


@st.composite
def composite_traces(draw: st.DrawFn) -> tuple[list[tuple[Rate, int]], list[tuple[Any, ...]]]:
    limits = draw(
        st.lists(st.tuples(st.sampled_from(RATES), st.integers(1, 6)), min_size=2, max_size=3)
    )
    n = len(limits)
    amounts = st.tuples(*(st.integers(0, capacity) for _, capacity in limits)).filter(any)
    dt = st.one_of(st.just(0), st.integers(0, 100_000), st.integers(0, 3_000_000))
    wait = st.one_of(st.none(), st.just(0), st.integers(0, 3_000_000_000))
    step = st.one_of(
        st.tuples(dt, st.just("reserve"), amounts, wait),
        st.tuples(dt, st.just("charge"), amounts, st.none()),
        st.tuples(dt, st.just("refund"), amounts, st.one_of(st.none(), st.integers(0, 40))),
    )
    steps = draw(st.lists(step, min_size=1, max_size=30))
    assert all(len(s[2]) == n for s in steps)
    return limits, steps


@SETTINGS
@given(trace=composite_traces())
def test_composite_traces_decide_as_local_limits(
    script: Script, trace: tuple[list[tuple[Rate, int]], list[tuple[Any, ...]]]
) -> None:
    limits, steps = trace
    base = f"diff-{uuid.uuid4().hex}"
    specs = [make_spec(f"{base}:{i}", str(i), r, c) for i, (r, c) in enumerate(limits)]
    local: LocalLimits | None = None
    grants: list[tuple[tuple[int | None, ...], tuple[tuple[int, int], ...]]] = []
    now = T0
    try:
        for dt, op, amounts, arg in steps:
            now += dt
            now_ns = now * 1000
            if local is None:
                local = LocalLimits(limits, now_ns)
            live = [(s, n) for s, n in zip(specs, amounts, strict=False) if n]
            if op == "reserve":
                req = Request(
                    RESERVE, tuple((s, n, 0, 0) for s, n in live), -1 if arg is None else arg
                )
                [reply] = script.call([req], now)
                granted, wait, marks = local.reserve(now_ns, amounts, arg)
                assert (reply[0] == 1, reply[1]) == (granted, wait)
            elif op == "charge":
                req = Request(CHARGE, tuple((s, n, 0, 0) for s, n in live))
                [reply] = script.call([req], now)
                marks, granted = local.charge(now_ns, amounts), True
            else:
                pick = grants[arg % len(grants)] if arg is not None and grants else None
                items = []
                for i, (s, n) in enumerate(zip(specs, amounts, strict=False)):
                    if n:
                        mark = (NO_MARK, 0) if pick is None else pick[1][i]
                        items.append((s, n, *mark))
                [reply] = script.call([Request(REFUND, tuple(items))], now)
                backs = local.refund(
                    now_ns, amounts, [None] * len(specs) if pick is None else list(pick[0])
                )
                got = [reply[3 + 3 * j] / s.cost for j, (s, _) in enumerate(live)]
                assert got == [b for b, n in zip(backs, amounts, strict=False) if n]
                continue
            if granted:
                # Per touched limit j the reply holds (epoch, count, ahead) at 2 + 3j.
                script_marks: list[tuple[int, int]] = []
                j = 0
                for i, n in enumerate(amounts):
                    if n:
                        script_marks.append((reply[2 + 3 * j], reply[3 + 3 * j]))
                        assert reply[3 + 3 * j] == marks[i]
                        j += 1
                    else:
                        script_marks.append((NO_MARK, 0))
                local_marks = tuple(m if n else None for m, n in zip(marks, amounts, strict=False))
                grants.append((local_marks, tuple(script_marks)))
        assert local is not None
        state = Request(STATE, tuple((s, 0, 0, 0) for s in specs))
        [reply] = script.call([state], now)
        aheads = reply[4::3]
        assert [s.tokens(a) for s, a in zip(specs, aheads, strict=False)] == list(
            local.tokens(now * 1000)
        )
    finally:
        script.client.delete(*(s.key for s in specs))


# -- hypothesis: the envelope holds through cancellations -----------------------------------


@st.composite
def booking_traces(draw: st.DrawFn) -> tuple[Rate, int, list[tuple[int, str, int]]]:
    rate = draw(st.sampled_from([Rate(5), Rate(7), Rate(3, per=7), Rate(200)]))
    capacity = draw(st.integers(1, 5))
    step = st.tuples(
        st.one_of(st.just(0), st.integers(0, 400_000)),
        st.sampled_from(["reserve", "reserve", "cancel"]),
        st.integers(0, 1000),
    )
    return rate, capacity, draw(st.lists(step, min_size=1, max_size=40))


@SETTINGS
@given(trace=booking_traces())
def test_cancelled_reservations_never_let_the_slots_pass_the_envelope(
    script: Script, trace: tuple[Rate, int, list[tuple[int, str, int]]]
) -> None:
    # Callers reserve slots (possibly far ahead) and some cancel, refunding by mark; the
    # slots still in use must fit capacity + rate * T in every window. (A refund rule that
    # counts later grants from now, not from the latest booked slot, fails this.)
    rate, capacity, steps = trace
    spec = make_spec(f"env-{uuid.uuid4().hex}", "", rate, capacity)
    live: dict[int, tuple[int, int, tuple[int, int]]] = {}  # id -> (slot ns, tokens, mark)
    now = T0
    try:
        for n, (dt, op, pick) in enumerate(steps):
            now += dt
            if op == "reserve" or not live:
                tokens = 1 + pick % capacity
                [reply] = script.call([reserve(spec, tokens, None)], now)
                assert reply[0] == 1
                live[n] = (now * 1000 + reply[1], tokens, (reply[2], reply[3]))
            else:
                victim = sorted(live)[pick % len(live)]
                _, tokens, mark = live.pop(victim)
                script.call([refund(spec, tokens, mark)], now)
        slots = sorted((slot, tokens) for slot, tokens, _ in live.values())
        interval = spec.rate.ns_per_token
        for i, (start, _) in enumerate(slots):
            used = 0
            for end, tokens in slots[i:]:
                used += tokens
                # +1 ns: waits are rounded up to whole ns
                assert used <= capacity + (end - start + 1) / interval, (start, end, used)
    finally:
        script.client.delete(spec.key)
