"""Provider quota headers: each family read into quotas, totally; and what the client does with
them (on the manual clock, through the httpx sync transport)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper.integrations import _headers as module
from ratekeeper.integrations._headers import (
    Quota,
    fields,
    parse_duration,
    parse_ratelimit_policy,
    read_quotas,
)
from ratekeeper.integrations.httpx import SyncRateLimitTransport
from ratekeeper.testing import ManualClock

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
DATE = format_datetime(datetime.fromtimestamp(NOW, timezone.utc), usegmt=True)
HUGE = "9" * 5000
BOUND = 1e15


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_warned", set())


def quotas(headers: dict[str, str]) -> list[Quota]:
    return read_quotas(fields(headers.items()), now=NOW)


# -- each family -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # GitHub: epoch reset, measured from the response's Date
        (
            {
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": "4999",
                "X-RateLimit-Reset": str(int(NOW) + 3600),
                "X-RateLimit-Used": "1",
                "X-RateLimit-Resource": "core",
                "Date": DATE,
            },
            [Quota("x-ratelimit", "core", "requests", 5000, 4999, 3600.0)],
        ),
        # no Date: measured from now; a reset in the past is 0
        (
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) - 5)},
            [Quota("x-ratelimit", "default", "requests", None, 0, 0.0)],
        ),
        # delta seconds (small values), and Used without Remaining
        (
            {"X-RateLimit-Limit": "60", "X-RateLimit-Used": "60", "X-RateLimit-Reset": "42"},
            [Quota("x-ratelimit", "default", "requests", 60, 0, 42.0)],
        ),
        # Discord's Reset-After wins over Reset; Reddit's float remaining
        (
            {
                "X-RateLimit-Remaining": "599.0",
                "X-RateLimit-Reset": "1900000000",
                "X-RateLimit-Reset-After": "1.5",
            },
            [Quota("x-ratelimit", "default", "requests", None, 599, 1.5)],
        ),
        # OpenAI: both twins
        (
            {
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "59",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-limit-tokens": "150000",
                "x-ratelimit-remaining-tokens": "149984",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            [
                Quota("openai", "requests", "requests", 60, 59, 1.0),
                Quota("openai", "tokens", "tokens", 150000, 149984, 360.0),
            ],
        ),
        # Anthropic: RFC 3339 resets, four resources
        (
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": "2026-05-01T12:00:01Z",
                "anthropic-ratelimit-tokens-limit": "80000",
                "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-tokens-reset": "2026-05-01T14:00:30+02:00",
                "anthropic-ratelimit-input-tokens-remaining": "40000",
                "anthropic-ratelimit-input-tokens-reset": "2026-05-01T12:00:00.5Z",
                "anthropic-ratelimit-output-tokens-limit": "16000",
                "date": DATE,
            },
            [
                Quota("anthropic", "requests", "requests", 50, 49, 1.0),
                Quota("anthropic", "tokens", "tokens", 80000, 0, 30.0),
                Quota("anthropic", "input-tokens", "input-tokens", None, 40000, 0.5),
                Quota("anthropic", "output-tokens", "output-tokens", 16000, None, None),
            ],
        ),
        # IETF, with the policy giving the limit and the unit
        (
            {
                "RateLimit": '"burst";r=3;t=1, "bytes";r=100;t=60',
                "RateLimit-Policy": '"burst";q=10;w=1, "bytes";q=1000;w=60;qu="content-bytes"',
            },
            [
                Quota("ratelimit", "burst", "requests", 10, 3, 1),
                Quota("ratelimit", "bytes", "content-bytes", 1000, 100, 60),
            ],
        ),
        # the older IETF drafts
        (
            {
                "RateLimit-Limit": "100, 100;w=60",
                "RateLimit-Remaining": "7",
                "RateLimit-Reset": "9",
            },
            [Quota("ratelimit", "default", "requests", 100, 7, 9.0)],
        ),
        ({"Content-Type": "text/plain"}, []),
    ],
)
def test_each_family_is_read(headers: dict[str, str], expected: list[Quota]) -> None:
    assert quotas(headers) == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("3ns", 3e-9),
        (" 2m ", 120.0),
        ("", None),
        ("6m0", None),
        ("-1s", None),
        ("1d", None),
        ("s", None),
        ("1e3s", None),
        (HUGE + "s", None),
        ("999999999999999h", None),  # past 1e15 s
        ("1s" * 60, None),  # too long to be a duration
    ],
)
def test_parse_duration(value: str, seconds: float | None) -> None:
    result = parse_duration(value)
    assert result == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"default";q=100;w=60', [("default", 100, 60, None)]),
        ('"d";q=5;w=1;qu="requests";pk=:abc=:', [("d", 5, 1, "requests")]),
        ("100;w=60, 1000;w=3600", [("100", 100, 60, None), ("1000", 1000, 3600, None)]),
        ('"d";q=-1;w=1, "e";q=1', [("e", 1, None, None)]),
        (f'"d";q={HUGE}', []),
        ("", []),
    ],
)
def test_parse_ratelimit_policy(
    value: str, expected: list[tuple[str, int | None, int | None, str | None]]
) -> None:
    assert parse_ratelimit_policy(value) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"X-RateLimit-Remaining": HUGE, "X-RateLimit-Limit": "x"},
        {"X-RateLimit-Remaining": "-1"},
        {"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": HUGE},
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "soon"},
        {"anthropic-ratelimit-requests-remaining": "1", "anthropic-ratelimit-requests-reset": "x"},
        {
            "anthropic-ratelimit-requests-remaining": "1",
            "anthropic-ratelimit-requests-reset": "2026-13-01T00:00:00Z",
        },
        {
            "anthropic-ratelimit-requests-remaining": "1",
            "anthropic-ratelimit-requests-reset": "10000-01-01T00:00:00Z",
        },
        {"X-RateLimit-Remaining": "1", "X-RateLimit-Resource": "a b\x00c"},
        {"RateLimit-Policy": f'"d";q={HUGE}', "RateLimit": f'"d";r={HUGE}'},
    ],
)
def test_garbage_is_ignored_never_raised(headers: dict[str, str]) -> None:
    for quota in quotas(headers):
        assert quota.remaining is None or 0 <= quota.remaining < BOUND
        assert quota.reset is None or 0 <= quota.reset < BOUND


# -- properties: every family is total and bounded ---------------------------------------------

LATIN_1 = st.characters(codec="latin-1")
PIECES = st.sampled_from(
    [
        *'";,=qrtw-. 09hms:TZ+',
        HUGE,
        "ms",
        "2026-05-01T12:00:00",
        "GMT",
        "Mon, 01 Jan ",
        "1900000000",
    ]
)
VALUE = st.one_of(
    st.text(LATIN_1, max_size=40),
    st.lists(PIECES, max_size=12).map("".join),
    st.from_regex(r"\A[0-9]{0,20}(\.[0-9]{0,20})?[hms]{0,2}\Z"),
)
NAMES = [
    "date",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-reset-after",
    "x-ratelimit-used",
    "x-ratelimit-resource",
    *(
        f"x-ratelimit-{p}-{k}"
        for p in ("limit", "remaining", "reset")
        for k in ("requests", "tokens")
    ),
    *(
        f"anthropic-ratelimit-{k}-{p}"
        for k in ("requests", "tokens", "input-tokens", "output-tokens")
        for p in ("limit", "remaining", "reset")
    ),
]
FAST = settings(max_examples=150, deadline=1000)


@FAST
@given(st.lists(st.tuples(st.sampled_from(NAMES), VALUE), max_size=8), st.floats(0, 4e9))
def test_read_quotas_is_total(items: list[tuple[str, str]], now: float) -> None:
    for quota in read_quotas(fields(items), now=now):
        assert quota.family in ("ratelimit", "x-ratelimit", "openai", "anthropic")
        assert quota.resource
        for value in (quota.limit, quota.remaining, quota.reset):
            assert value is None or 0 <= value < BOUND


@FAST
@given(VALUE)
def test_parse_duration_is_total(value: str) -> None:
    result = parse_duration(value)
    assert result is None or 0 <= result < BOUND


@FAST
@given(VALUE)
def test_parse_ratelimit_policy_is_total(value: str) -> None:
    for name, quota, window, _ in parse_ratelimit_policy(value):
        assert name
        for number in (quota, window):
            assert number is None or 0 <= number < BOUND


# -- what the client does with them ------------------------------------------------------------


def transport(
    handler: Callable[[httpx.Request], httpx.Response], clock: ManualClock, **kwargs: object
) -> SyncRateLimitTransport:
    return SyncRateLimitTransport(
        httpx.MockTransport(handler),
        rate="100/s",
        capacity=10,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


class WindowServer:
    """A fixed window of ``limit`` requests per ``window`` seconds on the manual clock,
    answered with one family's headers; counts what it refused."""

    def __init__(self, clock: ManualClock, limit: int, window: float, family: str) -> None:
        self.clock, self.limit, self.window, self.family = clock, limit, window, family
        self.start = 0.0
        self.count = 0
        self.refused = 0
        self.sent: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.clock.time()
        if now >= self.start + self.window:
            self.start = now - (now - self.start) % self.window
            self.count = 0
        reset = self.start + self.window - now
        if self.count >= self.limit:
            self.refused += 1
            return httpx.Response(429, headers={"Retry-After": "1"})
        self.count += 1
        self.sent.append(now)
        left = str(self.limit - self.count)
        ms = math.ceil(reset * 1000)  # rounded up: a reset said early would be a lie
        if self.family == "openai":
            headers = {
                "x-ratelimit-remaining-requests": left,
                "x-ratelimit-reset-requests": f"{ms}ms",
            }
        else:
            headers = {"X-RateLimit-Remaining": left, "X-RateLimit-Reset-After": f"{ms / 1000}"}
        return httpx.Response(200, headers=headers)


