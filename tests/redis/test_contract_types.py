"""The Redis limiters are the contract's Protocols, as mypy sees them.

The assignments below are checked by ``mypy --strict`` (run on this file by the last test,
and by anyone running mypy on tests/); at run time they build real limiters.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from ratekeeper.contract import (
    AsyncBucket,
    AsyncComposite,
    AsyncReservation,
    SyncBucket,
    SyncComposite,
    SyncReservation,
)
from ratekeeper.redis import (
    RedisCompositeLimiter,
    RedisTokenBucket,
    SyncRedisCompositeLimiter,
    SyncRedisTokenBucket,
)


async def test_the_asyncio_limiters_are_the_async_protocols(async_client: Any, key: str) -> None:
    bucket: AsyncBucket = RedisTokenBucket(async_client, key, "10/s", 2)
    composite: AsyncComposite = RedisCompositeLimiter(async_client, key + "c", {"a": "10/s"})
    reservation: AsyncReservation = await bucket.reserve(1, timeout=None)
    await reservation
    assert reservation.granted and await composite.try_acquire({"a": 1})
    await bucket.set_rate("5/s", None)
    await composite.set_rate("a", "5/s")
    await bucket.aclose()
    await composite.aclose()


def test_the_blocking_limiters_are_the_sync_protocols(sync_client: redis.Redis, key: str) -> None:
    bucket: SyncBucket = SyncRedisTokenBucket(sync_client, key, "10/s", 2)
    composite: SyncComposite = SyncRedisCompositeLimiter(sync_client, key + "c", {"a": "10/s"})
    reservation: SyncReservation = bucket.reserve(1, timeout=None)
    reservation.wait()
    assert reservation.granted and composite.try_acquire({"a": 1})
    bucket.set_rate("5/s")
    composite.set_rate("a", "5/s", 10)
    bucket.close()
    composite.close()


def _mypy(path: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(path)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )


def test_mypy_accepts_them_and_refuses_priority(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    checked = _mypy(Path(__file__).relative_to(root), root)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    wrong = tmp_path / "priority.py"
    wrong.write_text(
        "from ratekeeper.redis import RedisTokenBucket\n"
        "async def f(b: RedisTokenBucket) -> None:\n"
        "    await b.acquire(1, priority=1)\n"
    )
    refused = _mypy(wrong, root)
    assert refused.returncode == 1 and 'argument "priority"' in refused.stdout, refused.stdout
