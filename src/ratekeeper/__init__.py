"""ratekeeper: rate limiting that stays correct under concurrency.

A pure, clock-injected GCRA core in exact integers; an asyncio limiter (``TokenBucket``) and
a thread-safe blocking one (``SyncTokenBucket``) on top of it.
"""

import logging

from ._asyncio import CompositeLimiter, Reservation, TokenBucket, TokenBucketRateLimiter
from ._clock import Clock, LoopClock, MonotonicClock
from ._config import limiter, sync_limiter
from ._errors import AcquireTimeout, BackendUnavailable, LimiterClosed, RateKeeperError
from ._events import EventStream
from ._gcra import Limit
from ._keyed import (
    AsyncKeyedBackend,
    KeyedBackend,
    KeyedLimiter,
    KeyedStatistics,
    MemoryKeyedStore,
    SyncKeyedLimiter,
    Verdict,
)
from ._keyview import KeyedReservation, KeyedView, SyncKeyedReservation, SyncKeyedView
from ._rate import Rate
from ._scheduler import WAIT_BUCKETS, Event, Listener, Statistics
from ._threading import SyncCompositeLimiter, SyncTokenBucket
from ._windows import FixedWindow, SlidingWindow, SyncFixedWindow, SyncSlidingWindow

__all__ = [
    "AsyncKeyedBackend",
    "KeyedBackend",
    "KeyedLimiter",
    "KeyedReservation",
    "KeyedStatistics",
    "KeyedView",
    "Limit",
    "MemoryKeyedStore",
    "SyncKeyedLimiter",
    "SyncKeyedReservation",
    "SyncKeyedView",
    "Verdict",
    "AcquireTimeout",
    "BackendUnavailable",
    "WAIT_BUCKETS",
    "Clock",
    "CompositeLimiter",
    "Event",
    "EventStream",
    "FixedWindow",
    "LimiterClosed",
    "Listener",
    "LoopClock",
    "MonotonicClock",
    "Rate",
    "RateKeeperError",
    "Reservation",
    "SlidingWindow",
    "Statistics",
    "SyncCompositeLimiter",
    "SyncFixedWindow",
    "SyncSlidingWindow",
    "SyncTokenBucket",
    "TokenBucket",
    "TokenBucketRateLimiter",
    "limiter",
    "sync_limiter",
]

__version__ = "0.1.0"

# The library logs under "ratekeeper.*" and prints nothing unless the application configures
# logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
