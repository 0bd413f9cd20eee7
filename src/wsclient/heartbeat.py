"""Liveness: ping/pong round trips and the silent-feed watchdog.

:class:`Liveness` holds the facts about one connection (when the last frame arrived, how many, whether
the client's own inbound queue is full) and makes every decision from them with an explicit clock, so
the rules are tested without sockets or sleeps. :func:`run_pinger` and :func:`run_watchdog` are the thin
asyncio drivers that the supervisor runs in the connection's task group; they return nothing and end by
raising :class:`~wsclient.errors.LinkDead`.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

from .config import Heartbeat
from .errors import LinkDead

__all__ = ["Liveness", "PongWatch", "Verdict", "run_pinger", "run_watchdog"]

Data = str | bytes


class Verdict(enum.Enum):
    """What an overdue pong or a long silence means."""

    ALIVE = "alive"
    """The link visibly works (frames arrived or the send buffer drained): keep it."""
    SUSPENDED = "suspended"
    """The client's own inbound queue is full: no verdict on the link until it drains."""
    DEAD = "dead"


class Liveness:
    """Per-connection liveness facts and the decisions drawn from them.

    It is the transport's :class:`~wsclient.transport.base.InboundMeter`: the transport counts every
    message in :attr:`frames_in` and :attr:`bytes_in` and stamps :attr:`last_inbound` once per read;
    the inbound queue sets :attr:`blocked` while it holds the reader back.
    """

    __slots__ = ("blocked", "bytes_in", "frames_in", "last_inbound", "last_ping", "last_rtt", "settings")

    def __init__(self, settings: Heartbeat, now: float) -> None:
        self.settings = settings
        self.last_inbound = now
        self.last_ping = now
        self.frames_in = 0
        self.bytes_in = 0
        self.blocked = False
        self.last_rtt: float | None = None

    def next_ping_at(self) -> float:
        """When the next ping is due: every interval, or after interval of inbound silence."""
        base = self.last_ping
        if self.settings.when == "idle":
            base = max(base, self.last_inbound)
        return base + self.settings.interval

    def pong_overdue(self, frames_at_ping: int, wbuf_at_ping: int, wbuf_now: int) -> Verdict:
        """Judge a ping whose pong did not come within the timeout."""
        if self.blocked:
            return Verdict.SUSPENDED
        if self.frames_in != frames_at_ping:
            # Frames arrived after the ping: the pong is queued behind them, the link is alive.
            return Verdict.ALIVE
        if wbuf_now < wbuf_at_ping:
            # A large send is draining ahead of the ping on a slow link: progress, not death.
            return Verdict.ALIVE
        return Verdict.DEAD

    def silence(self, now: float) -> tuple[Verdict, float]:
        """Judge inbound silence under ``receive_timeout``; also return when to look again."""
        limit = self.settings.receive_timeout
        assert limit is not None
        deadline = self.last_inbound + limit
        if now < deadline:
            return Verdict.ALIVE, deadline
        if self.blocked:
            return Verdict.SUSPENDED, now + limit
        return Verdict.DEAD, now


class PongWatch:
    """Recognises the application pong in ``mode="message"``.

    The reader calls :meth:`check` for every inbound frame, but only while :attr:`waiting` is set, so
    the steady-state cost is one attribute test.
    """

    __slots__ = ("_future", "_is_pong", "_sent_at", "waiting")

    def __init__(self, is_pong: Callable[[Data], bool]) -> None:
        self._is_pong = is_pong
        self._future: asyncio.Future[float] | None = None
        self._sent_at = 0.0
        self.waiting = False

    def arm(self) -> asyncio.Future[float]:
        """Start waiting for a pong; return a future resolving to the round-trip time."""
        self._future = asyncio.get_running_loop().create_future()
        self._sent_at = time.monotonic()
        self.waiting = True
        return self._future

    def check(self, frame: Data) -> bool:
        """Return True (and resolve the wait) if ``frame`` is the pong; the frame is then consumed."""
        try:
            matched = self._is_pong(frame)
        except Exception:
            return False
        if not matched:
            return False
        self.waiting = False
        future = self._future
        if future is not None and not future.done():
            future.set_result(time.monotonic() - self._sent_at)
        return True

    def disarm(self) -> None:
        """Stop waiting (after a timeout)."""
        self.waiting = False
        self._future = None


async def run_pinger(
    liveness: Liveness,
    send_ping: Callable[[], Awaitable[Awaitable[float]]],
    write_buffer_size: Callable[[], int],
    on_missed: Callable[[float, bool], None],
) -> NoReturn:
    """Ping on schedule; raise :class:`LinkDead` when a pong is overdue and nothing else shows life.

    ``send_ping`` sends one ping (protocol or application) and returns an awaitable of the RTT.
    ``on_missed(waited, fatal)`` is told of every overdue pong, including the forgiven ones.
    """
    timeout = liveness.settings.timeout
    while True:
        delay = liveness.next_ping_at() - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            continue  # re-evaluate: in "idle" mode traffic may have moved the deadline
        frames_at_ping = liveness.frames_in
        wbuf_at_ping = write_buffer_size()
        liveness.last_ping = sent_at = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                pong = await send_ping()
                liveness.last_rtt = await pong
        except TimeoutError:
            waited = time.monotonic() - sent_at
            verdict = liveness.pong_overdue(frames_at_ping, wbuf_at_ping, write_buffer_size())
            on_missed(waited, verdict is Verdict.DEAD)
            if verdict is Verdict.DEAD:
                raise LinkDead("pong", waited) from None


async def run_watchdog(liveness: Liveness, on_missed: Callable[[float, bool], None]) -> NoReturn:
    """Raise :class:`LinkDead` when no frame arrived for ``receive_timeout`` (and none is held back)."""
    while True:
        now = time.monotonic()
        verdict, look_again = liveness.silence(now)
        if verdict is Verdict.DEAD:
            waited = now - liveness.last_inbound
            on_missed(waited, True)
            raise LinkDead("silence", waited)
        await asyncio.sleep(max(0.0, look_again - now))


def ping_payload() -> bytes:
    """A random payload so a stale pong can never be mistaken for the current one."""
    return secrets.token_bytes(8)
