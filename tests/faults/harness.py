"""Fault scenarios on a real server, with OS processes sharing one limit, and their measures.

A scenario starts a ``valkey-server`` of its own (and a freezable proxy in front of it),
then ``processes`` worker processes (``_worker.py``) whose callers acquire one token at a
time from one key until the end. At ``fault_at`` seconds the fault is injected, and undone
``outage`` seconds later where it lasts. Measured from the workers' reports:

- **over-admission**: the most tokens granted in any window [a, b] beyond what the limit
  allows there, ``capacity + rate * (b - a)`` (0 when the limit held);
- **longest call**: the longest acquire, from its call to its return (granted, refused or
  failed);
- **recovery**: from the end of the fault to the last backend error any process counted
  after it (0 when none did).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .._redis_fixtures import Server
from ._proxy import FreezableProxy

ROOT = Path(__file__).resolve().parents[2]

FAULTS = (
    "kill",  # kill -9, then a restart on the same port (empty: no persistence)
    "pause",  # CLIENT PAUSE for the outage
    "debug-sleep",  # DEBUG SLEEP for the outage (the server blocked)
    "script-flush",  # SCRIPT FLUSH (instant)
    "flushall",  # FLUSHALL (instant: every bucket lost)
    "evict",  # the buckets evicted (maxmemory below use, volatile-random; instant)
    "oom",  # maxmemory 1 with noeviction for the outage (writes refused: OOM)
    "freeze",  # the network stalls (the proxy forwards nothing) for the outage
)
INSTANT = {"script-flush", "flushall", "evict"}
POLICIES = ("closed", "open", "fallback")
FRONTS = ("async", "sync")


@dataclass
class Scenario:
    fault: str
    policy: str
    front: str = "async"
    keyed: bool = False
    processes: int = 3
    tasks: int = 4
    rate: float = 50.0
    capacity: int = 10
    duration: float = 3.5
    fault_at: float = 1.2
    outage: float = 1.0
    timeout: float = 0.25
    retry_interval: float = 0.25
    acquire_timeout: float = 1.0

    @property
    def name(self) -> str:
        keyed = " keyed" if self.keyed else ""
        return f"{self.fault} / {self.policy} / {self.front}{keyed}"

    def worker_config(self, url: str, key: str, go: Path, out: Path) -> dict[str, Any]:
        return {
            "url": url,
            "key": key,
            "rate": self.rate,
            "capacity": self.capacity,
            "policy": self.policy,
            "share": 1 / self.processes,
            "front": self.front,
            "keyed": self.keyed,
            "go": str(go),
            "out": str(out),
            "duration": self.duration,
            "tasks": self.tasks,
            "timeout": self.timeout,
            "retry_interval": self.retry_interval,
            "acquire_timeout": self.acquire_timeout,
        }


@dataclass
class Outcome:
    scenario: Scenario
    over_admission: float
    longest_call: float
    recovery: float
    granted: int
    fault_end: float
    reports: list[dict[str, Any]] = field(repr=False)

    def row(self) -> str:
        s = self.scenario
        return (
            f"{s.fault:<13} {s.policy:<9} {s.front + (' keyed' if s.keyed else ''):<12} "
            f"{self.over_admission:>8.1f} {self.longest_call:>9.2f} {self.recovery:>9.2f} "
            f"{self.granted:>8}"
        )


HEADER = (
    f"{'fault':<13} {'policy':<9} {'front end':<12} {'over-adm':>8} {'longest':>9} "
    f"{'recovery':>9} {'granted':>8}"
)


def over_admission(times: list[float], rate: float, capacity: int) -> float:
    """Return max over windows [t_i, t_j] of grants in it - (capacity + rate*(t_j - t_i)).

    In one pass: the excess is (j - rate*t_j) - (i - 1 - rate*t_i) - capacity, so for each
    j it is largest with the smallest i - 1 - rate*t_i seen so far.
    """
    worst = 0.0
    lowest = float("inf")
    for j, t in enumerate(sorted(times)):
        lowest = min(lowest, j - 1 - rate * t)
        worst = max(worst, j - rate * t - lowest - capacity)
    return worst


def run(scenario: Scenario, workdir: Path) -> Outcome:
    """Run one scenario on a server of its own; return what was measured."""
    server = Server(workdir, None, "--enable-debug-command", "local").start()
    proxy = FreezableProxy(server.port)
    key = f"fault-{uuid.uuid4().hex[:10]}"
    url = proxy.url
    go = workdir / "go"
    outs = [workdir / f"worker{n}.json" for n in range(scenario.processes)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults._worker",
                json.dumps(scenario.worker_config(url, key, go, out)),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    try:
        start = start_together(procs, outs, go)
        time.sleep(max(0.0, start + scenario.fault_at - time.time()))
        fault_end = inject(scenario, server, proxy)
        reports = []
        for proc, out in zip(procs, outs, strict=True):
            _, err = proc.communicate(timeout=scenario.duration + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"a worker failed ({scenario.name}):\n{err}")
            reports.append(json.loads(out.read_text()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        proxy.close()
        server.kill()
    end = start + scenario.duration
    grants = [t for r in reports for t in r["grants"] if start <= t <= end]
    errors_after = [t for r in reports for t in r["error_times"] if t >= fault_end]
    return Outcome(
        scenario,
        over_admission(grants, scenario.rate, scenario.capacity),
        max(r["longest"] for r in reports),
        max(errors_after, default=fault_end) - fault_end,
        len(grants),
        fault_end,
        reports,
    )


def start_together(procs: list[subprocess.Popen[str]], outs: list[Path], go: Path) -> float:
    """Wait until every worker is ready, then give them all one start time; return it."""
    deadline = time.monotonic() + 120
    while not all(Path(f"{out}.ready").exists() for out in outs):
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker failed to start:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not start")
        time.sleep(0.01)
    start = time.time() + 0.3
    go.with_suffix(".tmp").write_text(repr(start))
    go.with_suffix(".tmp").rename(go)
    return start


def admin(server: Server) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=10)


def inject(scenario: Scenario, server: Server, proxy: FreezableProxy) -> float:
    """Inject the fault now, undo it after the outage; return when it ended (wall clock)."""
    fault, outage = scenario.fault, scenario.outage
    if fault in INSTANT:
        with admin(server) as client:
            if fault == "script-flush":
                client.script_flush()
            elif fault == "flushall":
                client.flushall()
            else:
                client.config_set("maxmemory-policy", "volatile-random")
                client.config_set("maxmemory", 1)  # evicts every key with a TTL: the buckets
                client.config_set("maxmemory", 0)
        return time.time()
    if fault == "kill":
        server.kill()
        time.sleep(outage)
        server.start()
    elif fault == "pause":
        with admin(server) as client:
            client.execute_command("CLIENT", "PAUSE", int(outage * 1000), "ALL")
        time.sleep(outage)
    elif fault == "debug-sleep":
        with admin(server) as client:
            client.execute_command("DEBUG", "SLEEP", outage)
    elif fault == "oom":
        with admin(server) as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
            time.sleep(outage)
            client.config_set("maxmemory", 0)
    elif fault == "freeze":
        proxy.freeze()
        time.sleep(outage)
        proxy.thaw()
    else:
        raise ValueError(f"unknown fault {fault!r}")
    return time.time()


# The stated bounds (docs/redis.md), with what the measure itself adds.
TOLERANCE = 4.0
"""Tokens: grant times are read when each caller returns, in several processes, on a
loaded machine (a late return can only bunch grants up, never spread them out)."""


def call_bound(scenario: Scenario) -> float:
    """The longest a call may take: its own timeout, plus two server calls' timeouts (a
    reconnection retried once), plus 0.5 s for a loaded machine."""
    return scenario.acquire_timeout + 2 * scenario.timeout + 0.5


def recovery_bound(scenario: Scenario) -> float:
    """Back on the server within retry_interval + timeout of the fault's end (+ 1 s)."""
    return scenario.retry_interval + scenario.timeout + 1.0


