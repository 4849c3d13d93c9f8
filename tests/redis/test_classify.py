"""Every way a server can fail a call, induced on a real server, and how it is classified.

"Cannot serve now" is transient: the failure policy applies (``closed`` raises,
``open`` lets the call through, ``fallback`` decides locally). A mistake is not: it raises
``BackendUnavailable`` whatever the policy, since letting calls through would hide it. One
test per row of the table in docs/redis.md; the rows that cannot be induced cheaply here
(a cluster mid-resharding or with failed slots, a NOSCRIPT that survives the reload, a
script error) are checked on the server's exact error text.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions as rex
from redis._parsers.base import BaseParser

from ratekeeper import BackendUnavailable
from ratekeeper.redis import RedisTokenBucket, SyncRedisTokenBucket
from ratekeeper.redis._common import classify

from .conftest import Server

FAST = {"timeout": 0.3, "retry_interval": 0.05}


def admin(server: Server, **kwargs: Any) -> redis.Redis:
    kwargs.setdefault("socket_timeout", 10)
    return redis.Redis(port=server.port, **kwargs)


async def transient(url: str, key: str, match: str, timeout: float = FAST["timeout"]) -> None:
    """Assert the policy applies: closed raises naming the cause, open lets the call through."""
    options = {**FAST, "timeout": timeout}
    closed = RedisTokenBucket(url, key, "1/s", 1, **options)
    with pytest.raises(BackendUnavailable, match=match):
        await closed.try_acquire()
    await closed.aclose()
    opened = RedisTokenBucket(url, key, "1/s", 1, on_failure="open", **options)
    assert await opened.try_acquire() and await opened.try_acquire()
    assert opened.statistics().failed_open == 2
    await opened.aclose()
    blocking = SyncRedisTokenBucket(url, key, "1/s", 1, on_failure="open", **options)
    assert blocking.try_acquire() and blocking.statistics().failed_open == 1
    blocking.close()


async def mistake(url: str, key: str, match: str) -> None:
    """Assert it raises whatever the policy, naming the cause."""
    for policy in ("open", "fallback"):
        bucket = RedisTokenBucket(url, key, "1/s", 1, on_failure=policy, fallback_share=0.5)
        with pytest.raises(BackendUnavailable, match=match):
            await bucket.try_acquire()
        await bucket.aclose()
    blocking = SyncRedisTokenBucket(url, key, "1/s", 1, on_failure="open")
    with pytest.raises(BackendUnavailable, match=match):
        blocking.try_acquire()
    blocking.close()


# -- cannot serve now: transient --------------------------------------------------------


async def test_oom_under_maxmemory_noeviction_is_transient(own_server: Server, key: str) -> None:
    with admin(own_server) as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
    await transient(own_server.url, key, "OOM")


async def test_busy_with_a_long_script_is_transient(own_server: Server, key: str) -> None:
    with admin(own_server) as client:
        client.config_set("busy-reply-threshold", 20)  # ms; the default is 5 s
    spinner = admin(own_server, socket_timeout=None)
    loop = threading.Thread(
        target=lambda: _swallow(spinner.eval, "while true do end", 0), daemon=True
    )
    loop.start()
    time.sleep(0.1)
    try:
        await transient(own_server.url, key, "BUSY")
    finally:
        with admin(own_server) as client:
            client.script_kill()
        loop.join(5)
        spinner.close()


async def test_loading_is_transient(own_server: Server, key: str) -> None:
    with admin(own_server) as client:
        client.mset({f"filler{n}": "x" for n in range(4000)})
        client.save()
    own_server.kill()
    # Restarted on its data, loading slowly (1 ms a key: ~4 s), answering LOADING meanwhile.
    slow = Server(
        own_server.workdir,
        own_server.port,
        "--key-load-delay",
        "1000",
        "--loading-process-events-interval-bytes",
        "1024",
    )
    starting = threading.Thread(target=slow.start)  # returns once loaded
    starting.start()
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", own_server.port), 1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"-LOADING"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start loading"
            time.sleep(0.01)
        await transient(own_server.url, key, "LOADING", timeout=3.0)  # it answers in bursts
    finally:
        starting.join(30)
        slow.kill()


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "master").start()
    try:
        yield server
    finally:
        server.kill()


async def test_readonly_on_a_replica_is_transient(
    own_server: Server, master: Server, key: str
) -> None:
    with admin(own_server) as client:
        client.replicaof("127.0.0.1", master.port)
        deadline = time.monotonic() + 10
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.02)
    await transient(own_server.url, key, "READONLY")


async def test_masterdown_on_a_replica_of_a_dead_master_is_transient(
    own_server: Server, master: Server, key: str
) -> None:
    with admin(own_server) as client:
        client.config_set("replica-serve-stale-data", "no")
        client.replicaof("127.0.0.1", master.port)
        master.kill()
    await transient(own_server.url, key, "MASTERDOWN")


async def test_a_paused_server_times_out_transiently(own_server: Server, key: str) -> None:
    with admin(own_server) as client:
        client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    try:
        await transient(own_server.url, key, "within the timeout|Timeout")
    finally:
        with admin(own_server) as client:
            client.execute_command("CLIENT", "UNPAUSE")


async def test_a_killed_server_is_transient(own_server: Server, key: str) -> None:
    own_server.kill()
    await transient(own_server.url, key, "unreachable")


@pytest.mark.parametrize(
    "reply",
    [
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN Hash slot not served",
        "CLUSTERDOWN The cluster is down",
        "NOREPLICAS Not enough good replicas to write.",
        "ERR max number of clients reached",
        "LOADING Valkey is loading the dataset in memory",
        "OOM command not allowed when used memory > 'maxmemory'. script: 9f3c, on @user_script:1.",
        "READONLY You can't write against a read only replica. script: 9f3c, on @user_script:1.",
    ],
)
def test_the_replies_not_induced_here_are_transient(reply: str) -> None:
    """The server's exact text, as redis-py turns it into an exception."""
    assert classify(BaseParser.parse_error(reply), "the server").transient


