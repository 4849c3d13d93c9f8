"""Route limits for Starlette and FastAPI: the decorator and the dependency, memory and Redis.

Apps are driven in process through httpx's ASGI transport (the full Starlette/FastAPI stack,
no socket); ``test_fastapi_example.py`` runs the example app under a real uvicorn server.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ratekeeper import KeyedLimiter, Limit
from ratekeeper.integrations.asgi import RateLimitMiddleware
from ratekeeper.integrations.starlette import (
    RateLimitExceeded,
    RouteLimiter,
    header_key,
    path_param,
    rate_limit_exceeded_handler,
    user_key,
)


def client(app: Any, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 5000))
    return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)


async def statuses(c: httpx.AsyncClient, path: str, n: int, **kwargs: Any) -> list[int]:
    return [(await c.get(path, **kwargs)).status_code for _ in range(n)]


# -- the decorator -------------------------------------------------------------------------------


async def test_the_decorator_limits_per_route_template_and_per_key() -> None:
    limiter = RouteLimiter(key=header_key("x-api-key"))
    app = FastAPI()

    @app.get("/items/{item_id}")
    @limiter.route_limit("2/minute")
    async def item(item_id: int) -> dict[str, int]:  # no request parameter needed
        return {"item": item_id}

    @app.get("/users/{user_id}")
    @limiter.route_limit("1/minute")
    def user(user_id: int, request: Request) -> dict[str, Any]:  # sync, with a request
        return {"user": user_id, "path": request.url.path}

    async with client(app, **{"x-api-key": "alpha"}) as c:
        first = await c.get("/items/1")
        # /items/1 and /items/2 are one route: one bucket per key
        assert [first.status_code, (await c.get("/items/2")).status_code] == [200, 200]
        refused = await c.get("/items/3")
        assert (await c.get("/items/1", headers={"x-api-key": "beta"})).status_code == 200
        assert await statuses(c, "/users/7", 2) == [200, 429]  # a route of its own
    assert first.json() == {"item": 1}
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Too Many Requests", "retry_after": 30}
    assert refused.headers["retry-after"] == "30"
    assert refused.headers["ratelimit-policy"] == '"minute";q=2;w=60'
    assert refused.headers["content-type"] == "application/json"
    # the endpoint's own parameters are what OpenAPI shows: nothing of ours
    params = app.openapi()["paths"]["/items/{item_id}"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["item_id"]


async def test_the_decorator_on_a_starlette_endpoint() -> None:
    limiter = RouteLimiter(headers=True)

    @limiter.route_limit("2/minute")
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    async with client(app) as c:
        responses = [await c.get("/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].text == "hello"
    assert responses[0].headers["ratelimit"] == '"minute";r=1;t=30'


async def test_headers_on_a_fastapi_endpoint_returning_data() -> None:
    limiter = RouteLimiter(headers="both")
    app = FastAPI()

    @app.get("/")
    @limiter.route_limit("10/second;100/hour")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    async with client(app) as c:
        response = await c.get("/")
    assert response.json() == {"ok": True}
    assert response.headers["ratelimit-policy"] == ('"second";q=10;w=1, "hour";q=100;w=3600')
    assert response.headers["ratelimit"] == '"second";r=9;t=1, "hour";r=99;t=36'
    assert response.headers["x-ratelimit-remaining"] == "9"


async def test_stacked_route_limits_and_the_middleware_keep_distinct_policy_names() -> None:
    limiter = RouteLimiter(headers=True)
    app = FastAPI()

    @app.get("/")
    @limiter.route_limit({"default": Limit("5/second")})
    @limiter.route_limit({"default": Limit("100/hour")})
    async def root() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(RateLimitMiddleware, limiter=KeyedLimiter("1000/hour"), headers=True)
    async with client(app) as c:
        response = await c.get("/")
    policies = response.headers.get_list("ratelimit-policy")
    assert policies == [
        '"default";q=100;w=3600',
        '"default-2";q=5;w=1',
        '"default-3";q=1000;w=3600',
    ]
    assert len(response.headers.get_list("ratelimit")) == 3


async def test_costs_per_route_and_a_cost_function() -> None:
    limiter = RouteLimiter()
    app = FastAPI()

    @app.get("/export")
    @limiter.route_limit("10/hour", cost=4)
    async def export() -> str:
        return "csv"

    @app.get("/search")
    @limiter.route_limit("10/hour", cost=lambda request: int(request.query_params["n"]))
    async def search() -> str:
        return "found"

    async with client(app) as c:
        assert await statuses(c, "/export", 3) == [200, 200, 429]
        assert await statuses(c, "/search", 2, params={"n": 5}) == [200, 200]
        assert await statuses(c, "/search", 1, params={"n": 1}) == [429]


# -- the dependency ------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [False, True])
async def test_the_dependency_without_and_with_the_handler(handler: bool) -> None:
    limiter = RouteLimiter()
    app = FastAPI()
    if handler:
        app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)

    @app.get("/a", dependencies=[Depends(limiter.depends("1/minute"))])
    async def a() -> str:
        return "a"

    async with client(app) as c:
        assert (await c.get("/a")).json() == "a"
        refused = await c.get("/a")
    assert refused.status_code == 429
    if handler:  # the refusal's own response
        assert refused.json() == {"detail": "Too Many Requests", "retry_after": 60}
    else:  # FastAPI's rendering of an HTTPException
        assert refused.json() == {"detail": "Too Many Requests"}
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["ratelimit"] == '"minute";r=0;t=60'


async def test_a_router_wide_dependency_counts_per_route() -> None:
    limiter = RouteLimiter(headers=True)
    app = FastAPI(dependencies=[Depends(limiter.depends("1/minute"))])
    app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)

    @app.get("/a")
    async def a() -> str:
        return "a"

    @app.get("/b/{x}")
    async def b(x: str) -> str:
        return x

    async with client(app) as c:
        ok = await c.get("/a")
        assert await statuses(c, "/a", 1) == [429]
        assert await statuses(c, "/b/1", 2) == [200, 429]
    assert ok.headers["ratelimit"] == '"minute";r=0;t=60'


# -- shared limits, exemptions, keys --------------------------------------------------------------


async def test_a_shared_limit_counts_across_routes() -> None:
    limiter = RouteLimiter()
    uploads = limiter.shared_limit("uploads", "3/hour")
    app = FastAPI()
    app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)

    @app.post("/photos")
    @uploads
    async def photo() -> str:
        return "photo"

    @app.post("/videos", dependencies=[Depends(uploads.depends)])
    async def video() -> str:
        return "video"

    async with client(app) as c:
        codes = [(await c.post(p)).status_code for p in ("/photos", "/videos", "/photos")]
        refused = await c.post("/videos")
    assert codes == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["ratelimit-policy"] == '"uploads";q=3;w=3600'
    with pytest.raises(ValueError, match="exists already"):
        limiter.shared_limit("uploads", "1/s")


async def test_exempt_routes_skip_the_middleware() -> None:
    limiter = RouteLimiter()
    app = FastAPI()

    @app.get("/health")
    @limiter.exempt
    async def health() -> str:
        return "ok"

    @app.get("/")
    async def root() -> str:
        return "root"

    app.add_middleware(RateLimitMiddleware, limiter=KeyedLimiter("1/minute", 1))
    async with client(app) as c:
        assert await statuses(c, "/health", 3) == [200, 200, 200]
        assert await statuses(c, "/", 2) == [200, 429]


async def test_keys_by_path_parameter_and_by_user() -> None:
    class Bearer(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> tuple[AuthCredentials, SimpleUser] | None:
            name = conn.headers.get("x-user")
            return None if name is None else (AuthCredentials(["user"]), SimpleUser(name))

    limiter = RouteLimiter()
    app = FastAPI()

    @app.get("/tenants/{tenant}/report")
    @limiter.route_limit("1/minute", key=path_param("tenant"))
    async def report(tenant: str) -> str:
        return tenant

    @app.get("/me")
    @limiter.route_limit("1/minute", key=user_key())
    async def me() -> str:
        return "me"

    app.add_middleware(AuthenticationMiddleware, backend=Bearer())
    async with client(app) as c:
        assert await statuses(c, "/tenants/acme/report", 2) == [200, 429]
        assert await statuses(c, "/tenants/other/report", 1) == [200]
        assert await statuses(c, "/me", 2, headers={"x-user": "ann"}) == [200, 429]
        assert await statuses(c, "/me", 1, headers={"x-user": "bob"}) == [200]
        assert await statuses(c, "/me", 2) == [200, 429]  # anonymous: by address


def root_app(limiter: RouteLimiter, rate: str) -> FastAPI:
    """An app whose one route, ``GET /``, has a route limit of ``rate``."""
    app = FastAPI()

    @app.get("/")
    @limiter.route_limit(rate)
    async def root() -> str:
        return "root"

    return app


async def test_a_failing_key_function_is_logged_and_shares_a_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = root_app(RouteLimiter(key=lambda request: request.headers["x-missing"]), "2/minute")

    with caplog.at_level(logging.WARNING, logger="ratekeeper.asgi"):
        async with client(app) as c:
            assert await statuses(c, "/", 3) == [200, 200, 429]  # never a 500
    assert "key function failed for GET /: KeyError" in caplog.text


async def test_a_custom_refusal_response() -> None:
    def teapot(request: Any, refusal: Any) -> JSONResponse:
        return JSONResponse({"error": "slow down", "path": request.url.path}, refusal.status)

    app = root_app(RouteLimiter(refusal_response=teapot), "1/minute")

    async with client(app) as c:
        await c.get("/")
        refused = await c.get("/")
    assert refused.json() == {"error": "slow down", "path": "/"}
    assert refused.headers["retry-after"] == "60"


async def test_a_hook_returning_something_unusable_gets_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = root_app(
        RouteLimiter(refusal_response=lambda request, refusal: {"no": "response"}), "1/minute"
    )

    with caplog.at_level(logging.ERROR, logger="ratekeeper.asgi"):
        async with client(app) as c:
            await c.get("/")
            refused = await c.get("/")
    assert refused.status_code == 429  # never a 500
    assert refused.json() == {"detail": "Too Many Requests", "retry_after": 60}
    assert "sending the default" in caplog.text


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda rl: rl.route_limit("5/minutez"), ValueError, "cannot read the rate"),
        (lambda rl: rl.route_limit("5/minute", cost=-1), ValueError, "from 0"),
        (lambda rl: rl.route_limit("5/minute", cost=6), ValueError, "capacity 5"),
        (lambda rl: rl.route_limit("5/minute", capacity=0), ValueError, "capacity"),
        (lambda rl: rl.route_limit(5), TypeError, "rate is a string"),
        (lambda rl: rl.route_limit("1/s;2/m", capacity=3), TypeError, "one rate"),
        (lambda rl: rl.route_limit("1/s;2/s"), ValueError, "two rates per second"),
        (lambda rl: rl.shared_limit("bad name", "1/s"), ValueError, "name"),
        (lambda rl: rl.route_limit("1/s")(42), TypeError, "endpoint function"),
        (lambda rl: RouteLimiter(headers="draft"), ValueError, "headers must be"),
        (lambda rl: RouteLimiter(storage="memcached://x"), ValueError, "storage"),
        (lambda rl: RouteLimiter(on_error="ignore"), ValueError, "on_error"),
    ],
)
def test_bad_configuration_fails_at_start_up(make: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make(RouteLimiter())


# -- Redis ---------------------------------------------------------------------------------------


def redis_app(url: str, prefix: str, **options: Any) -> tuple[FastAPI, RouteLimiter]:
    limiter = RouteLimiter(
        key=header_key("x-api-key"),
        storage=url,
        prefix=prefix,
        redis_options={"timeout": 0.3, "retry_interval": 0.1},
        **options,
    )
    app = FastAPI()
    app.add_exception_handler(RateLimitExceeded, rate_limit_exceeded_handler)

    @app.get("/items/{item_id}")
    @limiter.route_limit("2/minute")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/export", dependencies=[Depends(limiter.depends("1/minute"))])
    async def export() -> str:
        return "csv"

    return app, limiter


async def test_on_redis_two_apps_share_each_route_limit(redis_url: str) -> None:
    prefix = f"route{uuid.uuid4().hex[:8]}:"
    (one, l1), (two, l2) = redis_app(redis_url, prefix), redis_app(redis_url, prefix)
    try:
        async with client(one, **{"x-api-key": "alpha"}) as a, client(two) as b:
            got = [
                (await a.get("/items/1")).status_code,
                (await b.get("/items/2", headers={"x-api-key": "alpha"})).status_code,
                (await a.get("/items/3")).status_code,
                (await b.get("/items/1", headers={"x-api-key": "beta"})).status_code,
                (await a.get("/export")).status_code,
                (await b.get("/export", headers={"x-api-key": "alpha"})).status_code,
            ]
        import redis.asyncio

        server = redis.asyncio.Redis.from_url(redis_url)
        names = [k.decode() async for k in server.scan_iter(f"{prefix}*")]
        await server.aclose()
    finally:
        await l1.aclose()
        await l2.aclose()
    assert got == [200, 200, 429, 200, 200, 429]
    assert names and not any("alpha" in n or "beta" in n for n in names)  # hashed keys


@pytest.mark.parametrize(("on_error", "status"), [("deny", 503), ("allow", 200)])
async def test_redis_down(on_error: str, status: int, caplog: pytest.LogCaptureFixture) -> None:
    with __import__("socket").socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    app, limiter = redis_app(dead, "x:", on_error=on_error)
    try:
        with caplog.at_level(logging.ERROR, logger="ratekeeper.asgi"):
            async with client(app, **{"x-api-key": "k"}) as c:
                item = await c.get("/items/1")
                export = await c.get("/export")
    finally:
        await limiter.aclose()
    assert (item.status_code, export.status_code) == (status, status)
    if status == 503:
        assert item.json() == {"detail": "Service Unavailable", "retry_after": 1}
        assert item.headers["retry-after"] == export.headers["retry-after"] == "1"
        assert "answering 503" in caplog.text
    else:
        assert item.json() == {"item": 1}
        assert "letting the request through" in caplog.text
