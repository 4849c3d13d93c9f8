"""The error family: everything ratekeeper raises on purpose derives from RateKeeperError.

Bad arguments are not part of the family: they raise plain ValueError or TypeError naming the
value and what is allowed.
"""

from __future__ import annotations

__all__ = ["AcquireTimeout", "BackendUnavailable", "LimiterClosed", "RateKeeperError"]


class RateKeeperError(Exception):
    """Base class of the errors ratekeeper raises on purpose."""


class LimiterClosed(RateKeeperError):
    """Raised by every call on a limiter after close(), and in every waiter close() woke."""


class AcquireTimeout(RateKeeperError, TimeoutError):
    """Raised when tokens cannot be granted within the caller's timeout.

    Nothing was consumed. ``retry_after`` is the wait (seconds) the limiter expected at the
    moment it refused, or ``None`` when the waiter was already queued and the plan changed.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendUnavailable(RateKeeperError):
    """Raised when a shared backend (such as Redis) cannot be reached or answered wrongly."""
