"""The virtual-time replay behind ``ratekeeper simulate``: traffic, decisions, summary, plot."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

from ratekeeper import AcquireTimeout, Rate, TokenBucket
from ratekeeper._gcra import seconds_to_ns
from ratekeeper._simulate import (
    Limit,
    MissingExtra,
    Traffic,
    generate,
    level_curve,
    max_excess,
    plot,
    read_csv,
    render,
    simulate,
)
from ratekeeper.testing import ManualClock

MS = 1_000_000  # ns


def traffic(*times_ms: float, tokens: list[int] | None = None) -> Traffic:
    times = [round(t * MS) for t in times_ms]
    weights = tokens or [1] * len(times)
    return Traffic(times, weights, max(times[-1], 1), "test")


def grants_ms(result_grants: list[int] | tuple[int, ...]) -> list[float | None]:
    return [None if g < 0 else g / MS for g in result_grants]


# -- decisions: tables of arrivals over fixed instants -----------------------------------------


def test_refuse_mode_grants_the_burst_then_one_token_per_interval() -> None:
    # 10/s, capacity 2: a token every 100 ms, two at once.
    result = simulate(Limit(Rate(10), 2), traffic(0, 0, 0, 50, 100, 100, 250))
    assert grants_ms(result.grant_ns) == [0, 0, None, None, 100, None, 250]
    s = result.summary
    assert (s.granted, s.refused, s.immediate, s.delayed) == (4, 3, 4, 0)
    assert s.wait_max == 0.0
    assert s.envelope_excess == 0.0


def test_wait_mode_grants_in_arrival_order_at_the_due_times() -> None:
    result = simulate(Limit(Rate(10), 2, "wait"), traffic(0, 0, 0, 50, 100, 100))
    # The third waits for the token due at 100 ms; the rest queue behind it, FIFO.
    assert grants_ms(result.grant_ns) == [0, 0, 100, 200, 300, 400]
    s = result.summary
    assert (s.granted, s.refused, s.immediate, s.delayed) == (6, 0, 2, 4)
    assert s.wait_max == pytest.approx(0.3)
    assert s.max_queue == 3


def test_a_newcomer_does_not_barge_past_a_waiter_even_when_a_token_is_free() -> None:
    # A 2-token request waits at the head; a 1-token request arriving when one token is
    # there still queues behind it (strict FIFO, as the limiters do).
    result = simulate(Limit(Rate(10), 2, "wait"), traffic(0, 50, 150, tokens=[2, 2, 1]))
    assert grants_ms(result.grant_ns) == [0, 200, 300]


def test_max_wait_refuses_at_once_what_would_wait_longer() -> None:
    result = simulate(Limit(Rate(10), 1, "wait", 0.15), traffic(0, 0, 0, 0))
    # Due at 0, 100, 200, 300 ms: the last two would wait beyond 150 ms.
    assert grants_ms(result.grant_ns) == [0, 100, None, None]
    assert result.summary.refused == 2


def test_weights_take_that_many_tokens() -> None:
    result = simulate(Limit(Rate(10), 5), traffic(0, 0, 100, tokens=[3, 3, 1]))
    assert grants_ms(result.grant_ns) == [0, None, 100]
    assert (result.summary.granted_tokens, result.summary.refused_tokens) == (4, 3)


def test_a_request_above_the_capacity_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="more than the capacity 2"):
        simulate(Limit(Rate(10), 2), traffic(0, tokens=[3]))


def test_limit_validation_and_label() -> None:
    with pytest.raises(ValueError, match="mode must be one of refuse, wait"):
        Limit(Rate(1), 1, "block")
    with pytest.raises(ValueError, match="capacity"):
        Limit(Rate(1), 0)
    assert Limit(Rate(5), 10, "wait", 0.5).label == "5/s, capacity 10, wait up to 0.5 s"
    assert Limit(Rate(5), 10).label == "5/s, capacity 10, refuse at once"


# -- the same decisions as the real limiter ----------------------------------------------------


async def replay_on_token_bucket(limit: Limit, arrivals: Traffic) -> list[int]:
    """Replay with the real asyncio TokenBucket on a ManualClock; return grant times (-1)."""
    clock = ManualClock()
    limiter = TokenBucket(limit.rate, limit.capacity, clock=clock)
    grants = [-1] * arrivals.requests
    tasks = []

    async def wait(index: int, tokens: int) -> None:
        try:
            await limiter.acquire(tokens, timeout=limit.max_wait)
        except AcquireTimeout:
            return
        grants[index] = clock.now_ns()

    for index, (t, tokens) in enumerate(zip(arrivals.times_ns, arrivals.tokens, strict=True)):
        await clock.sleep((t - clock.now_ns()) / 1e9)
        if limit.mode == "refuse":
            if limiter.try_acquire_nowait(tokens):
                grants[index] = clock.now_ns()
        else:
            tasks.append(asyncio.create_task(wait(index, tokens)))
            await asyncio.sleep(0)
    await clock.sleep(3600)
    await asyncio.gather(*tasks)
    return grants


@pytest.mark.parametrize(
    "limit",
    [
        Limit(Rate(10), 3),
        Limit(Rate(10), 3, "wait"),
        Limit(Rate(7, per=2), 4, "wait", 0.9),
    ],
    ids=["refuse", "wait", "wait-max"],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_simulation_matches_the_real_token_bucket_on_a_manual_clock(
    limit: Limit, seed: int
) -> None:
    rng = random.Random(seed)
    t = 0
    times, weights = [], []
    while len(times) < 120:
        step = rng.randrange(0, 200 * MS, 997)  # odd steps: no due time ties with a deadline
        if seconds_to_ns(step / 1e9, "step") != step:
            continue  # the manual clock moves by float seconds: keep steps it lands on exactly
        t += step
        times.append(t)
        weights.append(rng.choice([1, 1, 1, 2, 3]))
    arrivals = Traffic(times, weights, t, "random")
    expected = await replay_on_token_bucket(limit, arrivals)
    assert list(simulate(limit, arrivals).grant_ns) == expected


async def test_simulation_matches_the_real_token_bucket_when_due_times_tie_with_deadlines() -> None:
    # On a 50 ms grid at 10/s with max_wait 0.2 s, waits of exactly 0.2 s are common: such a
    # waiter was admitted (the wait is not beyond the timeout) and must be granted, not
    # timed out, in both.
    rng = random.Random(5)
    times = sorted(rng.randrange(0, 40) * 50 * MS for _ in range(60))
    arrivals = Traffic(times, [1] * len(times), times[-1], "grid")
    limit = Limit(Rate(10), 2, "wait", 0.2)
    expected = await replay_on_token_bucket(limit, arrivals)
    result = simulate(limit, arrivals)
    assert list(result.grant_ns) == expected
    assert result.summary.wait_max == 0.2


# -- summary -----------------------------------------------------------------------------------


def test_summary_figures() -> None:
    arrivals = generate(Rate(20), 30, "poisson", seed=4)
    result = simulate(Limit(Rate(10), 10, "wait", 2.0), arrivals)
    s = result.summary
    assert s.requests == arrivals.requests == s.granted + s.refused
    assert s.granted == s.immediate + s.delayed
    assert 0 < s.wait_p50 <= s.wait_p99 <= s.wait_max <= 2.0
    # Overloaded 2x: the limit runs flat out, never above its envelope.
    assert s.utilisation == pytest.approx(1.0, abs=0.05)
    assert s.offered_load == pytest.approx(s.requested_tokens / (10 * s.span))
    assert 30 <= s.span <= 32  # the queue drains within max_wait after the traffic ends
    assert 1.6 < s.offered_load < 2.1
    assert s.envelope_excess == 0.0
    assert set(s.as_dict()) >= {"granted", "refused", "delayed", "wait_p99", "utilisation"}


def test_max_excess_finds_over_admission_in_any_window() -> None:
    rate = Rate(10)  # one token per 100 ms
    ok = [(0, 1), (0, 1), (100 * MS, 1), (200 * MS, 1)]
    assert max_excess(ok, rate, 2) == 0.0
    # Three at once with a capacity of two: one token over.
    assert max_excess([(0, 1), (0, 1), (0, 1)], rate, 2) == 1.0
    # A window in the middle: after a quiet second, 2 + 1 allowed by 100 ms; 4 given.
    late = [(0, 1), (1000 * MS, 2), (1100 * MS, 2)]
    assert max_excess(late, rate, 2) == pytest.approx(1.0)
    assert max_excess([], rate, 2) == 0.0


def test_render_shows_one_column_per_limit() -> None:
    arrivals = generate(Rate(12), 10, "poisson", seed=1)
    results = [simulate(Limit(Rate(10), 10), arrivals), simulate(Limit(Rate(10), 30), arrivals)]
    text = render(arrivals, results)
    assert "A: 10/s, capacity 10, refuse at once" in text
    assert "B: 10/s, capacity 30, refuse at once" in text
    for row in ("granted", "refused", "wait p99", "utilisation", "envelope"):
        assert row in text
    assert "EXCEEDED" not in text


def test_level_curve_refills_to_the_capacity_and_stays_in_range() -> None:
    result = simulate(Limit(Rate(10), 5), traffic(0, 0, 0, 0, 0, 2000))
    xs, ys = level_curve(result)
    assert xs == sorted(xs)
    assert min(ys) >= 0.0
    assert max(ys) <= 5.0
    # Emptied at 0, full again 0.5 s later: the point where it reaches the capacity.
    assert (0.5, 5.0) in list(zip(xs, ys, strict=True))


# -- traffic -----------------------------------------------------------------------------------


def test_generated_traffic_is_seeded_and_has_the_mean_rate() -> None:
    a = generate(Rate(50), 100, "poisson", seed=7)
    assert a.times_ns == generate(Rate(50), 100, "poisson", seed=7).times_ns
    assert a.times_ns != generate(Rate(50), 100, "poisson", seed=8).times_ns
    assert a.requests == pytest.approx(5000, rel=0.05)
    assert list(a.times_ns) == sorted(a.times_ns)
    assert a.times_ns[-1] < 100 * 10**9


def test_steady_traffic_is_evenly_spaced() -> None:
    a = generate(Rate(4), 1, "steady")
    assert list(a.times_ns) == [0, 250 * MS, 500 * MS, 750 * MS]


def test_bursty_traffic_keeps_the_mean_and_has_peaks() -> None:
    a = generate(Rate(20), 2000, "bursty", seed=3, burst_factor=5, burst_period=4)
    assert a.requests == pytest.approx(40_000, rel=0.15)  # 500 on/off cycles
    per_second = [0] * 2000
    for t in a.times_ns:
        per_second[t // 10**9] += 1
    assert max(per_second) > 60  # peaks near 5 x 20/s
    assert per_second.count(0) > 500  # and quiet spells


def test_generate_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="pattern must be one of"):
        generate(Rate(1), 1, "spiky")
    with pytest.raises(ValueError, match="duration must be > 0"):
        generate(Rate(1), 0)
    with pytest.raises(ValueError, match="burst factor must be > 1"):
        generate(Rate(1), 1, "bursty", burst_factor=1)


def test_read_csv_plain_times_unsorted_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("# my log\n100.5\n100.0\n\n101.25\n")
    arrivals = read_csv(path)
    assert list(arrivals.times_ns) == [0, 500 * MS, 1250 * MS]
    assert list(arrivals.tokens) == [1, 1, 1]
    assert arrivals.duration_ns == 1250 * MS


def test_read_csv_header_weights_and_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "path,weight,timestamp\n"
        "/a,2,2024-05-01T12:00:00Z\n"
        "/b,,2024-05-01T12:00:00.250Z\n"
        "/c,3.0,2024-05-01T12:00:01Z\n"
    )
    arrivals = read_csv(path)
    assert list(arrivals.times_ns) == [0, 250 * MS, 1000 * MS]
    assert list(arrivals.tokens) == [2, 1, 3]


def test_read_csv_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("0\n1\nsoon\n")
    with pytest.raises(ValueError, match=r"line 3: cannot read the time 'soon'"):
        read_csv(path)
    path.write_text("0,1\n1,half\n")
    with pytest.raises(ValueError, match=r"line 2: the weight must be a whole number >= 1"):
        read_csv(path)
    path.write_text("when,who\nnoon,me\n")
    with pytest.raises(ValueError, match="no column is named like a time"):
        read_csv(path)
    path.write_text("")
    with pytest.raises(ValueError, match="no arrivals"):
        read_csv(path)
    with pytest.raises(FileNotFoundError):
        read_csv(tmp_path / "missing.csv")


def test_a_long_replay_runs_in_a_blink() -> None:
    import time

    arrivals = generate(Rate(1000), 60, "poisson", seed=1)  # 60,000 requests
    start = time.perf_counter()
    result = simulate(Limit(Rate(800), 50, "wait", 0.5), arrivals)
    assert time.perf_counter() - start < 5.0
    assert result.summary.envelope_excess == 0.0


# -- the plot ----------------------------------------------------------------------------------


def test_plot_writes_a_small_png(tmp_path: Path) -> None:
    arrivals = generate(Rate(12), 30, "bursty", seed=2)
    results = [
        simulate(Limit(Rate(10), 10), arrivals),
        simulate(Limit(Rate(10), 30, "wait", 1.0), arrivals),
    ]
    for name, chosen in (("one.png", results[:1]), ("two.png", results)):
        path = tmp_path / name
        plot(arrivals, chosen, path)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert 5_000 < len(data) < 150_000


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    arrivals = generate(Rate(5), 5, "steady")
    with pytest.raises(MissingExtra, match=r"pip install 'ratekeeper\[plot\]'"):
        plot(arrivals, [simulate(Limit(Rate(5), 5), arrivals)], tmp_path / "x.png")
