"""The WSGI middleware under a real WSGI server (waitress), driven by httpx over loopback.

Memory and a real valkey-server: the same answers, headers and bodies; a Redis server that
is down gives 503 with Retry-After (or a pass); a key function that raises is never a 500.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from ratekeeper import Limit, SyncKeyedLimiter
from ratekeeper.integrations.wsgi import RateLimitMiddleware, Refusal, Response
from ratekeeper.redis import SyncRedisKeyedBackend

from .._redis_fixtures import Server
from ._wsgi_server import serve_wsgi


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "yes")])
    return [b"hello " + environ["PATH_INFO"].encode()]


def on_redis(url: str, limits: dict[str, Limit]) -> SyncKeyedLimiter:
    backend = SyncRedisKeyedBackend(
        url, limits, prefix=f"wsgi{uuid.uuid4().hex[:10]}:", timeout=0.3, retry_interval=0.1
    )
    return SyncKeyedLimiter(backend=backend)


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Any:
    """Make a SyncKeyedLimiter on each backend from {name: Limit}."""
    if request.param == "memory":
        return lambda limits: SyncKeyedLimiter(limits=limits)
    url = request.getfixturevalue("redis_url")
    return lambda limits: on_redis(url, limits)


def test_burst_then_429_with_retry_after_headers_and_a_json_body(make_limiter: Any) -> None:
    limiter = make_limiter({"default": Limit("1/minute", 3)})
    app = RateLimitMiddleware(hello, limiter, headers=True)
    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        answers = [client.get("/") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    first, refused = answers[0], answers[3]
    assert first.text == "hello /" and first.headers["x-app"] == "yes"
    assert first.headers["ratelimit-policy"] == '"default";q=3;w=180'
    assert first.headers["ratelimit"] == '"default";r=2;t=60'
    assert refused.json() == {"detail": "Too Many Requests", "retry_after": 60}
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["ratelimit"] == '"default";r=0;t=60'
    assert "x-ratelimit-limit" not in refused.headers


@pytest.mark.parametrize(
    ("mode", "present", "absent"),
    [
        ("x-ratelimit", ["x-ratelimit-limit", "x-ratelimit-remaining"], ["ratelimit"]),
        ("both", ["x-ratelimit-limit", "ratelimit", "ratelimit-policy"], []),
        (None, [], ["x-ratelimit-limit", "ratelimit", "ratelimit-policy"]),
    ],
)
def test_header_modes(mode: Any, present: list[str], absent: list[str]) -> None:
    app = RateLimitMiddleware(hello, SyncKeyedLimiter("1/minute", 2), headers=mode)
    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        ok, _, refused = (client.get("/") for _ in range(3))
    assert (ok.status_code, refused.status_code) == (200, 429)
    assert refused.headers["retry-after"] == "60"
    for name in present:
        assert name in ok.headers and name in refused.headers
    for name in absent:
        assert name not in ok.headers and name not in refused.headers
    if mode is not None:
        assert ok.headers["x-ratelimit-remaining"] == "1"
        assert refused.headers["x-ratelimit-remaining"] == "0"
        reset = int(refused.headers["x-ratelimit-reset"]) - time.time()  # a Unix time
        assert 55 <= reset <= 62


def test_refusals_only_by_default() -> None:
    app = RateLimitMiddleware(hello, SyncKeyedLimiter("1/minute", 1))
    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        ok, refused = client.get("/"), client.get("/")
    assert "ratelimit" not in ok.headers
    assert refused.headers["ratelimit-policy"] == '"default";q=1;w=60'
    assert refused.headers["retry-after"] == "60"


def test_costs_exemptions_and_keys_per_header(make_limiter: Any) -> None:
    limiter = make_limiter({"default": Limit("1/minute", 10)})
    app = RateLimitMiddleware(
        hello,
        limiter,
        key=lambda environ: environ.get("HTTP_X_API_KEY"),  # None: not limited
        costs={"/search": 5, "POST /upload": 10, "/static/*": 0},
        exempt=["/health"],
    )
    a, b = {"x-api-key": "a"}, {"x-api-key": "b"}
    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/search", headers=a).status_code == 200
        assert client.get("/search", headers=a).status_code == 200
        assert client.get("/search", headers=a).status_code == 429  # 10 spent
        assert client.get("/static/app.js", headers=a).status_code == 200
        assert client.get("/health", headers=a).status_code == 200
        assert client.get("/anything").status_code == 200  # no key: not limited
        assert client.post("/upload", headers=b).status_code == 200
        assert client.get("/upload", headers=b).status_code == 429  # GET costs 1; 0 left


def test_a_key_function_that_raises_is_logged_never_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(environ: dict[str, Any]) -> str:
        raise RuntimeError("no user")

    shared = RateLimitMiddleware(hello, SyncKeyedLimiter("1/minute", 2), key=broken)
    allowing = RateLimitMiddleware(
        hello, SyncKeyedLimiter("1/minute", 1), key=broken, on_key_error="allow"
    )
    with caplog.at_level(logging.WARNING, "ratekeeper.wsgi"):
        with serve_wsgi(shared) as url, httpx.Client(base_url=url) as client:
            assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]
        with serve_wsgi(allowing) as url, httpx.Client(base_url=url) as client:
            assert [client.get("/").status_code for _ in range(3)] == [200, 200, 200]
    assert "the key function failed for GET /: RuntimeError('no user')" in caplog.text


def test_requests_wait_their_turn_within_max_wait() -> None:
    app = RateLimitMiddleware(hello, SyncKeyedLimiter("20/s", 1), max_wait=1.0)
    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        started = time.monotonic()
        codes = [client.get("/").status_code for _ in range(5)]
        elapsed = time.monotonic() - started
    assert codes == [200] * 5
    assert elapsed >= 0.19  # 4 waits of 50 ms


def test_redis_down_answers_503_or_lets_through(tmp_path: Any) -> None:
    server = Server(tmp_path / "valkey").start()
    try:
        deny = RateLimitMiddleware(hello, on_redis(server.url, {"default": Limit("1/s", 5)}))
        allow = RateLimitMiddleware(
            hello, on_redis(server.url, {"default": Limit("1/s", 5)}), on_error="allow"
        )
        with serve_wsgi(deny) as deny_url, serve_wsgi(allow) as allow_url:
            assert httpx.get(deny_url).status_code == 200
            server.kill()
            down = httpx.get(deny_url)
            assert down.status_code == 503
            assert down.headers["retry-after"] == "1"
            assert down.json() == {"detail": "Service Unavailable", "retry_after": 1}
            assert httpx.get(allow_url).status_code == 200
    finally:
        server.kill()


def test_a_refusal_hook_shapes_the_answer_and_a_broken_one_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def html(environ: dict[str, Any], refusal: Refusal) -> Response:
        body = f"<p>wait {refusal.retry_after}s</p>".encode()
        return Response(refusal.status, (("content-type", "text/html"),), body)

    def broken(environ: dict[str, Any], refusal: Refusal) -> Response:
        raise ValueError("oops")

    limiter = SyncKeyedLimiter("1/minute", 1)
    with serve_wsgi(RateLimitMiddleware(hello, limiter, refusal_response=html)) as url:
        httpx.get(url)
        refused = httpx.get(url)
    assert (refused.status_code, refused.text) == (429, "<p>wait 60s</p>")
    assert refused.headers["retry-after"] == "60"  # added to the hook's response
    limiter = SyncKeyedLimiter("1/minute", 1)
    with caplog.at_level(logging.ERROR, "ratekeeper.wsgi"):
        with serve_wsgi(RateLimitMiddleware(hello, limiter, refusal_response=broken)) as url:
            httpx.get(url)
            refused = httpx.get(url)
    assert refused.status_code == 429 and refused.json()["retry_after"] == 60
    assert "the refusal_response hook failed: ValueError('oops')" in caplog.text


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"headers": "draft"}, ValueError, "headers must be True, False, None, 'ietf'"),
        ({"costs": {"/x": -1}}, ValueError, "the cost of '/x' must be from 0 to the capacity"),
        ({"costs": {"/x": 11}}, ValueError, "capacity 10"),
        ({"costs": {"x": 1}}, ValueError, "a route pattern looks like"),
        ({"on_error": "open"}, ValueError, "on_error must be 'deny' or 'allow'"),
        ({"max_wait": -1}, ValueError, "max_wait must be finite seconds >= 0"),
    ],
)
def test_bad_configuration_fails_at_once(options: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        RateLimitMiddleware(hello, SyncKeyedLimiter("1/s", 10), **options)
