"""EventStream: a limiter's events as an async iterator."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ratekeeper import Event, EventStream, SyncTokenBucket, TokenBucket
from ratekeeper.testing import ManualClock


async def test_stream_yields_each_decision_and_chains_the_listener(clock: ManualClock) -> None:
    seen_by_callback: list[str] = []
    limiter = TokenBucket(5, 1, clock=clock, on_event=lambda e: seen_by_callback.append(e.kind))
    async with EventStream(limiter) as events:
        await limiter.acquire()
        assert not limiter.try_acquire_nowait()
        task = asyncio.ensure_future(limiter.acquire())
        await clock.sleep(0.2)
        await task
        got = [await anext(events) for _ in range(3)]
    assert [(e.kind, e.time, e.wait) for e in got] == [
        ("granted", 0.0, 0.0),
        ("rejected", 0.0, 0.0),
        ("granted", 0.2, 0.2),
    ]
    assert seen_by_callback == ["granted", "rejected", "granted"]
    assert limiter.on_event is not None  # the earlier listener is back
    assert [e async for e in events] == []  # closed and drained: iteration ends


async def test_a_slow_reader_loses_the_oldest_events_not_decisions(clock: ManualClock) -> None:
    limiter = TokenBucket(1000, 1000, clock=clock)
    stream = EventStream(limiter, maxsize=3)
    for _ in range(10):
        limiter.try_acquire_nowait()
    assert stream.dropped == 7
    stream.close()
    assert len([e async for e in stream]) == 3
    assert limiter.on_event is None


async def test_events_from_threads_reach_the_loop() -> None:
    limiter = SyncTokenBucket(1000, 10)
    stream = EventStream(limiter)
    thread = threading.Thread(target=lambda: [limiter.try_acquire() for _ in range(5)])
    thread.start()
    thread.join(5)
    got: list[Event] = [await asyncio.wait_for(anext(stream), 5) for _ in range(5)]
    assert [e.kind for e in got] == ["granted"] * 5
    stream.close()


async def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="no on_event hook"):
        EventStream(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize must be an int >= 1"):
        EventStream(TokenBucket(1, 1), maxsize=0)
