"""The Redis fixtures (real servers) for the middleware on Redis, from ``tests/_redis_fixtures``."""

from __future__ import annotations

from .._redis_fixtures import Server, key, own_server, redis_url

__all__ = ["Server", "key", "own_server", "redis_url"]
