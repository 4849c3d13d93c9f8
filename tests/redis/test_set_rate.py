"""set_rate on the Redis limiters: the limit lives at the server, seen by every process.

Two limiter objects on one key stand for two processes (each has its own local view of the
limit); the script's reconfiguration is held to ``Gcra.reconfigure`` on the same numbers.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ratekeeper import BackendUnavailable, LimiterClosed, Rate
from ratekeeper._gcra import Gcra
from ratekeeper.redis import (
    Limit,
    RedisCompositeLimiter,
    RedisTokenBucket,
    SyncRedisCompositeLimiter,
    SyncRedisTokenBucket,
)
from ratekeeper.redis._script import (
    CHARGE,
    NO_MARK,
    REFUND,
    RESERVE,
    SCRIPT,
    SET_LIMIT,
    STATE,
    Request,
    Spec,
    cut,
    encode,
    make_spec,
    parse,
    rate_of,
)

from .conftest import Server

FAST = {"timeout": 0.2, "retry_interval": 0.1}


# -- every process sees the change -------------------------------------------------------


async def test_the_other_process_follows_the_new_rate_on_its_next_decision(
    async_client: Any, key: str
) -> None:
    mine = RedisTokenBucket(async_client, key, "100/s", 2)
    theirs = RedisTokenBucket(async_client, key, "100/s", 2)  # another process, same key
    await mine.set_rate("1/s", 3)
    assert (mine.rate, mine.capacity) == (Rate(1), 3)
    assert theirs.rate == Rate(100)  # not told yet: it learns with its next call
    assert await theirs.try_acquire(2)  # the 2 tokens there were stay (capped at 3)
    assert (theirs.rate, theirs.capacity) == (Rate(1), 3)
    assert not await theirs.try_acquire()  # at 100/s a token would be back in 10 ms
    reservation = await theirs.reserve()
    assert 0.9 < reservation.delay <= 1.0  # decided at 1/s
    reservation.cancel()
    # A process made later with the old rate decides with the key's limit too.
    newcomer = RedisTokenBucket(async_client, key, "100/s", 2)
    assert 0.9 < await newcomer.full_in() <= 3.0
    assert newcomer.capacity == 3


def test_sync_the_other_process_follows_the_new_rate(sync_client: redis.Redis, key: str) -> None:
    mine = SyncRedisTokenBucket(sync_client, key, "100/s", 2)
    theirs = SyncRedisTokenBucket(sync_client, key, "100/s", 2)
    mine.set_rate("1/s")  # capacity unchanged
    assert mine.capacity == 2
    assert theirs.try_acquire(2)
    assert not theirs.try_acquire()
    assert theirs.rate == Rate(1)
    assert 1.9 < theirs.full_in() <= 2.0


async def test_the_key_keeps_its_limit_past_a_full_bucket(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "1000/s", 5)
    await bucket.set_rate("10/s")
    assert await async_client.pttl(bucket.key) == -1  # the configuration does not expire
    assert await async_client.get(bucket.key) is not None


# -- the balance carries over -------------------------------------------------------------


async def test_tokens_stay_capped_and_debt_stays_debt(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "1/minute", 10)
    assert await bucket.try_acquire(4)
    await bucket.set_rate("1/hour", 20)  # raising capacity: the 6 tokens stay 6
    assert await bucket.available() == pytest.approx(6, abs=0.01)
    await bucket.set_rate("1/minute", 3)  # lowering it: capped at 3
    assert await bucket.available() == pytest.approx(3, abs=0.01)
    await bucket.charge(8)  # 5 in debt
    await bucket.set_rate("2/minute", 4)
    assert await bucket.available() == pytest.approx(-5, abs=0.01)


async def test_a_mark_of_a_grant_before_a_capacity_raise_gives_no_more_back(
    async_client: Any, key: str
) -> None:
    bucket = RedisTokenBucket(async_client, key, "1/minute", 2)
    reservation = await bucket.reserve(2)
    await bucket.set_rate("1/minute", 5)  # 0 tokens stay 0: 5 to refill
    reservation.cancel()
    await bucket.available()  # the refund went out with this batch, or before
    assert await bucket.available() <= 2.01  # never above what the old capacity allowed


# -- refused changes change nothing --------------------------------------------------------


async def test_bad_changes_are_refused_naming_the_value(async_client: Any, key: str) -> None:
    bucket = RedisTokenBucket(async_client, key, "10/s", 5)
    with pytest.raises(ValueError, match="capacity must be an int from 1"):
        await bucket.set_rate("10/s", 0)
    with pytest.raises(TypeError, match="capacity"):
        await bucket.set_rate("10/s", 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot read the rate"):
        await bucket.set_rate("fast")
    with pytest.raises(ValueError, match="2\\^51"):
        await bucket.set_rate("1/day", 2**40)
    composite = RedisCompositeLimiter(
        async_client, key + "c", {"requests": Limit("10/s", 5, weight=3), "tokens": "100/s"}
    )
    with pytest.raises(ValueError, match="weight"):
        await composite.set_rate("requests", "10/s", 2)  # below its weight of 3
    with pytest.raises(ValueError, match=r"unknown limit 'nope'.*requests.*tokens"):
        await composite.set_rate("nope", "1/s")
    assert (bucket.rate, bucket.capacity) == (Rate(10), 5)
    assert composite.limits["requests"] == Limit("10/s", 5, weight=3)
    assert await async_client.exists(bucket.key, *(s.key for s in composite._specs)) == 0
    bucket.close()
    with pytest.raises(LimiterClosed):
        await bucket.set_rate("1/s")


# -- composites ---------------------------------------------------------------------------


async def test_a_composite_changes_one_limit_by_name(
    async_client: Any, sync_client: redis.Redis, key: str
) -> None:
    limits = {"requests": Limit("60/minute", 5, weight=1), "tokens": Limit("1000/minute", 1000)}
    mine = RedisCompositeLimiter(async_client, key, limits)
    theirs = RedisCompositeLimiter(async_client, key, limits)
    assert await mine.try_acquire(300)
    await mine.set_rate("tokens", "100/minute", 500)
    assert mine.limits["tokens"] == Limit("100/minute", 500)
    assert mine.limits["requests"] == Limit("60/minute", 5, weight=1)
    available = await theirs.available()
    assert theirs.limits["tokens"] == Limit("100/minute", 500)
    assert available["tokens"] == pytest.approx(500, abs=0.01)  # 700 there, capped at 500
    assert available["requests"] == pytest.approx(4, abs=0.02)
    with pytest.raises(ValueError, match="exceeds the capacity 500"):
        await theirs.try_acquire(501)  # checked against the new capacity
    sync = SyncRedisCompositeLimiter(sync_client, key, limits)
    sync.set_rate("requests", "1/minute")
    assert sync.limits["requests"] == Limit("1/minute", 5, weight=1)
    assert await mine.try_acquire(1)
    assert mine.limits["requests"].rate == Rate.parse("1/minute")


# -- the server down ------------------------------------------------------------------------


@pytest.mark.parametrize("on_failure", ["closed", "open", "fallback"])
async def test_a_change_that_cannot_reach_the_server_raises_whatever_the_policy(
    own_server: Server, key: str, on_failure: Any
) -> None:
    bucket = RedisTokenBucket(
        own_server.url, key, "10/s", 5, on_failure=on_failure, fallback_share=0.5, **FAST
    )
    assert await bucket.try_acquire()
    own_server.kill()
    with pytest.raises(BackendUnavailable, match="the limit was not changed"):
        await bucket.set_rate("1/s")
    assert (bucket.rate, bucket.capacity) == (Rate(10), 5)
    assert bucket.statistics().backend_errors == 1
    await bucket.aclose()


def test_sync_a_change_that_cannot_reach_the_server_raises(own_server: Server, key: str) -> None:
    bucket = SyncRedisTokenBucket(own_server.url, key, "10/s", 5, on_failure="open", **FAST)
    own_server.kill()
    with pytest.raises(BackendUnavailable, match="the limit was not changed"):
        bucket.set_rate("1/s")
    assert bucket.rate == Rate(10)
    bucket.close()


# -- the script agrees with Gcra.reconfigure ------------------------------------------------

T0 = 1_700_000_000_000_000  # us


def _call(client: redis.Redis, requests: list[Request], now_us: int) -> list[list[int]]:
    keys, args = encode(requests, now_us)
    return cut(parse(client.register_script(SCRIPT)(keys, args)), requests)[0]


def _set(spec: Spec, new: Spec) -> Request:
    return Request(SET_LIMIT, ((spec, new.cost, new.scale, new.capacity),))


CASES = [
    # (rate, capacity, steps before, new rate, new capacity)
    ("5/s", 10, [("R", 4)], "7/s", 20),
    ("5/s", 10, [("R", 4)], "3 per 7 seconds", 2),
    ("12.345/s", 7, [("R", 7), ("R", 3)], "1000/hour", 9),  # booked ahead, then slower
    ("1000/hour", 5, [("C", 9)], "12.345/s", 5),  # debt, then faster
    ("0.3/s", 3, [("R", 1)], "200/s", 1),
    ("1000000/s", 1000, [("R", 999)], "0.3/s", 4),
    ("3 per 7 seconds", 4, [], "5/s", 8),  # a full bucket: its 4 stay 4 of 8
]


@pytest.mark.parametrize("case", CASES)
def test_the_script_reconfigures_as_gcra(
    sync_client: redis.Redis, key: str, case: tuple[str, int, list[tuple[str, int]], str, int]
) -> None:
    rate, capacity, steps, new_rate, new_capacity = case
    old = make_spec(key, "", rate, capacity)
    new = make_spec(key, "", new_rate, new_capacity)
    gcra = Gcra(Rate.parse(rate), capacity, T0 * 1000)
    now = T0
    marks = []
    for op, n in steps:
        now += 1234
        if op == "R":
            reply = _call(sync_client, [Request(RESERVE, ((old, n, NO_MARK, 0),))], now)[0]
            decision = gcra.reserve_at(now * 1000, n)
            assert reply[1] == decision.wait_ns
            marks.append(((reply[2], reply[3]), decision.mark))
        else:
            _call(sync_client, [Request(CHARGE, ((old, n, NO_MARK, 0),))], now)
            gcra.charge_at(now * 1000, n)
    now += 5678
    reply = _call(sync_client, [_set(old, new)], now)[0]
    gcra.reconfigure(now * 1000, Rate.parse(new_rate), new_capacity)
    assert reply[0] == 1
    # The same balance, to the unit, in the new limit; the same waits and refunds after.
    assert reply[4] == max(gcra._tat - now * 1000 * new.scale, 0)
    now += 999
    state = _call(sync_client, [Request(STATE, ((old, 0, NO_MARK, 0),))], now)[0]
    assert new.tokens(state[4]) == pytest.approx(gcra.tokens_at(now * 1000), abs=1e-9)
    for (server_mark, core_mark), (op, n) in zip(marks, steps, strict=False):
        back = _call(sync_client, [Request(REFUND, ((old, n, *server_mark),))], now)[0]
        assert back[3] / new.cost == pytest.approx(gcra.refund_at(now * 1000, n, core_mark))
        del op
    reply = _call(sync_client, [Request(RESERVE, ((old, 1, NO_MARK, 0),))], now)[0]
    assert reply[1] == gcra.reserve_at(now * 1000, 1).wait_ns


def test_the_reply_names_the_keys_limit_to_a_caller_that_sent_another(
    sync_client: redis.Redis, key: str
) -> None:
    old = make_spec(key, "", "5/s", 10)
    new = make_spec(key, "", "100/minute", 3)
    keys, args = encode([_set(old, new)], T0)
    values = parse(sync_client.register_script(SCRIPT)(keys, args))
    assert cut(values, [_set(old, new)])[1] == [1, new.cost, new.scale, 3]
    keys, args = encode([Request(STATE, ((new, 0, NO_MARK, 0),))], T0)
    values = parse(sync_client.register_script(SCRIPT)(keys, args))
    assert cut(values, [Request(STATE, ((new, 0, NO_MARK, 0),))])[1] == []  # it knows
    assert str(rate_of(new.cost, new.scale)) == "100/minute"
