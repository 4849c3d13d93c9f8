"""A FastAPI app with rate limits: one per API key for the whole app, and some per route.

Run it (memory, one process)::

    uvicorn examples.fastapi_app:app

or with the limits kept at a Redis/Valkey server, shared by every worker::

    RATEKEEPER_STORAGE=redis://localhost:6379/0 uvicorn examples.fastapi_app:app --workers 4

``RATEKEEPER_ON_ERROR=allow`` lets requests through while the server is down (the default
answers them ``503`` with ``Retry-After: 1``). Then try::

    curl -i -H 'X-API-Key: alpha' localhost:8000/items/1

What it limits, per API key (``X-API-Key``; requests without one are keyed by address):

- every request: 100 a minute (``RateLimitMiddleware``), except ``/health``;
- ``GET /items/{item_id}``: 5 a minute for all items together (a route limit);
- ``GET /search``: 10 tokens a minute, each search costing 5 (a FastAPI dependency);
- ``POST /photos`` and ``POST /videos``: 3 uploads a minute between them (a shared limit).

Refusals are ``429`` with ``{"detail": "Too Many Requests", "retry_after": N}``,
``Retry-After`` and the ``RateLimit``/``RateLimit-Policy`` headers, which accepted responses
carry too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import Depends, FastAPI

from ratekeeper import KeyedLimiter, Limit
from ratekeeper.integrations.asgi import RateLimitMiddleware
from ratekeeper.integrations.starlette import (
    RateLimitExceeded,
    RouteLimiter,
    header_key,
    rate_limit_exceeded_handler,
)


def create_app(storage: str = "memory://", on_error: Literal["deny", "allow"] = "deny") -> FastAPI:
    """Return the app, its limits kept in ``storage`` (``memory://`` or a Redis URL)."""
    key = header_key("X-API-Key")  # hashed: API keys never reach Redis or the logs
    routes = RouteLimiter(key=key, storage=storage, headers=True, on_error=on_error)
    backend = None
    if storage == "memory://":
        everything = KeyedLimiter("100/minute")
    else:
        from ratekeeper.redis import RedisKeyedBackend  # noqa: PLC0415 (needs the redis extra)

        backend = RedisKeyedBackend(storage, {"default": Limit("100/minute")})
        everything = KeyedLimiter(backend=backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await routes.aclose()
        if backend is not None:
            await backend.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)
    app.add_middleware(
        RateLimitMiddleware, limiter=everything, key=key, headers=True, on_error=on_error
    )
    uploads = routes.shared_limit("uploads", "3/minute")

    @app.get("/health")
    @routes.exempt
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items/{item_id}")
    @routes.route_limit("5/minute")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/search", dependencies=[Depends(routes.depends("10/minute", cost=5))])
    async def search(q: str) -> dict[str, list[str]]:
        return {"results": [q.upper()]}

    @app.post("/photos")
    @uploads
    async def upload_photo() -> dict[str, str]:
        return {"uploaded": "photo"}

    @app.post("/videos")
    @uploads
    async def upload_video() -> dict[str, str]:
        return {"uploaded": "video"}

    return app


app = create_app(
    os.environ.get("RATEKEEPER_STORAGE", "memory://"),
    "allow" if os.environ.get("RATEKEEPER_ON_ERROR") == "allow" else "deny",
)

if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="memory://", help="memory:// or a redis:// URL")
    parser.add_argument("--on-error", default="deny", choices=["deny", "allow"])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(create_app(args.storage, args.on_error), port=args.port)
