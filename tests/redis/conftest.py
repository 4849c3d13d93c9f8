"""The Redis fixtures (real servers), from ``tests/_redis_fixtures.py``."""

from __future__ import annotations

from .._redis_fixtures import (
    CLI_BIN,
    SERVER_BIN,
    Server,
    async_client,
    cluster_nodes,
    free_port,
    key,
    own_server,
    redis_url,
    sync_client,
)

__all__ = [
    "CLI_BIN",
    "SERVER_BIN",
    "Server",
    "async_client",
    "cluster_nodes",
    "free_port",
    "key",
    "own_server",
    "redis_url",
    "sync_client",
]
