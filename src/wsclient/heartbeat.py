"""Liveness rules: ping/pong round trips, forgiveness, the silent-feed watchdog.

:class:`Liveness` holds the facts about one connection (when the last frame arrived, how many, whether
the client's own inbound queue is full) and makes every decision from them with an explicit clock, so
the rules are tested without sockets or sleeps. The timers that apply them (when to ping, when a pong
is overdue, when silence is too long) are the link's (:mod:`wsclient.link`).
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from collections.abc import Callable

from .config import Heartbeat

__all__ = ["Health", "Liveness", "PongWatch", "Verdict", "ping_payload"]

Data = str | bytes


class Health(enum.Enum):
    """What an overdue pong or a long silence means for the link."""

    ALIVE = "alive"
    """The link visibly works (frames arrived, bytes wait to be read, the send buffer drained)."""
    SUSPENDED = "suspended"
    """The client's own inbound queue is full: no verdict on the link until it drains."""
    EXTEND = "extend"
    """The event loop itself was stalled (a handler blocking it): the link did not get its full
    timeout of a running loop, so it gets the lost time again before it is judged."""
    DEAD = "dead"


Verdict = Health
"""The former name of :class:`Health`, kept for existing imports."""

#: A timer that fires later than this share of its timeout (and later than :data:`LAG_FLOOR`) means
#: the event loop was blocked near the deadline: the verdict is postponed by the lag.
LAG_SHARE = 0.1
LAG_FLOOR = 0.005


class Liveness:
    """Per-connection liveness facts and the decisions drawn from them.

    It is the transport's :class:`~wsclient.transport.base.InboundMeter`: the transport counts every
    message in :attr:`frames_in` and :attr:`bytes_in` and stamps :attr:`last_inbound` once per read;
    the inbound queue sets :attr:`blocked` while it holds the reader back.
    """

    __slots__ = (
        "blocked",
        "bytes_in",
        "frames_in",
        "last_inbound",
        "last_ping",
        "last_rtt",
        "last_rtt_at",
        "settings",
    )

    def __init__(self, settings: Heartbeat, now: float) -> None:
        self.settings = settings
        self.last_inbound = now
        self.last_ping = now
        self.frames_in = 0
        self.bytes_in = 0
        self.blocked = False
        self.last_rtt: float | None = None
        self.last_rtt_at = 0.0

    def measured(self, rtt: float, now: float) -> None:
        """Record a round-trip time measured at ``now``."""
        self.last_rtt = rtt
        self.last_rtt_at = now

    def next_ping_at(self) -> float:
        """When the next ping is due: every interval, or after interval of inbound silence."""
        base = self.last_ping
        if self.settings.when == "idle":
            base = max(base, self.last_inbound)
        return base + self.settings.interval

    def pong_overdue(
        self,
        frames_at_ping: int,
        wbuf_at_ping: int,
        wbuf_now: int,
        inbound_waiting: int = 0,
        lag: float = 0.0,
        *,
        send_blocked: bool = False,
    ) -> Health:
        """Judge a ping whose pong did not come within the timeout.

        ``inbound_waiting`` is what the kernel holds unread on the socket, ``lag`` how late the
        timeout fired (the event loop was busy): both are about the application, not the link.
        ``send_blocked`` says the kernel's send buffer is full (bytes wait in user space): with the
        send buffer not draining either, the peer is not reading what the client writes, and frames
        still arriving from it do not excuse the missing pong (a server that streams but no longer
        reads is dead as a two-way link).
        """
        if self.blocked:
            return Health.SUSPENDED
        if wbuf_now < wbuf_at_ping:
            # A large send is draining ahead of the ping on a slow link: progress, not death.
            return Health.ALIVE
        if not send_blocked:
            if self.frames_in != frames_at_ping:
                # Frames arrived after the ping: the pong may be queued behind them.
                return Health.ALIVE
            if inbound_waiting > 0:
                # The link delivered bytes nobody has read yet (the pong among them, most likely).
                return Health.ALIVE
        if lag > max(LAG_FLOOR, LAG_SHARE * self.settings.timeout):
            return Health.EXTEND
        return Health.DEAD

    def silence(self, now: float, inbound_waiting: int = 0) -> tuple[Health, float]:
        """Judge inbound silence under ``receive_timeout``; also return when to look again."""
        limit = self.settings.receive_timeout
        assert limit is not None
        deadline = self.last_inbound + limit
        if now < deadline:
            return Health.ALIVE, deadline
        if self.blocked:
            return Health.SUSPENDED, now + limit
        if inbound_waiting > 0:
            # Data arrived and waits to be read while the loop was busy: not a silent feed.
            return Health.ALIVE, now + min(limit, 0.05)
        return Health.DEAD, now


class PongWatch:
    """Recognises the application pong in ``mode="message"``.

    The reader calls :meth:`check` for every inbound frame, but only while :attr:`waiting` is set, so
    the steady-state cost is one attribute test.
    """

    __slots__ = ("_clock", "_future", "_is_pong", "_sent_at", "waiting")

    def __init__(self, is_pong: Callable[[Data], bool], clock: Callable[[], float] = time.monotonic) -> None:
        self._is_pong = is_pong
        self._clock = clock
        self._future: asyncio.Future[float] | None = None
        self._sent_at = 0.0
        self.waiting = False

    def arm(self) -> asyncio.Future[float]:
        """Start waiting for a pong; return a future resolving to the round-trip time."""
        self._future = asyncio.get_running_loop().create_future()
        self._sent_at = self._clock()
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
            future.set_result(self._clock() - self._sent_at)
        return True

    def disarm(self) -> None:
        """Stop waiting (the link is gone)."""
        self.waiting = False
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.cancel()


def ping_payload() -> bytes:
    """A random payload so a stale pong can never be mistaken for the current one."""
    return secrets.token_bytes(8)
