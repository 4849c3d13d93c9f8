"""The Django middleware and decorator under a real WSGI server (waitress, in a thread).

Settings checked when the middleware loads (ImproperlyConfigured naming the setting), keys
from the request (user, header, URL argument), decorators on function and class-based views
with and without the middleware, the refusal hook, and failures that are never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import django
import httpx
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import override_settings
from django.urls import include, path
from django.utils.decorators import method_decorator
from django.utils.functional import empty
from django.views import View

from ratekeeper.integrations.django import exempt, route_limit, shared_limit
from ratekeeper.integrations.wsgi import Refusal

from ._wsgi_server import serve_wsgi

MIDDLEWARE = "ratekeeper.integrations.django.RateLimitMiddleware"


class FakeUser:
    is_authenticated = True

    def __init__(self, pk: str) -> None:
        self.pk = pk


def sign_in(get_response: Any) -> Any:
    """A stand-in for AuthenticationMiddleware: the X-User header names the user."""

    def middleware(request: HttpRequest) -> Any:
        name = request.headers.get("x-user")
        if name:
            request.user = FakeUser(name)  # type: ignore[assignment]
        return get_response(request)

    return middleware


def ok(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    return HttpResponse("ok")


@route_limit("1/minute", key="user")
def me(request: HttpRequest) -> HttpResponse:
    return HttpResponse("me")


@route_limit("1/minute", capacity=3)
@shared_limit("burst", "1/minute", key=lambda request: request.GET.get("k"))
def stacked(request: HttpRequest) -> HttpResponse:
    return HttpResponse("stacked")


@route_limit("2/minute;3/hour")
def multi(request: HttpRequest) -> HttpResponse:
    return HttpResponse("multi")


class Items(View):
    @method_decorator(route_limit("2/minute", key="arg:shop"))
    def get(self, request: HttpRequest, shop: str) -> HttpResponse:
        return HttpResponse(shop)

    def post(self, request: HttpRequest, shop: str) -> HttpResponse:
        return HttpResponse("posted")


@exempt
def free(request: HttpRequest) -> HttpResponse:
    return HttpResponse("free")


shop_patterns = [path("items/", Items.as_view(), name="items")]

urlpatterns = [
    path("", ok, name="index"),
    path("heavy/", ok, name="heavy"),
    path("light/<int:n>/", ok, name="light"),
    path("me/", me),
    path("stacked/", stacked),
    path("free/", free),
    path("multi/", multi),
    path("shops/<slug:shop>/", include((shop_patterns, "shop"))),
]


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> Iterator[None]:
    """Configure Django for this module, and leave it unconfigured again after it.

    (A documentation block configures Django for itself, as a script would; settings can be
    configured once per process, so whichever runs first configures and this module only
    overrides what it needs.)
    """
    if settings.configured:
        yield
        return
    settings.configure(SECRET_KEY="tests", INSTALLED_APPS=[], DATABASES={})
    django.setup()
    try:
        yield
    finally:
        settings._wrapped = empty


@pytest.fixture
def serve() -> Iterator[Any]:
    """Serve this URLconf with the given RATEKEEPER settings and middleware."""
    overrides: list[Any] = []

    def start(ratekeeper: dict[str, Any], middleware: bool = True) -> Any:
        chain = [f"{__name__}.sign_in", *([MIDDLEWARE] if middleware else [])]
        override = override_settings(
            RATEKEEPER=ratekeeper,
            MIDDLEWARE=chain,
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["127.0.0.1"],
        )
        override.enable()
        overrides.append(override)
        return serve_wsgi(WSGIHandler())

    yield start
    for override in reversed(overrides):
        override.disable()


def codes(client: httpx.Client, *paths: str, **options: Any) -> list[int]:
    return [client.get(path, **options).status_code for path in paths]


def test_default_routes_costs_and_exemptions_by_route_and_url_name(serve: Any) -> None:
    ratekeeper = {
        "DEFAULT": ("1/minute", 4),
        "ROUTES": {"light/<int:n>/": "2/minute"},
        "COSTS": {"heavy": 2},
        "EXEMPT": [""],
    }
    with serve(ratekeeper) as url, httpx.Client(base_url=url) as client:
        assert codes(client, "/light/1/", "/light/2/", "/light/3/") == [200, 200, 429]
        assert codes(client, "/heavy/", "/heavy/", "/heavy/") == [200, 200, 429]
        assert codes(client, "/", "/", "/free/", "/free/") == [200, 200, 200, 200]
        assert client.get("/nowhere/").status_code == 404  # no view: not limited
        refused = client.get("/light/4/")
        assert refused.json() == {"detail": "Too Many Requests", "retry_after": 30}
        assert refused.headers["ratelimit-policy"] == '"light";q=2;w=60'


def test_decorators_with_keys_from_the_user_a_header_and_a_url_argument(serve: Any) -> None:
    with serve({"HEADERS": True}) as url, httpx.Client(base_url=url) as client:
        ann, bob = {"x-user": "ann"}, {"x-user": "bob"}
        assert codes(client, "/me/", "/me/", headers=ann) == [200, 429]
        assert codes(client, "/me/", headers=bob) == [200]
        policy = client.get("/me/").headers["ratelimit-policy"]  # anonymous: by address
        assert policy == f'"{__name__}.me";q=1;w=60'
        assert codes(client, "/shops/a/items/", "/shops/a/items/", "/shops/a/items/") == [
            200,
            200,
            429,
        ]
        assert client.post("/shops/a/items/").status_code == 200  # post() is not limited
        assert codes(client, "/shops/b/items/") == [200]


def test_stacked_limits_all_apply_and_a_refusal_takes_nothing(serve: Any) -> None:
    with serve({"HEADERS": "both"}) as url, httpx.Client(base_url=url) as client:
        first = client.get("/stacked/?k=a")
        assert codes(client, "/stacked/?k=a", "/stacked/?k=b", "/stacked/?k=c") == [429, 200, 200]
        assert codes(client, "/stacked/?k=d") == [429]  # 3 granted, the refusal took nothing
    name = f"{__name__}.stacked"
    assert first.headers["ratelimit-policy"] == f'"{name}";q=3;w=180, "burst";q=1;w=60'
    assert first.headers["x-ratelimit-remaining"] == "0"


def test_several_rates_in_one_string_all_apply(serve: Any) -> None:
    ratekeeper = {
        "HEADERS": "ietf",
        "DEFAULT": "3/minute;2/hour",
        "ROUTES": {"heavy/": "1/s;2/day"},
    }
    with serve(ratekeeper) as url, httpx.Client(base_url=url) as client:
        default = client.get("/")
        # the hour's 2 refuse the default's third; the minute's 2 the view's; 1/s the route's
        assert codes(client, "/", "/") == [200, 429]
        view = client.get("/multi/")
        assert codes(client, "/multi/", "/multi/", "/heavy/", "/heavy/") == [200, 429, 200, 429]
    assert default.headers["ratelimit-policy"] == (
        '"default.minute";q=3;w=60, "default.hour";q=2;w=3600'
    )
    name = f"{__name__}.multi"
    assert view.headers["ratelimit-policy"] == f'"{name}.minute";q=2;w=60, "{name}.hour";q=3;w=3600'
    with pytest.raises(TypeError, match="capacity goes with one rate"):
        route_limit("1/second;2/day", capacity=5)


def test_decorators_work_without_the_middleware(serve: Any) -> None:
    with serve({"DEFAULT": "1/minute"}, middleware=False) as url, httpx.Client(base_url=url) as c:
        assert codes(c, "/", "/", "/") == [200, 200, 200]  # no middleware: no default limit
        assert codes(c, "/me/", "/me/") == [200, 429]


def test_a_key_function_that_raises_is_logged_never_a_500(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "ratekeeper.django"):
        with serve({"DEFAULT": "2/minute", "KEY": f"{__name__}.broken_key"}) as url:
            assert [httpx.get(url).status_code for _ in range(3)] == [200, 200, 429]
    assert "the key function failed for GET /: RuntimeError('no tenant')" in caplog.text


def broken_key(request: HttpRequest) -> str:
    raise RuntimeError("no tenant")


def slow_down(request: HttpRequest, refusal: Refusal) -> JsonResponse:
    return JsonResponse({"error": "slow down", "wait": refusal.retry_after}, status=429)


def test_a_refusal_hook_by_dotted_path(serve: Any) -> None:
    ratekeeper = {"DEFAULT": "1/minute", "REFUSAL_RESPONSE": f"{__name__}.slow_down"}
    with serve(ratekeeper) as url:
        httpx.get(url)
        refused = httpx.get(url)
    assert refused.json() == {"error": "slow down", "wait": 60}
    assert refused.headers["retry-after"] == "60"  # added to the hook's response


def test_disabled(serve: Any) -> None:
    with serve({"DEFAULT": "1/minute", "ENABLED": False}) as url:
        assert [httpx.get(f"{url}/me/").status_code for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize(
    ("ratekeeper", "message"),
    [
        ({"DEFAULT": "5 per fortnight"}, r"RATEKEEPER\['DEFAULT'\]: cannot read the rate"),
        ({"DEFALT": "5/minute"}, r"unknown keys \['DEFALT'\]"),
        ({"HEADERS": "draft"}, r"\['HEADERS'\]: headers must be True, False, None, 'ietf'"),
        ({"KEY": "cookie:x"}, r"RATEKEEPER\['KEY'\] must be 'ip', 'header:<name>'"),
        ({"KEY": "nowhere.key"}, r"RATEKEEPER\['KEY'\]: cannot import 'nowhere.key'"),
        ({"DEFAULT": "1/s", "COSTS": {"heavy": -1}}, r"\['COSTS'\]\['heavy'\] must be from 0"),
        ({"ROUTES": {"heavy/": {"rate": "1/s", "cost": 2}}}, "capacity 1"),
        ({"ROUTES": {"hevy/": "1/s"}}, r"names \['hevy/'\], which are no URL pattern"),
        ({"EXEMPT": ["shop:itms"]}, r"names \['shop:itms'\]"),
        ({"ON_ERROR": "open"}, r"\['ON_ERROR'\] must be 'deny' or 'allow'"),
        ({"MAX_WAIT": -1}, r"\['MAX_WAIT'\]: max_wait must be finite seconds >= 0"),
        ({"TRUSTED_PROXIES": ["nowhere"]}, "trusted must hold IP addresses"),
        ({"STORAGE": "memcached://x"}, "the storage URL's scheme must be one of"),
        (
            {"ROUTES": {"heavy": {"rate": "1/s", "name": "x"}, "": {"rate": "2/s", "name": "x"}}},
            "the limit named 'x' is given twice with different rates",
        ),
    ],
)
def test_bad_settings_fail_when_the_middleware_loads(
    serve: Any, ratekeeper: dict[str, Any], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        serve(ratekeeper)


def test_bad_decorator_arguments_fail_at_import() -> None:
    with pytest.raises(ValueError, match="route_limit\\(\\): "):
        route_limit("ten a minute")
    with pytest.raises(
        ValueError, match="route_limit\\(\\): cost must be from 0 to the capacity 5"
    ):
        route_limit("5/minute", cost=6)
    with pytest.raises(ValueError, match="route_limit\\(\\): key must be 'ip'"):
        route_limit("5/minute", key="cookie")