@pytest.mark.parametrize("family", ["x-ratelimit", "openai"])
def test_the_client_sends_no_more_than_the_server_says_is_left(family: str) -> None:
    clock = ManualClock(auto_advance=True)
    server = WindowServer(clock, limit=5, window=1.0, family=family)
    with httpx.Client(transport=transport(server, clock)) as client:
        for _ in range(23):
            assert client.get("https://api/").status_code == 200
    assert server.refused == 0
    # a burst of five (the bucket holds ten), then nothing until the window resets
    assert server.sent[:6] == [0.0] * 5 + [pytest.approx(1.0, abs=0.011)]
    assert clock.time() == pytest.approx(4.0, abs=0.05)


def test_requests_in_flight_are_counted_against_what_is_left() -> None:
    clock = ManualClock()
    t = transport(lambda r: httpx.Response(200), clock)
    governor = t._governor
    state = governor.host("api")
    sent = [governor.admit(state, 1) for _ in range(3)]  # three sent together
    assert all(s is not None for s in sent)
    answer = {"x-ratelimit-remaining": ["4"], "x-ratelimit-reset": ["10"]}
    governor.heard(state, 200, answer, 0)  # the first answer: 4 left, 2 still in flight
    assert state.ledgers["x-ratelimit:default"].left == 2
    assert governor.admit(state, 1) is not None
    assert governor.admit(state, 1) is not None  # the last one: the bucket pauses
    assert t.buckets()["*"].full_in() >= 10.0
    assert governor.admit(state, 1) is None  # a request granted anyway waits again
    clock.advance(10.0)
    assert governor.admit(state, 1) is not None  # reset: free until the next answer


