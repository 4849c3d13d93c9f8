"""ratekeeper: rate limiting that stays correct under concurrency.

A pure, clock-injected GCRA core in exact integers; an asyncio limiter (``TokenBucket``) and
a thread-safe blocking one (``SyncTokenBucket``) on top of it.
"""

from ._asyncio import Reservation, TokenBucket, TokenBucketRateLimiter
from ._clock import Clock, LoopClock, MonotonicClock
from ._errors import AcquireTimeout, BackendUnavailable, LimiterClosed, RateKeeperError
from ._rate import Rate
from ._scheduler import Statistics
from ._threading import SyncTokenBucket

__all__ = [
    "AcquireTimeout",
    "BackendUnavailable",
    "Clock",
    "LimiterClosed",
    "LoopClock",
    "MonotonicClock",
    "Rate",
    "RateKeeperError",
    "Reservation",
    "Statistics",
    "SyncTokenBucket",
    "TokenBucket",
    "TokenBucketRateLimiter",
]

__version__ = "0.1.0"
