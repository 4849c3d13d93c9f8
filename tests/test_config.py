"""limiter() / sync_limiter(): the storage URL's grammar, its options, and every refusal.

No server here: memory limiters are used for real; Redis limiters are only made (a client
made from a URL connects on first use) and inspected. tests/redis/test_config_redis.py
runs them against a real Valkey.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster

from ratekeeper import (
    AcquireTimeout,
    BackendUnavailable,
    CompositeLimiter,
    Limit,
    Rate,
    SyncCompositeLimiter,
    SyncTokenBucket,
    TokenBucket,
    limiter,
    sync_limiter,
)
from ratekeeper._config import SCHEMES, _parse
from ratekeeper.redis import (
    RedisCompositeLimiter,
    RedisTokenBucket,
    SyncRedisCompositeLimiter,
    SyncRedisTokenBucket,
)
from ratekeeper.testing import ManualClock

from ._redis_fixtures import free_port

# -- memory:// -------------------------------------------------------------------------------


async def test_memory_is_the_default_and_gives_a_working_token_bucket(clock: ManualClock) -> None:
    bucket = limiter("2/s", clock=clock)
    assert isinstance(bucket, TokenBucket)
    assert (bucket.rate, bucket.capacity) == (Rate.of("2/s"), 2)
    await bucket.acquire()
    async with bucket:
        pass
    with pytest.raises(AcquireTimeout):
        await bucket.acquire(timeout=0)  # empty: refused at once
    clock.advance(0.5)
    await bucket.acquire(timeout=0)


async def test_memory_capacity_and_keywords_reach_the_bucket(clock: ManualClock) -> None:
    events: list[Any] = []
    bucket = limiter("1/s", 3, storage="memory://", clock=clock, on_event=events.append)
    assert bucket.capacity == 3
    for _ in range(3):
        await bucket.acquire(timeout=0)
    assert len(events) == 3
    assert limiter("1/s", 3, initial=0, clock=clock).name is None


async def test_memory_uses_key_as_the_name_unless_name_is_given(clock: ManualClock) -> None:
    assert limiter("1/s", key="api", clock=clock).name == "api"
    assert limiter("1/s", key="api", name="own", clock=clock).name == "own"
    assert sync_limiter("1/s", key="api").name == "api"


async def test_memory_composite(clock: ManualClock) -> None:
    limits = limiter({"requests": Limit("2/s", weight=1), "tokens": ("100/s", 100)}, clock=clock)
    assert isinstance(limits, CompositeLimiter)
    assert set(limits.limits) == {"requests", "tokens"}
    await limits.acquire(60)
    with pytest.raises(AcquireTimeout):
        await limits.acquire(60, timeout=0)  # 40 tokens left
    await limits.acquire(40, timeout=0)


def test_sync_memory_bucket_and_composite(clock: ManualClock) -> None:
    bucket = sync_limiter("2/s", clock=clock)
    assert isinstance(bucket, SyncTokenBucket)
    assert bucket.try_acquire()
    with bucket:
        pass
    assert not bucket.try_acquire()
    clock.advance(0.5)
    assert bucket.acquire(timeout=0)

    limits = sync_limiter({"requests": "1/s", "tokens": ("10/s", 10)}, clock=clock)
    assert isinstance(limits, SyncCompositeLimiter)
    assert limits.try_acquire({"requests": 1, "tokens": 10})
    assert not limits.try_acquire({"tokens": 1})


@pytest.mark.parametrize("storage", ["memory://x", "memory://x:1", "memory:///", "memory://x/y"])
def test_memory_with_a_host_or_path_is_refused(storage: str) -> None:
    with pytest.raises(ValueError, match=r"memory:// takes no host or path"):
        limiter("1/s", storage=storage)


@pytest.mark.parametrize("storage", ["memory://?timeout=1", "memory://#x"])
def test_memory_takes_no_url_options(storage: str) -> None:
    with pytest.raises(ValueError, match=r"takes no options in the URL.*clock.*on_event"):
        sync_limiter("1/s", storage=storage)


@pytest.mark.parametrize("keyword", ["prefix", "timeout", "on_failure", "bogus"])
def test_memory_refuses_keywords_it_does_not_take(keyword: str) -> None:
    with pytest.raises(TypeError, match=rf"{keyword}: not an option of a memory:// limiter.*clock"):
        limiter("1/s", **{keyword: 1})


def test_a_composite_refuses_initial_and_capacity() -> None:
    with pytest.raises(TypeError, match=r"initial: not an option"):
        sync_limiter({"a": "1/s"}, initial=0)
    with pytest.raises(TypeError, match=r"capacity= is for a single rate.*Limit\(rate, capacity"):
        limiter({"a": "1/s"}, 5)  # type: ignore[call-overload]


def test_a_bad_rate_is_the_constructors_error() -> None:
    with pytest.raises(ValueError, match="rate"):
        sync_limiter("fast")


# -- the grammar -----------------------------------------------------------------------------

REDIS_SCHEMES = [
    ("redis", "redis", False),
    ("rediss", "rediss", False),
    ("valkey", "redis", False),
    ("valkeys", "rediss", False),
    ("redis+cluster", "redis", True),
    ("rediss+cluster", "rediss", True),
    ("valkey+cluster", "redis", True),
    ("valkeys+cluster", "rediss", True),
]


def test_every_scheme_is_listed() -> None:
    assert set(SCHEMES) == {"memory"} | {s for s, _, _ in REDIS_SCHEMES}


@pytest.mark.parametrize(("scheme", "target", "cluster"), REDIS_SCHEMES)
def test_each_redis_scheme_becomes_a_url_redis_py_reads(
    scheme: str, target: str, cluster: bool
) -> None:
    parsed = _parse(f"{scheme}://user:pw@cache:6380/2?db=2&timeout=0.25")
    assert parsed.scheme == scheme
    assert parsed.url == f"{target}://user:pw@cache:6380/2?db=2"
    assert parsed.cluster is cluster
    assert parsed.options == {"timeout": 0.25}


def test_the_scheme_is_case_insensitive() -> None:
    assert _parse("VALKEY://h").url == "redis://h"
    assert _parse("Memory://").scheme == "memory"


def test_every_option_is_read() -> None:
    parsed = _parse(
        "redis://h/0?prefix=app%3A&timeout=0.2&on_failure=fallback&fallback_share=0.5"
        "&retry_interval=0"
    )
    assert parsed.options == {
        "prefix": "app:",
        "timeout": 0.2,
        "on_failure": "fallback",
        "fallback_share": 0.5,
        "retry_interval": 0.0,
    }
    assert parsed.url == "redis://h/0"
    for policy in ("closed", "open", "fallback"):
        assert _parse(f"redis://h?on_failure={policy}").options == {"on_failure": policy}
    assert _parse("redis://h?prefix=").options == {"prefix": ""}


def test_redis_py_options_pass_through_verbatim() -> None:
    parsed = _parse(
        "redis://h/0?socket_keepalive=true&timeout=1&client_name=a%20b&health_check_interval=5"
    )
    assert (
        parsed.url == "redis://h/0?socket_keepalive=true&client_name=a%20b&health_check_interval=5"
    )


@pytest.mark.parametrize(
    ("storage", "words"),
    [
        ("memcached://h", ["scheme 'memcached'", "memory://", "redis://", "valkey+cluster://"]),
        ("localhost:6379", ["scheme 'localhost'", "must be one of"]),
        ("", ["no scheme", "must be one of"]),
        ("redis://h?nope=1", ["unknown option 'nope'", "prefix, timeout, on_failure", "db"]),
        ("redis://h?timeout=abc", ["timeout='abc'", "number > 0"]),
        ("redis://h?timeout=0", ["timeout='0'", "number > 0"]),
        ("redis://h?timeout=nan", ["timeout='nan'", "number > 0"]),
        ("redis://h?retry_interval=-1", ["retry_interval='-1'", "number >= 0"]),
        ("redis://h?fallback_share=1.5", ["fallback_share='1.5'", "> 0 and <= 1"]),
        ("redis://h?fallback_share=0", ["fallback_share='0'", "> 0 and <= 1"]),
        ("redis://h?on_failure=sideways", ["on_failure='sideways'", "closed, open, fallback"]),
        ("redis://h?timeout=1&timeout=2", ["option 'timeout' is given more than once"]),
        ("redis://h?db=1&db=2", ["option 'db' is given more than once"]),
        ("redis://h:port/0", ["the port must be a number"]),
        ("redis://h/0#frag", ["takes no fragment"]),
    ],
)
def test_a_bad_url_is_refused_naming_what_is_wrong(storage: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as refused:
        limiter("1/s", storage=storage, key="k")
    for word in words:
        assert word in str(refused.value)


def test_a_password_is_not_repeated_in_a_message() -> None:
    with pytest.raises(ValueError) as refused:
        sync_limiter("1/s", storage="redis://user:s3cret@h/0?timeout=x", key="k")
    with pytest.raises(ValueError) as refused_too:
        sync_limiter("1/s", storage="redis://user:s3cret@h/0?bogus=1", key="k")
    assert "s3cret" not in str(refused.value)
    assert "user:***@h" in str(refused_too.value)
    assert "s3cret" not in str(refused_too.value)


def test_storage_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="storage must be a URL string"):
        limiter("1/s", storage=None)  # type: ignore[call-overload]


# -- redis:// limiters, made but not used ----------------------------------------------------


@pytest.mark.parametrize("storage", ["redis://h", "valkey+cluster://h:7000"])
def test_a_redis_storage_needs_a_key(storage: str) -> None:
    with pytest.raises(ValueError, match=r"needs key=.*name of the limit at the server"):
        limiter("1/s", storage=storage)
    with pytest.raises(TypeError, match="key must be a str"):
        limiter("1/s", storage=storage, key=5)  # type: ignore[call-overload]


async def test_async_redis_limiters_own_a_client_made_from_the_url() -> None:
    bucket = limiter("5/s", 10, storage="valkey://127.0.0.1:1/3?prefix=app:", key="k")
    limits = limiter({"a": "1/s"}, storage="redis://127.0.0.1:1/0", key="k")
    try:
        assert isinstance(bucket, RedisTokenBucket)
        assert isinstance(limits, RedisCompositeLimiter)
        assert (bucket.key, bucket.capacity) == ("app:k", 10)
        client = bucket._client
        assert isinstance(client, redis.asyncio.Redis)
        assert bucket._owned
        assert client.connection_pool.connection_kwargs["db"] == 3
    finally:
        await bucket.aclose()
        await limits.aclose()


def test_url_options_reach_the_limiter_and_keywords_override_them() -> None:
    storage = (
        "redis://:pw@127.0.0.1:1/0?timeout=0.3&on_failure=fallback&fallback_share=0.5"
        "&retry_interval=2&prefix=p:&socket_keepalive=true"
    )
    bucket = sync_limiter("5/s", storage=storage, key="k")
    try:
        assert isinstance(bucket, SyncRedisTokenBucket)
        assert bucket.key == "p:k"
        assert bucket._timeout == 0.3
        assert bucket._on_failure == "fallback"
        assert bucket._share == 0.5
        assert bucket._retry_interval == 2
        kwargs = bucket._client.connection_pool.connection_kwargs
        assert kwargs["password"] == "pw"
        assert kwargs["socket_keepalive"] is True
        assert kwargs["socket_timeout"] == 0.3  # the limiter's timeout bounds the client
    finally:
        bucket.close()

    bucket = sync_limiter(
        "5/s", storage=storage, key="k", timeout=1, on_failure="open", prefix="", name="n"
    )
    try:
        assert (bucket.key, bucket._timeout, bucket._on_failure) == ("k", 1, "open")
        assert "n" in repr(bucket)
    finally:
        bucket.close()

    limits = sync_limiter({"a": "1/s"}, storage="redis://127.0.0.1:1", key="k")
    assert isinstance(limits, SyncRedisCompositeLimiter)
    limits.close()


@pytest.mark.parametrize("keyword", ["clock", "on_event", "initial", "bogus"])
def test_redis_refuses_keywords_it_does_not_take(keyword: str) -> None:
    with pytest.raises(TypeError, match=rf"{keyword}: not an option of a redis:// limiter.*prefix"):
        limiter("1/s", storage="redis://h", key="k", **{keyword: 1})


def test_a_bad_key_or_rate_makes_no_client() -> None:
    with pytest.raises(ValueError, match="key"):
        sync_limiter("1/s", storage="redis://h", key="")
    with pytest.raises(ValueError, match="rate"):
        limiter("fast", storage="redis://h", key="k")


async def test_an_async_cluster_url_makes_a_cluster_client_the_limiter_owns() -> None:
    # The asyncio cluster client connects on first use, so no server is needed here.
    bucket = limiter("5/s", storage="valkey+cluster://127.0.0.1:1?timeout=0.2", key="k")
    assert isinstance(bucket, RedisTokenBucket)
    assert isinstance(bucket._client, redis.asyncio.cluster.RedisCluster)
    assert bucket._owned
    await bucket.aclose()


def test_an_unreachable_sync_cluster_is_backend_unavailable() -> None:
    # The blocking cluster client asks the cluster for its slots as it is made.
    storage = f"redis+cluster://127.0.0.1:{free_port()}?timeout=0.2"
    with pytest.raises(BackendUnavailable, match="cannot reach the Redis Cluster"):
        sync_limiter("5/s", storage=storage, key="k")


def test_without_the_redis_client_a_redis_storage_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` now fails
    with pytest.raises(ImportError, match=r"pip install 'ratekeeper\[redis\]'"):
        limiter("1/s", storage="redis://h", key="k")
    with pytest.raises(ImportError, match=r"pip install 'ratekeeper\[redis\]'"):
        sync_limiter({"a": "1/s"}, storage="valkey+cluster://h", key="k")
    assert isinstance(sync_limiter("1/s"), SyncTokenBucket)  # memory needs no client


# -- types -----------------------------------------------------------------------------------


def test_mypy_infers_bucket_or_composite_from_the_argument(tmp_path: Path) -> None:
    source = tmp_path / "use.py"
    source.write_text(
        textwrap.dedent(
            """
            from ratekeeper import Limit, limiter, sync_limiter
            reveal_type(limiter("5/s"))
            reveal_type(limiter({"a": Limit("5/s")}, storage="redis://h", key="k"))
            reveal_type(sync_limiter(5, 10))
            reveal_type(sync_limiter({"a": ("5/s", 5)}))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    revealed = [
        line.split("Revealed type is ")[1]
        for line in done.stdout.splitlines()
        if "Revealed" in line
    ]
    assert revealed == [
        '"ratekeeper.contract.AsyncBucket"',
        '"ratekeeper.contract.AsyncComposite"',
        '"ratekeeper.contract.SyncBucket"',
        '"ratekeeper.contract.SyncComposite"',
    ], done.stdout
