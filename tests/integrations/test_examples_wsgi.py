"""The Flask and Django examples under a real WSGI server (waitress, its own process), via httpx.

``examples/flask_app.py`` and ``examples/django_project`` serve the same API. Each runs once
with the limits in memory and once on a real valkey-server: limits hold per endpoint or URL
pattern (not per path) and per key, on function and class-based views; shared limits are
shared, headers and bodies are as documented, and a Redis server that goes down gives 503
with Retry-After.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .._redis_fixtures import Server
from ._wsgi_server import EXAMPLES, run_server

# framework -> (the folder to serve from, the WSGI app, the search view's policy name)
EXAMPLE = {
    "flask": (EXAMPLES, "flask_app:app", "search"),
    "django": (EXAMPLES / "django_project", "project.wsgi:application", "project.views.search"),
}


def storage_url(redis_url: str) -> str:
    return f"{redis_url}?prefix=ex{uuid.uuid4().hex[:8]}:&timeout=0.3&retry_interval=0.1"


@pytest.fixture(scope="module", params=["flask", "django"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=["memory", "redis"])
def base_url(request: pytest.FixtureRequest, framework: str) -> Iterator[str]:
    env = {}
    if request.param == "redis":
        env["RATEKEEPER_STORAGE"] = storage_url(request.getfixturevalue("redis_url"))
    folder, app, _ = EXAMPLE[framework]
    with run_server(folder, app, env) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    # Each test its own client address: 127.0.0.x (Linux routes all of 127/8 to loopback).
    address = f"127.0.0.{next(ADDRESSES)}"
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=base_url, transport=transport) as client:
        yield client


ADDRESSES = iter(range(2, 250))


def test_an_endpoint_is_limited_per_url_rule_not_per_path(client: httpx.Client) -> None:
    # 6/minute, 2 tokens a request: 3 requests, on any item.
    codes = [client.get(f"/items/{n}/").status_code for n in range(4)]
    assert codes == [200, 200, 200, 429]
    ok = client.get("/health/")  # exempt
    assert ok.status_code == 200 and "ratelimit" not in ok.headers


def test_headers_and_the_refusal_body(client: httpx.Client) -> None:
    first = client.get("/")
    assert first.json() == {"hello": "world"}
    assert first.headers["ratelimit-policy"] == '"default";q=10;w=60'
    assert first.headers["ratelimit"] == '"default";r=9;t=6'
    for _ in range(9):
        client.get("/")
    refused = client.get("/")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    assert refused.json() == {"detail": "Too Many Requests", "retry_after": 6}
    assert refused.headers["retry-after"] == "6"
    assert refused.headers["ratelimit"] == '"default";r=0;t=6'


def test_per_api_key(client: httpx.Client, framework: str) -> None:
    a, b = {"x-api-key": "sk-a"}, {"x-api-key": "sk-b"}
    assert [client.get("/search/", headers=a).status_code for _ in range(6)] == [200] * 5 + [429]
    assert client.get("/search/", headers=b).status_code == 200
    assert client.get("/search/").status_code == 200  # no key: by address
    policy = client.get("/search/", headers=b).headers["ratelimit-policy"]
    assert policy == f'"{EXAMPLE[framework][2]}";q=5;w=60'


def test_a_class_based_view_keyed_by_a_url_argument(client: httpx.Client) -> None:
    codes = [client.get("/tenants/acme/report/").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert client.get("/tenants/other/report/").json() == {"tenant": "other"}


def test_two_endpoints_share_a_named_limit(client: httpx.Client) -> None:
    codes = [client.post("/login/").status_code, client.post("/reset-password/").status_code]
    codes += [client.post("/login/").status_code, client.post("/reset-password/").status_code]
    assert codes == [200, 200, 200, 429]
    assert client.get("/").status_code == 200  # the default limit is another bucket


@pytest.mark.parametrize("name", ["flask", "django"])
def test_redis_down_gives_503_with_retry_after(tmp_path: Path, name: str) -> None:
    server = Server(tmp_path / "valkey").start()
    try:
        env = {"RATEKEEPER_STORAGE": storage_url(server.url)}
        folder, app, _ = EXAMPLE[name]
        with run_server(folder, app, env) as url:
            assert httpx.get(f"{url}/").status_code == 200
            server.kill()
            down = httpx.get(f"{url}/")
            assert down.status_code == 503
            assert down.headers["retry-after"] == "1"
            assert down.json() == {"detail": "Service Unavailable", "retry_after": 1}
            assert httpx.get(f"{url}/health/").status_code == 200  # exempt: never asks Redis
    finally:
        server.kill()
