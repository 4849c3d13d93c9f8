"""Per-route rate limits for FastAPI: the names of ``ratekeeper.integrations.starlette``.

FastAPI is Starlette underneath, so one module serves both; this one is where FastAPI users
look for it. See ``RouteLimiter``.
"""

from .starlette import (
    RateLimitExceeded,
    RouteLimit,
    RouteLimiter,
    client_address,
    exempt,
    forwarded_for,
    header_key,
    path_param,
    rate_limit_exceeded_handler,
    retry_after,
    user_key,
)

__all__ = [
    "RateLimitExceeded",
    "RouteLimit",
    "RouteLimiter",
    "client_address",
    "exempt",
    "forwarded_for",
    "header_key",
    "path_param",
    "rate_limit_exceeded_handler",
    "retry_after",
    "user_key",
]
