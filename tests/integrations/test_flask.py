"""The Flask extension under a real WSGI server (waitress, in a thread), driven by httpx.

Configuration from app.config and the decorator, keys from the request, costs, stacked and
shared limits, the refusal hook, and bad configuration failing at init_app (values) or on
the first request (endpoint names).
"""

from __future__ import annotations

import logging
from typing import Any

import flask
import httpx
import pytest
from flask import Flask, g

from ratekeeper.integrations.flask import RateLimiter
from ratekeeper.integrations.wsgi import Refusal

from ._wsgi_server import serve_wsgi


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update({f"RATEKEEPER_{k.upper()}": v for k, v in config.items()})
    return app


def get(app: Flask, *paths: str, **options: Any) -> list[httpx.Response]:
    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        return [client.get(path, **options) for path in paths]


def codes(answers: list[httpx.Response]) -> list[int]:
    return [answer.status_code for answer in answers]


def test_keys_from_view_args_users_and_functions() -> None:
    app = make_app()
    limiter = RateLimiter(app)

    @app.before_request
    def sign_in() -> None:
        g.user = flask.request.headers.get("x-user")

    @app.get("/tenants/<tenant>/report")
    @limiter.route_limit("2/minute", key="arg:tenant")
    def report(tenant: str) -> str:
        return tenant

    @app.get("/me")
    @limiter.route_limit("1/minute", key="user")
    def me() -> str:
        return "me"

    @app.get("/fn")
    @limiter.route_limit("1/minute", key=lambda request: request.args.get("k"))
    def fn() -> str:
        return "fn"

    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        assert codes([client.get("/tenants/a/report") for _ in range(3)]) == [200, 200, 429]
        assert client.get("/tenants/b/report").status_code == 200
        ann, bob = {"x-user": "ann"}, {"x-user": "bob"}
        assert codes([client.get("/me", headers=ann) for _ in range(2)]) == [200, 429]
        assert client.get("/me", headers=bob).status_code == 200
        assert client.get("/me").status_code == 200  # anonymous: by address
        assert codes([client.get("/fn?k=1"), client.get("/fn?k=1"), client.get("/fn")]) == [
            200,
            429,
            200,  # None: not limited
        ]


def test_stacked_limits_all_apply_and_a_refusal_takes_nothing() -> None:
    app = make_app(headers="both")
    limiter = RateLimiter(app)

    @app.get("/")
    @limiter.route_limit("3/minute")
    @limiter.shared_limit("burst", "1/minute", key=lambda request: request.args.get("k"))
    def index() -> str:
        return "ok"

    with serve_wsgi(app) as url, httpx.Client(base_url=url) as client:
        first = client.get("/?k=a")
        refused = client.get("/?k=a")  # "burst" refuses: "index" gets its token back
        assert codes([first, refused]) == [200, 429]
        assert codes([client.get("/?k=b"), client.get("/?k=c")]) == [200, 200]
        assert client.get("/?k=d").status_code == 429  # "index" is spent: 3 granted
    assert first.headers["ratelimit-policy"] == '"index";q=3;w=60, "burst";q=1;w=60'
    assert first.headers["ratelimit"] == '"index";r=2;t=20, "burst";r=0;t=60'
    assert first.headers["x-ratelimit-remaining"] == "0"  # the tightest
    assert refused.headers["retry-after"] == "60"


def test_several_rates_in_one_string_all_apply() -> None:
    app = make_app(headers="ietf", default="3/minute;2/hour", routes={"/route": "1/second;2/day"})
    limiter = RateLimiter(app)

    @app.get("/")
    def index() -> str:
        return "ok"

    @app.get("/route")
    def route() -> str:
        return "ok"

    @app.get("/view")
    @limiter.route_limit("2/minute;3/hour")
    def view() -> str:
        return "ok"

    answers = get(app, "/", "/", "/", "/view", "/view", "/view", "/route", "/route")
    # the hour's 2 refuse the default's third; the minute's 2 the view's; the second's 1 the route's
    assert codes(answers) == [200, 200, 429, 200, 200, 429, 200, 429]
    assert answers[0].headers["ratelimit-policy"] == (
        '"default.minute";q=3;w=60, "default.hour";q=2;w=3600'
    )
    assert answers[3].headers["ratelimit-policy"] == (
        '"view.minute";q=2;w=60, "view.hour";q=3;w=3600'
    )
    with pytest.raises(TypeError, match="capacity goes with one rate"):
        limiter.route_limit("1/second;2/day", capacity=5)


def test_config_routes_costs_exemptions_and_the_default() -> None:
    app = make_app(
        default=("1/minute", 4),
        routes={"/items/<int:n>": "2/minute", "upload": {"rate": "10/minute", "cost": 5}},
        costs={"heavy": 2},
        exempt=["free"],
    )
    for name in ("items", "upload", "heavy", "free", "light"):
        rule = {"items": "/items/<int:n>"}.get(name, f"/{name}")
        app.add_url_rule(rule, name, lambda **kw: "ok")
    RateLimiter(app)
    answers = get(app, "/items/1", "/items/2", "/items/3", "/upload", "/upload", "/upload")
    assert codes(answers) == [200, 200, 429, 200, 200, 429]
    assert codes(get(app, "/heavy", "/heavy", "/heavy", "/light", "/free")) == [
        200,
        200,
        429,  # 4 tokens: two heavy requests
        429,
        200,
    ]


