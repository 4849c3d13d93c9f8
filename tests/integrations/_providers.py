"""Fake provider servers for the client integrations: each enforces a fixed window and answers
with one provider family's real header names (GitHub, OpenAI, Anthropic, IETF).

Windows are aligned to the wall clock (``time.time()``), as the providers' are, so the resets
they announce (epoch seconds, RFC 3339 times, durations, delta seconds) all name the same
instant. Every reset is rounded up: a server that announced its reset early would invite the
client back before it is ready. Pure ASGI: served by uvicorn through ``_server.serve``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timezone
from typing import Any

from ratekeeper import SyncTokenBucket

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FAMILIES = ("github", "openai", "anthropic", "ietf")


async def read_body(receive: Receive) -> bytes:
    """Return a request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def answer(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    """Send a whole response."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def go_duration(seconds: float) -> str:
    """Format seconds as OpenAI does (Go durations: ``6m0s``, ``1.5s``, ``20ms``), rounded up."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms / 1000:g}s"
    return f"{minutes}m{text}" if minutes else text


def rfc3339(stamp: float) -> str:
    """Format a POSIX time as Anthropic does: RFC 3339 in UTC, rounded up to the millisecond."""
    when = datetime.fromtimestamp(math.ceil(stamp * 1000) / 1000, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def quota_headers(
    family: str, limit: int, remaining: int, reset_at: float, now: float
) -> dict[str, str]:
    """Return one family's headers for a window of ``limit`` ending at ``reset_at``."""
    left = str(remaining)
    if family == "github":
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": left,
            "x-ratelimit-used": str(limit - remaining),
            "x-ratelimit-reset": str(math.ceil(reset_at)),
            "x-ratelimit-resource": "core",
        }
    if family == "openai":
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": left,
            "x-ratelimit-reset-requests": go_duration(reset_at - now),
            "x-ratelimit-limit-tokens": "1000000",
            "x-ratelimit-remaining-tokens": "999000",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    if family == "anthropic":
        return {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": left,
            "anthropic-ratelimit-requests-reset": rfc3339(reset_at),
            "anthropic-ratelimit-tokens-limit": "1000000",
            "anthropic-ratelimit-tokens-remaining": "999000",
            "anthropic-ratelimit-tokens-reset": rfc3339(reset_at),
        }
    if family == "ietf":
        return {
            "ratelimit-policy": f'"default";q={limit};w=1',
            "ratelimit": f'"default";r={left};t={math.ceil(reset_at - now)}',
        }
    raise ValueError(f"unknown family {family!r}")


class Provider:
    """An ASGI app enforcing ``limit`` requests per ``window`` seconds the way ``family``'s
    provider does, answered with its headers; a request past the limit gets a 429 with them
    and ``Retry-After``. Counts what it accepted and refused.

    GitHub and the IETF draft count fixed windows (aligned to the wall clock); OpenAI and
    Anthropic refill steadily (a token bucket of ``limit`` refilled over ``window``) and
    announce when they will be whole again."""

    def __init__(self, family: str, limit: int, window: float = 1.0) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
        self.family, self.limit, self.window = family, limit, window
        self._lock = threading.Lock()
        self._index = -1
        self._count = 0
        self._bucket = SyncTokenBucket(limit / window, limit)
        self.accepted = 0
        self.refused = 0

    def decide(self) -> tuple[int, dict[str, str]]:
        """Count one request now; return its status and headers."""
        with self._lock:
            now = time.time()
            if self.family in ("openai", "anthropic"):
                granted = self._bucket.try_acquire()
                left = math.floor(self._bucket.available())
                reset_at = now + self._bucket.full_in()
                retry = (1 - self._bucket.available()) * self.window / self.limit
            else:
                index = math.floor(now / self.window)
                if index != self._index:
                    self._index, self._count = index, 0
                reset_at = retry = (index + 1) * self.window
                retry -= now
                granted = self._count < self.limit
                self._count += granted
                left = self.limit - self._count
            headers = quota_headers(self.family, self.limit, max(0, left), reset_at, now)
            if not granted:
                self.refused += 1
                headers["retry-after"] = str(max(1, math.ceil(retry)))
                return 429, headers
            self.accepted += 1
            return 200, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        await read_body(receive)
        status, headers = self.decide()
        headers["content-type"] = "application/json"
        await answer(send, status, headers, json.dumps({"ok": status == 200}).encode())


class FakeLLM:
    """An ASGI app serving OpenAI's ``POST /v1/chat/completions`` and Anthropic's
    ``POST /v1/messages`` as their SDKs expect, each with its own two token buckets (requests
    and tokens), refilled steadily as the providers' are, and their real header names:
    remaining now, reset when full again. A call costs its prompt (about 4 characters a
    token) and its reply (``min(max_tokens, 40)`` tokens); one that does not fit gets a 429
    with ``Retry-After`` and the provider's error body. Counts what it served and refused."""

    REPLY = 40

    def __init__(self, requests: tuple[int, float], tokens: tuple[int, float]) -> None:
        # (capacity, per second) for each provider's requests and tokens
        self._buckets = {
            route: (
                SyncTokenBucket(requests[1], requests[0]),
                SyncTokenBucket(tokens[1], tokens[0]),
            )
            for route in ("openai", "anthropic")
        }
        self._limits = (requests[0], tokens[0])
        self.served = {"openai": 0, "anthropic": 0}
        self.refused = {"openai": 0, "anthropic": 0}

    def _headers(self, route: str) -> dict[str, str]:
        now = time.time()
        found = {}
        for kind, bucket, limit in zip(
            ("requests", "tokens"), self._buckets[route], self._limits, strict=True
        ):
            left = str(max(0, math.floor(bucket.available())))
            full_in = bucket.full_in()
            if route == "openai":
                found[f"x-ratelimit-limit-{kind}"] = str(limit)
                found[f"x-ratelimit-remaining-{kind}"] = left
                found[f"x-ratelimit-reset-{kind}"] = go_duration(full_in)
            else:
                found[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
                found[f"anthropic-ratelimit-{kind}-remaining"] = left
                found[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(now + full_in)
        return found

    def serve(self, route: str, call: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        messages = call.get("messages", [])
        prompt = sum(math.ceil(len(str(m.get("content", ""))) / 4) + 3 for m in messages)
        reply = min(int(call.get("max_tokens", 16)), self.REPLY)
        requests, tokens = self._buckets[route]
        if requests.available() < 1 or tokens.available() < prompt + reply:
            self.refused[route] += 1
            headers = self._headers(route)
            headers["retry-after"] = "1"
            if route == "openai":
                error = {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
                return 429, {"error": error}, headers
            return (
                429,
                {
                    "type": "error",
                    "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
                },
                headers,
            )
        requests.try_acquire(1)
        tokens.try_acquire(prompt + reply)
        self.served[route] += 1
        text = "hello " * (reply // 2)
        model = call.get("model", "fake")
        if route == "openai":
            body = {
                "id": f"chatcmpl-{self.served[route]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": reply,
                    "total_tokens": prompt + reply,
                },
            }
        else:
            body = {
                "id": f"msg_{self.served[route]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": reply},
            }
        return 200, body, self._headers(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        raw = await read_body(receive)
        route = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}.get(scope["path"])
        if route is None or scope["method"] != "POST":
            status, body, headers = 404, {"error": "not found"}, {}
        else:
            status, body, headers = self.serve(route, json.loads(raw or b"{}"))
        headers["content-type"] = "application/json"
        await answer(send, status, headers, json.dumps(body).encode())


class Scripted:
    """An ASGI app for the adapters' tests: answers with the statuses it is given (then 200),
    always with the same headers, and keeps the bodies it received."""

    def __init__(self) -> None:
        self.reset()

    def reset(
        self, statuses: list[int] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.statuses = list(statuses or [])
        self.headers = dict(headers or {})
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if scope["method"] != "HEAD":
            self.bodies.append(body)
        status = self.statuses.pop(0) if self.statuses else 200
        await answer(send, status, self.headers, b"ok")
