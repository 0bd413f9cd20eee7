"""Event-driven, bounded waits on a test server's state (the servers of :mod:`wsclient.testing`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Waiters:
    """The conditions tests wait for on a server, re-checked whenever the server calls
    :meth:`notify` (on each of its events): no polling, and a bound on every wait."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def __bool__(self) -> bool:
        """Whether anyone waits (a server skips :meth:`notify` on its hot paths otherwise)."""
        return bool(self._entries)

    async def wait(self, condition: Callable[[], bool], limit: float, what: str) -> None:
        """Return once ``condition()`` holds; ``TimeoutError`` naming ``what`` after ``limit`` s."""
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._entries.append(entry)
        try:
            async with asyncio.timeout(limit):
                await future
        except TimeoutError:
            raise TimeoutError(f"timed out after {limit}s waiting for {what}") from None
        finally:
            self._entries.remove(entry)

    def notify(self) -> None:
        """Re-check every condition waited for; an exception in one is raised to its waiter."""
        for condition, future in self._entries:
            if future.done():
                continue
            try:
                if condition():
                    future.set_result(None)
            except Exception as exc:
                future.set_exception(exc)
