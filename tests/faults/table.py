"""Print the fault table: fault x policy x front end, over-admission, longest call, recovery.

Run from a checkout: ``python -m tests.faults.table`` (every scenario of ``make soak``;
``--short`` for the ``make test`` list, ``--parallel N`` scenarios at a time). The figures
are from real servers and processes on this machine; docs/redis.md shows one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .harness import HEADER, TOLERANCE, Scenario, call_bound, recovery_bound, run_many
from .test_faults import LONG, SHORT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="only the make-test scenarios")
    parser.add_argument("--parallel", type=int, default=1, help="scenarios at a time")
    args = parser.parse_args()
    scenarios: list[Scenario] = SHORT if args.short else LONG
    s = scenarios[0]
    print(
        f"# {len(scenarios)} scenarios: {s.processes} processes x {s.tasks} callers, "
        f"{s.rate:g}/s capacity {s.capacity}, fault at {s.fault_at}s for {s.outage}s, "
        f"timeout {s.timeout}s, retry_interval {s.retry_interval}s, acquire timeout "
        f"{s.acquire_timeout}s"
    )
    print(
        f"# bounds: over-admission <= capacity {s.capacity} (+{TOLERANCE:g} measuring), "
        f"longest call <= {call_bound(s):.2f}s, recovery <= {recovery_bound(s):.2f}s"
    )
    print(HEADER)
    with tempfile.TemporaryDirectory() as root:
        for outcome in run_many(scenarios, Path(root), args.parallel):
            print(outcome.row(), flush=True)


if __name__ == "__main__":
    main()
