"""The ASGI middleware: unit tables on the manual clock, then a real uvicorn server + httpx."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratekeeper import BackendUnavailable
from ratekeeper._keyed import KeyedLimiter, Limit, Verdict
from ratekeeper.integrations.asgi import (
    UNKEYED,
    RateLimitMiddleware,
    client_address,
    forwarded_for,
    header_key,
    policy_header,
)
from ratekeeper.testing import ManualClock

from ._server import serve

Response = tuple[int, dict[str, str], bytes]


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(
    app: Any,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    client: tuple[str, int] | None = ("10.0.0.1", 5000),
) -> Response:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": client,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def limited(rate: str = "1/s", capacity: int = 2, **kwargs: Any) -> RateLimitMiddleware:
    limiter = KeyedLimiter(rate, capacity, clock=kwargs.pop("clock", ManualClock()))
    return RateLimitMiddleware(ok_app, limiter, **kwargs)


# -- refusing, with the standard headers -------------------------------------------------------


async def test_refusal_is_429_with_retry_after_and_ratelimit_headers() -> None:
    app = limited("10/minute", 2)
    assert (await call(app))[0] == 200
    status, headers, _ = await call(app)
    assert status == 200
    assert "ratelimit" not in headers  # accepted responses carry none unless asked
    status, headers, body = await call(app)
    assert status == 429
    assert json.loads(body) == {"detail": "Too Many Requests", "retry_after": 6}
    assert headers["retry-after"] == "6"  # one token back in 6 s
    assert headers["ratelimit-policy"] == '"default";q=2;w=12'
    assert headers["ratelimit"] == '"default";r=0;t=6'  # t never beyond Retry-After
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))


async def test_headers_on_accepted_responses_when_enabled() -> None:
    app = limited("10/s", 5, headers=True)
    status, headers, body = await call(app)
    assert (status, body) == (200, b"ok")
    assert headers["x-app"] == "1"  # the app's own headers are kept
    assert headers["ratelimit-policy"] == '"default";q=5;w=1'
    assert headers["ratelimit"] == '"default";r=4;t=1'


def test_policy_header_never_invites_more_than_the_bucket() -> None:
    limits = {
        "a": Limit("5/s", 5),
        "b": Limit("100/minute"),
        "c": Limit("20/s", 5),
        "d": Limit("1/hour", 3),
    }
    assert policy_header(limits) == ('"a";q=5;w=1, "b";q=100;w=60, "c";q=5;w=1, "d";q=3;w=10800')


async def test_composite_limits_report_each_policy() -> None:
    limiter = KeyedLimiter(
        limits={"burst": Limit("2/s", 2), "minute": Limit("5/minute", 5)},
        clock=ManualClock(),
    )
    app = RateLimitMiddleware(ok_app, limiter, headers=True)
    _, headers, _ = await call(app)
    assert headers["ratelimit-policy"] == '"burst";q=2;w=1, "minute";q=5;w=60'
    assert headers["ratelimit"] == '"burst";r=1;t=1, "minute";r=4;t=12'
    await call(app)
    status, headers, _ = await call(app)
    assert status == 429
    assert headers["retry-after"] == "1"
    assert headers["ratelimit"] == '"burst";r=0;t=1, "minute";r=3;t=1'


async def test_x_ratelimit_headers() -> None:
    app = limited("10/minute", 2, headers="x-ratelimit")
    status, headers, _ = await call(app)
    assert status == 200
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("2", "1")
    assert 0 < int(headers["x-ratelimit-reset"]) - time.time() <= 7
    assert "ratelimit" not in headers
    await call(app)
    status, headers, _ = await call(app)
    assert status == 429
    assert headers["retry-after"] == "6"
    assert headers["x-ratelimit-remaining"] == "0"


async def test_no_headers_but_retry_after() -> None:
    app = limited("10/minute", 1, headers=None)
    assert "ratelimit" not in (await call(app))[1]
    status, headers, _ = await call(app)
    assert status == 429
    assert headers["retry-after"] == "6"
    assert not any("ratelimit" in name for name in headers)


async def test_stacked_middlewares_send_distinct_policy_names() -> None:
    clock = ManualClock()
    outer = RateLimitMiddleware(
        RateLimitMiddleware(ok_app, KeyedLimiter("2/s", 2, clock=clock), headers=True),
        KeyedLimiter("5/minute", 5, clock=clock),
        headers=True,
    )
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("1.2.3.4", 1)}

    async def raw_headers() -> tuple[int, list[str], list[str]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await outer(dict(scope), None, send)  # type: ignore[arg-type]
        start = sent[0]
        pairs = [(k.decode(), v.decode()) for k, v in start["headers"]]
        return (
            start["status"],
            [v for k, v in pairs if k == "ratelimit-policy"],
            [v for k, v in pairs if k == "ratelimit"],
        )

    assert await raw_headers() == (
        200,
        ['"default";q=2;w=1', '"default-2";q=5;w=60'],
        ['"default";r=1;t=1', '"default-2";r=4;t=12'],
    )
    await raw_headers()
    # the inner one refuses; the outer one's headers join its 429, names still distinct
    assert await raw_headers() == (
        429,
        ['"default";q=2;w=1', '"default-2";q=5;w=60'],
        ['"default";r=0;t=1', '"default-2";r=2;t=36'],
    )


async def test_a_refusal_response_hook() -> None:
    from ratekeeper.integrations.asgi import Refusal, Response

    def plain(scope: Any, refusal: Refusal) -> Response:
        return Response(refusal.status, (("content-type", "text/plain"),), b"slow down\n")

    app = limited("10/minute", 1, refusal_response=plain)
    await call(app)
    status, headers, body = await call(app)
    assert (status, body) == (429, b"slow down\n")
    assert headers["retry-after"] == "6"  # added to what the hook returned
    assert headers["content-type"] == "text/plain"


async def test_a_hook_may_return_a_starlette_response() -> None:
    from starlette.responses import JSONResponse

    def starlette_json(scope: Any, refusal: Any) -> JSONResponse:
        return JSONResponse({"error": "rate_limited", "path": scope["path"]}, refusal.status)

    app = limited("10/minute", 1, refusal_response=starlette_json, headers="both")
    await call(app, "/x")
    status, headers, body = await call(app, "/x")
    assert status == 429
    assert json.loads(body) == {"error": "rate_limited", "path": "/x"}
    assert headers["retry-after"] == "6"
    assert headers["x-ratelimit-remaining"] == "0"
    assert headers["ratelimit"] == '"default";r=0;t=6'


async def test_a_hook_returning_something_unusable_gets_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = limited("10/minute", 1, refusal_response=lambda scope, refusal: "nope")
    await call(app)
    with caplog.at_level(logging.ERROR, logger="ratekeeper.asgi"):
        status, _, body = await call(app)
    assert status == 429
    assert json.loads(body) == {"detail": "Too Many Requests", "retry_after": 6}
    assert "sending the default" in caplog.text


async def test_the_limiter_failing_goes_through_the_hook_too() -> None:
    seen: list[int] = []

    def hook(scope: Any, refusal: Any) -> Any:
        seen.append(refusal.status)
        from ratekeeper.integrations.asgi import json_refusal

        return json_refusal(scope, refusal)

    app = RateLimitMiddleware(ok_app, BrokenLimiter(), refusal_response=hook)
    status, _, body = await call(app)
    assert (status, seen) == (503, [503])
    assert json.loads(body) == {"detail": "Service Unavailable", "retry_after": 1}


# -- routes --------------------------------------------------------------------------------------


async def test_route_costs_and_exemptions() -> None:
    app = limited(
        "1/minute",
        10,
        costs={"/search": 4, "/static/*": 0, "POST /upload": 10, "/upload": 2, "/api/*": 3},
        exempt=["/health"],
    )
    for _ in range(20):
        assert (await call(app, "/health"))[0] == 200
        assert (await call(app, "/static/app.js"))[0] == 200
    assert (await call(app, "/search"))[0] == 200  # 6 left
    assert (await call(app, "/api/v1/items"))[0] == 200  # 3 left
    assert (await call(app, "/search"))[0] == 429
    assert (await call(app, "/upload"))[0] == 200  # GET /upload costs 2: 1 left
    assert (await call(app, "/upload", method="POST"))[0] == 429
    assert (await call(app, "/other"))[0] == 200  # default cost 1: 0 left
    assert (await call(app, "/other"))[0] == 429


async def test_a_cost_function() -> None:
    def cost(scope: dict[str, Any]) -> int:
        return 0 if scope["method"] == "OPTIONS" else 2

    app = limited("1/minute", 4, costs=cost)
    assert (await call(app, method="OPTIONS"))[0] == 200
    assert (await call(app))[0] == 200
    assert (await call(app))[0] == 200
    assert (await call(app))[0] == 429
    assert (await call(app, method="OPTIONS"))[0] == 200


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"costs": {"/x": 3}}, ValueError, "capacity 2"),
        ({"costs": {"/x": -1}}, ValueError, "from 0"),
        ({"costs": {"/x": 1.5}}, TypeError, "int"),
        ({"costs": {"x": 1}}, ValueError, "route pattern"),
        ({"exempt": ["GET"]}, ValueError, "route pattern"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
        ({"on_key_error": "deny"}, ValueError, "on_key_error"),
        ({"max_wait": -1}, ValueError, "max_wait"),
        ({"max_wait": "1"}, TypeError, "max_wait"),
        ({"key": "client"}, TypeError, "key"),
    ],
)
def test_bad_arguments_fail_at_once(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        limited("1/s", 2, **kwargs)


def test_a_limiter_is_required() -> None:
    with pytest.raises(TypeError, match="KeyedLimiter"):
        RateLimitMiddleware(ok_app, "10/s")  # type: ignore[arg-type]


async def start(app: Any) -> None:
    """Send the lifespan start-up, as a server does: Starlette builds its middleware then."""
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        assert not message["type"].endswith("failed"), message

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)


async def test_an_unknown_route_fails_when_the_app_starts() -> None:
    app = starlette_app(limiter=KeyedLimiter("1/s"), costs={"/serach": 1})
    with pytest.raises(ValueError, match=r"routes the app does not have: \['/serach'\]"):
        await start(app)
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    api.add_middleware(RateLimitMiddleware, limiter=KeyedLimiter("1/s"), costs={"/item/{id}": 1})
    with pytest.raises(ValueError, match=r"\['/item/\{id\}'\]; its routes are"):
        await start(api)
    fine = FastAPI()
    fine.router.routes.extend(api.router.routes)
    fine.add_middleware(RateLimitMiddleware, limiter=KeyedLimiter("1/s"), costs={"/items/{id}": 1})
    await start(fine)


# -- keys ----------------------------------------------------------------------------------------


async def test_each_client_address_has_its_bucket() -> None:
    app = limited("1/minute", 1)
    assert (await call(app, client=("10.0.0.1", 1)))[0] == 200
    assert (await call(app, client=("10.0.0.1", 2)))[0] == 429  # same address, other port
    assert (await call(app, client=("10.0.0.2", 1)))[0] == 200


async def test_api_keys_are_never_key_names() -> None:
    app = limited("1/minute", 1, key=header_key("Authorization"))
    await call(app, headers={"authorization": "Bearer sk-live-123"})
    store = app.limiter.backend  # type: ignore[attr-defined]
    (name,) = store._live()
    assert name.startswith("authorization:") and "sk-live" not in name


async def test_an_api_key_header() -> None:
    app = limited("1/minute", 1, key=header_key("X-API-Key"))
    assert (await call(app, headers={"x-api-key": "alpha"}))[0] == 200
    assert (await call(app, headers={"x-api-key": "alpha"}))[0] == 429
    assert (await call(app, headers={"x-api-key": "beta"}))[0] == 200
    assert (await call(app))[0] == 200  # no header: keyed by the client's address
    assert (await call(app))[0] == 429


def test_forwarded_for_trusts_only_the_proxies() -> None:
    key = forwarded_for(["10.0.0.0/8", "192.168.1.1"])

    def scope(peer: str, xff: str | None) -> dict[str, Any]:
        headers = [] if xff is None else [(b"x-forwarded-for", xff.encode())]
        return {"client": (peer, 1), "headers": headers}

    assert key(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"  # not from a proxy
    assert key(scope("10.1.2.3", "198.51.100.7")) == "198.51.100.7"
    # a client that writes its own header cannot choose its key: the leftmost is ignored
    assert key(scope("10.1.2.3", "6.6.6.6, 198.51.100.7")) == "198.51.100.7"
    assert key(scope("10.1.2.3", "6.6.6.6, 198.51.100.7, 192.168.1.1")) == "198.51.100.7"
    assert key(scope("10.1.2.3", "10.9.9.9")) == "10.1.2.3"  # only proxies: from inside
    assert key(scope("10.1.2.3", None)) == "10.1.2.3"
    with pytest.raises(ValueError, match="trusted"):
        forwarded_for(["not an address"])


async def test_a_failing_key_function_is_logged_and_shares_one_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(scope: dict[str, Any]) -> str:
        raise KeyError("x-user")

    app = limited("1/minute", 2, key=broken)
    with caplog.at_level(logging.WARNING, logger="ratekeeper.asgi"):
        statuses = [(await call(app, client=(f"10.0.0.{i}", 1)))[0] for i in range(4)]
    assert statuses == [200, 200, 429, 429]  # limited together, never a 500
    assert len(caplog.records) == 1  # throttled: one line per 10 s per kind
    record = caplog.records[0]
    assert record.name == "ratekeeper.asgi"
    assert "key function failed for GET /" in record.getMessage()
    assert "shared key" in record.getMessage()
    assert record.exc_info is not None
    assert await app.limiter.available(UNKEYED) == {"default": 0.0}  # type: ignore[attr-defined]


async def test_key_errors_can_let_requests_through(caplog: pytest.LogCaptureFixture) -> None:
    app = limited("1/minute", 1, key=lambda scope: 42, on_key_error="allow")
    with caplog.at_level(logging.WARNING, logger="ratekeeper.asgi"):
        statuses = [(await call(app))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert "returned int 42" in caplog.records[0].getMessage()


async def test_no_client_address_is_a_key_error(caplog: pytest.LogCaptureFixture) -> None:
    app = limited("1/minute", 1)
    with caplog.at_level(logging.WARNING, logger="ratekeeper.asgi"):
        assert (await call(app, client=None))[0] == 200
        assert (await call(app, client=None))[0] == 429
    assert "no client address" in caplog.text


async def test_a_key_function_returning_none_exempts_the_request() -> None:
    app = limited("1/minute", 1, key=lambda scope: None)
    assert [(await call(app))[0] for _ in range(3)] == [200, 200, 200]


async def test_huge_keys_are_hashed() -> None:
    app = limited("1/minute", 1, key=header_key("x-api-key", hashed=False))
    huge = "k" * 100_000
    assert (await call(app, headers={"x-api-key": huge}))[0] == 200
    assert (await call(app, headers={"x-api-key": huge}))[0] == 429
    assert (await call(app, headers={"x-api-key": huge + "!"}))[0] == 200
    store = app.limiter.backend  # type: ignore[attr-defined]
    assert all(k.startswith("sha256:") and len(k) == 71 for k in store._live())


# -- limiter failures ----------------------------------------------------------------------------


class BrokenLimiter:
    limits: ClassVar[dict[str, Limit]] = {"default": Limit("1/s")}

    async def admit(self, key: str, tokens: Any = 1, *, max_wait: float | None = 0.0) -> Verdict:
        raise BackendUnavailable("redis is down")


async def test_a_failing_limiter_answers_503_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    app = RateLimitMiddleware(ok_app, BrokenLimiter())
    with caplog.at_level(logging.ERROR, logger="ratekeeper.asgi"):
        status, headers, _ = await call(app)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert "the limiter failed" in caplog.text
    assert "redis is down" in caplog.text
    assert "answering 503" in caplog.text


async def test_a_failing_limiter_can_let_requests_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RateLimitMiddleware(ok_app, BrokenLimiter(), on_error="allow")
    with caplog.at_level(logging.ERROR, logger="ratekeeper.asgi"):
        assert (await call(app))[0] == 200
    assert "letting the request through" in caplog.text


async def test_a_failing_cost_function_is_a_limiter_error(caplog: pytest.LogCaptureFixture) -> None:
    app = limited("1/s", 1, costs=lambda scope: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="ratekeeper.asgi"):
        assert (await call(app))[0] == 503
    assert "the cost function failed" in caplog.text


# -- waiting -------------------------------------------------------------------------------------


async def test_wait_up_to_max_wait_then_refuse() -> None:
    clock = ManualClock()
    app = limited("2/s", 1, clock=clock, max_wait=0.6)
    first = await call(app)
    assert first[0] == 200
    waiting = asyncio.create_task(call(app))  # waits 0.5 s: within max_wait
    await clock.sleep(0)
    refused = await call(app)  # would wait 1.0 s: refused at once
    assert refused[0] == 429
    assert refused[1]["retry-after"] == "1"
    assert not waiting.done()
    await clock.sleep(0.5)
    assert (await waiting)[0] == 200


async def test_other_scope_types_pass_through() -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = RateLimitMiddleware(app, KeyedLimiter("1/minute", 1))
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


async def test_a_refused_websocket_is_closed_before_it_is_accepted() -> None:
    app = limited("1/minute", 1)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})

    app.app = inner
    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("10.0.0.1", 1)}
    await app(scope, None, send)  # type: ignore[arg-type]
    await app(scope, None, send)  # type: ignore[arg-type]
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1008, "reason": "Too Many Requests"},
    ]


# -- over the network ----------------------------------------------------------------------------


def starlette_app(**middleware: Any) -> Starlette:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    routes = ["/", "/health", "/search", "/upload", "/static/app.js"]
    app = Starlette(routes=[Route(path, hello, methods=["GET", "POST"]) for path in routes])
    app.add_middleware(RateLimitMiddleware, **middleware)
    return app


async def test_uvicorn_and_httpx_end_to_end() -> None:
    app = starlette_app(limiter=KeyedLimiter("3/minute", 3), exempt=["/health"], headers=True)
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            responses = [await client.get("/") for _ in range(5)]
            health = await client.get("/health")
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert responses[0].text == "hello"
    assert responses[0].headers["ratelimit"] == '"default";r=2;t=20'
    assert responses[0].headers["ratelimit-policy"] == '"default";q=3;w=60'
    refused = responses[3]
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["ratelimit"] == '"default";r=0;t=20'
    assert health.status_code == 200
    assert "ratelimit" not in health.headers


async def test_uvicorn_requests_wait_their_turn_within_max_wait() -> None:
    app = starlette_app(limiter=KeyedLimiter("20/s", 1), max_wait=1.0)
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            start = time.monotonic()
            responses = await asyncio.gather(*(client.get("/") for _ in range(6)))
            elapsed = time.monotonic() - start
    assert [r.status_code for r in responses] == [200] * 6
    assert elapsed >= 5 / 20 - 0.02  # 6 requests at 20/s with a burst of 1
    assert elapsed < 2.0


async def test_fastapi_app_keyed_by_api_key() -> None:
    api = FastAPI()

    @api.get("/items/{item}")
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    api.add_middleware(
        RateLimitMiddleware,
        limiter=KeyedLimiter("2/minute", 2),
        key=header_key("x-api-key", fallback=None),
        costs={"/items/*": 1},
    )
    with serve(api) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            alpha = [
                (await client.get(f"/items/{i}", headers={"x-api-key": "alpha"})).status_code
                for i in range(3)
            ]
            beta = await client.get("/items/7", headers={"x-api-key": "beta"})
            anonymous = [(await client.get("/items/1")).status_code for _ in range(3)]
    assert alpha == [200, 200, 429]
    assert beta.json() == {"item": 7}
    assert anonymous == [200, 200, 429]  # no key: the shared UNKEYED bucket


async def test_the_default_key_sees_the_loopback_client() -> None:
    seen: list[str] = []

    def key(scope: dict[str, Any]) -> str:
        seen.append(client_address(scope))
        return seen[-1]

    with serve(starlette_app(limiter=KeyedLimiter("10/s"), key=key)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/")).status_code == 200
    assert seen == ["127.0.0.1"]


async def test_keys_costs_exemptions_and_waiting_together() -> None:
    """The options of the middleware together, on one app."""
    app = starlette_app(
        limiter=KeyedLimiter("10/s", 20),
        key=header_key("X-API-Key"),
        costs={"/search": 5, "POST /upload": 10, "/static/*": 0},
        exempt=["/health"],
        max_wait=0.25,
        headers=True,
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"x-api-key": "k"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        start = time.monotonic()
        burst = [(await client.get("/", headers=headers)) for _ in range(20)]
        refilled = int((time.monotonic() - start) * 10)  # tokens back during the burst
        # 5 more at once: 2 fit in 0.25 s (at 0.1 and 0.2 s), the rest are refused at once
        late = await asyncio.gather(*(client.get("/", headers=headers) for _ in range(5)))
    assert {r.status_code for r in burst} == {200}
    assert burst[0].headers["ratelimit-policy"] == '"default";q=20;w=2'
    granted = sorted(r.status_code for r in late).count(200)
    assert 2 <= granted <= min(4, 2 + refilled + 1)  # a loaded machine refills a token or two
