"""The shared core of the web front doors (``integrations/_web.py``): tables, no I/O."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from ratekeeper import Limit, Verdict
from ratekeeper.integrations._web import (
    SECRET_ENV,
    UNKEYED,
    Gate,
    HeaderKey,
    RateLimitHeaders,
    Refusal,
    Response,
    RouteTable,
    TrustedProxies,
    bounded_key,
    check_cost,
    check_header_mode,
    client_key,
    hash_secret,
    json_refusal,
    secret_bytes,
)

SECOND = 1_000_000_000
log = logging.getLogger("ratekeeper.test_web")


@dataclass
class View:
    """A RequestView filled by hand, as a front door fills one."""

    method: str = "GET"
    path: str = "/"
    client: str | None = "10.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def verdict(
    granted: bool, wait_s: float, available: tuple[float, ...], full_in_s: tuple[float, ...]
) -> Verdict:
    return Verdict(
        granted,
        int(wait_s * SECOND),
        None,
        available,
        tuple(int(s * SECOND) for s in full_in_s),
    )


# -- keys ----------------------------------------------------------------------------------------


def test_credentials_are_hashed_with_a_keyed_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    key = HeaderKey("X-API-Key")
    alpha = key.of(View(headers={"x-api-key": "sk-live-alpha"}))
    assert alpha is not None
    assert alpha.startswith("x-api-key:")
    assert "sk-live" not in alpha
    assert len(alpha) == len("x-api-key:") + 32
    assert alpha == HeaderKey("x-api-key").of(View(headers={"x-api-key": "sk-live-alpha"}))
    assert alpha != key.of(View(headers={"x-api-key": "sk-live-beta"}))
    # Another secret, another key: nobody without the secret can test a guess.
    other = HeaderKey("X-API-Key", secret="s3cret").of(View(headers={"x-api-key": "sk-live-alpha"}))
    assert other not in (alpha, None)
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    assert HeaderKey("X-API-Key").of(View(headers={"x-api-key": "sk-live-alpha"})) == other


def test_hashing_can_be_turned_off_for_values_that_are_not_secret() -> None:
    key = HeaderKey("X-Tenant", hashed=False)
    assert key.of(View(headers={"x-tenant": "acme"})) == "x-tenant:acme"
    assert key.of(View()) is None
    assert "no x-tenant header" in str(key.missing())


def test_hash_secret_is_hmac_sha256_truncated() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"value", hashlib.sha256).hexdigest()[:32]
    assert hash_secret("value", b"k") == expected


@pytest.mark.parametrize(
    ("secret", "error"), [(b"", ValueError), ("", ValueError), (42, TypeError)]
)
def test_bad_secrets(secret: Any, error: type) -> None:
    with pytest.raises(error, match="secret"):
        secret_bytes(secret)


@pytest.mark.parametrize("name", ["", "x api key", None, "clé"])
def test_bad_header_names(name: Any) -> None:
    with pytest.raises(ValueError, match="header name"):
        HeaderKey(name)


def test_client_key() -> None:
    assert client_key(View(client="203.0.113.9")) == "203.0.113.9"
    with pytest.raises(LookupError, match="no client address"):
        client_key(View(client=None))


def test_trusted_proxies_take_the_first_untrusted_hop_from_the_right() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "192.168.1.1"])
    assert proxies.client("203.0.113.9", "1.2.3.4") == "203.0.113.9"  # not from a proxy
    assert proxies.client("10.1.2.3", "198.51.100.7") == "198.51.100.7"
    assert proxies.client("10.1.2.3", "6.6.6.6, 198.51.100.7") == "198.51.100.7"
    assert proxies.client("10.1.2.3", "6.6.6.6, 198.51.100.7, 192.168.1.1") == "198.51.100.7"
    assert proxies.client("10.1.2.3", "10.9.9.9") == "10.1.2.3"  # only proxies: from inside
    assert proxies.client("10.1.2.3", None) == "10.1.2.3"
    assert proxies.client("10.1.2.3", " , garbage") == "garbage"  # not an IP: untrusted
    assert TrustedProxies("10.0.0.1").trusts("10.0.0.1")
    with pytest.raises(ValueError, match="trusted"):
        TrustedProxies(["not an address"])


def test_bounded_key() -> None:
    assert bounded_key("short", 16) == "short"
    long = bounded_key("k" * 1000, 16)
    assert long.startswith("sha256:") and len(long) == 71
    assert long != bounded_key("k" * 1001, 16)


# -- routes and costs ----------------------------------------------------------------------------


ROUTES = RouteTable(
    {
        "/items/special": "exact",
        "/items/{item_id}": "template",
        "DELETE /items/{item_id}": "delete-template",
        "/files/{rest:path}": "path-template",
        "/static/*": "prefix",
        "/static/big/*": "longer prefix",
        "POST /static/*": "post prefix",
        "POST /upload": "post",
        "/upload": "any upload",
    }
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/items/special", "exact"),
        ("GET", "/items/42", "template"),
        ("DELETE", "/items/42", "delete-template"),
        ("GET", "/items/42/more", None),  # a parameter is one segment
        ("GET", "/items/", None),
        ("GET", "/files/a/b/c.txt", "path-template"),
        ("GET", "/static/app.js", "prefix"),
        ("GET", "/static/big/movie.mp4", "longer prefix"),
        ("POST", "/static/x", "post prefix"),
        ("POST", "/upload", "post"),
        ("GET", "/upload", "any upload"),
        ("GET", "/other", None),
    ],
)
def test_route_table_precedence(method: str, path: str, expected: str | None) -> None:
    assert ROUTES.find(method, path) == expected


def test_unknown_routes_are_named() -> None:
    app = ["/", "/items/{id}", "/static/{path:path}", "/upload", "/users/{user_id:int}/orders"]
    table = RouteTable(
        {
            "/items/{item_id}": 1,  # same template, another parameter name
            "/items/7": 1,  # a concrete path of a template
            "/static/*": 0,
            "POST /upload": 1,
            "/users/{uid}/orders": 1,  # a converter in the app's template
            "/itemz/{item_id}": 1,
            "/nothing/*": 1,
        }
    )
    assert table.unknown(app) == ["/itemz/{item_id}", "/nothing/*"]


@pytest.mark.parametrize("pattern", ["items", "GET", "1 /x", "/a*/b", 42])
def test_malformed_route_patterns(pattern: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="route pattern"):
        RouteTable({pattern: 1})


LIMITS = {"minute": Limit("10/minute", 10), "hour": Limit("100/hour", 100)}


def test_check_cost() -> None:
    assert check_cost(3, LIMITS, "x") == 3
    assert check_cost({"hour": 5}, LIMITS, "x") == {"hour": 5}
    assert check_cost({"hour": 0}, LIMITS, "x") == 0  # takes nothing: exempt
    with pytest.raises(ValueError, match=r"cost of '/x' must be from 0 to the capacity 10"):
        check_cost(-1, LIMITS, "the cost of '/x'")
    with pytest.raises(ValueError, match="capacity 10"):
        check_cost(11, LIMITS, "x")
    with pytest.raises(ValueError, match=r"names no limit \['day'\]"):
        check_cost({"day": 1}, LIMITS, "x")
    with pytest.raises(TypeError, match="int"):
        check_cost(1.5, LIMITS, "x")


# -- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (False, ("ietf", False)),
        (True, ("ietf", True)),
        (None, (None, False)),
        ("ietf", ("ietf", True)),
        ("x-ratelimit", ("x-ratelimit", True)),
        ("both", ("both", True)),
    ],
)
def test_header_modes(value: Any, expected: tuple[Any, bool]) -> None:
    assert check_header_mode(value) == expected


@pytest.mark.parametrize("value", ["IETF", "x-rate-limit", "draft", 1, 0])
def test_bad_header_modes(value: Any) -> None:
    with pytest.raises(ValueError, match="headers must be"):
        check_header_mode(value)


ACCEPTED = verdict(True, 0, (7.6, 95.0), (14.5, 180.0))
REFUSED = verdict(False, 20.2, (0.0, 40.0), (60.0, 2160.0))


def test_ietf_headers() -> None:
    headers = RateLimitHeaders(LIMITS, "ietf")
    assert headers.accepted(ACCEPTED, 1000.0) == [
        ("ratelimit-policy", '"minute";q=10;w=60, "hour";q=100;w=3600'),
        ("ratelimit", '"minute";r=7;t=15, "hour";r=95;t=180'),
    ]
    # a refusal: Retry-After first; t never beyond it
    assert headers.refusal(REFUSED, 1000.0) == [
        ("retry-after", "21"),
        ("ratelimit-policy", '"minute";q=10;w=60, "hour";q=100;w=3600'),
        ("ratelimit", '"minute";r=0;t=21, "hour";r=40;t=21'),
    ]


def test_x_ratelimit_headers_speak_for_the_limit_with_fewest_tokens_left() -> None:
    headers = RateLimitHeaders(LIMITS, "x-ratelimit")
    assert headers.accepted(ACCEPTED, 1000.2) == [
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "7"),
        ("x-ratelimit-reset", "1016"),  # Unix time, rounded up
    ]
    assert headers.refusal(REFUSED, 1000.0) == [
        ("retry-after", "21"),
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1021"),
    ]


def test_both_and_none() -> None:
    both = RateLimitHeaders(LIMITS, "both").accepted(ACCEPTED, 0.0)
    assert [name for name, _ in both] == [
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ]
    none = RateLimitHeaders(LIMITS, None)
    assert none.accepted(ACCEPTED, 0.0) == []
    assert none.refusal(REFUSED, 0.0) == [("retry-after", "21")]  # Retry-After always


def test_policy_names_are_made_unique_against_those_already_sent() -> None:
    one = {"default": Limit("20/s", 2)}
    headers = RateLimitHeaders(one, "ietf")
    assert headers.unique([]) is headers
    assert headers.unique([("ratelimit-policy", '"other";q=5;w=60')]) is headers
    taken = [("RateLimit-Policy", '"default";q=5;w=60, "default-2";q=1;w=1')]
    renamed = headers.unique(taken).accepted(verdict(True, 0, (1.0,), (0.05,)), 0.0)
    assert renamed == [
        ("ratelimit-policy", '"default-3";q=2;w=1'),
        ("ratelimit", '"default-3";r=1;t=1'),
    ]


# -- refusals ------------------------------------------------------------------------------------


def test_the_default_refusal_is_json_with_the_headers() -> None:
    refusal = Refusal(429, 21, (("retry-after", "21"),), "Too Many Requests")
    response = json_refusal(None, refusal)
    assert response.status == 429
    assert json.loads(response.body) == {"detail": "Too Many Requests", "retry_after": 21}
    assert response.headers == (("retry-after", "21"), ("content-type", "application/json"))


def test_response_with_headers_adds_only_what_is_missing() -> None:
    response = Response(429, (("Retry-After", "5"),), b"no")
    merged = response.with_headers([("retry-after", "21"), ("ratelimit", "x")])
    assert merged.headers == (("Retry-After", "5"), ("ratelimit", "x"))
    assert response.with_headers([("retry-after", "1")]) is response


# -- the gate ------------------------------------------------------------------------------------


def gate(**options: Any) -> Gate:
    options.setdefault("key", lambda request: request.client)
    return Gate(LIMITS, logger=log, log_interval=0, **options)


def test_gate_costs() -> None:
    g = gate(costs={"/items/{item_id}": 3, "/export": {"hour": 50}}, exempt=["/health"])
    assert g.fixed_cost is None
    assert g.cost(None, "GET", "/items/9") == 3
    assert g.cost(None, "GET", "/export") == {"hour": 50}
    assert g.cost(None, "GET", "/health") == 0
    assert g.cost(None, "GET", "/else") == 1
    assert gate().fixed_cost == 1
    by_function = gate(costs=lambda request: 2)
    assert by_function.cost(None, "GET", "/") == 2
    with pytest.raises(ValueError, match="capacity"):
        gate(costs=lambda request: 11).cost(None, "GET", "/")


def test_gate_keys_and_key_failures(caplog: pytest.LogCaptureFixture) -> None:
    assert gate().key(View(), "GET", "/") == "10.0.0.1"
    assert gate(key=lambda r: None).key(View(), "GET", "/") is None
    assert gate(key=lambda r: "k" * 200).key(View(), "GET", "/").startswith("sha256:")  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert gate(key=lambda r: 1 / 0).key(View(), "GET", "/a") == UNKEYED
        assert gate(key=lambda r: 5, on_key_error="allow").key(View(), "GET", "/b") is None
    assert "key function failed for GET /a: ZeroDivisionError" in caplog.records[0].getMessage()
    assert "returned int 5" in caplog.records[1].getMessage()
    assert "letting it through" in caplog.records[1].getMessage()


def test_gate_refusals_and_failures(caplog: pytest.LogCaptureFixture) -> None:
    g = gate(headers="x-ratelimit")
    refusal = g.refusal(REFUSED)
    assert (refusal.status, refusal.retry_after, refusal.limits) == (429, 21, ("minute", "hour"))
    assert [n for n, _ in refusal.headers][:2] == ["retry-after", "x-ratelimit-limit"]
    with caplog.at_level(logging.ERROR, logger=log.name):
        failed = g.failed("the limiter", ConnectionError("down"), "GET", "/")
        assert gate(on_error="allow").failed("the limiter", ValueError(), "GET", "/") is None
    assert failed is not None
    assert (failed.status, failed.headers, failed.detail) == (
        503,
        (("retry-after", "1"),),
        "Service Unavailable",
    )
    assert "answering 503" in caplog.text
    assert "letting the request through" in caplog.text


def test_gate_hooks(caplog: pytest.LogCaptureFixture) -> None:
    def teapot(request: Any, refusal: Refusal) -> Response:
        return Response(418, (), f"wait {refusal.retry_after}s".encode())

    response = gate(refusal_response=teapot).respond(None, gate().refusal(REFUSED))
    assert (response.status, response.body) == (418, b"wait 21s")
    assert dict(response.headers)["retry-after"] == "21"  # added: Retry-After is always sent

    def broken(request: Any, refusal: Refusal) -> Response:
        raise RuntimeError("oops")

    with caplog.at_level(logging.ERROR, logger=log.name):
        fallback = gate(refusal_response=broken).respond(None, gate().refusal(REFUSED))
    assert fallback.status == 429 and b"Too Many Requests" in fallback.body
    assert "refusal_response hook failed" in caplog.text


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"costs": {"/x": -1}}, ValueError, "from 0"),
        ({"costs": {"/x": "1/s"}}, TypeError, "int"),
        ({"costs": 5}, TypeError, "mapping or a function"),
        ({"exempt": "/health"}, TypeError, "list of route patterns"),
        ({"headers": "draft"}, ValueError, "headers must be"),
        ({"default_cost": 11}, ValueError, "default_cost"),
        ({"on_error": "ignore"}, ValueError, "on_error"),
        ({"on_key_error": "deny"}, ValueError, "on_key_error"),
        ({"key": "client"}, TypeError, "key"),
        ({"refusal_response": "json"}, TypeError, "refusal_response"),
        ({"max_key_length": 8}, ValueError, "max_key_length"),
    ],
)
def test_bad_options_fail_at_start_up(options: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        gate(**options)


def test_check_routes_names_the_unknown_ones() -> None:
    g = gate(costs={"/items/{item_id}": 2}, exempt=["/healthz"])
    g.check_routes(["/items/{id}", "/healthz"])
    with pytest.raises(ValueError, match=r"routes the app does not have: \['/healthz'\]"):
        g.check_routes(["/items/{id}", "/health"])


# -- what clients read -----------------------------------------------------------------------------


@pytest.mark.parametrize("verdict_", [ACCEPTED, REFUSED])
def test_the_clients_read_back_what_the_servers_send(verdict_: Verdict) -> None:
    """Our headers, read by the client adapters' parser: the same numbers come back."""
    from ratekeeper.integrations._headers import fields, read_quotas

    now = 1_765_000_000.0  # a Unix time: X-RateLimit-Reset is one
    sent = RateLimitHeaders(LIMITS, "both").accepted(verdict_, now)
    quotas = read_quotas(fields(sent), now)
    ietf = {q.resource: q for q in quotas if q.family == "ratelimit"}
    cap = None if verdict_.granted else -(-verdict_.wait_ns // SECOND)
    for (name, limit), tokens, full_in in zip(
        LIMITS.items(), verdict_.available, verdict_.full_in_ns, strict=True
    ):
        reset = -(-full_in // SECOND)
        if cap is not None:
            reset = min(reset, max(1, cap))
        assert (ietf[name].limit, ietf[name].remaining, ietf[name].reset) == (
            limit.capacity,
            int(tokens),
            reset,
        )
    (x,) = [q for q in quotas if q.family == "x-ratelimit"]
    assert (x.limit, x.remaining) == (10, ietf["minute"].remaining)
    assert x.reset == ietf["minute"].reset  # an epoch time, read back as seconds from now
