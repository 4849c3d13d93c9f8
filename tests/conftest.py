"""Shared fixtures: a manual clock and limiters on it."""

from __future__ import annotations

import pytest

from ratekeeper.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def live_timers(clock: ManualClock) -> int:
    """Return how many timers are armed (not cancelled, not fired) on ``clock``."""
    return sum(1 for _, _, timer in clock._timers if not timer.cancelled)
