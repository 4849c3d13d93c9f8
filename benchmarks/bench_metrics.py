"""The cost of metrics: what a Prometheus collector adds to a limiter's hot path, and a scrape.

    .venv-bench/bin/python benchmarks/bench_metrics.py            # full run, about 30 seconds
    .venv-bench/bin/python benchmarks/bench_metrics.py --quick    # smoke run, a few seconds
    .venv-bench/bin/python benchmarks/bench_metrics.py --json results.json

The claim under test (docs/observability.md): the collector is pull-based, so a limiter pays
nothing for it until a scrape, and nothing on its hot path even then. Three sections:

1. Hot path: ns per uncontended ``try_acquire()`` and ``await acquire()`` on a bare limiter,
   on one published by a LimiterCollector in a CollectorRegistry (not scraped), on one
   published while another thread scrapes the registry every millisecond (a stress case:
   Prometheus scrapes every 15 to 60 s), and, for contrast, on
   one instrumented push-style (an ``on_event`` listener incrementing a prometheus Counter
   per grant, which is what a collector saves you from). Candidates are interleaved, batch
   by batch, so machine noise hits them alike; read the medians and the ratios.
2. The same for SyncTokenBucket.try_acquire (its statistics() takes the limiter's lock).
3. Scrape cost: ``collector.collect()`` and the full text exposition
   (``generate_latest``) with 1 to 1,000 limiters published.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from _common import Check, machine, median, quantile, table
from ratekeeper import Event, Rate, SyncTokenBucket, TokenBucket
from ratekeeper.metrics import LimiterCollector

PLENTY = 10**9  # a token per nanosecond and a bucket of a billion: never short of tokens
SCRAPE_INTERVAL = 0.001  # a stress case: Prometheus scrapes every 15-60 s
SCRAPED = "published, scraped every 1 ms"


@dataclass(frozen=True)
class Profile:
    name: str
    calls: int  # calls per timed batch
    repeats: int  # batches per candidate
    scrape_repeats: int
    sizes: tuple[int, ...]


QUICK = Profile("quick", calls=20_000, repeats=7, scrape_repeats=5, sizes=(1, 10, 100))
FULL = Profile("full", calls=100_000, repeats=25, scrape_repeats=21, sizes=(1, 10, 100, 1000))


def progress(message: str) -> None:
    """Show what is being measured, on a terminal or under ``ratekeeper bench``."""
    if sys.stderr.isatty() or os.environ.get("RATEKEEPER_BENCH_PROGRESS") == "1":
        print(f"  ... {message}", file=sys.stderr, flush=True)


class Scraper:
    """A thread that scrapes a registry every ``interval`` seconds, as an exporter would."""

    def __init__(self, registry: CollectorRegistry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self.scrapes = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            generate_latest(self.registry)
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.seconds += time.perf_counter() - self._started


def push_listener(registry: CollectorRegistry) -> Callable[[Event], None]:
    """Return an on_event listener that counts grants in a prometheus Counter (push-style)."""
    granted = Counter(
        "push_granted", "Grants counted per event.", ["limiter", "kind"], registry=registry
    )
    children: dict[str, Any] = {}

    def listener(event: Event) -> None:
        child = children.get(event.kind)
        if child is None:
            child = children[event.kind] = granted.labels(event.limiter or "", event.kind)
        child.inc(event.tokens)

    return listener


def async_candidates(registry: CollectorRegistry) -> dict[str, TokenBucket]:
    collector = LimiterCollector()
    registry.register(collector)
    published = TokenBucket(Rate(PLENTY), PLENTY, name="published")
    scraped = TokenBucket(Rate(PLENTY), PLENTY, name="scraped")
    collector.add(published)
    collector.add(scraped)
    push = TokenBucket(
        Rate(PLENTY), PLENTY, name="push", on_event=push_listener(CollectorRegistry())
    )
    return {
        "bare": TokenBucket(Rate(PLENTY), PLENTY),
        "published, not scraped": published,
        SCRAPED: scraped,
        "push: on_event -> Counter.inc": push,
    }


def time_batches(
    candidates: dict[str, Callable[[], int]], repeats: int, scraper: Scraper, scraped: str
) -> dict[str, list[float]]:
    """Return ns per call for each candidate; batches interleaved, the scraper on for one."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            if name == scraped:
                with scraper:
                    samples[name].append(run())
            else:
                samples[name].append(run())
    return samples


