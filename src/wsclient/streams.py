"""Async iterators over a client's messages and events: ``async for`` instead of callbacks.

``client.messages(Trade, Ticker)`` and ``client.events()`` return a :class:`Stream`: a bounded
buffer filled by a handler the client calls in arrival order, read with ``async for``. Each stream
has its own bound and overflow policy:

* ``"block"`` (the default for messages): a full buffer holds the client back, as a slow async
  handler would; with the client's lossless inbound policy nothing is dropped.
* ``"drop_oldest"`` / ``"drop_newest"`` (the default for events, which must never hold the client
  back): the overflow is dropped and counted in :attr:`Stream.dropped`.

A stream ends (the ``async for`` leaves its loop) once the client is closed or has failed and the
buffer is drained; ``aclose()`` (or leaving ``async with stream:``) unregisters it earlier.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Generic, Literal, Self, TypeVar

__all__ = ["Overflow", "Stream"]

T = TypeVar("T")

Overflow = Literal["block", "drop_oldest", "drop_newest"]


class Stream(Generic[T]):
    """A bounded buffer of items from a client, read with ``async for`` (see the module)."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_getter",
        "_maxsize",
        "_overflow",
        "_putters",
        "_unregister",
        "dropped",
    )

    def __init__(self, maxsize: int, overflow: Overflow) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize!r}")
        if overflow not in ("block", "drop_oldest", "drop_newest"):
            raise ValueError(f'overflow must be "block", "drop_oldest" or "drop_newest", got {overflow!r}')
        self._maxsize = maxsize
        self._overflow = overflow
        self._buffer: deque[T] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._unregister: Callable[[], None] | None = None
        self.dropped = 0
        """Items dropped by a ``drop_*`` policy."""

    # -- the producer side (the client) --------------------------------------------------------------

    def put(self, item: T) -> Awaitable[None] | None:
        """Buffer ``item``; with ``"block"`` and a full buffer, an awaitable the caller must await
        before the next item."""
        if self._closed:
            return None
        buffer = self._buffer
        if len(buffer) >= self._maxsize:
            if self._overflow == "drop_newest":
                self.dropped += 1
                return None
            if self._overflow == "drop_oldest":
                buffer.popleft()
                self.dropped += 1
            else:
                buffer.append(item)
                self._wake_getter()
                room = asyncio.get_running_loop().create_future()
                self._putters.append(room)
                return room
        buffer.append(item)
        self._wake_getter()
        return None

    def end(self) -> None:
        """No more items will come: the reader drains the buffer, then stops."""
        if self._closed:
            return
        self._closed = True
        self._wake_getter()
        self._release_putters()

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def _release_putters(self) -> None:
        while self._putters:
            room = self._putters.popleft()
            if not room.done():
                room.set_result(None)

    # -- the reader side -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        buffer = self._buffer
        while not buffer:
            if self._closed:
                raise StopAsyncIteration
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        item = buffer.popleft()
        if self._putters and len(buffer) < self._maxsize:
            room = self._putters.popleft()
            if not room.done():
                room.set_result(None)
        return item

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        """Whether the stream takes no more items (the client closed, or :meth:`aclose`)."""
        return self._closed

    async def aclose(self) -> None:
        """Unregister from the client and end the stream (what is buffered can still be read)."""
        unregister, self._unregister = self._unregister, None
        if unregister is not None:
            unregister()
        self.end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Stream {state}, {len(self._buffer)}/{self._maxsize} buffered, {self.dropped} dropped>"
