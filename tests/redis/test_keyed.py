"""Per-key limits on a real server: ``KeyedLimiter(backend=RedisKeyedBackend(...))``.

The reference is ``MemoryKeyedStore``: driven at the same instants (the script's test-only
``now``, given through a client that puts it in every script call), the Redis backend must
answer every call the same way. Then the real clock: composites, expiry, sharing between
limiters and threads, waiting, cancellation, failures, the cluster and the blocking twin.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot  # type: ignore[attr-defined]

from ratekeeper import AcquireTimeout, BackendUnavailable, LimiterClosed, Rate
from ratekeeper._keyed import (
    AsyncKeyedBackend,
    KeyedBackend,
    KeyedLimiter,
    Limit,
    MemoryKeyedStore,
    SyncKeyedLimiter,
    Verdict,
)
from ratekeeper.redis import RedisKeyedBackend, SyncRedisKeyedBackend

from .conftest import Server

T0 = 1_700_000_000_000_000  # us: a realistic server time
FAST = {"timeout": 0.2, "retry_interval": 0.1}
LLM = {"requests": Limit("60/hour", 3, weight=1), "tokens": Limit("1000/hour", 1000)}


def prefix() -> str:
    """A prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}:"


# -- the same answers as the memory store, at fixed instants ----------------------------------


class SyncAtTime(redis.Redis):
    """A client whose script calls run at ``now_us``: the script's test-only time argument."""

    now_us = T0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        args = list(keys_and_args)
        args[numkeys] = str(self.now_us)  # ARGV[1]: "" (server TIME) becomes a fixed time
        return super().evalsha(sha, numkeys, *args)


class AsyncAtTime(redis.asyncio.Redis):
    """The asyncio twin of SyncAtTime."""

    now_us = T0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        args = list(keys_and_args)
        args[numkeys] = str(self.now_us)
        return super().evalsha(sha, numkeys, *args)


class Instant:
    """The memory store's clock: the same instant as the script's, in ns."""

    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


def same(memory: Verdict, server: Verdict) -> bool:
    """Equal but for the marks (each backend has its own)."""
    return (memory.granted, memory.wait_ns, memory.available, memory.full_in_ns) == (
        server.granted,
        server.wait_ns,
        server.available,
        server.full_in_ns,
    )


ONE = {"default": Limit(Rate(3, per=7), 3)}
COMPOSITE = {"fast": Limit(Rate(12.345), 5), "slow": Limit("7/minute", 4, weight=1)}
# (us since the last step, key, op, costs, max_wait choice, which grant to refund)
STEP = st.tuples(
    st.sampled_from([0, 0, 1, 999, 150_000, 400_000, 3_000_000]),
    st.sampled_from("ab"),
    st.sampled_from("RRRCFMS"),
    st.tuples(st.integers(0, 5), st.integers(0, 4)),
    st.sampled_from([0, 100_000_000, None]),
    st.integers(0, 10),
)


