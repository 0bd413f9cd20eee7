"""The default backend, on the ``websockets`` asyncio implementation.

``websockets`` does the framing and the protocol; this module adds the few bounds a long-running client
needs and the library leaves to its caller:

* **A closing handshake ends within ``close_timeout``.** Once a close frame has been sent or received
  (``protocol.close_expected()``), a timer aborts the socket if the server has not closed TCP by
  then, as the protocol's documentation asks. Without it, a server that sends its close frame and
  keeps the connection open leaves ``recv()`` waiting forever.
* **A peer that does not read cannot make the client buffer without bound.** Pongs (and a close
  echo) are written without flow control; while the write buffer is already above its high-water
  mark, what they add is counted, and beyond :data:`CONTROL_BACKLOG` bytes the link is failed (1008,
  then aborted) with :class:`~wsclient.errors.PeerNotReading`.
* **A send is sent only if the socket took it.** ``websockets`` lets a ``send()`` waiting on
  backpressure return normally when the connection is aborted underneath it; this backend raises
  :class:`~wsclient.errors.TransportClosed` instead.
* Redirects are not followed here (see :mod:`.redirect`), close reasons are masked with the
  connection's secrets, and the library logs on ``wsclient.transport.websockets``.
* A proxy is not websockets' business either: :mod:`.proxy` opens the tunnel, and websockets gets
  the connected socket (``sock=``), running TLS and the handshake over it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode
from websockets.protocol import State

from ..errors import ConfigError, HandshakeFailed, HandshakeRejected, PeerNotReading, TransportClosed
from ..redact import RedactingLogger, Redactor, connection_secrets
from .base import (
    CONTROL_BACKLOG,
    ConnectOptions,
    Data,
    FrameSink,
    InboundMeter,
    Meter,
    Sink,
    as_sink,
    kernel_recv_queue,
    kernel_send_queue,
    loop_clock,
)
from .proxy import open_tunnel

__all__ = ["WebsocketsTransport", "connect"]

_logger = logging.getLogger("wsclient.transport.websockets")


class _Connection(ClientConnection):
    """websockets' client connection, with a bounded closing handshake and a bounded control backlog."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timer: asyncio.TimerHandle | None = None
        # Bytes that automatic replies (pongs, the close echo) added to a write buffer that was
        # already above its high-water mark: the peer is not reading them.
        self.unread_control = 0
        self.stalled: str | None = None

    def data_received(self, data: bytes) -> None:
        paused = self.paused
        before = self.transport.get_write_buffer_size() if paused else 0
        super().data_received(data)
        if paused and self.stalled is None:
            added = self.transport.get_write_buffer_size() - before
            if added > 0:
                self.unread_control += added
                if self.unread_control > CONTROL_BACKLOG:
                    self._stall()
        self._arm_close_timer()

    def send_data(self) -> None:
        super().send_data()
        # Our own close frame (close() or a failure) also starts the closing handshake's clock.
        self._arm_close_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.unread_control = 0

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        super().connection_lost(exc)

    def _arm_close_timer(self) -> None:
        if (
            self.close_timer is None
            and self.protocol.state is State.CLOSING
            and self.close_timeout is not None
            and not self.transport.is_closing()
        ):
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.close_timer = None
        if self.protocol.state is not State.CLOSED:
            self.set_connection_exc(TimeoutError("timed out while closing connection"))
            self.transport.abort()

    def _stall(self) -> None:
        self.stalled = (
            f"peer is not reading: {self.unread_control} bytes of control frames (pongs) piled up "
            "unsent behind a full write buffer"
        )
        if self.protocol.state is State.OPEN:
            # The close frame will most likely never be read; it says why, should it be.
            self.protocol.fail(CloseCode.POLICY_VIOLATION, "peer not reading")
        self.transport.abort()