def test_a_key_function_that_raises_is_logged_never_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(request: Any) -> str:
        raise RuntimeError("no tenant")

    app = make_app(default="2/minute", key=broken)
    app.add_url_rule("/", "index", lambda: "ok")
    RateLimiter(app)
    allowing = make_app(default="1/minute", key=broken, on_key_error="allow")
    allowing.add_url_rule("/", "index", lambda: "ok")
    RateLimiter(allowing)
    with caplog.at_level(logging.WARNING, "ratekeeper.flask"):
        assert codes(get(app, "/", "/", "/")) == [200, 200, 429]
        assert codes(get(allowing, "/", "/", "/")) == [200, 200, 200]
    assert "the key function failed for GET /: RuntimeError('no tenant')" in caplog.text


def test_a_refusal_hook_may_return_any_flask_response() -> None:
    def page(request: Any, refusal: Refusal) -> Any:
        return f"slow down, {refusal.retry_after}s", refusal.status, {"X-Why": "limit"}

    app = make_app(default="1/minute")
    app.add_url_rule("/", "index", lambda: "ok")
    RateLimiter(app, refusal_response=page)
    refused = get(app, "/", "/")[1]
    assert (refused.status_code, refused.text) == (429, "slow down, 60s")
    assert refused.headers["x-why"] == "limit"
    assert refused.headers["retry-after"] == "60"  # added


def test_disabled_and_keyword_options() -> None:
    app = make_app(default="1/minute", enabled=False)
    app.add_url_rule("/", "index", lambda: "ok")
    RateLimiter(app)
    assert codes(get(app, "/", "/")) == [200, 200]
    app = make_app(default="1/minute")
    app.add_url_rule("/", "index", lambda: "ok")
    RateLimiter(app, default="2/minute", headers="x-ratelimit")  # keywords win
    answers = get(app, "/", "/", "/")
    assert codes(answers) == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit"] == "2"


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"default": "5 per fortnight"}, ValueError, "RATEKEEPER_DEFAULT: "),
        ({"default": 5}, TypeError, "RATEKEEPER_DEFAULT must be a rate"),
        ({"headers": "draft"}, ValueError, "RATEKEEPER_HEADERS: headers must be True, False"),
        ({"key": "cookie:x"}, ValueError, "RATEKEEPER_KEY must be 'ip', 'header:<name>'"),
        ({"default": "1/s", "costs": {"x": -1}}, ValueError, r"RATEKEEPER_COSTS\['x'\] must"),
        ({"costs": {"x": 1}}, ValueError, "RATEKEEPER_DEFAULT, which is not set"),
        ({"routes": {"x": {"rate": "1/s", "cost": 2}}}, ValueError, "capacity 1"),
        ({"routes": {"x": {"limit": "1/s"}}}, ValueError, "takes 'rate' and optionally"),
        ({"on_error": "open"}, ValueError, "RATEKEEPER_ON_ERROR must be 'deny' or 'allow'"),
        ({"max_wait": -1}, ValueError, "RATEKEEPER_MAX_WAIT: max_wait must be finite"),
        ({"refusal_response": 3}, TypeError, "RATEKEEPER_REFUSAL_RESPONSE must be a function"),
        ({"storage": "memcached://x"}, ValueError, "the storage URL's scheme must be one of"),
        ({"trusted_proxies": ["nowhere"]}, ValueError, "trusted must hold IP addresses"),
    ],
)
def test_bad_configuration_fails_at_init_app(config: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        RateLimiter(make_app(**config))


def test_bad_decorator_arguments_fail_at_import() -> None:
    limiter = RateLimiter()
    with pytest.raises(ValueError, match="route_limit\\(\\): "):
        limiter.route_limit("ten a minute")
    with pytest.raises(
        ValueError, match="route_limit\\(\\): cost must be from 0 to the capacity 5"
    ):
        limiter.route_limit("5/minute", cost=-1)
    with pytest.raises(ValueError, match="route_limit\\(\\): key must be 'ip'"):
        limiter.route_limit("5/minute", key="cookie")
    with pytest.raises(ValueError, match="shared_limit\\(\\): name must be 1-64 letters"):
        limiter.shared_limit("a b", "5/minute")
    with pytest.raises(TypeError, match="capacity goes with a rate string"):
        limiter.route_limit(("5/minute", 5), capacity=10)
    with pytest.raises(TypeError, match="unknown option 'defaults'"):
        RateLimiter(defaults="1/s")


def test_unknown_endpoints_and_clashing_shared_limits_fail_on_the_first_request() -> None:
    app = make_app(routes={"serach": "1/s"})
    app.testing = True  # the test client raises what the app raised
    app.add_url_rule("/search", "search", lambda: "ok")
    RateLimiter(app)
    with (
        app.test_client() as client,
        pytest.raises(ValueError, match="names 'serach', which is no"),
    ):
        client.get("/search")
    app = make_app()
    app.testing = True
    limiter = RateLimiter(app)
    app.add_url_rule("/a", "a", limiter.shared_limit("x", "1/s")(lambda: "a"))
    app.add_url_rule("/b", "b", limiter.shared_limit("x", "2/s")(lambda: "b"))
    with app.test_client() as client, pytest.raises(ValueError, match="given twice with different"):
        client.get("/a")
