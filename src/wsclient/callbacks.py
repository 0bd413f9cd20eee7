"""One fan-out for every application callback: events, errors, unknown frames, gaps.

A callback the application registered is called inline when it is a plain function; when it returns
an awaitable, that runs as a task the fan-out tracks, so that ``close()`` can let it finish (bounded)
or cancel it. A callback that raises never stops the others, nor the connection: it is logged
(rate-limited) and, unless it is an ``on_error`` callback itself, reported to the ``on_error``
callbacks.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from .codec import Data
from .events import ClientEvent
from .logs import Log, LogLimiter
from .routing import SequenceGap

__all__ = ["Callbacks"]


class Callbacks:
    """The application's callbacks of one client and the tasks their async ones run in."""

    __slots__ = ("_limiter", "_log", "_redact", "_tasks", "error", "event", "gap", "unknown")

    def __init__(
        self,
        log: Log,
        limiter: LogLimiter,
        redact: Callable[[str], str],
    ) -> None:
        self._log = log
        self._limiter = limiter
        self._redact = redact
        # Tuples, replaced on registration (rare): an empty tuple is shared, an empty list is not.
        self.event: tuple[Callable[[ClientEvent], Any], ...] = ()
        self.error: tuple[Callable[[object, BaseException], Any], ...] = ()
        self.unknown: tuple[Callable[[Data], Any], ...] = ()
        self.gap: tuple[Callable[[SequenceGap], Any], ...] = ()
        # Created by the first async callback: most clients never need it.
        self._tasks: set[asyncio.Task[Any]] | None = None

    # -- the fan-out -------------------------------------------------------------------------------

    def emit(self, event: ClientEvent) -> None:
        """Hand a lifecycle event to every ``on_event`` callback."""
        for callback in self.event:
            self._call(callback, "on_event", event, event)

    def report_error(self, item: object, exc: BaseException) -> None:
        """Hand ``(item, exc)`` to every ``on_error`` callback (never reported to itself)."""
        for callback in self.error:
            self._call(callback, "on_error", None, item, exc)

    def unknown_frame(self, frame: Data) -> None:
        """Hand a frame no model claims to every ``on_unknown`` callback."""
        for callback in self.unknown:
            self._call(callback, "on_unknown", frame, frame)

    def sequence_gap(self, gap: SequenceGap) -> None:
        """Hand a sequence gap to every ``on_gap`` callback."""
        for callback in self.gap:
            self._call(callback, "on_gap", gap, gap)

    def _call(self, callback: Callable[..., Any], kind: str, report: object, *args: Any) -> None:
        try:
            self.run(callback(*args))
        except Exception as exc:
            suppressed = self._limiter.allow(kind)
            if suppressed is not None:
                self._log.exception("%s callback raised%s", kind, LogLimiter.suffix(suppressed))
            if report is not None:
                self.report_error(report, exc)

    # -- async callbacks ---------------------------------------------------------------------------

    def run(self, result: object) -> None:
        """Run what a callback returned, if it is awaitable, as a task tracked until it ends."""
        if result is not None and inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            if self._tasks is None:
                self._tasks = set()
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            suppressed = self._limiter.allow("async callback")
            if suppressed is not None:
                self._log.error(
                    "async callback raised%s", LogLimiter.suffix(suppressed), exc_info=task.exception()
                )

    @property
    def running(self) -> int:
        """Async callbacks still running."""
        return len(self._tasks or ())

    async def finish(self, timeout: float) -> None:
        """Let running async callbacks finish within ``timeout``, then cancel the rest."""
        tasks = self._tasks
        if not tasks:
            return
        await asyncio.wait(set(tasks), timeout=timeout)
        pending = list(tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        tasks.clear()