STATE_LOSS = {"flushall", "evict"}


def admission_bound(scenario: Scenario) -> float:
    """The over-admission allowed: one capacity. After state loss, the bucket is put back
    as the first process to call saw it last; beyond that, at most the slots the other
    processes' callers (one each) booked after that process's last reply: with the key
    saturated, as here, at most (processes - 1) x tasks, below one capacity here."""
    if scenario.fault in STATE_LOSS:
        return max(scenario.capacity, (scenario.processes - 1) * scenario.tasks)
    return scenario.capacity


def check(outcome: Outcome) -> None:
    """Assert the bounds; fail open may pass anything while the server is down."""
    s = outcome.scenario
    # Eviction briefly refuses writes too (OOM while maxmemory is below use): fail open
    # then lets calls through, as in any outage.
    if s.policy != "open" or s.fault in {"script-flush", "flushall"}:
        assert outcome.over_admission <= admission_bound(s) + TOLERANCE, outcome
    assert outcome.longest_call <= call_bound(s), outcome
    assert outcome.recovery <= recovery_bound(s), outcome
    assert outcome.granted > 0, outcome


def run_many(scenarios: list[Scenario], root: Path, parallel: int = 1) -> list[Outcome]:
    """Run the scenarios, ``parallel`` at a time (each on its own server)."""
    outcomes: list[Outcome | None] = [None] * len(scenarios)
    lock = threading.Semaphore(parallel)

    def one(index: int) -> None:
        with lock:
            outcomes[index] = run(scenarios[index], root / f"s{index}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(scenarios))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [o for o in outcomes if o is not None]


with contextlib.suppress(ImportError):  # only where uvloop installs
    import uvloop  # noqa: F401

    FRONTS = ("async", "sync", "uvloop")
