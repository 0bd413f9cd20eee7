"""Stopping the background tasks that talk to a bus (sinks, fleets)."""

from __future__ import annotations

import asyncio
import logging

_log = logging.getLogger("wsclient")


async def cancel_and_wait(task: asyncio.Task[None], what: str, attempts: int = 50) -> None:
    """Cancel ``task`` and wait for its end, the cancellation repeated (bounded) until it is done.

    On Python 3.11 an ``asyncio.wait_for`` inside a bus client (nats-py's requests, redis-py's
    reads) swallows a cancellation that lands as its own wait ends, and the task then goes on
    (a renewal loop for ever): a single ``cancel()`` and an ``await`` could hang the close.
    """
    for _ in range(attempts):
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
        if task.done():
            break
    else:
        _log.error("%s did not stop after %d cancellations", what, attempts)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: how it ended is of no interest once closed