def test_a_spent_token_quota_pauses_until_its_reset() -> None:
    clock = ManualClock()
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7s"}
    t = transport(lambda r: httpx.Response(200, headers=headers), clock)
    with httpx.Client(transport=t) as client:
        client.get("https://api/")
    assert t.buckets()["*"].full_in() == pytest.approx(7.0 + 0.1, abs=0.011)


def test_a_quota_never_holds_the_client_past_max_pause() -> None:
    clock = ManualClock()
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(10**14)}
    t = transport(lambda r: httpx.Response(200, headers=headers), clock, max_pause=5.0)
    with httpx.Client(transport=t) as client:
        client.get("https://api/")
    assert t.buckets()["*"].full_in() <= 5.0 + 0.1 + 0.011
    until = t._governor.host("api").ledgers["x-ratelimit:default"].until
    assert until is not None
    assert until <= 5 * 10**9


def test_more_left_than_the_rate_allows_changes_nothing() -> None:
    clock = ManualClock(auto_advance=True)
    headers = {"X-RateLimit-Remaining": "4000", "X-RateLimit-Reset": "3600"}
    t = SyncRateLimitTransport(
        httpx.MockTransport(lambda r: httpx.Response(200, headers=headers)),
        rate="10/s",
        capacity=1,
        clock=clock,
    )
    with httpx.Client(transport=t) as client:
        for _ in range(11):
            client.get("https://api/")
    assert clock.time() == pytest.approx(1.0)  # never more than the configured rate


def test_a_refilling_quota_holds_the_client_to_its_refill_rate() -> None:
    """OpenAI's quotas refill steadily: 0 of 60 left, whole again in 6 s, is one a tenth of
    a second, not nothing for 6 s."""
    clock = ManualClock(auto_advance=True)
    sent: list[float] = []

    def provider(request: httpx.Request) -> httpx.Response:
        sent.append(clock.time())
        headers = {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6s",
        }
        return httpx.Response(200, headers=headers)

    with httpx.Client(transport=transport(provider, clock)) as client:
        for _ in range(6):
            client.get("https://api/")
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps == [pytest.approx(0.1, abs=0.011)] * 5


def test_an_answer_to_an_older_request_does_not_undo_a_newer_one() -> None:
    clock = ManualClock()
    t = transport(lambda r: httpx.Response(200), clock)
    governor = t._governor
    state = governor.host("api")
    older = governor.admit(state, 1)
    clock.advance(0.001)
    newer = governor.admit(state, 1)
    assert older is not None
    assert newer is not None
    quota = {"x-ratelimit-limit-requests": ["100"], "x-ratelimit-reset-requests": ["60s"]}
    governor.heard(state, 200, {**quota, "x-ratelimit-remaining-requests": ["3"]}, newer)
    # 3 left, less the older request still in flight
    assert state.ledgers["openai:requests"].left == 2
    governor.heard(state, 200, {**quota, "x-ratelimit-remaining-requests": ["9"]}, older)
    assert state.ledgers["openai:requests"].left == 2
