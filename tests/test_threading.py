"""The blocking limiter: FIFO among threads, timeouts, close, and virtual time."""

from __future__ import annotations

import threading
import time

import pytest

from ratekeeper import AcquireTimeout, LimiterClosed, SyncTokenBucket
from ratekeeper.testing import ManualClock


def test_sequential_blocking_acquires_on_auto_advancing_clock() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket("5/s", 5, clock=clock)
    times = []
    for _ in range(8):
        limiter.acquire()
        times.append(round(clock.time(), 9))
    assert times == [0.0] * 5 + [0.2, 0.4, 0.6]


def test_try_acquire_and_timeouts_fail_fast() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket(5, 5, clock=clock)
    assert limiter.try_acquire(5)
    assert not limiter.try_acquire()
    with pytest.raises(AcquireTimeout) as info:
        limiter.acquire(2, timeout=0.3)
    assert info.value.retry_after == pytest.approx(0.4)
    assert clock.time() == 0
    assert limiter.acquire(2, timeout=0.4)
    assert clock.time() == pytest.approx(0.4)


def test_threads_are_served_in_arrival_order() -> None:
    limiter = SyncTokenBucket(200, 1)
    limiter.acquire()
    order: list[int] = []
    threads = []
    for i in range(10):
        thread = threading.Thread(target=lambda i=i: (limiter.acquire(), order.append(i)))
        thread.start()
        threads.append(thread)
        # Each thread must be queued before the next starts, so arrival order is known.
        deadline = time.monotonic() + 5
        while limiter.statistics().waiting + len(order) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.0005)
    for thread in threads:
        thread.join(10)
    assert order == list(range(10))
    assert limiter.statistics().waiting == 0


def test_waiter_times_out_in_queue_and_consumes_nothing() -> None:
    clock = ManualClock()
    limiter = SyncTokenBucket(5, 1, clock=clock)
    limiter.acquire()
    errors: list[BaseException] = []

    def low() -> None:
        try:
            limiter.acquire(timeout=0.3)
        except AcquireTimeout as exc:
            errors.append(exc)

    low_thread = threading.Thread(target=low)
    low_thread.start()
    _wait_for(lambda: limiter.statistics().waiting == 1)
    high = threading.Thread(target=lambda: limiter.acquire(priority=1))
    high.start()
    _wait_for(lambda: limiter.statistics().waiting == 2)
    clock.advance(0.2)
    high.join(5)
    clock.advance(0.15)
    low_thread.join(5)
    assert len(errors) == 1
    assert limiter.statistics().timed_out == 1
    clock.advance(0.05)
    assert limiter.try_acquire()


def test_close_wakes_blocked_threads() -> None:
    limiter = SyncTokenBucket(0.001, 1)
    limiter.acquire()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            limiter.acquire()
        except LimiterClosed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=blocked) for _ in range(3)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: limiter.statistics().waiting == 3)
    limiter.close()
    for thread in threads:
        thread.join(5)
    assert len(errors) == 3
    with pytest.raises(LimiterClosed):
        limiter.try_acquire()


def test_refund_charge_set_rate_and_take() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket(5, 5, clock=clock)
    limiter.charge(7)
    assert limiter.available() == -2
    assert limiter.refund(3) == 3
    assert limiter.available() == 1
    with pytest.raises(RuntimeError):
        with limiter.take(1, refund_on_error=True):
            raise RuntimeError
    assert limiter.available() == 1
    limiter.set_rate(10, 10)
    assert limiter.available() == 1
    assert limiter.full_in() == pytest.approx(0.9)


def test_decorator_and_context_manager() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket(5, 2, clock=clock)

    @limiter
    def work(x: int) -> int:
        return x + 1

    with limiter:
        pass
    assert work(1) == 2
    assert work(2) == 3
    assert clock.time() == pytest.approx(0.2)
    assert limiter.statistics().granted == 3


def test_bad_arguments() -> None:
    limiter = SyncTokenBucket(5, 5)
    with pytest.raises(ValueError, match="exceeds the capacity 5"):
        limiter.acquire(6)
    with pytest.raises(TypeError, match="not bool"):
        limiter.try_acquire(True)
    with pytest.raises(ValueError, match="timeout"):
        limiter.acquire(timeout=-0.5)


def test_no_false_refusals_under_thread_contention() -> None:
    limiter = SyncTokenBucket(1e9, 10**9)
    refused = []

    def hammer() -> None:
        refused.append(sum(not limiter.try_acquire() for _ in range(5000)))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert refused == [0, 0, 0, 0]
    assert limiter.statistics().granted == 20000


