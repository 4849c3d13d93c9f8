"""The header parsers are total: garbage and huge values are ignored (and logged), never raised.

What a server sends is remote input: nothing in it may raise into the caller or stall the
client beyond ``max_pause``.
"""

from __future__ import annotations

import logging
from datetime import timezone
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratekeeper.integrations import _headers as module
from ratekeeper.integrations._headers import fields, read_quotas
from ratekeeper.integrations.httpx import (
    RateLimitTransport,
    SyncRateLimitTransport,
    parse_ratelimit,
    parse_retry_after,
)
from ratekeeper.testing import ManualClock

HUGE = "9" * 5000  # past Python's 4300-digit limit for int(str)
BOUND = 1e15
FAST = settings(max_examples=60, deadline=500)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_warned", set())


def sync_transport(status: int, headers: dict[str, str]) -> SyncRateLimitTransport:
    return SyncRateLimitTransport(
        httpx.MockTransport(lambda r: httpx.Response(status, headers=headers)),
        rate="100/s",
        capacity=1,
        clock=ManualClock(),
    )


# -- the reported break, and its neighbours -----------------------------------------------

# (status, headers, the pause that follows: default_pause 1 s, max_pause 60 s)
HOSTILE = [
    (429, {"RateLimit": f'"d";r=0;t={HUGE}'}, 1.0),  # ignored: default_pause
    (429, {"RateLimit": f'"d";r={HUGE};t=5'}, 1.0),
    (429, {"RateLimit": f'"d";r=0;t={HUGE}, "e";r=0;t=5'}, 5.0),  # the good item still counts
    (429, {"RateLimit": '"d";r=0;t=999999999999999'}, 60.0),  # 15 digits: capped
    (429, {"RateLimit": '"d";r=0;t=9999999999999999'}, 1.0),  # 16: out of range
    (429, {"Retry-After": HUGE}, 1.0),
    (429, {"Retry-After": HUGE + ".5"}, 1.0),
    (429, {"Retry-After": "99999999999999"}, 60.0),
    (429, {"Retry-After": "1." + HUGE}, 2.0),  # 1.999...: a long fraction is fine
    (429, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, 60.0),
    (429, {"Retry-After": "Sat, 01 Jan 10000 00:00:00 GMT"}, 1.0),
    (429, {"Retry-After": f"Mon, 01 Jan {HUGE} 00:00:00 GMT"}, 1.0),
    (429, {"Retry-After": "Mon, 01 Jan 0000 00:00:00 GMT"}, 0.0),  # read as 2000: past
    (200, {"RateLimit-Remaining": "0", "RateLimit-Reset": HUGE}, 0.0),
    (200, {"RateLimit-Remaining": HUGE, "RateLimit-Reset": "5"}, 0.0),
    (200, {"RateLimit-Remaining": "0", "RateLimit-Reset": "99999999999999"}, 60.0),
    (503, {"Retry-After": HUGE, "RateLimit": f'"d";r=0;t={HUGE}'}, 0.0),
]


@pytest.mark.parametrize(("status", "headers", "pause"), HOSTILE)
def test_hostile_headers_are_ignored_or_capped_sync(
    status: int, headers: dict[str, str], pause: float
) -> None:
    transport = sync_transport(status, headers)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://x/").status_code == status
    next_token = transport.buckets()["*"].full_in()
    assert next_token == pytest.approx(max(pause, 0.01), abs=0.011)


@pytest.mark.parametrize(("status", "headers", "pause"), HOSTILE)
async def test_hostile_headers_are_ignored_or_capped_async(
    status: int, headers: dict[str, str], pause: float
) -> None:
    transport = RateLimitTransport(
        httpx.MockTransport(lambda r: httpx.Response(status, headers=headers)),
        rate="100/s",
        capacity=1,
        clock=ManualClock(),
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("https://x/")).status_code == status
    next_token = transport.buckets()["*"].full_in_nowait()
    assert next_token == pytest.approx(max(pause, 0.01), abs=0.011)


def test_ignored_values_warn_once_per_header(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ratekeeper.headers")
    for _ in range(3):
        parse_ratelimit(f'"d";r=0;t={HUGE}')
        parse_retry_after("soon")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(r.args[1] for r in warnings) == ["RateLimit", "Retry-After"]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 4
    assert all(len(r.getMessage()) < 300 for r in caplog.records)  # the value is clipped


def test_rfc_8941_integers_of_15_digits_still_parse() -> None:
    assert parse_ratelimit('"d";r=0;t=999999999999999') == [("d", 0, 999_999_999_999_999)]
    assert parse_ratelimit('"d";r=000000000000000000001;t=1') == []
    assert parse_retry_after("000000000000005") == 5.0


# -- properties: every parser is total and bounded ----------------------------------------

LATIN_1 = st.characters(codec="latin-1")
FRAGMENTS = st.sampled_from(
    ['"', ";", ",", "=", "r", "t", "-", ".", " ", "0", "9", HUGE, "GMT", "Mon, 01 Jan "]
)
HEADER = st.one_of(
    st.text(LATIN_1, max_size=40),
    st.lists(FRAGMENTS, max_size=12).map("".join),
    st.from_regex(r'\A"?[a-z]{0,3}"?(;[rt]=-?[0-9]{0,20})*(, ?)?\Z'),
)
DATES = st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: format_datetime(d, True))


def bounded(value: float | None) -> bool:
    return value is None or 0 <= value < BOUND


@FAST
@given(st.one_of(HEADER, DATES), st.one_of(st.none(), HEADER, DATES))
def test_parse_retry_after_is_total(value: str, date: str | None) -> None:
    assert bounded(parse_retry_after(value, date, now=0.0))


@FAST
@given(HEADER)
def test_parse_ratelimit_is_total(value: str) -> None:
    for name, remaining, reset in parse_ratelimit(value):
        assert name
        assert bounded(remaining)
        assert bounded(reset)


HEADERS = st.dictionaries(
    st.sampled_from(["Retry-After", "Date", "RateLimit", "RateLimit-Remaining", "RateLimit-Reset"]),
    st.one_of(HEADER, DATES),
)


@FAST
@given(st.sampled_from([200, 429, 503]), HEADERS)
def test_no_response_raises_or_pauses_past_max_pause(status: int, headers: dict[str, str]) -> None:
    found = fields(headers.items())
    for quota in read_quotas(found, now=0.0):
        assert bounded(quota.remaining)
        assert bounded(quota.reset)
    transport = sync_transport(status, {})
    governor = transport._governor
    state = governor.host("x")
    governor.heard(state, status, found, 0)
    assert transport.buckets()["*"].full_in() <= 60.0 + 0.011