@pytest.mark.parametrize("limits", [ONE, COMPOSITE], ids=["one", "composite"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(STEP, max_size=30), waits=st.booleans())
def test_same_answers_as_the_memory_store(
    redis_url: str, limits: dict[str, Limit], steps: list[Any], waits: bool
) -> None:
    """Every reservation, charge, refund and read: the same Verdict, the same tokens back.

    One difference is by design: the memory store books a waiting reservation's slot for
    the whole key, the script for each limit the reservation takes from, so a composite
    key's refunds may differ while a slot is booked ahead. Composite traces therefore either
    wait (no refunds) or refund (no waits).
    """
    composite = len(limits) > 1
    refunds = not composite or not waits
    clock = Instant()
    memory = MemoryKeyedStore(limits, clock=clock)  # type: ignore[arg-type]
    client = SyncAtTime.from_url(redis_url, socket_timeout=5)
    server = SyncRedisKeyedBackend(client, limits, prefix=prefix())
    capacities = [limit.capacity for limit in limits.values()]
    grants: dict[str, list[tuple[tuple[int, ...], object, object]]] = {"a": [], "b": []}
    try:
        for dt, key, op, raw, wait_choice, pick in steps:
            clock.ns += dt * 1000
            client.now_us = T0 + clock.ns // 1000
            costs = tuple(min(n, cap) for n, cap in zip(raw, capacities, strict=False))
            if not any(costs):
                costs = (1, *costs[1:])
            if op == "R":
                max_wait = wait_choice if waits else 0
                m, s = memory.reserve(key, costs, max_wait), server.reserve(key, costs, max_wait)
                assert same(m, s), (m, s)
                if m.granted:
                    grants[key].append((costs, m.mark, s.mark))
            elif op == "C":
                memory.charge(key, costs)
                server.charge(key, costs)
            elif op == "S":
                m, s = memory.peek(key), server.peek(key)
                assert same(m, s), (m, s)
            elif refunds and (op == "F" or grants[key]):
                # Unmarked, or by the mark of any grant, refunded any number of times (both
                # count every grant made since a mark, as the core does, undone or not).
                if op == "F":
                    args: tuple[Any, Any, Any] = (costs, None, None)
                else:
                    args = grants[key][pick % len(grants[key])]
                assert memory.refund(key, args[0], args[1]) == server.refund(key, args[0], args[2])
    finally:
        client.close()


def test_refunding_the_rest_of_a_partly_refunded_grant_gives_nothing_back(redis_url: str) -> None:
    """The same trace on both: a grant given back in part gives nothing more by its mark,
    so the tokens that stand never pass the capacity; a float amount is a TypeError."""
    limits = {"default": Limit(Rate(5, per=2), 3)}
    clock = Instant()
    memory = MemoryKeyedStore(limits, clock=clock)  # type: ignore[arg-type]
    client = SyncAtTime.from_url(redis_url, socket_timeout=5)
    server = SyncRedisKeyedBackend(client, limits, prefix=prefix())
    try:
        for store in (memory, server):
            assert store.reserve("k", (1,), None).wait_ns == 0
            three = store.reserve("k", (3,), None)
            assert three.wait_ns == 400_000_000
            assert store.reserve("k", (1,), None).wait_ns == 800_000_000
            assert store.refund("k", (3,), three.mark) == (2.0,)
            assert store.refund("k", (1,), three.mark) == (0.0,)
            with pytest.raises(TypeError):
                store.refund("k", (1.0,), three.mark)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                store.charge("k", (1.0,))  # type: ignore[arg-type]
            assert store.reserve("k", (3,), None).wait_ns == 1_200_000_000
    finally:
        client.close()


async def test_a_table_of_calls_on_the_asyncio_backend(redis_url: str) -> None:
    limits = {"burst": Limit("2/s", 2), "minute": Limit("10/minute", 3)}
    clock = Instant()
    memory = MemoryKeyedStore(limits, clock=clock)  # type: ignore[arg-type]
    client = AsyncAtTime.from_url(redis_url, socket_timeout=5)
    server = RedisKeyedBackend(client, limits, prefix=prefix())
    # (s, op, key, costs, max_wait ns): "R" reserve, "F" refund (by the last grant's mark),
    # "C" charge, "S" read
    table: list[tuple[float, str, str, tuple[int, int], int | None]] = [
        (0.0, "R", "a", (1, 1), 0),
        (0.0, "R", "a", (1, 1), 0),
        (0.0, "R", "a", (1, 1), 0),  # the per-second limit refuses; the other is untouched
        (0.0, "R", "a", (0, 1), 0),  # no cost on "burst": read in the same call
        (0.0, "R", "b", (2, 0), 0),  # keys are independent
        (0.25, "R", "a", (1, 0), None),  # books a slot at 0.5 s
        (0.25, "F", "a", (1, 0), None),  # the sleeper gives it back
        (0.25, "S", "a", (1, 1), None),
        (0.5, "C", "a", (0, 2), None),  # into debt on "minute"
        (0.5, "R", "a", (0, 1), 2 * 10**9),
        (0.5, "S", "a", (1, 1), None),
        (30.0, "R", "a", (2, 3), 0),  # full again
    ]
    marks: dict[str, tuple[object, object]] = {}
    try:
        for at, op, key, costs, max_wait in table:
            clock.ns = round(at * 1e9)
            client.now_us = T0 + clock.ns // 1000
            if op == "R":
                m, s = (
                    memory.reserve(key, costs, max_wait),
                    await server.reserve(key, costs, max_wait),
                )
                assert same(m, s), (at, m, s)
                marks[key] = (m.mark, s.mark)
            elif op == "F":
                back = memory.refund(key, costs, marks[key][0])
                assert back == await server.refund(key, costs, marks[key][1]) == (1.0, 0.0)
            elif op == "C":
                memory.charge(key, costs)
                await server.charge(key, costs)
            else:
                m, s = memory.peek(key), await server.peek(key)
                assert same(m, s), (at, m, s)
        assert s.granted and s.available == (0.0, 0.0)  # at 30 s both were full again
    finally:
        await server.aclose()
        await client.aclose()


def test_a_slot_is_booked_on_the_limits_its_sleeper_takes_from(redis_url: str) -> None:
    """The one difference from the memory store, which books a sleeper's slot for the key."""
    limits = {"a": Limit("1/s", 1), "b": Limit("1/s", 1)}
    clock = Instant()
    memory = MemoryKeyedStore(limits, clock=clock)  # type: ignore[arg-type]
    client = SyncAtTime.from_url(redis_url, socket_timeout=5)
    server = SyncRedisKeyedBackend(client, limits, prefix=prefix())
    for store in (memory, server):
        assert store.reserve("k", (1, 1), 0).granted
        assert store.reserve("k", (0, 1), None).wait_ns == 10**9  # a sleeper, on "b" only
    assert memory.refund("k", (1, 0), None) == (0.0, 0.0)  # the whole key is booked
    assert server.refund("k", (1, 0), None) == (1.0, 0.0)  # "a" is not the sleeper's
    assert server.refund("k", (0, 1), None) == (0.0, 0.0)  # "b" is
    client.close()


# -- the real clock ----------------------------------------------------------------------------


async def test_composite_per_key_limits_all_or_nothing(redis_url: str, key: str) -> None:
    backend = RedisKeyedBackend(redis_url, LLM, prefix=prefix())
    assert isinstance(backend, AsyncKeyedBackend)
    limiter = KeyedLimiter(backend=backend)
    assert await limiter.try_acquire(key, 600)  # 1 request, 600 tokens
    assert not await limiter.try_acquire(key, 500)  # the tokens limit refuses...
    assert await limiter.try_acquire(key, 400)  # ...and took nothing from requests
    available = await limiter.available(key)
    assert available["requests"] == pytest.approx(1.0, abs=0.1)
    assert available["tokens"] == pytest.approx(0.0, abs=0.1)
    assert await limiter.try_acquire(key + "-other", 1000)  # keys are independent

    # The reply used 300 tokens fewer than estimated; then 100 more than that.
    back = await limiter.refund(key, 300)
    assert back["requests"] == 0.0 and back["tokens"] == pytest.approx(300, abs=0.1)
    await limiter.charge(key, {"tokens": 100})
    assert (await limiter.available(key))["tokens"] == pytest.approx(200, abs=0.5)

    # A cost on one limit only: the other's state comes back from the same script call.
    before = backend.statistics().round_trips
    verdict = await limiter.admit(key, {"tokens": 50})
    assert backend.statistics().round_trips == before + 1
    assert verdict.granted
    assert verdict.available[0] == pytest.approx(1.0, abs=0.1)  # requests, untouched
    assert verdict.available[1] == pytest.approx(150, abs=0.5)
    assert verdict.full_in_ns[0] > 0

    # One string per limit, under one hash tag: one slot per user key.
    names = backend.keys_of(key)
    assert names == [f"{backend.prefix}{{{key}}}:requests", f"{backend.prefix}{{{key}}}:tokens"]
    assert len({key_slot(n.encode()) for n in names}) == 1
    await backend.aclose()


async def test_keys_expire_when_their_buckets_are_full_again(redis_url: str, key: str) -> None:
    limits = {"fast": Limit("20/s", 2), "slow": Limit("10/s", 1)}
    backend = RedisKeyedBackend(redis_url, limits, prefix=prefix())
    limiter = KeyedLimiter(backend=backend)
    assert await limiter.try_acquire(key)
    inspect = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        fast, slow = backend.keys_of(key)
        fast_ttl, slow_ttl = inspect.pttl(fast), inspect.pttl(slow)
        assert 0 < fast_ttl <= 51  # full again 50 ms after one token at 20/s
        assert fast_ttl < slow_ttl <= 101
        await asyncio.sleep(0.12)
        assert inspect.exists(fast, slow) == 0  # nothing left behind
        verdict = await limiter.peek(key)
        assert verdict.available == (2.0, 1.0) and verdict.full_in_ns == (0, 0)
    finally:
        inspect.close()
    await backend.aclose()


async def test_two_limiters_share_each_keys_limit(redis_url: str, key: str) -> None:
    """Two limiters on two connections (as two processes would be), and a thread limiter."""
    shared = prefix()
    limits = {"default": Limit("1/minute", 3)}
    one = KeyedLimiter(backend=RedisKeyedBackend(redis_url, limits, prefix=shared))
    two = KeyedLimiter(backend=RedisKeyedBackend(redis_url, limits, prefix=shared))
    assert one.backend._client is not two.backend._client  # type: ignore[union-attr]
    results = await asyncio.gather(
        *(limiter.try_acquire(k) for k in (key, key + "-b") for limiter in (one, two) * 4)
    )
    assert sum(results[:8]) == 3 and sum(results[8:]) == 3  # 3 per key, whoever asks
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    threads = SyncKeyedLimiter(backend=SyncRedisKeyedBackend(client, limits, prefix=shared))
    assert not threads.try_acquire(key)  # the same buckets
    assert threads.available(key)["default"] == pytest.approx(0.0, abs=0.01)
    other = SyncKeyedLimiter(backend=SyncRedisKeyedBackend(client, limits, prefix=prefix()))
    assert other.try_acquire(key)  # another prefix: other buckets
    client.close()
    for limiter in (one, two):
        await limiter.backend.aclose()  # type: ignore[union-attr]


async def test_waiting_books_a_slot_and_sleeps_locally(redis_url: str, key: str) -> None:
    backend = RedisKeyedBackend(redis_url, {"default": Limit("20/s", 1)}, prefix=prefix())
    limiter = KeyedLimiter(backend=backend)
    start = time.monotonic()
    await asyncio.gather(*(limiter.acquire(key) for _ in range(4)))
    elapsed = time.monotonic() - start
    assert 3 / 20 - 0.01 <= elapsed < 1.0
    assert backend.statistics().server_requests == 4  # one per acquire: no polling
    with pytest.raises(AcquireTimeout):
        await limiter.acquire(key, timeout=0.01)  # refused at once, nothing booked
    assert await limiter.try_acquire(key + "-other")
    stats = limiter.statistics()
    assert (stats.granted, stats.rejected) == (5, 1)
    await backend.aclose()


async def test_a_cancelled_sleeper_gives_its_slot_back(redis_url: str, key: str) -> None:
    backend = RedisKeyedBackend(redis_url, {"default": Limit("2/s", 1)}, prefix=prefix())
    limiter = KeyedLimiter(backend=backend)
    assert await limiter.try_acquire(key)
    sleeper = asyncio.create_task(limiter.acquire(key))  # books the slot 0.5 s ahead
    await asyncio.sleep(0.02)
    assert limiter.statistics().waiting == 1
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    verdict = await limiter.admit(key, max_wait=1.0)  # gets that slot, not the one after
    assert verdict.granted and verdict.wait_ns <= 0.5e9
    assert limiter.statistics().cancelled == 1
    await backend.aclose()


async def test_race_reads_and_decisions_queued_behind_a_call_in_flight(
    redis_url: str, key: str
) -> None:
    """Costs on one limit only (a read rides with the decision) while calls are in flight."""
    backend = RedisKeyedBackend(redis_url, LLM, prefix=prefix())
    limiter = KeyedLimiter(backend=backend)
    keys = [f"{key}-{i}" for i in range(40)]
    verdicts = await asyncio.gather(*(limiter.admit(k, {"tokens": 600}) for k in keys * 2))
    assert [v.granted for v in verdicts] == [True] * 40 + [False] * 40
    for verdict in verdicts:  # "requests" was read, never taken
        assert verdict.available[0] == 3.0 and verdict.full_in_ns[0] == 0
    stats = backend.statistics()
    assert stats.round_trips < stats.server_requests  # they went out in batches
    await backend.aclose()


async def test_race_a_read_split_from_its_decision_by_the_batch_limit(
    redis_url: str, key: str
) -> None:
    """Past 256 queued requests a read may go in the batch before its decision's."""
    backend = RedisKeyedBackend(redis_url, LLM, prefix=prefix())
    limiter = KeyedLimiter(backend=backend)
    keys = [f"{key}-{i}" for i in range(200)]
    # The first call goes alone; the second queues alone, so that every (read, decision)
    # pair after it starts at an odd place in the queue: the pair at 255-256 is split.
    calls = [limiter.admit(key, 1), limiter.admit(key, 1)]
    calls += [limiter.admit(k, {"tokens": 600}) for k in keys]
    verdicts = await asyncio.gather(*calls)
    assert all(v.granted for v in verdicts)
    assert all(v.available[0] == 3.0 and v.full_in_ns[0] == 0 for v in verdicts[2:])
    assert backend.statistics().round_trips >= 3
    await backend.aclose()


def test_race_sync_read_split_from_its_decision_by_the_batch_limit(
    redis_url: str, key: str
) -> None:
    """The blocking twin: a thread whose read and decision go in two batches, and leads one."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    backend = SyncRedisKeyedBackend(client, LLM, prefix=prefix())
    limiter = SyncKeyedLimiter(backend=backend)
    dispatcher = backend._dispatcher
    verdicts: dict[str, Verdict] = {}

    def admit(k: str, tokens: Any) -> None:
        verdicts[k] = limiter.admit(k, tokens)

    def wait_for(queued: int) -> None:
        deadline = time.monotonic() + 10
        while len(dispatcher.pending) < queued:
            assert time.monotonic() < deadline
            time.sleep(0.001)

    with dispatcher.lock:
        dispatcher.busy = True  # as if a call were in flight: everything queues
    threads = [threading.Thread(target=admit, args=(f"{key}-{i}", 1)) for i in range(255)]
    for i, thread in enumerate(threads):
        thread.start()
        wait_for(i + 1)  # in this order
    split = threading.Thread(target=admit, args=(key, {"tokens": 600}))
    split.start()
    wait_for(257)  # its read is the 256th request, its decision the 257th
    dispatcher.hand_off()  # the first thread leads the first batch; this one the second
    for thread in [*threads, split]:
        thread.join(10)
    assert len(verdicts) == 256 and all(v.granted for v in verdicts.values())
    assert verdicts[key].available[0] == 3.0  # the read, answered in the batch before
    assert verdicts[key].available[1] == pytest.approx(400, abs=1)
    assert not dispatcher.busy and not dispatcher.pending
    client.close()


def test_race_sync_reads_and_decisions_queued_behind_a_call_in_flight(
    redis_url: str, key: str
) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    backend = SyncRedisKeyedBackend(client, LLM, prefix=prefix())
    limiter = SyncKeyedLimiter(backend=backend)
    verdicts: list[Verdict] = []

    def worker(i: int) -> None:
        for j in range(10):
            verdicts.append(limiter.admit(f"{key}-{i}-{j % 5}", {"tokens": 600}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(v.granted for v in verdicts) == 40  # each of the 40 keys: once
    assert all(v.available[0] == 3.0 for v in verdicts)
    client.close()


async def test_refusals_carry_the_numbers_for_the_headers(redis_url: str, key: str) -> None:
    backend = RedisKeyedBackend(redis_url, {"default": Limit("10/minute", 2)}, prefix=prefix())
    limiter = KeyedLimiter(backend=backend)
    assert (await limiter.admit(key)).granted
    assert (await limiter.admit(key)).granted
    refused = await limiter.admit(key)
    assert not refused.granted and refused.mark is None
    assert 5e9 < refused.wait_ns <= 6e9  # one token back 6 s after the first
    assert 0.0 <= refused.available[0] < 0.2
    assert 11e9 < refused.full_in_ns[0] <= 12e9
    await backend.aclose()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (42, TypeError, "must be a str"),
        (b"k", TypeError, "must be a str"),
        ("", ValueError, "non-empty"),
        ("k" * 257, ValueError, "max_key_length=256"),
        ("k\ud800", ValueError, "UTF-8"),
    ],
)
async def test_bad_keys_are_refused_before_the_server(
    redis_url: str, bad: object, error: type[Exception], match: str
) -> None:
    backend = RedisKeyedBackend(redis_url, {"default": "1/s"}, prefix=prefix())
    limiter = KeyedLimiter(backend=backend)
    with pytest.raises(error, match=match):
        await limiter.try_acquire(bad)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        await limiter.peek(bad)  # type: ignore[arg-type]
    assert backend.statistics().server_requests == 0
    assert await limiter.try_acquire("k\u00e9\u4e16")  # any other text is fine
    await backend.aclose()


def test_bad_construction(redis_url: str) -> None:
    sync_client = redis.Redis.from_url(redis_url, socket_timeout=5)
    with pytest.raises(TypeError, match="SyncRedisKeyedBackend"):
        RedisKeyedBackend(sync_client, {"default": "1/s"})
    with pytest.raises(TypeError, match="RedisKeyedBackend"):
        SyncRedisKeyedBackend(redis.asyncio.Redis.from_url(redis_url), {"default": "1/s"})
    with pytest.raises(ValueError, match="socket_timeout"):
        SyncRedisKeyedBackend(redis.Redis.from_url(redis_url), {"default": "1/s"})
    with pytest.raises(TypeError, match="prefix"):
        RedisKeyedBackend(redis_url, {"default": "1/s"}, prefix=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        RedisKeyedBackend(redis_url, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_key_length"):
        RedisKeyedBackend(redis_url, {"default": "1/s"}, max_key_length=0)
    with pytest.raises(ValueError, match="fallback_share"):
        RedisKeyedBackend(redis_url, {"default": "1/s"}, on_failure="fallback")
    with pytest.raises(TypeError, match="capacity goes with rate"):
        KeyedLimiter(capacity=3, backend=RedisKeyedBackend(redis_url, {"default": "1/s"}))
    sync_client.close()


async def test_a_key_holding_something_else_is_an_error_whatever_the_policy(
    redis_url: str, key: str
) -> None:
    backend = RedisKeyedBackend(redis_url, {"default": "1/s"}, prefix=prefix(), on_failure="open")
    other = redis.Redis.from_url(redis_url, socket_timeout=5)
    other.hset(backend.keys_of(key)[0], "x", "1")
    limiter = KeyedLimiter(backend=backend)
    with pytest.raises(BackendUnavailable, match="not a ratekeeper bucket"):
        await limiter.try_acquire(key)
    other.delete(backend.keys_of(key)[0])
    other.close()
    await backend.aclose()


# -- failures ----------------------------------------------------------------------------------


async def test_fail_closed_raises_and_recovers(own_server: Server, key: str) -> None:
    backend = RedisKeyedBackend(own_server.url, {"default": Limit("1/s", 2)}, **FAST)
    limiter = KeyedLimiter(backend=backend)
    assert await limiter.try_acquire(key)
    own_server.kill()
    with pytest.raises(BackendUnavailable, match=rf"127\.0\.0\.1:{own_server.port}.*unreachable"):
        await limiter.admit(key)
    with pytest.raises(BackendUnavailable, match="failed a moment ago"):
        await limiter.acquire(key)
    with pytest.raises(BackendUnavailable):
        await limiter.peek(key)
    own_server.start()  # empty: full buckets, and the script is loaded again
    await asyncio.sleep(0.15)
    assert [await limiter.try_acquire(key) for _ in range(3)] == [True, True, False]
    assert backend.statistics().backend_errors == 3
    await backend.aclose()


async def test_fail_open_grants_and_says_the_buckets_are_full(own_server: Server, key: str) -> None:
    backend = RedisKeyedBackend(
        own_server.url, {"default": Limit("1/s", 2)}, on_failure="open", **FAST
    )
    limiter = KeyedLimiter(backend=backend)
    own_server.kill()
    verdicts = [await limiter.admit(key) for _ in range(4)]
    assert all(v.granted and v.available == (2.0,) and v.full_in_ns == (0,) for v in verdicts)
    assert backend.statistics().failed_open == 4
    assert await limiter.refund(key, 1) == {"default": 0.0}  # nothing to give back: counted
    with pytest.raises(BackendUnavailable, match="nothing to read"):
        await limiter.available(key)
    await backend.aclose()


async def test_fallback_limits_each_key_locally_at_its_share(own_server: Server, key: str) -> None:
    backend = RedisKeyedBackend(
        own_server.url,
        {"default": Limit("1/minute", 4)},
        on_failure="fallback",
        fallback_share=0.5,
        **FAST,
    )
    limiter = KeyedLimiter(backend=backend)
    assert await limiter.try_acquire(key)
    own_server.kill()
    assert [await limiter.try_acquire(key) for _ in range(3)] == [True, True, False]  # 2 of 4
    assert await limiter.try_acquire(key + "-other")  # per key
    assert (await limiter.available(key))["default"] == pytest.approx(0.0, abs=0.01)
    verdict = await limiter.admit(key + "-third")
    back = await backend.refund(key + "-third", (1,), verdict.mark)  # to the local store
    assert back[0] == pytest.approx(1.0, abs=1e-3)
    stats = backend.statistics()
    assert stats.fallback_grants == 4 and stats.backend_errors >= 1
    await backend.aclose()


async def test_race_a_sleeper_cancelled_while_the_server_is_down_still_raises_cancelled(
    own_server: Server, key: str
) -> None:
    backend = RedisKeyedBackend(own_server.url, {"default": Limit("1/s", 1)}, **FAST)
    limiter = KeyedLimiter(backend=backend)
    assert await limiter.try_acquire(key)
    sleeper = asyncio.create_task(limiter.acquire(key))  # its slot: 1 s ahead
    await asyncio.sleep(0.02)
    own_server.kill()
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):  # not the refund's failure
        await sleeper
    assert backend.statistics().backend_errors == 1  # the refund's, counted
    await backend.aclose()


async def test_closed_backend_refuses_reservations(redis_url: str, key: str) -> None:
    backend = RedisKeyedBackend(redis_url, {"default": "1/s"})
    await backend.aclose()
    with pytest.raises(LimiterClosed):
        await KeyedLimiter(backend=backend).try_acquire(key)
    assert "closed" in repr(backend)


# -- cluster -----------------------------------------------------------------------------------


async def test_per_key_limits_on_a_three_master_cluster(
    cluster_nodes: list[Server], key: str
) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_nodes[0].port, socket_timeout=2)
    try:
        backend = RedisKeyedBackend(client, LLM)
        limiter = KeyedLimiter(backend=backend)
        users = [f"{key}-{i}" for i in range(30)]
        assert all(await asyncio.gather(*(limiter.try_acquire(u, 600) for u in users)))
        refused = await asyncio.gather(*(limiter.admit(u, {"tokens": 500}) for u in users))
        assert not any(v.granted for v in refused)
        assert all(2.0 <= v.available[0] < 2.1 for v in refused)  # read, not assumed full
        used = 0
        for server in cluster_nodes:
            node = redis.Redis(port=server.port, socket_timeout=2)
            used += node.dbsize() > 0
            node.close()
        assert used == 3  # the users are spread over every master
    finally:
        await client.aclose()

    sync_client = redis.RedisCluster(host="127.0.0.1", port=cluster_nodes[1].port, socket_timeout=2)
    try:
        sync_limiter = SyncKeyedLimiter(backend=SyncRedisKeyedBackend(sync_client, LLM))
        assert not sync_limiter.try_acquire(users[0], 500)  # the same buckets
        assert sync_limiter.try_acquire(users[0], {"tokens": 400})
    finally:
        sync_client.close()


# -- the blocking twin -------------------------------------------------------------------------


def test_sync_keyed_limiter_on_redis(redis_url: str, key: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    backend = SyncRedisKeyedBackend(client, {"default": Limit("20/s", 1)}, prefix=prefix())
    assert isinstance(backend, KeyedBackend)
    limiter = SyncKeyedLimiter(backend=backend)
    start = time.monotonic()
    for _ in range(3):
        limiter.acquire(key)  # blocks for its slot
    assert time.monotonic() - start >= 2 / 20 - 0.01
    assert not limiter.try_acquire(key)
    with pytest.raises(AcquireTimeout):
        limiter.acquire(key, timeout=0.001)
    limiter.charge(key, 2)  # into debt
    debt = limiter.available(key)["default"]
    assert -2.01 < debt < -1.0
    assert 0.1 < limiter.full_in(key) <= (1 - debt) / 20 + 0.001
    assert backend.statistics().server_requests == 8
    assert "SyncRedisKeyedBackend" in repr(backend) and "20/s" in repr(backend)

    # A blocked thread woken by close() gives its slot back, by mark.
    slow = SyncRedisKeyedBackend(client, {"default": Limit("1/s", 1)}, prefix=prefix())
    blocking = SyncKeyedLimiter(backend=slow)
    sleeper_error: list[BaseException] = []

    def sleeper() -> None:
        try:
            blocking.acquire(key)
            blocking.acquire(key)  # its slot: 1 s ahead
        except LimiterClosed as exc:
            sleeper_error.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.05)
    blocking.close()
    thread.join(5)
    assert sleeper_error and blocking.statistics().cancelled == 1
    assert slow.peek(key).available[0] > -0.5  # its token went back
    client.close()
