"""The fault-injection suite: real servers, real processes, real faults; the bounds asserted.

Each scenario (see ``harness``) runs 3 OS processes sharing one limit (50/s, capacity 10)
through a freezable proxy, injects a fault and asserts the stated bounds: over-admission at
most one capacity (fail open excepted while the server is down: it lets calls through by
design), no call longer than its timeout plus the documented margin, back on the server
within the documented recovery time. ``make test`` runs the short list below; ``make soak``
(``RATEKEEPER_SOAK=1``) every fault x policy x front end, and the keyed backends.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from .harness import FAULTS, FRONTS, POLICIES, Scenario, check, over_admission, run

QUICK = {"duration": 2.5, "fault_at": 0.8, "outage": 0.7}
SHORT = [
    Scenario("flushall", "fallback", "async", **QUICK),  # state loss: sleepers' slots kept
    Scenario("kill", "fallback", "sync", keyed=True, **QUICK),  # decided locally, settled
    Scenario("freeze", "closed", "async", **QUICK),  # a stall: calls bounded by the timeout
]
LONG = [
    Scenario(fault, policy, front) for fault in FAULTS for policy in POLICIES for front in FRONTS
] + [
    Scenario(fault, "fallback", front, keyed=True)
    for fault in FAULTS
    for front in ("async", "sync")
]

SCENARIOS = LONG if os.environ.get("RATEKEEPER_SOAK") else SHORT


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name.replace(" ", ""))
def test_the_bounds_hold_under_the_fault(scenario: Scenario, tmp_path: Path) -> None:
    outcome = run(scenario, tmp_path)
    print(outcome.row())
    check(outcome)


def test_over_admission_is_the_worst_window() -> None:
    """The one-pass measure equals the worst window found by trying them all."""
    rng = random.Random(9)
    for _ in range(200):
        times = sorted(rng.uniform(0, 3) for _ in range(rng.randint(0, 50)))
        brute = max(
            [0.0]
            + [
                (j - i + 1) - 5 - 20 * (times[j] - times[i])
                for i in range(len(times))
                for j in range(i, len(times))
            ]
        )
        assert over_admission(times, 20, 5) == pytest.approx(brute)
    assert over_admission([0.0] * 8, 20, 5) == 3  # 8 at once, 5 allowed
