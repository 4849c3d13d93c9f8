"""Events as an async iterator: ``async for event in EventStream(limiter): ...``.

A thin adapter over a limiter's ``on_event`` hook: it chains any listener already set, keeps
at most ``maxsize`` events (dropping the oldest and counting them, so a slow reader never
blocks a decision), and accepts events from other threads (a SyncTokenBucket's) by handing
them to its event loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from types import TracebackType
from typing import Protocol

from ._scheduler import Event, Listener

__all__ = ["EventStream"]


class _Observable(Protocol):
    on_event: Listener | None


class EventStream:
    """Iterate over a limiter's events; ``close()`` (or ``async with``) detaches it.

    Create it inside the event loop that reads it. Raises TypeError for an object without
    ``on_event`` and ValueError for a ``maxsize`` below 1.
    """

    def __init__(self, limiter: _Observable, maxsize: int = 1000) -> None:
        if not hasattr(limiter, "on_event"):
            raise TypeError(f"{limiter!r} has no on_event hook to stream from")
        if type(maxsize) is not int or maxsize < 1:
            raise ValueError(f"maxsize must be an int >= 1, got {maxsize!r}")
        self._limiter = limiter
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._buffer: collections.deque[Event] = collections.deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._previous = limiter.on_event
        self._closed = False
        self.dropped = 0
        """Events dropped because the reader fell ``maxsize`` behind."""
        limiter.on_event = self._push

    def _push(self, event: Event) -> None:
        if self._previous is not None:
            self._previous(event)
        if threading.get_ident() == self._thread:
            self._append(event)
        else:
            self._loop.call_soon_threadsafe(self._append, event)

    def _append(self, event: Event) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(event)
        self._ready.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()

    def close(self) -> None:
        """Detach from the limiter (restoring the listener it had); iteration ends once the
        events already buffered are read."""
        if not self._closed:
            self._closed = True
            if self._limiter.on_event == self._push:
                self._limiter.on_event = self._previous
            self._ready.set()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
