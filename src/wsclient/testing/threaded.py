"""Test servers on an event loop of their own thread, for code that blocks.

A threaded bot, a notebook cell or a test of :class:`wsclient.sync.Client` blocks the thread it runs
in; a :class:`FeedServer` on that thread's loop would never get a turn. :class:`ServerThread` runs any
of the test servers (anything used as ``async with server:``) on a loop in a background thread::

    with ServerThread(FeedServer(rate=50)) as thread:
        feed = thread.server
        bot = wsclient.sync.Client(feed.url)
        ...
        thread.run(feed.restart())        # a coroutine of the server's, run on its loop
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

__all__ = ["ServerThread"]

S = TypeVar("S", bound=AbstractAsyncContextManager[Any])
T = TypeVar("T")


class ServerThread(Generic[S]):
    """Run ``server`` (a ``FeedServer``, ``VenueServer``, ``ChaosProxy``…) in a background thread.

    ``start()`` (or ``with``) enters the server on a new event loop in a daemon thread and returns
    once it listens; ``stop()`` leaves it, ends the loop and joins the thread. Read the server's
    records from any thread; change it or wait on it with :meth:`run` (a coroutine) or :meth:`call`
    (a plain method), which run on its loop.
    """

    def __init__(self, server: S, name: str = "wsclient-test-server") -> None:
        self.server = server
        """The server, entered once started."""
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Future[None] | None = None

    def start(self) -> Self:
        """Start the thread and the server in it; return once the server listens."""
        if self._thread is not None:
            raise RuntimeError("ServerThread.start(): already started")
        loop = self._loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(loop, ready), name=self._name, daemon=True)
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            raise
        return self

    def _main(self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.get_running_loop().create_future()
        try:
            await self.server.__aenter__()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            await self._stop
        finally:
            await self.server.__aexit__(None, None, None)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10.0) -> T:
        """Run ``coro`` on the server's loop; its result (``TimeoutError`` after ``timeout``)."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("ServerThread.run(): the server thread is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` on the server's loop (a plain method that changes the server)."""

        async def invoke() -> T:
            return fn(*args)

        return self.run(invoke())

    def stop(self) -> None:
        """Stop the server, end its loop and join the thread. Idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None:
            return
        if stop is not None and thread.is_alive():
            loop.call_soon_threadsafe(_release, stop)
        thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
