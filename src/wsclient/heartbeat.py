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
    """The link visibly works (frames arrived, bytes wait to be read, the send buffer drained)."""
    SUSPENDED = "suspended"
    """The client's own inbound queue is full: no verdict on the link until it drains."""
    EXTEND = "extend"
    """The event loop itself was stalled (a handler blocking it): the link did not get its full
    timeout of a running loop, so it gets the lost time again before it is judged."""
    DEAD = "dead"


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

    def measured(self, rtt: float) -> None:
        """Record a round-trip time measured now."""
        self.last_rtt = rtt
        self.last_rtt_at = time.monotonic()

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
    ) -> Verdict:
        """Judge a ping whose pong did not come within the timeout.

        ``inbound_waiting`` is what the kernel holds unread on the socket, ``lag`` how late the
        timeout fired (the event loop was busy): both are about the application, not the link.
        ``send_blocked`` says the kernel's send buffer is full (bytes wait in user space): with the
        send buffer not draining either, the peer is not reading what the client writes, and frames
        still arriving from it do not excuse the missing pong (a server that streams but no longer
        reads is dead as a two-way link).
        """
        if self.blocked:
            return Verdict.SUSPENDED
        if wbuf_now < wbuf_at_ping:
            # A large send is draining ahead of the ping on a slow link: progress, not death.
            return Verdict.ALIVE
        if not send_blocked:
            if self.frames_in != frames_at_ping:
                # Frames arrived after the ping: the pong may be queued behind them.
                return Verdict.ALIVE
            if inbound_waiting > 0:
                # The link delivered bytes nobody has read yet (the pong among them, most likely).
                return Verdict.ALIVE
        if lag > max(LAG_FLOOR, LAG_SHARE * self.settings.timeout):
            return Verdict.EXTEND
        return Verdict.DEAD

    def silence(self, now: float, inbound_waiting: int = 0) -> tuple[Verdict, float]:
        """Judge inbound silence under ``receive_timeout``; also return when to look again."""
        limit = self.settings.receive_timeout
        assert limit is not None
        deadline = self.last_inbound + limit
        if now < deadline:
            return Verdict.ALIVE, deadline
        if self.blocked:
            return Verdict.SUSPENDED, now + limit
        if inbound_waiting > 0:
            # Data arrived and waits to be read while the loop was busy: not a silent feed.
            return Verdict.ALIVE, now + min(limit, 0.05)
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


async def _give_io_a_turn() -> None:
    """Let the event loop poll the sockets and run what they have for us before going on.

    A coroutine that resumes from a timeout runs before the I/O callbacks of the same loop turn:
    two yields guarantee one full poll-and-dispatch in between (a pong already received by the
    kernel is then read, and its waiter resolved).
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _result(future: asyncio.Future[float] | None) -> float | None:
    if future is None or not future.done() or future.cancelled():
        return None
    exc = future.exception()
    if exc is not None:
        raise exc
    return future.result()


async def run_pinger(
    liveness: Liveness,
    send_ping: Callable[[], Awaitable[asyncio.Future[float]]],
    write_buffer_size: Callable[[], int],
    on_missed: Callable[[float, bool], None],
    inbound_waiting: Callable[[], int] = lambda: 0,
    send_blocked: Callable[[], bool] = lambda: False,
) -> NoReturn:
    """Ping on schedule; raise :class:`LinkDead` when a pong is overdue and nothing else shows life.

    ``send_ping`` sends one ping (protocol or application) and returns a future of the RTT, which is
    never cancelled here (a pong arriving as the timeout fires still counts). ``on_missed(waited,
    fatal)`` is told of every overdue pong, including the forgiven ones. Before a pong is declared
    missing, the loop gets one turn to read what already arrived, and a timeout that fired late
    because a handler blocked the loop is extended by that lag: the verdict is about the link, never
    about the application.
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
        deadline = sent_at + timeout
        pong: asyncio.Future[float] | None = None
        try:
            async with asyncio.timeout(timeout):
                pong = await send_ping()
                liveness.measured(await asyncio.shield(pong))
            continue
        except TimeoutError:
            pass
        extended = False
        frames_ref, wbuf_ref, judged_at = frames_at_ping, wbuf_at_ping, deadline
        while True:
            await _give_io_a_turn()
            rtt = _result(pong)
            if rtt is not None:
                liveness.measured(rtt)
                break
            now = time.monotonic()
            verdict = liveness.pong_overdue(
                frames_ref,
                wbuf_ref,
                write_buffer_size(),
                inbound_waiting(),
                0.0 if extended else now - judged_at,
                send_blocked=send_blocked(),
            )
            if verdict is Verdict.EXTEND:
                # Once per judgement: the lost time, at most one more timeout.
                extended = True
                grace = min(now - judged_at, timeout)
                if pong is None:
                    await asyncio.sleep(grace)
                else:
                    await asyncio.wait((pong,), timeout=grace)
                continue
            waited = now - sent_at
            on_missed(waited, verdict is Verdict.DEAD)
            if verdict is Verdict.DEAD:
                raise LinkDead("pong", waited)
            if pong is None:
                break  # the ping never went out (its send was held up): ping afresh
            # Forgiven: this ping's pong is still owed. Judge it again after another timeout, from
            # the facts as they are then.
            extended = False
            frames_ref, wbuf_ref = liveness.frames_in, write_buffer_size()
            judged_at = time.monotonic() + timeout
            await asyncio.wait((pong,), timeout=timeout)


async def run_watchdog(
    liveness: Liveness,
    on_missed: Callable[[float, bool], None],
    inbound_waiting: Callable[[], int] = lambda: 0,
) -> NoReturn:
    """Raise :class:`LinkDead` when no frame arrived for ``receive_timeout`` (and none is held back).

    As for the pinger, data the kernel already holds and the loop's own lag are not silence.
    """
    while True:
        now = time.monotonic()
        verdict, look_again = liveness.silence(now)
        if verdict is Verdict.DEAD:
            await _give_io_a_turn()
            now = time.monotonic()
            verdict, look_again = liveness.silence(now, inbound_waiting())
        if verdict is Verdict.DEAD:
            waited = now - liveness.last_inbound
            on_missed(waited, True)
            raise LinkDead("silence", waited)
        await asyncio.sleep(max(0.0, look_again - now))


def ping_payload() -> bytes:
    """A random payload so a stale pong can never be mistaken for the current one."""
    return secrets.token_bytes(8)