@pytest.mark.parametrize(
    "exc",
    [
        rex.ConnectionError("Error 104 while reading from socket: Connection reset by peer"),
        rex.TimeoutError("Timeout reading from socket"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
    ],
    ids=repr,
)
def test_client_errors_of_a_lost_connection_are_transient(exc: BaseException) -> None:
    assert classify(exc, "the server").transient


# -- mistakes: not for the policy --------------------------------------------------------


async def test_refused_credentials_are_a_mistake(own_server: Server, key: str) -> None:
    with admin(own_server) as client:
        client.config_set("requirepass", "s3cret")
    await mistake(own_server.url, key, "credentials")


async def test_a_user_without_scripting_is_a_mistake(own_server: Server, key: str) -> None:
    with admin(own_server) as client:
        client.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"], commands=["+get"])
    url = f"redis://app:pw@127.0.0.1:{own_server.port}/0"
    await mistake(url, key, "NOPERM")


async def test_a_key_of_another_type_is_a_mistake(own_server: Server, key: str) -> None:
    with admin(own_server) as client:
        client.lpush(f"ratekeeper:{key}", "x")
    await mistake(own_server.url, key, "not a ratekeeper bucket")


@pytest.mark.parametrize(
    "reply",
    [
        "NOSCRIPT No matching script. Please use EVAL.",
        "ERR unknown command 'evalsha', with args beginning with: ",
        "ERR user_script:1: Script attempted to access nonexistent global variable 'x' "
        "script: 9f3c, on @user_script:1.",
        "WRONGPASS invalid username-password pair or user is disabled.",
        "NOAUTH Authentication required.",
        "NOPERM User app has no permissions to run the 'evalsha' command",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    ],
)
def test_the_mistakes_not_induced_here_are_permanent(reply: str) -> None:
    assert not classify(BaseParser.parse_error(reply), "the server").transient


def _swallow(call: Any, *args: Any) -> None:
    with contextlib.suppress(rex.RedisError):
        call(*args)
