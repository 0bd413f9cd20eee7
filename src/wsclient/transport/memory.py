"""An in-memory backend: a WebSocket server that a test scripts, living in the event loop, no socket.

:class:`MemoryServer` plays the server side of every connection a client opens through its
:meth:`~MemoryServer.connect` connector, and the test decides what happens there::

    from wsclient import Client, ClientConfig
    from wsclient.transport.memory import MemoryServer

    server = MemoryServer()
    server.refuse(times=2)                      # the first two attempts: connection refused
    client = Client("ws://feed.test/ws", config=ClientConfig(), connector=server.connect)
    async with client:
        conn = await server.wait_connections(1)  # the third attempt is accepted
        conn.send('{"type": "trade", "symbol": "BTC-USD"}')
        await conn.wait_received(1)             # what the client sent (its subscriptions, say)
        conn.auto_pong = False                  # the next ping goes unanswered: a dead link
        conn.close(1012, "restart")             # or drop(), blackhole(), stop_reading()

Handshakes are scripted in order (:meth:`~MemoryServer.accept`, :meth:`~MemoryServer.reject`,
:meth:`~MemoryServer.redirect`, :meth:`~MemoryServer.refuse`, :meth:`~MemoryServer.hang`); once the
script runs out, the default outcome applies (accept, unless a ``times=None`` call changed it). Each
accepted handshake gives a :class:`MemoryConnection`, the server's handle on that connection, which
records what the client sent and sends, pings, closes, drops or stalls on command.

The client's end, :class:`MemoryTransport`, keeps the whole
:class:`~wsclient.transport.base.Transport` contract the way the socket backends do, so that a
client cannot tell it from a network:

* **Reads.** Every :meth:`MemoryConnection.send` call is one read of the socket: its messages are
  counted in the pump's meter as they are read (before the sink sees them, even if held back) and
  ``meter.last_inbound`` is stamped once for the read; control frames alone neither count nor stamp.
  Messages are read ahead of the pump, as a socket backend's protocol does, and held for it: up to 16,
  then reading pauses and what the server sends next waits "in the kernel", control frames included
  (:meth:`~MemoryTransport.inbound_pending` counts those bytes). The pump delivers to the sink's
  inline target while it is set, hands what it returns to ``sink.defer`` without waiting, and
  otherwise waits on what the sink returns before it delivers more.
* **Writes.** What the client writes waits until the server reads it (at once, unless the server
  :meth:`~MemoryConnection.stop_reading` or the link is black-holed). The first ``send_buffer`` bytes
  stand for the kernel's send buffer; beyond them :meth:`~MemoryTransport.send_blocked` is true, and
  beyond ``write_limit`` more, :meth:`~MemoryTransport.send` waits until the server has read down to
  a quarter of that limit (:meth:`~MemoryTransport.send_nowait` and pings never wait). Pongs to a
  server that pings but reads nothing pile up to :data:`~wsclient.transport.base.CONTROL_BACKLOG`,
  then the link fails with :class:`~wsclient.errors.PeerNotReading`.
* **Pings** are matched by payload; a pong acknowledges its ping and every earlier one; the
  round-trip time is measured on the loop's clock (``pong_delay`` sets it).
* **Closing.** A close frame from either side starts ``close_timeout``, after which the client
  aborts; nothing is delivered after the peer's close frame; a message over ``max_size`` fails the
  link with 1009; close reasons are masked with the connection's secrets. The ends are reported as
  the other backends do: :class:`~wsclient.errors.TransportClosed` with the code of the close frame
  received (``by_peer=True``), else of the one sent (``by_peer=False``), else 1006.

**Time** is always the running loop's (``loop.time()``): the heartbeat's verdicts, the backoff, the
close timer and every timestamp here follow it. Under a loop with a virtual clock, a test with
realistic intervals (seconds) runs in milliseconds; with pytest, ``looptime`` (a dev dependency)
provides one: mark the test ``@pytest.mark.looptime``.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from ..errors import HandshakeFailed, HandshakeRejected, PeerNotReading, TransportClosed
from ..redact import Redactor, connection_secrets
from .base import CONTROL_BACKLOG, ConnectOptions, Data, FrameSink, InboundMeter, Meter, Sink, as_sink

if TYPE_CHECKING:
    from .base import Connector, Transport

__all__ = ["HOLD_LIMIT", "HandshakeRecord", "MemoryConnection", "MemoryServer", "MemoryTransport"]

#: Messages the client reads ahead of its pump before it stops reading (websockets' ``max_queue``
#: and the picows backend's hold limit are 16 too).
HOLD_LIMIT = 16

_MAX_CONTROL_PAYLOAD = 125


# -- frames on the wire ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Close:
    code: int | None
    """None: a close frame without a code (read as 1005)."""
    reason: str


_Frame = str | bytes | _Ping | _Pong | _Close


def _payload_size(frame: _Frame) -> int:
    if isinstance(frame, str):
        return len(frame.encode())
    if isinstance(frame, bytes):
        return len(frame)
    if isinstance(frame, _Close):
        return 0 if frame.code is None else 2 + len(frame.reason.encode())
    return len(frame.payload)


def _wire_size(frame: _Frame, *, masked: bool) -> int:
    """Bytes of ``frame`` on the wire: RFC 6455 header (masked when the client sends) and payload."""
    size = _payload_size(frame)
    header = 2 if size < 126 else 4 if size < 65536 else 10
    return header + (4 if masked else 0) + size


def _as_data(message: object) -> Data:
    if isinstance(message, str):
        return message
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    raise TypeError(f"a WebSocket message is str (text) or bytes (binary), not {type(message).__name__}")


def _control_payload(payload: bytes) -> bytes:
    payload = bytes(payload)
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise ValueError(f"a control frame's payload is at most 125 bytes, not {len(payload)}")
    return payload


# -- handshake outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Accept:
    subprotocol: str | None


@dataclass(frozen=True, slots=True)
class _Reject:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Refuse:
    pass


@dataclass(frozen=True, slots=True)
class _Hang:
    pass


_Outcome = _Accept | _Reject | _Refuse | _Hang


@dataclass(slots=True)
class HandshakeRecord:
    """One opening handshake the server saw, whatever became of it."""

    url: str
    """The URL the client asked for (after redirects, the new one)."""
    headers: dict[str, str]
    """The headers the client sent with it (credentials included: this is the server's view)."""
    subprotocols: tuple[str, ...]
    at: float
    """``loop.time()`` when the handshake began."""
    open_connections: int
    """Connections of this server whose client end was still up when the handshake began: a client
    that never holds two links at once always shows 0 here."""
    outcome: str = "pending"
    """``"accepted"``, ``"rejected"``, ``"refused"``, ``"hung"``, ``"failed"`` (a subprotocol that
    was not offered), or ``"abandoned"`` (the client gave up during ``handshake_delay``)."""
    status: int | None = None
    """101 when accepted, the HTTP status of a rejection."""


# -- the server ------------------------------------------------------------------------------------


class MemoryServer:
    """A WebSocket server in memory; :meth:`connect` is the :data:`~wsclient.transport.base.Connector`.

    ``subprotocols`` are the ones it speaks: it picks the first the client offers among them (unless
    :meth:`accept` names one). ``send_buffer`` and ``write_limit`` size the client's write buffer
    (see the module's docstring); ``handshake_delay`` is how long every handshake takes, on the loop's
    clock; ``auto_pong`` and ``pong_delay`` are the defaults of new connections.
    """

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (),
        send_buffer: int = 64 * 1024,
        write_limit: int = 32 * 1024,
        handshake_delay: float = 0.0,
        auto_pong: bool = True,
        pong_delay: float = 0.0,
    ) -> None:
        if send_buffer < 0 or write_limit < 1:
            raise ValueError("send_buffer must be >= 0 and write_limit >= 1 (bytes)")
        if handshake_delay < 0 or pong_delay < 0:
            raise ValueError("handshake_delay and pong_delay are seconds, >= 0")
        self.subprotocols = tuple(subprotocols)
        self.send_buffer = send_buffer
        self.write_limit = write_limit
        self.handshake_delay = handshake_delay
        self.auto_pong = auto_pong
        self.pong_delay = pong_delay
        self.handshakes: list[HandshakeRecord] = []
        """Every handshake, in order."""
        self.connections: list[MemoryConnection] = []
        """Every accepted connection, in order (``connections[0].id == 1``)."""
        self.peak_open = 0
        """The most connections whose client end was up at the same time."""
        self._script: deque[_Outcome] = deque()
        self._default: _Outcome = _Accept(None)
        self._waiters: list[asyncio.Future[None]] = []

    # -- scripting the handshakes ------------------------------------------------------------------
    #
    # Each call queues the outcome of the next ``times`` handshakes, after those already queued;
    # ``times=None`` drops the queue and makes the outcome apply to every handshake from now on.

    def accept(self, *, subprotocol: str | None = None, times: int | None = 1) -> None:
        """Accept the handshake; ``subprotocol`` is chosen even if the client did not offer it
        (the client then fails the handshake, as it must)."""
        self._queue(_Accept(subprotocol), times)

    def reject(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        times: int | None = 1,
    ) -> None:
        """Answer the upgrade with HTTP ``status`` (``headers`` such as ``Retry-After``, ``body``)."""
        if not 200 <= status <= 599 or status == 101:
            raise ValueError(f"a rejection is an HTTP status from 200 to 599 (not 101), not {status}")
        self._queue(_Reject(status, tuple((headers or {}).items()), bytes(body)), times)

    def redirect(self, location: str, *, status: int = 302, times: int | None = 1) -> None:
        """Answer with a redirect (301, 302, 303, 307 or 308) to ``location``."""
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"a redirect is HTTP 301, 302, 303, 307 or 308, not {status}")
        self.reject(status, {"Location": location}, times=times)

    def refuse(self, *, times: int | None = 1) -> None:
        """Refuse the TCP connection: the connector raises :class:`ConnectionRefusedError`."""
        self._queue(_Refuse(), times)

    def hang(self, *, times: int | None = 1) -> None:
        """Never answer the handshake: the client's ``open_timeout`` ends it (TimeoutError)."""
        self._queue(_Hang(), times)

    def _queue(self, outcome: _Outcome, times: int | None) -> None:
        if times is None:
            self._script.clear()
            self._default = outcome
            return
        if times < 1:
            raise ValueError(f"times is a count of handshakes (>= 1), or None for all, not {times}")
        self._script.extend([outcome] * times)

    # -- the connector -----------------------------------------------------------------------------

    async def connect(self, options: ConnectOptions) -> MemoryTransport:
        """Open a connection to this server (the connector to pass to ``Client(connector=...)``).

        Raises what a socket backend raises for the scripted outcome: :class:`ConnectionRefusedError`,
        :class:`~wsclient.errors.HandshakeRejected` (a redirect included),
        :class:`~wsclient.errors.HandshakeFailed`, or TimeoutError after ``options.open_timeout``.
        A connection exists only once the handshake completed: one cancelled before leaves none.
        """
        loop = asyncio.get_running_loop()
        record = HandshakeRecord(
            url=options.url,
            headers=dict(options.headers),
            subprotocols=tuple(options.subprotocols),
            at=loop.time(),
            open_connections=len(self.open_connections),
        )
        self.handshakes.append(record)
        outcome = self._script.popleft() if self._script else self._default
        self._notify()
        try:
            async with asyncio.timeout(options.open_timeout):
                if self.handshake_delay > 0:
                    await asyncio.sleep(self.handshake_delay)
                if isinstance(outcome, _Hang):
                    record.outcome = "hung"
                    await _forever()
                return self._complete(outcome, record, options)
        finally:
            if record.outcome == "pending":
                record.outcome = "abandoned"
            self._notify()

    def _complete(
        self, outcome: _Accept | _Reject | _Refuse, record: HandshakeRecord, options: ConnectOptions
    ) -> MemoryTransport:
        if isinstance(outcome, _Refuse):
            record.outcome = "refused"
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused (memory server)")
        if isinstance(outcome, _Reject):
            record.outcome = "rejected"
            record.status = outcome.status
            raise HandshakeRejected(outcome.status, dict(outcome.headers), outcome.body)
        subprotocol = outcome.subprotocol
        if subprotocol is None:
            subprotocol = next((p for p in options.subprotocols if p in self.subprotocols), None)
        elif subprotocol not in options.subprotocols:
            record.outcome = "failed"
            raise HandshakeFailed(
                f"invalid handshake: server chose subprotocol {subprotocol!r}, which was not offered"
            )
        record.outcome = "accepted"
        record.status = 101
        connection = MemoryConnection(self, len(self.connections) + 1, record, subprotocol, options)
        self.connections.append(connection)
        self.peak_open = max(self.peak_open, len(self.open_connections))
        return connection.transport

    # -- looking on --------------------------------------------------------------------------------

    @property
    def open_connections(self) -> list[MemoryConnection]:
        """Connections whose client end is still up."""
        return [c for c in self.connections if c.open]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, checked whenever the server's records change.

        Raises TimeoutError after ``timeout`` seconds of the loop's clock.
        """
        async with asyncio.timeout(timeout):
            while not predicate():  # bounded by the timeout; one pass per change of the records
                await self._changed()

    async def wait_connections(self, count: int, timeout: float = 10.0) -> MemoryConnection:
        """Wait until ``count`` connections were accepted in all; return the ``count``-th."""
        await self.wait_until(lambda: len(self.connections) >= count, timeout)
        return self.connections[count - 1]

    async def wait_handshakes(self, count: int, timeout: float = 10.0) -> HandshakeRecord:
        """Wait until ``count`` handshakes began in all; return the ``count``-th."""
        await self.wait_until(lambda: len(self.handshakes) >= count, timeout)
        return self.handshakes[count - 1]

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():  # cancelled or timed out: leave nothing behind
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def __repr__(self) -> str:
        return f"<MemoryServer handshakes={len(self.handshakes)} open={len(self.open_connections)}>"


async def _forever() -> NoReturn:
    """Wait for what never comes: a timeout or a cancellation ends it."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("a future that nobody resolves was resolved")


