"""Call OpenAI's and Anthropic's APIs through their official SDKs under an LLMLimiter each.

    python examples/llm_sdk.py BASE_URL [--calls N] [--concurrency N]

BASE_URL serves both APIs (``BASE_URL/v1/chat/completions`` and ``BASE_URL/v1/messages``):
the real ones, or the fake server the test starts on loopback. Each SDK gets its own httpx
client class with a response hook that hands every response's headers to its LLMLimiter
(the SDK's class, so this works whichever httpx package the SDK uses), and each call is
estimated before it is sent and settled with the usage its reply reports. The SDKs' own
retries are off (``max_retries=0``) so that a 429 would show: the script prints how many
calls each API served and refused, and exits 1 if any was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable

import anthropic
import openai

from ratekeeper.llm import LLMLimiter

Ask = Callable[[list[dict[str, str]]], Awaitable[int]]  # messages -> tokens used


async def run(llm: LLMLimiter, ask: Ask, calls: int, concurrency: int) -> int:
    """Make ``calls`` calls through ``ask``, ``concurrency`` at a time; return the refused."""
    refused = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal refused
        messages = [{"role": "user", "content": f"Say hello to caller number {i}."}]
        async with gate, llm.call(llm.estimate(messages, max_tokens=50)) as call:
            try:
                call.used(await ask(messages))
            except (openai.RateLimitError, anthropic.RateLimitError):
                refused += 1

    await asyncio.gather(*(one(i) for i in range(calls)))
    return refused


async def with_openai(base_url: str, calls: int, concurrency: int) -> int:
    llm = LLMLimiter(requests_per_minute=600, tokens_per_minute=60_000)
    hooks = {"response": [llm.on_response]}
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key=os.environ.get("OPENAI_API_KEY", "sk-test"),
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks),
    ) as client:

        async def ask(messages: list[dict[str, str]]) -> int:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,  # type: ignore[arg-type]
                max_tokens=50,
            )
            return reply.usage.total_tokens if reply.usage else 0

        return await run(llm, ask, calls, concurrency)


async def with_anthropic(base_url: str, calls: int, concurrency: int) -> int:
    llm = LLMLimiter(requests_per_minute=600, tokens_per_minute=60_000)
    hooks = {"response": [llm.on_response]}
    async with anthropic.AsyncAnthropic(
        base_url=base_url,
        api_key=os.environ.get("ANTHROPIC_API_KEY", "sk-ant-test"),
        max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(event_hooks=hooks),
    ) as client:

        async def ask(messages: list[dict[str, str]]) -> int:
            reply = await client.messages.create(
                model="claude-haiku-4-5",
                messages=messages,  # type: ignore[arg-type]
                max_tokens=50,
            )
            return reply.usage.input_tokens + reply.usage.output_tokens

        return await run(llm, ask, calls, concurrency)


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    refused = await asyncio.gather(
        with_openai(base, args.calls, args.concurrency),
        with_anthropic(base, args.calls, args.concurrency),
    )
    for name, count in zip(("openai", "anthropic"), refused, strict=True):
        print(f"{name}: {args.calls - count} served, {count} refused")
    return 1 if any(refused) else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
