"""The sugar every limiter derives from its ``acquire()`` and ``limit()``.

``async with limiter:`` / ``with limiter:`` take one token on entry and give nothing back on
exit; ``@limiter`` decorates a function so that each call takes one token first. A limiter
class lists ``AsyncVerbs`` or ``SyncVerbs`` among its bases and supplies the two methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

__all__ = ["AsyncVerbs", "SyncVerbs"]

P = ParamSpec("P")
R = TypeVar("R")
AV = TypeVar("AV", bound="AsyncVerbs")
SV = TypeVar("SV", bound="SyncVerbs")


class AsyncVerbs:
    """``async with`` and ``@`` for an asyncio limiter (one token each)."""

    __slots__ = ()

    if TYPE_CHECKING:

        async def acquire(self, tokens: Any = ..., *, timeout: float | None = ...) -> bool: ...

        def limit(
            self, tokens: Any = ..., *, timeout: float | None = ...
        ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]: ...

    async def __aenter__(self: AV) -> AV:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __call__(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate an async function so that each call first acquires one token."""
        return self.limit()(func)


class SyncVerbs:
    """``with`` and ``@`` for a blocking limiter (one token each)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def acquire(self, tokens: Any = ..., *, timeout: float | None = ...) -> bool: ...

        def limit(
            self, tokens: Any = ..., *, timeout: float | None = ...
        ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def __enter__(self: SV) -> SV:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate a function so that each call first acquires one token."""
        return self.limit()(func)
