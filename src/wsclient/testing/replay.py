"""A WebSocket server that plays a recording back, for testing a bot against a captured session.

:class:`ReplayServer` serves a file written by ``wsclient record`` (or
:class:`~wsclient.recording.RecordingWriter`) to any client: the recorded frames, with their original
spacing scaled by ``speed``, and the recorded disconnects at the same points.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from types import TracebackType
from typing import Final, Literal, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ProtocolError
from websockets.frames import Close

from wsclient.recording import Entry, Recording, load
from wsclient.testing.waiters import Waiters

__all__ = ["ReplayServer", "Speed"]

logger = logging.getLogger(__name__)

Speed = float | Literal["max"]
"""A replay speed: a factor of the recorded pace (1 real time, 10 ten times faster), or ``"max"``."""

# Close codes a server cannot send in a close frame: the connection is aborted instead (the client
# sees 1006, as it does for a drop). 1005 means "a close frame without a code", which websockets'
# public API cannot send either.
_UNSENDABLE: Final = frozenset({1005, 1006, 1015})
_MAX_REASON: Final = 123


class ReplayServer:
    """Plays a recording to every client that connects.

    On each connection the server sends the recorded frames, text or binary as recorded, each at its
    recorded offset from the start of its connection divided by ``speed`` (``speed=1`` real time,
    ``10`` ten times faster, ``"max"`` as fast as the client reads: each send waits for the socket to
    drain). Protocol pings are answered; frames the client sends are kept in :attr:`received` and
    otherwise ignored: the replay does not depend on them.

    ``disconnects=True`` (the default) reproduces the recorded session, disconnects included: the
    n-th connection accepted plays the n-th recorded connection and ends it as it ended, with the
    recorded close code and reason (a drop, a dead link or a code that cannot be sent is an abort: the
    client sees 1006). The session is one per server: connections draw the recorded ones in order, so
    one client (or one test) per server; :meth:`rewind` starts over. Once every recorded connection
    was played, a new connection gets nothing (see ``at_end``). ``disconnects=False`` plays every
    frame of the recording on each connection, with no disconnect, to any number of clients.

    ``start="connect"`` (the default) starts a connection's replay right after its handshake;
    ``start="message"`` waits for the client's first message (its subscription, say), as the venue
    only answered once subscribed.

    When a connection's frames are played and it does not end with a recorded disconnect,
    ``at_end="hold"`` (the default) keeps it open and silent, like a feed gone quiet; ``"close"``
    closes it with 1000.

    The recording is loaded into memory when the server is built. Use as ``async with
    ReplayServer(path) as server:`` or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        recording: str | os.PathLike[str] | Recording,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        speed: Speed = 1.0,
        disconnects: bool = True,
        start: Literal["connect", "message"] = "connect",
        at_end: Literal["hold", "close"] = "hold",
        close_timeout: float = 2.0,
    ) -> None:
        """Load the recording and check the options; nothing listens until :meth:`start`.

        Args:
            recording: A recording file (``.jsonl`` or ``.jsonl.gz``) or a loaded :class:`Recording`.
            host: Interface to bind, ``127.0.0.1`` or ``::1``.
            port: TCP port; 0 picks a free one, then kept across restarts.
            speed: A positive factor of the recorded pace, or ``"max"``.
            disconnects: Reproduce the recorded disconnects (one session per server), or play the
                whole recording on every connection.
            start: ``"connect"``, or ``"message"`` to wait for the client's first message.
            at_end: ``"hold"`` the connection open once played, or ``"close"`` it with 1000.
            close_timeout: Bound on a closing handshake before the connection is aborted.

        Raises:
            ValueError: For a bad option; the message names it and the fix.
            FileNotFoundError: When the recording file does not exist.
            wsclient.recording.RecordingError: When the file is not a readable recording.
        """
        self.speed: Speed = _check_speed(speed)
        if start not in ("connect", "message"):
            raise ValueError(f'start must be "connect" or "message", got {start!r}')
        if at_end not in ("hold", "close"):
            raise ValueError(f'at_end must be "hold" or "close", got {at_end!r}')
        if not close_timeout > 0:
            raise ValueError(f"close_timeout must be a positive number of seconds, got {close_timeout!r}")
        self.recording = recording if isinstance(recording, Recording) else load(recording)
        self.host = host
        self.disconnects = disconnects
        self.start_on: Literal["connect", "message"] = start
        self.at_end: Literal["hold", "close"] = at_end
        self.close_timeout = close_timeout
        self._port = port
        self._segments = self.recording.segments
        if disconnects:
            self._plays: list[tuple[tuple[Entry, ...], float, Entry | None]] = [
                (s.frames, s.start, s.end) for s in self._segments
            ]
        else:
            frames = tuple(e for e in self.recording.entries if e.is_frame)
            first = self.recording.entries[0].t if self.recording.entries else 0.0
            self._plays = [(frames, first, None)]

        self.connections = 0
        """Connections accepted (handshake completed) since construction."""
        self.received: list[str | bytes] = []
        """Every frame clients sent, in arrival order."""
        self.frames_sent = 0
        """Recorded frames written to clients."""
        self.played = 0
        """Connections whose recorded frames were all written (ended as recorded, or held/closed)."""
        self.disconnects_played = 0
        """Recorded disconnects reproduced."""
        self.waiting = 0
        """Connections waiting for the client's first message (``start="message"``)."""

        self._cursor = 0
        self._server: Server | None = None
        self._connections: set[ServerConnection] = set()
        self._waiters = Waiters()

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Bound TCP port (0 before the first :meth:`start` when constructed with 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the server (it serves every path)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self._port}/"

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def sessions(self) -> int:
        """Recorded connections this server plays: one per recorded connection, or 1 without
        ``disconnects``."""
        return len(self._plays)

    async def start(self) -> None:
        """Listen. Does nothing if already running."""
        if self._server is not None:
            return
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            compression=None,
            ping_interval=None,
            close_timeout=self.close_timeout,
            max_size=None,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection with 1001 and stop listening."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=False)
        await asyncio.gather(*(self._close(ws, 1001, "going away") for ws in list(self._connections)))
        await server.wait_closed()

    def rewind(self) -> None:
        """Start the session over: the next connection plays the first recorded connection again."""
        self._cursor = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- event-driven waits --------------------------------------------------------------------------

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Wait until :attr:`connections` reaches ``n``."""
        await self._waiters.wait(lambda: self.connections >= n, timeout, f"{n} connections")

    async def wait_played(self, n: int | None = None, timeout: float = 10.0) -> None:
        """Wait until ``n`` connections were played to their end (default: every recorded one)."""
        target = self.sessions if n is None else n
        await self._waiters.wait(lambda: self.played >= target, timeout, f"{target} connections played")

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds; re-checked on every connection, frame and end."""
        await self._waiters.wait(condition, timeout, "condition")

    # -- playing -------------------------------------------------------------------------------------

    def _next_play(self) -> tuple[tuple[Entry, ...], float, Entry | None] | None:
        if not self.disconnects:
            return self._plays[0]
        if self._cursor >= len(self._plays):
            return None
        play = self._plays[self._cursor]
        self._cursor += 1
        return play

    async def _handle(self, ws: ServerConnection) -> None:
        self._connections.add(ws)
        self.connections += 1
        play = self._next_play()
        first_message = asyncio.Event()
        reader = asyncio.get_running_loop().create_task(self._read(ws, first_message))
        self._waiters.notify()
        try:
            if play is None:
                await self._finish(ws)  # the session was played: nothing more to say
                return
            frames, start, end = play
            if self.start_on == "message":
                self.waiting += 1
                self._waiters.notify()
                try:
                    await first_message.wait()
                finally:
                    self.waiting -= 1
                if ws.close_code is not None:
                    return
            if not await self._play(ws, frames, start):
                return  # the client left
            if end is not None:
                self.played += 1
                self.disconnects_played += 1
                self._waiters.notify()
                await self._end_as_recorded(ws, end)
                return
            self.played += 1
            self._waiters.notify()
            await self._finish(ws)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._connections.discard(ws)
            self._waiters.notify()

    async def _read(self, ws: ServerConnection, first: asyncio.Event) -> None:
        try:
            async for message in ws:
                self.received.append(message)
                first.set()
                self._waiters.notify()
        except ConnectionClosed:
            pass
        finally:
            first.set()  # a client that left without a word must not keep the handler waiting

    async def _play(self, ws: ServerConnection, frames: tuple[Entry, ...], start: float) -> bool:
        loop = asyncio.get_running_loop()
        speed = self.speed
        t0 = loop.time()
        try:
            for entry in frames:
                if speed != "max":
                    # Deadlines from one origin: the spacing does not drift with the sends' own cost.
                    delay = t0 + (entry.t - start) / speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                assert entry.data is not None
                await ws.send(entry.data)
                self.frames_sent += 1
                if self._waiters:
                    self._waiters.notify()
        except ConnectionClosed:
            return False
        return True

    async def _end_as_recorded(self, ws: ServerConnection, end: Entry) -> None:
        code = end.code
        reason = end.reason.encode()[:_MAX_REASON].decode(errors="ignore")
        if code is not None and code not in _UNSENDABLE:
            try:
                Close(code, reason).check()
            except ProtocolError:
                code = None  # a code no endpoint may send in a close frame
        if code is None or code in _UNSENDABLE:
            ws.transport.abort()
            await ws.wait_closed()
            return
        await self._close(ws, code, reason)

    async def _finish(self, ws: ServerConnection) -> None:
        if self.at_end == "close":
            await self._close(ws, 1000, "end of recording")
        else:
            await ws.wait_closed()

    async def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        try:
            # websockets waits for a drain with no deadline before it sends the close frame.
            async with asyncio.timeout(self.close_timeout):
                await ws.close(code, reason)
        except TimeoutError:
            ws.transport.abort()


def _check_speed(speed: object) -> Speed:
    if speed == "max":
        return "max"
    if isinstance(speed, int | float) and not isinstance(speed, bool) and math.isfinite(speed) and speed > 0:
        return float(speed)
    raise ValueError(
        f'speed must be a positive factor of the recorded pace (1: real time, 10) or "max", got {speed!r}'
    )