class WebsocketsTransport:
    """A :class:`~wsclient.transport.base.Transport` over a ``websockets`` ClientConnection."""

    __slots__ = ("_redactor", "_ws")

    def __init__(self, ws: _Connection, redactor: Redactor) -> None:
        self._ws = ws
        self._redactor = redactor

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    def _closed(self, exc: ConnectionClosed) -> TransportClosed:
        stalled = self._ws.stalled
        if stalled is not None:
            return PeerNotReading(CloseCode.POLICY_VIOLATION, stalled, by_peer=False)
        text = self._redactor.text
        if exc.rcvd is not None:
            return TransportClosed(exc.rcvd.code, text(exc.rcvd.reason), by_peer=True)
        if exc.sent is not None:
            # We sent a close frame and got none back: e.g. 1009 for an oversized message.
            return TransportClosed(exc.sent.code, text(exc.sent.reason), by_peer=False)
        return TransportClosed(1006, "connection dropped without a close frame", by_peer=True)

    async def _lost(self) -> NoReturn:
        """Raise the TransportClosed of a connection whose socket is closing or closed."""
        ws = self._ws
        await asyncio.shield(ws.connection_lost_waiter)
        raise self._closed(ws.protocol.close_exc)

    async def pump(self, sink: Sink | FrameSink, meter: InboundMeter | None = None) -> NoReturn:
        recv = self._ws.recv
        sink = as_sink(sink)
        if meter is None:
            meter = Meter()
        clock = loop_clock(asyncio.get_running_loop())
        try:
            while True:
                data = await recv()
                # websockets hides its reads: stamp every message.
                meter.last_inbound = clock()
                meter.frames_in += 1
                meter.bytes_in += len(data)
                target = sink.inline
                if target is not None:
                    pending = target.dispatch(data)
                    if pending is not None:
                        sink.defer(pending)
                    continue
                wait = sink(data)
                if wait is not None:
                    await wait
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    async def send(self, data: Data) -> None:
        ws = self._ws
        try:
            await ws.send(data)
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        if ws.transport.is_closing():
            # The socket was aborted while this send waited for the buffer to drain (websockets then
            # returns normally): the frame is in a buffer that will never be written.
            await self._lost()

    async def ping(self, payload: bytes) -> asyncio.Future[float]:
        return self.ping_nowait(payload)

    def ping_nowait(self, payload: bytes) -> asyncio.Future[float]:
        ws = self._ws
        self._check_open()
        if payload in ws.pending_pings:
            raise RuntimeError("already waiting for a pong with the same data")
        loop = asyncio.get_running_loop()
        # websockets' ping() waits for the send buffer to drain; a heartbeat must not. Its own
        # bookkeeping is kept (pending_pings is what acknowledges a pong), the write is done here.
        pong: asyncio.Future[float] = loop.create_future()
        ws.pending_pings[payload] = (pong, loop.time())
        ws.protocol.send_ping(payload)
        ws.send_data()
        # A future of our own, so that a caller giving up on it does not cancel websockets' (a late
        # pong would go unnoticed), and so that it fails with TransportClosed, not ConnectionClosed.
        future: asyncio.Future[float] = loop.create_future()
        pong.add_done_callback(lambda done: self._settle(done, future))
        return future

    def send_nowait(self, data: Data) -> None:
        ws = self._ws
        self._check_open()
        if isinstance(data, str):
            ws.protocol.send_text(data.encode())
        else:
            ws.protocol.send_binary(data)
        ws.send_data()

    def _check_open(self) -> None:
        ws = self._ws
        if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            stalled = ws.stalled
            if stalled is not None:
                raise PeerNotReading(CloseCode.POLICY_VIOLATION, stalled, by_peer=False)
            protocol = ws.protocol
            text = self._redactor.text
            if protocol.close_rcvd is not None:
                raise TransportClosed(
                    protocol.close_rcvd.code, text(protocol.close_rcvd.reason), by_peer=True
                )
            if protocol.close_sent is not None:
                raise TransportClosed(
                    protocol.close_sent.code, text(protocol.close_sent.reason), by_peer=False
                )
            raise TransportClosed(1006, "connection dropped without a close frame", by_peer=True)

    def _settle(self, pong: asyncio.Future[float], future: asyncio.Future[float]) -> None:
        if future.done():
            return
        if pong.cancelled():
            future.cancel()
            return
        exc = pong.exception()
        if exc is None:
            future.set_result(pong.result())
        else:
            future.set_exception(self._closed(exc) if isinstance(exc, ConnectionClosed) else exc)
            # Retrieved by nobody when the heartbeat has moved on: say it was, to keep logs quiet.
            future.exception()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)

    def abort(self) -> None:
        self._ws.transport.abort()

    def write_buffer_size(self) -> int:
        transport = self._ws.transport
        return transport.get_write_buffer_size() + kernel_send_queue(transport.get_extra_info("socket"))

    def send_blocked(self) -> bool:
        # asyncio writes straight to the socket until the kernel refuses more; only then it buffers.
        return self._ws.transport.get_write_buffer_size() > 0

    def inbound_pending(self) -> int:
        return kernel_recv_queue(self._ws.transport.get_extra_info("socket"))


class _connect(ws_connect):
    """``websockets.connect`` that hands redirects back to the caller (:mod:`.redirect`)."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


async def connect(options: ConnectOptions) -> WebsocketsTransport:
    """Open a connection with ``websockets``; errors are normalised as the interface says."""
    kwargs: dict[str, Any] = {}
    if options.url.startswith("wss:") and options.ssl_context is not None:
        kwargs["ssl"] = options.ssl_context
    redactor = Redactor((*options.secrets, *connection_secrets(options.url, options.headers)))
    sock = None
    if options.proxy is not None:
        # websockets would dial itself; the tunnel's socket takes its place (its `proxy` is unused).
        sock = kwargs["sock"] = await open_tunnel(options.proxy, options.url, user_agent=options.user_agent)
    try:
        try:
            opening = _connect(
                options.url,
                additional_headers=dict(options.headers),
                subprotocols=[s for s in options.subprotocols] or None,  # type: ignore[misc]
                compression=options.compression,
                open_timeout=options.open_timeout,
                # wsclient's heartbeat is the single source of truth for liveness.
                ping_interval=None,
                ping_timeout=None,
                close_timeout=options.close_timeout,
                max_size=options.max_size,
                proxy=None,
                logger=RedactingLogger(_logger, redactor),
                user_agent_header=options.user_agent or "wsclient (websockets)",
                create_connection=_Connection,
                **kwargs,
            )
        except BaseException:
            # Not started: the tunnel is still ours to close. Once awaited, asyncio's transport owns
            # it (handed over before the first suspension) and closes it on any failure.
            if sock is not None:
                sock.close()
            raise
        ws = await opening
    except InvalidStatus as exc:
        response = exc.response
        raise HandshakeRejected(
            response.status_code, dict(response.headers.raw_items()), bytes(response.body or b"")
        ) from None
    except InvalidURI:
        # The URI itself stays out of the message: it may carry a token.
        raise ConfigError("url is not a valid WebSocket URI: use ws(s)://host[:port]/path") from None
    except InvalidHandshake as exc:
        # The server's words may quote our own headers back (a key in a bad accept header): mask.
        raise HandshakeFailed(redactor.text(f"invalid handshake: {exc}")) from None
    assert isinstance(ws, _Connection)
    return WebsocketsTransport(ws, redactor)