def hot_path(profile: Profile, checks: list[Check], results: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    limiters = async_candidates(registry)
    calls = profile.calls
    scraper_box: list[Scraper] = []

    def try_batch(limiter: TokenBucket) -> Callable[[], int]:
        def run() -> int:
            try_acquire = limiter.try_acquire_nowait
            start = time.perf_counter_ns()
            for _ in range(calls):
                try_acquire()
            return time.perf_counter_ns() - start

        return run

    def acquire_batch(limiter: TokenBucket) -> Callable[[], int]:
        async def loop() -> int:
            acquire = limiter.acquire
            start = time.perf_counter_ns()
            for _ in range(calls):
                await acquire()
            return time.perf_counter_ns() - start

        def run() -> int:
            return runner.run(loop())

        return run

    print("\n1. Hot path of an asyncio TokenBucket (tokens always there): ns per call")
    with asyncio.Runner() as runner:
        for verb, batch in (("try_acquire()", try_batch), ("await acquire()", acquire_batch)):
            progress(f"{verb}: {len(limiters)} candidates x {profile.repeats} batches")
            scraper = Scraper(registry, SCRAPE_INTERVAL)
            scraper_box.append(scraper)
            runs = {name: batch(lim) for name, lim in limiters.items()}
            raw = time_batches(runs, profile.repeats, scraper, SCRAPED)
            per_call = {name: [ns / calls for ns in v] for name, v in raw.items()}
            base = median(per_call["bare"])
            rows = []
            for name, values in per_call.items():
                rows.append(
                    (
                        name,
                        f"{median(values):.1f}",
                        f"{quantile(values, 0.25):.1f}-{quantile(values, 0.75):.1f}",
                        f"{median(values) / base:.2f}x",
                    )
                )
            print(f"\n  {verb}")
            print(table(("limiter", "median ns", "p25-p75 ns", "vs bare"), rows))
            results[verb] = {name: median(v) for name, v in per_call.items()}
            ratio = median(per_call["published, not scraped"]) / base
            checks.append(
                Check(
                    "1",
                    f"{verb}: published / bare",
                    ratio,
                    f"{ratio:.2f}x",
                    "<= 1.10x (same code path; the rest is noise)",
                    ratio <= 1.10,
                )
            )
    scrapes = sum(s.scrapes for s in scraper_box)
    seconds = sum(s.seconds for s in scraper_box)
    print(
        f"\n  The scraped limiter saw {scrapes:,} scrapes in {seconds:.2f} s of its batches "
        f"({scrapes / max(seconds, 1e-9):,.0f}/s): its extra time is the scrapes' own CPU under "
        "the GIL, not a cost on the hot path."
    )
    results["scrapes_during_section_1"] = scrapes


def threads(profile: Profile, checks: list[Check], results: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    collector = LimiterCollector()
    registry.register(collector)
    bare = SyncTokenBucket(Rate(PLENTY), PLENTY)
    published = SyncTokenBucket(Rate(PLENTY), PLENTY, name="published")
    scraped = SyncTokenBucket(Rate(PLENTY), PLENTY, name="scraped")
    collector.add(published)
    collector.add(scraped)
    calls = profile.calls

    def batch(limiter: SyncTokenBucket) -> Callable[[], int]:
        def run() -> int:
            try_acquire = limiter.try_acquire
            start = time.perf_counter_ns()
            for _ in range(calls):
                try_acquire()
            return time.perf_counter_ns() - start

        return run

    progress(f"SyncTokenBucket.try_acquire(): 3 candidates x {profile.repeats} batches")
    runs = {
        "bare": batch(bare),
        "published, not scraped": batch(published),
        SCRAPED: batch(scraped),
    }
    raw = time_batches(runs, profile.repeats, Scraper(registry, SCRAPE_INTERVAL), SCRAPED)
    per_call = {name: [ns / calls for ns in v] for name, v in raw.items()}
    base = median(per_call["bare"])
    print("\n2. SyncTokenBucket.try_acquire() (tokens always there): ns per call")
    rows = [
        (
            name,
            f"{median(v):.1f}",
            f"{quantile(v, 0.25):.1f}-{quantile(v, 0.75):.1f}",
            f"{median(v) / base:.2f}x",
        )
        for name, v in per_call.items()
    ]
    print()
    print(table(("limiter", "median ns", "p25-p75 ns", "vs bare"), rows))
    results["sync try_acquire()"] = {name: median(v) for name, v in per_call.items()}
    ratio = median(per_call["published, not scraped"]) / base
    checks.append(
        Check(
            "2",
            "SyncTokenBucket.try_acquire(): published / bare",
            ratio,
            f"{ratio:.2f}x",
            "<= 1.10x",
            ratio <= 1.10,
        )
    )


def scrape_cost(profile: Profile, checks: list[Check], results: dict[str, Any]) -> None:
    print("\n3. Scrape cost, by the number of limiters published")
    rows = []
    figures: dict[str, dict[str, float]] = {}
    for n in profile.sizes:
        progress(f"scrape with {n} limiters")
        registry = CollectorRegistry()
        limiters = [TokenBucket(Rate(100), 10, name=f"limiter-{i}") for i in range(n)]
        for limiter in limiters:
            limiter.try_acquire_nowait()
        collector = LimiterCollector(*limiters)
        registry.register(collector)
        collect_us: list[float] = []
        expose_us: list[float] = []
        size = 0
        for _ in range(profile.scrape_repeats):
            start = time.perf_counter_ns()
            families = list(collector.collect())
            collect_us.append((time.perf_counter_ns() - start) / 1e3)
            start = time.perf_counter_ns()
            text = generate_latest(registry)
            expose_us.append((time.perf_counter_ns() - start) / 1e3)
            size = len(text)
        samples = sum(len(f.samples) for f in families)
        rows.append(
            (
                f"{n:,}",
                f"{samples:,}",
                f"{median(collect_us):,.0f}",
                f"{median(collect_us) / n:.1f}",
                f"{median(expose_us):,.0f}",
                f"{size / 1024:,.1f}",
            )
        )
        figures[str(n)] = {
            "samples": samples,
            "collect_us": median(collect_us),
            "exposition_us": median(expose_us),
            "bytes": size,
        }
    print()
    print(
        table(
            (
                "limiters",
                "samples",
                "collect() us",
                "us per limiter",
                "generate_latest() us",
                "text KiB",
            ),
            rows,
        )
    )
    results["scrape"] = figures
    largest = str(profile.sizes[-1])
    per_limiter = figures[largest]["collect_us"] / profile.sizes[-1]
    checks.append(
        Check(
            "3",
            f"collect() per limiter ({largest} limiters)",
            per_limiter,
            f"{per_limiter:.1f} us",
            "<= 100 us (a scrape of 1,000 limiters well under 0.1 s)",
            per_limiter <= 100,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (a few seconds)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if a target fails"
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    info = machine()
    started = time.perf_counter()
    print(f"ratekeeper metrics benchmark ({profile.name} run)")
    print(
        f"  {info['python']} on {info['platform']} {info['machine']}, nproc={info['nproc']}, "
        f"load average {info['loadavg_1_5_15']}"
    )
    print("  command: python benchmarks/bench_metrics.py" + (" --quick" if args.quick else ""))
    checks: list[Check] = []
    results: dict[str, Any] = {}
    hot_path(profile, checks, results)
    threads(profile, checks, results)
    scrape_cost(profile, checks, results)
    print()
    print(
        table(
            ("target", "measured", "required", "result"),
            [(c.name, c.shown, c.target, c.verdict) for c in checks],
        )
    )
    failed = [c for c in checks if not c.ok]
    print(
        f"\nSummary: {len(checks) - len(failed)} of {len(checks)} targets pass "
        f"({time.perf_counter() - started:.0f} s)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(
                {
                    "profile": profile.name,
                    "machine": info,
                    "results": results,
                    "checks": [c.as_dict() for c in checks],
                },
                file,
                indent=2,
            )
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