# -- the server's end of one connection --------------------------------------------------------------


class MemoryConnection:
    """The server's end of one connection: what the client sent, and the server's moves.

    ``auto_pong`` (answer the client's pings, after ``pong_delay``) and ``echo_close`` (answer the
    client's close frame and end the connection) may be changed at any time.
    """

    def __init__(
        self,
        server: MemoryServer,
        number: int,
        request: HandshakeRecord,
        subprotocol: str | None,
        options: ConnectOptions,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.server = server
        self.id = number
        """1 for the server's first connection, then 2, …"""
        self.request = request
        """The handshake that opened it."""
        self.subprotocol = subprotocol
        self.received: list[Data] = []
        """Data messages from the client, in order."""
        self.received_at: list[float] = []
        """``loop.time()`` when the server read each of :attr:`received`."""
        self.pings: list[bytes] = []
        self.pings_at: list[float] = []
        """``loop.time()`` when the server read each of :attr:`pings`."""
        """Payloads of the client's pings, in order."""
        self.pongs: list[bytes] = []
        """Payloads of the client's pongs (answers to :meth:`ping`)."""
        self.close_code: int | None = None
        """The code of the client's close frame once read (1005 for a frame without a code)."""
        self.close_reason = ""
        self.auto_pong = server.auto_pong
        self.pong_delay = server.pong_delay
        self.echo_close = True
        self.opened_at = loop.time()
        self.ended_at: float | None = None
        """``loop.time()`` when the client's end went down."""
        self._reading = True
        self._blackholed = False
        self._close_sent: _Close | None = None
        self._finish_close = True
        self._ended = False  # the server closed its side of the TCP connection
        self._withheld: list[bytes] = []
        self._read_handle: asyncio.Handle | None = None
        self.transport = MemoryTransport(self, options, subprotocol, server.send_buffer, server.write_limit)
        """The client's end (what the client's supervisor holds)."""

    @property
    def open(self) -> bool:
        """Whether the client's end is still up: it has neither read the end of the connection nor
        aborted it (a link black-holed or not read any more is still up)."""
        return not self.transport.lost

    # -- the server's moves ------------------------------------------------------------------------

    def send(self, *messages: Data) -> None:
        """Send messages (``str`` as text, ``bytes`` as binary), all in one read of the client's socket.

        Raises ConnectionError once the connection is over or the server sent its close frame.
        On a black-holed link they are lost.
        """
        self._check_sending()
        frames: list[_Frame] = [_as_data(message) for message in messages]
        if frames:
            self._down(frames)

    def ping(self, payload: bytes = b"") -> None:
        """Send a protocol ping; the client's pong lands in :attr:`pongs`."""
        self._check_sending()
        self._down([_Ping(_control_payload(payload))])

    def pong(self, payload: bytes = b"") -> None:
        """Send a pong (an answer to a withheld ping, or an unsolicited one, which is ignored)."""
        self._check_sending()
        self._down([_Pong(_control_payload(payload))])

    def answer_pings(self) -> None:
        """Answer every ping withheld while :attr:`auto_pong` was off, oldest first, in one read."""
        self._check_sending()
        withheld, self._withheld = self._withheld, []
        if withheld:
            self._down([_Pong(payload) for payload in withheld])

    def close(self, code: int | None = 1000, reason: str = "", *, finish: bool = True) -> None:
        """Send a close frame (``code=None``: one without a code, read as 1005).

        The client answers with its own and the server then ends the connection; with
        ``finish=False`` it never does, and the client aborts after its ``close_timeout``. Does
        nothing once the server sent a close frame or the connection is over.
        """
        if self._close_sent is not None or self._ended or not self.open:
            return
        if code is not None and not 1000 <= code <= 4999:
            raise ValueError(f"a close code is from 1000 to 4999, not {code}")
        self._close_sent = _Close(code, reason)
        self._finish_close = finish
        self._down([self._close_sent])
        if self.close_code is not None and finish:
            # The client's close frame came first (and echo_close was off): this is the answer.
            self._end()

    def drop(self) -> None:
        """End the connection without a close frame (the client reads 1006 after what was sent)."""
        if not self._ended and self.open:
            self._end()

    def blackhole(self) -> None:
        """From now on nothing arrives, either way: the server's frames are lost and what the client
        writes stays in its write buffer for ever (the server's records still see its end)."""
        self._blackholed = True

    def stop_reading(self) -> None:
        """Read nothing of what the client sends: its write buffer fills, then its sends wait."""
        self._reading = False

    def resume_reading(self) -> None:
        """Read again: what the client wrote arrives, in order, and its blocked sends go on."""
        self._reading = True
        self._schedule_read()

    # -- looking on --------------------------------------------------------------------------------

    async def wait_received(self, count: int, timeout: float = 10.0) -> list[Data]:
        """Wait until the client's ``count``-th data message arrived; return :attr:`received`."""
        await self.server.wait_until(lambda: len(self.received) >= count, timeout)
        return self.received

    async def wait_pings(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until the client's ``count``-th ping arrived; return :attr:`pings`."""
        await self.server.wait_until(lambda: len(self.pings) >= count, timeout)
        return self.pings

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Wait until the client's end is down (see :attr:`open`)."""
        await self.server.wait_until(lambda: not self.open, timeout)

    def __repr__(self) -> str:
        return (
            f"<MemoryConnection #{self.id} {'open' if self.open else 'ended'} received={len(self.received)}>"
        )

    # -- internals ---------------------------------------------------------------------------------

    def _check_sending(self) -> None:
        if self._close_sent is not None or self._ended or not self.open:
            raise ConnectionError(f"memory connection #{self.id} is closed")

    def _down(self, frames: list[_Frame]) -> None:
        if not self._blackholed:
            self.transport._arrive(frames)

    def _end(self) -> None:
        self._ended = True
        if not self._blackholed:
            self.transport._arrive_eof()

    def _schedule_read(self) -> None:
        if self._read_handle is None and self._reading and not self._blackholed and self.transport._up:
            self._read_handle = self._loop.call_soon(self._read)

    def _read(self) -> None:
        """Read everything the client wrote so far (the server keeps up with any client)."""
        self._read_handle = None
        transport = self.transport
        if not self._reading or self._blackholed:
            return
        now = self._loop.time()
        up = transport._up
        while up and not self._ended:  # bounded: the frames written so far
            frame, size = up.popleft()
            transport._up_bytes -= size
            self._take(frame, now)
        transport._drained()
        self.server._notify()

    def _take(self, frame: _Frame, now: float) -> None:
        if isinstance(frame, str | bytes):
            self.received.append(frame)
            self.received_at.append(now)
        elif isinstance(frame, _Ping):
            self.pings.append(frame.payload)
            self.pings_at.append(now)
            if self.auto_pong:
                if self.pong_delay > 0:
                    self._loop.call_later(self.pong_delay, self._answer, frame.payload)
                else:
                    self._answer(frame.payload)
            else:
                self._withheld.append(frame.payload)
        elif isinstance(frame, _Pong):
            self.pongs.append(frame.payload)
        else:
            self.close_code = 1005 if frame.code is None else frame.code
            self.close_reason = frame.reason
            if self._close_sent is not None:
                # The client's answer to the server's close frame: the handshake is complete.
                if self._finish_close:
                    self._end()
            elif self.echo_close:
                self._close_sent = _Close(frame.code, frame.reason)
                self._down([self._close_sent])
                self._end()

    def _answer(self, payload: bytes) -> None:
        if self._close_sent is None and not self._ended and self.open:
            self._down([_Pong(payload)])

    def _client_ended(self) -> None:
        self.ended_at = self._loop.time()
        if self._read_handle is not None:
            self._read_handle.cancel()
            self._read_handle = None
        self.server._notify()


# -- the client's end --------------------------------------------------------------------------------


class MemoryTransport:
    """The client's end of a :class:`MemoryConnection`: a :class:`~wsclient.transport.base.Transport`."""

    def __init__(
        self,
        connection: MemoryConnection,
        options: ConnectOptions,
        subprotocol: str | None,
        send_buffer: int,
        write_limit: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.connection = connection
        """The server's end (for tests)."""
        self._subprotocol = subprotocol
        self._max_size = options.max_size
        self._close_timeout = options.close_timeout
        self._redactor = Redactor((*options.secrets, *connection_secrets(options.url, options.headers)))
        self._capacity = send_buffer
        self._write_limit = write_limit
        # Receive side: reads waiting "in the kernel" (None is the end of the connection), and the
        # messages read ahead of the pump.
        self._kernel: deque[tuple[list[_Frame], int] | None] = deque()
        self._kernel_bytes = 0
        self._read_handle: asyncio.Handle | None = None
        self._held: deque[Data] = deque()
        # The meter messages are counted in: the pump's while one runs, else one of our own whose
        # counts the next pump's meter takes over.
        self._meter: InboundMeter = Meter()
        self._own_meter = True
        self._wake: asyncio.Future[None] | None = None
        self._pumping = False
        self._discarding = False
        self._close_rcvd: _Close | None = None
        self._close_sent: _Close | None = None
        self._failed = False
        self._stalled: str | None = None
        self.lost = False
        """Whether this end is down: it read the end of the connection, or aborted it."""
        self._ended: asyncio.Future[None] = loop.create_future()
        self._close_timer: asyncio.TimerHandle | None = None
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        # Send side: frames written and not yet read by the server, with their wire size.
        self._up: deque[tuple[_Frame, int]] = deque()
        self._up_bytes = 0
        self._writing_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._unread_control = 0

    # -- the Transport interface -------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, if any."""
        return self._subprotocol

    async def pump(self, sink: Sink | FrameSink, meter: InboundMeter | None = None) -> NoReturn:
        """Deliver every message read to ``sink``, in order; raise TransportClosed at the end.

        Messages read before the end are still delivered, as with the socket backends.
        """
        if self._pumping:
            raise RuntimeError("pump() is already running on this transport")
        target_sink = as_sink(sink)
        self._attach(meter)
        self._pumping = True
        held = self._held
        try:
            while True:  # one pass per wake-up; ends with the connection
                while held:
                    data = held.popleft()
                    if len(held) < HOLD_LIMIT:
                        self._schedule_read()
                    target = target_sink.inline
                    if target is not None:
                        pending = target.dispatch(data)
                        if pending is not None:
                            target_sink.defer(pending)
                        continue
                    wait = target_sink(data)
                    if wait is not None:
                        await wait
                if self.lost:
                    raise self._closed()
                self._wake = self._loop.create_future()
                await self._wake
        finally:
            self._wake = None
            self._pumping = False
            self._detach()

    async def send(self, data: Data) -> None:
        """Send one message; wait while the write buffer is over its limit (the server not reading).

        Raises TransportClosed if the connection is closing or closed, or ends while waiting (the
        frame then sits in a buffer that will never be read).
        """
        self._check_open()
        self._write(_as_data(data))
        if not self._writing_paused:
            return
        while self._writing_paused and not self.lost:  # bounded: each pass is one drain or the end
            if self._writable is None:
                self._writable = self._loop.create_future()
            # Shared by every waiting sender: one cancelled must not cancel it for the others.
            await asyncio.shield(self._writable)
        if self.lost:
            raise self._closed()

    async def ping(self, payload: bytes) -> asyncio.Future[float]:
        """Send a ping; return the future of its round-trip time (see :meth:`ping_nowait`)."""
        return self.ping_nowait(payload)

    def ping_nowait(self, payload: bytes) -> asyncio.Future[float]:
        """Write a ping at once; the future resolves with the RTT when its pong (or a later one) is
        read, or fails with TransportClosed when the connection ends first."""
        self._check_open()
        payload = _control_payload(payload)
        if payload in self._pings:
            raise RuntimeError("already waiting for a pong with the same data")
        future: asyncio.Future[float] = self._loop.create_future()
        self._pings[payload] = (future, self._loop.time())
        self._write(_Ping(payload))
        return future

    def send_nowait(self, data: Data) -> None:
        """Write one message at once, however full the write buffer."""
        self._check_open()
        self._write(_as_data(data))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame and wait for the end of the connection (aborted after ``close_timeout``)."""
        if self.lost:
            return
        if not self._pumping:
            # Nobody reads the held messages any more: drop them and read on, to see the close.
            self._discarding = True
            self._held.clear()
            self._schedule_read()
        if self._close_sent is None:
            self._write_close(code, reason)
        await asyncio.shield(self._ended)

    def abort(self) -> None:
        """Drop the connection at once, without a close frame. Idempotent."""
        if self.lost:
            return
        self._kernel.clear()
        self._kernel_bytes = 0
        self._up.clear()
        self._up_bytes = 0
        self._connection_lost()

    def write_buffer_size(self) -> int:
        """Bytes written that the server has not read yet (the kernel's share included)."""
        return self._up_bytes

    def send_blocked(self) -> bool:
        """Whether more is unread than the kernel's send buffer holds (``send_buffer``)."""
        return self._up_bytes > self._capacity

    def inbound_pending(self) -> int:
        """Bytes the server sent that the client has not read yet (reading paused, or not yet run)."""
        return self._kernel_bytes

    def __repr__(self) -> str:
        return f"<MemoryTransport of connection #{self.connection.id} {'lost' if self.lost else 'up'}>"

    # -- receive side ------------------------------------------------------------------------------

    def _attach(self, meter: InboundMeter | None) -> None:
        if meter is None or meter is self._meter:
            return
        if self._own_meter:
            # Messages read before the pump started count too.
            early = self._meter
            meter.frames_in += early.frames_in
            meter.bytes_in += early.bytes_in
            if early.frames_in:
                meter.last_inbound = max(meter.last_inbound, early.last_inbound)
        self._meter = meter
        self._own_meter = False

    def _detach(self) -> None:
        if not self._own_meter:
            self._meter = Meter()
            self._own_meter = True

    def _arrive(self, frames: list[_Frame]) -> None:
        if self.lost:
            return
        size = sum(_wire_size(frame, masked=False) for frame in frames)
        self._kernel.append((frames, size))
        self._kernel_bytes += size
        self._schedule_read()

    def _arrive_eof(self) -> None:
        if not self.lost:
            self._kernel.append(None)
            self._schedule_read()

    def _schedule_read(self) -> None:
        if self._read_handle is None and self._kernel and not self.lost and len(self._held) < HOLD_LIMIT:
            self._read_handle = self._loop.call_soon(self._read)

    def _read(self) -> None:
        """One read of the socket: the frames of one server send, or the end of the connection."""
        self._read_handle = None
        kernel = self._kernel
        if self.lost or not kernel or len(self._held) >= HOLD_LIMIT:
            return
        item = kernel.popleft()
        if item is None:
            self._connection_lost()
            return
        frames, size = item
        self._kernel_bytes -= size
        meter = self._meter
        carried = False
        for frame in frames:
            if self.lost:
                break  # failed while reading (a stalled peer): the rest is never read
            if self._close_rcvd is not None or self._failed:
                continue  # nothing is read after the peer's close frame, or after a failure
            if isinstance(frame, str | bytes):
                if self._max_size is not None and _payload_size(frame) > self._max_size:
                    self._fail(
                        1009, f"message over size limit ({_payload_size(frame)} > {self._max_size} bytes)"
                    )
                    continue
                meter.frames_in += 1
                meter.bytes_in += len(frame)
                carried = True
                if not self._discarding:
                    self._held.append(frame)
            elif isinstance(frame, _Pong):
                self._on_pong(frame.payload)
            elif isinstance(frame, _Ping):
                self._on_ping(frame.payload)
            else:
                self._on_close(frame)
        if carried:
            meter.last_inbound = self._loop.time()
        self._wake_pump()
        self._schedule_read()

    def _wake_pump(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _on_pong(self, payload: bytes) -> None:
        pings = self._pings
        if payload not in pings:
            return  # unsolicited: allowed by RFC 6455, ignored
        now = self._loop.time()
        # A pong acknowledges its ping and every earlier one, as in websockets.
        while pings:  # bounded: the pings outstanding
            key, (future, sent_at) = next(iter(pings.items()))
            del pings[key]
            if not future.done():
                future.set_result(now - sent_at)
            if key == payload:
                break

    def _on_ping(self, payload: bytes) -> None:
        if self._close_sent is not None or self._stalled is not None:
            return
        if self._writing_paused:
            # The server does not read what we write: a few pongs are a slow link, a flood is a peer
            # to give up on.
            self._unread_control += _wire_size(_Pong(payload), masked=True)
            if self._unread_control > CONTROL_BACKLOG:
                self._stall()
                return
        self._write(_Pong(payload))

    def _on_close(self, frame: _Close) -> None:
        self._close_rcvd = frame
        if self._close_sent is None:
            self._write_close(frame.code, frame.reason)  # echo the peer's code (RFC 6455 §5.5.1)
        else:
            self._arm_close_timer()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: a close frame with ``code``, and nothing more is read."""
        self._failed = True
        if self._close_sent is None:
            self._write_close(code, reason[:123])

    def _stall(self) -> None:
        self._stalled = (
            f"peer is not reading: {self._unread_control} bytes of control frames (pongs) piled up "
            "unsent behind a full write buffer"
        )
        if self._close_sent is None:
            self._write_close(1008, "peer not reading")
        self.abort()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self.lost:
            self._close_timer = self._loop.call_later(self._close_timeout, self.abort)

    def _connection_lost(self) -> None:
        self.lost = True
        for handle in (self._close_timer, self._read_handle):
            if handle is not None:
                handle.cancel()
        self._close_timer = self._read_handle = None
        exc = self._closed()
        for future, _ in self._pings.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a heartbeat that moved on never awaits it
        self._pings.clear()
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        if not self._ended.done():
            self._ended.set_result(None)
        self._wake_pump()
        self.connection._client_ended()

    def _closed(self) -> TransportClosed:
        """How the connection ended (or is ending), as the socket backends report it."""
        if self._stalled is not None:
            return PeerNotReading(1008, self._stalled, by_peer=False)
        text = self._redactor.text
        rcvd, sent = self._close_rcvd, self._close_sent
        if rcvd is not None:
            return TransportClosed(1005 if rcvd.code is None else rcvd.code, text(rcvd.reason), by_peer=True)
        if sent is not None:
            return TransportClosed(1005 if sent.code is None else sent.code, text(sent.reason), by_peer=False)
        return TransportClosed(1006, "connection dropped without a close frame", by_peer=True)

    # -- send side ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.lost or self._close_sent is not None:
            raise self._closed()

    def _write(self, frame: _Frame) -> None:
        size = _wire_size(frame, masked=True)
        self._up.append((frame, size))
        self._up_bytes += size
        if not self._writing_paused and self._up_bytes - self._capacity > self._write_limit:
            self._writing_paused = True
        self.connection._schedule_read()

    def _write_close(self, code: int | None, reason: str) -> None:
        self._close_sent = _Close(code, reason)
        self._write(self._close_sent)
        self._arm_close_timer()

    def _drained(self) -> None:
        """The server read what was written: writing resumes below a quarter of the limit."""
        if self._writing_paused and self._up_bytes - self._capacity <= self._write_limit // 4:
            self._writing_paused = False
            self._unread_control = 0
            writable, self._writable = self._writable, None
            if writable is not None and not writable.done():
                writable.set_result(None)


if TYPE_CHECKING:
    # The interface is structural: let the type checker hold the backend to it.
    _transport: type[Transport] = MemoryTransport
    _connector: Connector = MemoryServer().connect