def _wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def test_race_signal_consumed_before_blocking_never_releases_an_unlocked_lock() -> None:
    # A waiter woken (signalled) before it blocked once reset the flag without consuming the
    # wake-up; the next signal then released an unlocked lock and killed the signalling
    # thread. At a high rate with several threads this happened within milliseconds.
    limiter = SyncTokenBucket(20_000, 50)
    errors: list[BaseException] = []
    done = []

    def worker() -> None:
        try:
            for _ in range(1500):
                limiter.acquire()
            done.append(1)
        except BaseException as exc:  # the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(done) == 4
    assert limiter.statistics().granted == 6000


def test_a_waiter_whose_thread_is_interrupted_leaves_the_queue() -> None:
    # KeyboardInterrupt (or any error) escaping a blocked acquire() once left its waiter
    # queued for good: at the head, nobody re-armed its timer and every thread behind hung.
    class InterruptingClock(ManualClock):
        interrupt = True

        def wait(self, lock: object, until_ns: int | None) -> bool:
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt
            return super().wait(lock, until_ns)  # type: ignore[arg-type]

    clock = InterruptingClock(auto_advance=True)
    limiter = SyncTokenBucket(5, 1, clock=clock)
    limiter.acquire()
    with pytest.raises(KeyboardInterrupt):
        limiter.acquire()
    stats = limiter.statistics()
    assert (stats.waiting, stats.cancelled) == (0, 1)
    assert limiter.acquire()  # the queue moves on
    assert clock.time() == pytest.approx(0.2)


def test_a_listener_that_raises_never_strands_a_waiter(caplog: pytest.LogCaptureFixture) -> None:
    def bad_listener(event: object) -> None:
        raise RuntimeError("listener bug")

    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket(5, 1, clock=clock, on_event=bad_listener)
    limiter.acquire()
    assert limiter.acquire()  # granted and woken although every event raised
    assert limiter.statistics().granted == 2
    assert "on_event listener" in caplog.text


def test_huge_timeouts_mean_no_timeout() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket(5, 1, clock=clock)
    limiter.acquire()
    assert limiter.acquire(timeout=1e300)
    assert limiter.acquire(timeout=1e10)
    assert limiter.statistics().waiting == 0


def test_reserve_queues_now_and_wait_blocks_until_the_slot() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket("5/s", 1, clock=clock)
    now = limiter.reserve()
    assert (now.granted, now.delay) == (True, 0)
    later = limiter.reserve()
    assert later.delay == pytest.approx(0.2) and not later.granted
    later.wait()
    assert later.granted and clock.time() == pytest.approx(0.2)
    later.cancel()  # spent: its holder resumed, nothing goes back
    assert not later.cancelled
    assert not limiter.try_acquire()
    with pytest.raises(AcquireTimeout):
        limiter.reserve(timeout=0.1)


def test_a_reservation_nobody_waits_for_does_not_stall_the_threads_behind_it() -> None:
    """The head of the queue sleeps for everyone; a reservation not yet waited on has no
    thread, so the first waiter with one keeps the time for it."""
    limiter = SyncTokenBucket(50, 1)
    limiter.acquire()
    unattended = limiter.reserve()  # head of the queue, due in 20 ms, never waited on
    started = time.monotonic()
    assert limiter.acquire(timeout=5)  # behind it: granted at 40 ms, not stuck
    assert time.monotonic() - started < 2
    assert unattended.granted
    unattended.wait()  # already granted: returns at once


def test_cancelling_a_queued_reservation_gives_its_place_to_the_next() -> None:
    clock = ManualClock(auto_advance=True)
    limiter = SyncTokenBucket("5/s", 1, clock=clock)
    limiter.acquire()
    queued = limiter.reserve()
    queued.cancel()
    assert queued.cancelled and not queued.granted
    limiter.acquire()
    assert clock.time() == pytest.approx(0.2)  # the slot it left, not the one after
    with pytest.raises(LimiterClosed):
        queued.wait()
    assert limiter.statistics().cancelled == 1


def test_acquire_fast_path_keeps_events_statistics_and_close() -> None:
    # acquire() with its defaults takes a short path when nobody waits; a listener, the
    # statistics and close() see it as they see the full path.
    clock = ManualClock()
    events: list[tuple[str, float]] = []
    limiter = SyncTokenBucket(5, 2, clock=clock, on_event=lambda e: events.append((e.kind, e.wait)))
    assert limiter.acquire() and limiter.acquire()
    assert events == [("granted", 0.0), ("granted", 0.0)]
    limiter.on_event = None
    clock.advance(10)
    assert limiter.acquire() and limiter.acquire()
    with pytest.raises(AcquireTimeout):
        limiter.acquire(timeout=0.1)  # the bucket is empty: the full path refuses
    stats = limiter.statistics()
    assert (stats.granted, stats.rejected, stats.waiting) == (4, 1, 0)
    assert limiter.available() == 0
    clock.advance(10)
    limiter.close()
    with pytest.raises(LimiterClosed):
        limiter.acquire()
