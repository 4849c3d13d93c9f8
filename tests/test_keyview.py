"""One key of a keyed limiter as a limiter of the contract (``for_key``), on virtual time.

The contract suite (tests/contract/) runs every shared scenario on the views, in memory and
on Redis; these are the view's own promises: what closing a view does to other keys and
views, and how a reservation that someone sleeps on is withdrawn.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from ratekeeper import (
    KeyedLimiter,
    KeyedView,
    LimiterClosed,
    SyncKeyedLimiter,
    SyncKeyedView,
)
from ratekeeper.testing import ManualClock


def test_a_view_is_the_key_of_its_limiter() -> None:
    clock = ManualClock()
    keyed = SyncKeyedLimiter("1/s", 2, clock=clock)
    view = keyed.for_key("github")
    assert isinstance(view, SyncKeyedView) and view.key == "github"
    assert view.try_acquire() and keyed.try_acquire("github")
    assert not view.try_acquire()  # the two calls took the same bucket
    assert keyed.try_acquire("gitlab")  # another key is another bucket
    assert view.available() == {"default": 0.0}
    assert view.statistics() == keyed.statistics()
    with pytest.raises(TypeError, match="non-empty str"):
        keyed.for_key("")


async def test_closing_a_view_wakes_its_waiters_only() -> None:
    clock = ManualClock()
    keyed = KeyedLimiter("1/s", 1, clock=clock)
    first, second = keyed.for_key("a"), keyed.for_key("a")
    assert isinstance(first, KeyedView)
    await first.acquire()
    mine = asyncio.ensure_future(first.acquire())
    theirs = asyncio.ensure_future(second.acquire())
    await clock.sleep(0.1)
    first.close()
    with pytest.raises(LimiterClosed):
        await mine
    assert first.closed and not second.closed and not keyed.closed
    with pytest.raises(LimiterClosed):
        await first.try_acquire()
    await clock.sleep(2.0)
    assert await theirs  # the other view's waiter kept its slot
    assert keyed.statistics().cancelled == 1


async def test_closing_the_keyed_limiter_closes_its_views() -> None:
    clock = ManualClock()
    keyed = KeyedLimiter("1/s", 1, clock=clock)
    view = keyed.for_key("a")
    await view.acquire()
    waiter = asyncio.ensure_future(view.acquire())
    await clock.sleep(0.1)
    keyed.close()
    with pytest.raises(LimiterClosed):
        await waiter
    assert view.closed


async def test_cancelling_a_reservation_someone_sleeps_on_gives_it_back_once() -> None:
    clock = ManualClock()
    keyed = KeyedLimiter("1/s", 1, clock=clock)
    view = keyed.for_key("a")
    await view.acquire()
    reservation = await view.reserve()
    assert reservation.delay == pytest.approx(1.0) and not reservation.granted
    holder = asyncio.ensure_future(_await(reservation))
    await clock.sleep(0.1)
    reservation.cancel()
    with pytest.raises(LimiterClosed, match="cancelled"):
        await holder
    assert reservation.cancelled and not reservation.granted
    reservation.cancel()  # idempotent: nothing more goes back
    # The slot booked for 1.0 s went back, once: 0.1 s of refill is there, not more.
    assert await keyed.available("a") == {"default": pytest.approx(0.1)}
    await clock.sleep(0.9)
    assert await view.try_acquire()
    assert not await view.try_acquire()
    assert keyed.statistics().cancelled == 1


async def _await(reservation: object) -> None:
    await reservation  # type: ignore[misc]


def test_a_blocked_thread_is_woken_by_cancel_of_its_reservation() -> None:
    clock = ManualClock()
    keyed = SyncKeyedLimiter("1/s", 1, clock=clock)
    view = keyed.for_key("a")
    view.acquire()
    reservation = view.reserve()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            reservation.wait()
        except LimiterClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=hold)
    thread.start()
    while not keyed.statistics().waiting:
        thread.join(0.001)
    reservation.cancel()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1
    clock.advance(1.0)
    assert view.try_acquire() and not view.try_acquire()  # its slot went back, once


def test_take_gives_a_failed_block_back_even_after_use() -> None:
    keyed = SyncKeyedLimiter("1/minute", 2, clock=ManualClock())
    view = keyed.for_key("a")
    with pytest.raises(RuntimeError), view.take(2, refund_on_error=True):
        raise RuntimeError("failed")
    assert view.available() == {"default": 2.0}
    with view.take(1):
        pass
    assert view.available() == {"default": 1.0}
