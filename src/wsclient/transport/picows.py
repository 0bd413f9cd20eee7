"""The fast backend, on ``picows`` (a Cython WebSocket library): ``pip install 'wsclient[fast]'``.

picows is callback-based: it parses frames straight out of its read buffer and calls
:meth:`WSListener.on_ws_frame` for each one. This backend turns that into the same contract as the
``websockets`` backend, so the supervisor cannot tell them apart:

* whole messages reach the sink, fragmented ones reassembled under the same ``max_size`` (exceeding
  it sends close 1009); text is validated as UTF-8 and delivered as ``str`` (invalid: close 1007),
  binary as ``bytes``;
* the sink is called directly from ``on_ws_frame``: no queue and no coroutine switch per message;
* when the sink returns an awaitable, reading stops (``pause_reading``) until it completes; the
  frames already parsed from the same read are held, in order, and the sink is never called while a
  wait is pending;
* the close handshake bounded by ``close_timeout`` (then the socket is aborted), nothing delivered
  after the peer's close frame, pings matched by payload, errors normalised as :mod:`.base` says;
* the peer's pings answered here rather than by picows, so that pongs to a peer that reads nothing
  cannot pile up without bound (:data:`~.base.CONTROL_BACKLOG`, then
  :class:`~wsclient.errors.PeerNotReading`);
* redirects are not followed here (see :mod:`.redirect`), nor is picows' proxy used (see
  :class:`_Dialer`); picows logs on
  ``wsclient.transport.picows``, masked with the connection's secrets.

The connect path dials the TCP socket itself (picows' ``socket_factory``) so that a connect cancelled
or timed out in the middle of the opening handshake cannot leave an orphan socket behind that
completes the upgrade later: one client, one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from collections import deque
from collections.abc import Awaitable
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

from picows import (
    WSCloseCode,
    WSFrame,
    WSHandshakeError,
    WSInvalidStatusError,
    WSInvalidURL,
    WSListener,
    WSMsgType,
    WSParsedURL,
    WSProtocolError,
    WSTransport,
    ws_connect,
)
from websockets.headers import build_authorization_basic

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

__all__ = ["PicowsTransport", "connect"]

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
_CLOSE = WSMsgType.CLOSE
_logger = logging.getLogger("wsclient.transport.picows")

#: Messages held before pump() starts, before reading pauses (websockets' max_queue is 16 too). While
#: a wait is pending reading is paused at once; what the current read already parsed is held.
_HOLD_LIMIT = 16


class _Listener(WSListener):
    """picows callbacks → whole messages → the sink. All receive-side state of one connection."""

    # Slots: attribute reads on the hot path are cheaper than through an instance dict, and an idle
    # connection is smaller.
    __slots__ = (
        "_clock",
        "_close_timeout",
        "_close_timer",
        "_direct",
        "_drained",
        "_failed",
        "_frag_size",
        "_frag_type",
        "_frags",
        "_held",
        "_late",
        "_max_size",
        "_own_pending",
        "_peer_closed",
        "_pending",
        "_reading_paused",
        "_redactor",
        "_sink",
        "_stamped_at",
        "_unread_control",
        "_writing_paused",
        "app_closing",
        "error",
        "meter",
        "pings",
        "stalled",
        "write_waiter",
        "ws",
    )

    def __init__(self, max_size: int | None, close_timeout: float, redactor: Redactor) -> None:
        super().__init__()
        self.ws: WSTransport | None = None
        self._max_size = max_size
        self._close_timeout = close_timeout
        self._close_timer: asyncio.TimerHandle | None = None
        self._redactor = redactor
        # The loop's clock: the heartbeat's timers run on it.
        self._clock = loop_clock(asyncio.get_running_loop())
        self._sink: Sink | None = None
        # Messages parsed while no sink may be called: before pump() starts, or while a wait the sink
        # returned is pending. None means "deliver directly".
        self._held: deque[Data] | None = deque()
        # The sink while messages go straight to it (a sink, nothing held, no fragment pending), else
        # None: the one test on the hot path. _update_direct() keeps it in step.
        self._direct: Sink | None = None
        # Counted when parsed; the pump's meter replaces this one (and takes its counts).
        self.meter: InboundMeter = Meter()
        self._stamped_at = 0  # meter.frames_in when the clock was last read
        self._pending: asyncio.Future[None] | None = None
        self._own_pending = False
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        # Fragmented message being reassembled: opcode, payloads, total size.
        self._frag_type: WSMsgType | None = None
        self._frags: list[bytes] = []
        self._frag_size = 0
        # Outstanding pings by payload, in send order: (future of the RTT, loop time when sent).
        self.pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self.write_waiter: asyncio.Future[None] | None = None
        self.app_closing = False
        self.error: BaseException | None = None
        self._failed = False  # we failed the connection (1002/1007/1009)
        self._late = False  # a frame was seen after picows' parser failed the connection
        self._peer_closed = False  # the peer's close frame arrived: nothing after it is delivered
        self._writing_paused = False
        # Bytes of pongs written while the write buffer was above its high-water mark.
        self._unread_control = 0
        self.stalled: str | None = None

    # -- picows callbacks ------------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        sink = self._direct
        if sink is not None and frame.fin and not transport.is_close_frame_sent:
            # Hot path: a whole text or binary message, straight to the sink.
            msg_type = frame.msg_type
            if msg_type is _TEXT:
                try:
                    data: Data = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError as exc:
                    self._fail(1007, f"invalid UTF-8 in a text frame: {exc.reason}")
                    return
            elif msg_type is _BINARY:
                data = frame.get_payload_as_bytes()
            else:
                self._slow_frame(transport, frame, msg_type)
                return
            meter = self.meter
            meter.frames_in += 1
            meter.bytes_in += len(data)
            if frame.last_in_buffer:
                # One clock read per socket read: its messages all arrived together.
                meter.last_inbound = self._clock()
                self._stamped_at = meter.frames_in
            target = sink.inline
            if target is not None:
                pending = target.dispatch(data)
                if pending is not None:
                    sink.defer(pending)
                return
            wait = sink(data)
            if wait is not None:
                self._held = deque()
                self._direct = None
                self._pause_reading()
                self._block(wait)
            return
        self._slow_frame(transport, frame, frame.msg_type)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        exc = self.closed()
        for future, _ in self.pings.values():
            if not future.done():
                future.set_exception(exc)
            # Marks the exception as retrieved (a heartbeat that gave up on the ping never awaits it);
            # cancel() on a done future changes nothing else.
            future.cancel()
        self.pings.clear()
        self._writable()
        self._frags = []

    def pause_writing(self) -> None:
        # The socket's send buffer is above its high-water mark: send() waits until it drains.
        self._writing_paused = True
        if self.write_waiter is None:
            self.write_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._unread_control = 0
        self._writable()

    # -- receive side ----------------------------------------------------------------------------

    def _slow_frame(self, transport: WSTransport, frame: WSFrame, msg_type: WSMsgType) -> None:
        self._frame(transport, frame, msg_type)
        meter = self.meter
        if frame.last_in_buffer and meter.frames_in != self._stamped_at:
            # The read ended on a frame off the hot path (a control frame, a fragment, a held or
            # failed message): stamp it if it carried messages. A pong alone is no inbound traffic.
            meter.last_inbound = self._clock()
            self._stamped_at = meter.frames_in

    def _frame(self, transport: WSTransport, frame: WSFrame, msg_type: WSMsgType) -> None:
        if msg_type is _PONG or msg_type is _CLOSE or msg_type is _PING:
            self._control(transport, frame, msg_type)
            return
        if self._peer_closed:
            return  # RFC 6455 §5.5.1: the close frame is the last one a peer sends
        if transport.is_close_frame_sent and not self.app_closing and self._after_failure(frame):
            return
        if msg_type is _CONTINUATION:
            if self._frag_type is None:
                self._fail(1002, "unexpected continuation frame")
                return
        elif self._frag_type is not None:
            self._fail(1002, "expected a continuation frame")
            return
        elif msg_type is _TEXT or msg_type is _BINARY:
            if frame.fin:  # a whole message off the hot path: held, or before pump()
                if msg_type is _BINARY:
                    self._deliver(frame.get_payload_as_bytes())
                    return
                try:
                    text = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError as exc:
                    self._fail(1007, f"invalid UTF-8 in a text frame: {exc.reason}")
                    return
                self._deliver(text)
                return
            self._frag_type = msg_type
            self._direct = None
        else:
            self._control(transport, frame, msg_type)
            return
        self._frag_size += frame.payload_size
        if self._max_size is not None and self._frag_size > self._max_size:
            self._fail(1009, f"message over size limit ({self._frag_size} > {self._max_size} bytes)")
            return
        self._frags.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        payload = b"".join(self._frags)
        is_text = self._frag_type is _TEXT
        self._frag_type = None
        self._frags = []
        self._frag_size = 0
        self._update_direct()
        if is_text:
            try:
                data: Data = payload.decode()
            except UnicodeDecodeError as exc:
                self._fail(1007, f"invalid UTF-8 in a text message: {exc.reason}")
                return
        else:
            data = payload
        self._deliver(data)

    def _deliver(self, data: Data) -> None:
        """Count ``data``, then hand it to the sink, or hold it. (on_ws_frame inlines the first.)"""
        meter = self.meter
        meter.frames_in += 1
        meter.bytes_in += len(data)
        held = self._held
        if held is None:
            wait = self._sink(data)  # type: ignore[misc]  # _held is None only while a sink is set
            if wait is not None:
                self._held = deque()
                self._direct = None
                self._pause_reading()
                self._block(wait)
        else:
            held.append(data)
            if len(held) >= _HOLD_LIMIT:
                self._pause_reading()

    def _after_failure(self, frame: WSFrame) -> bool:
        """Whether ``frame`` comes after the failure of the connection (it is then dropped).

        Failures of ours drop everything after them. picows' parser reads one frame ahead: when the
        frame after a message fails (over max_size, say), picows sends the close frame and *then*
        hands over that message, which came first, so it is delivered, as websockets would. The
        oversized frame itself (picows keeps parsing after a size error) and anything later are not.
        """
        if self._failed or self._late:
            return True
        self._late = True
        return self._max_size is not None and frame.payload_size > self._max_size

    def _control(self, transport: WSTransport, frame: WSFrame, msg_type: WSMsgType) -> None:
        if self._peer_closed:
            return
        if msg_type is _PING:
            self._ping(transport, frame.get_payload_as_bytes())
        elif msg_type is _PONG:
            self._pong(frame.get_payload_as_bytes())
        elif msg_type is _CLOSE:
            self._peer_closed = True
            if not transport.is_close_frame_sent:
                # Echo the peer's code (RFC 6455 §5.5.1); picows cannot send an empty close frame,
                # so a close without a code is answered with 1000.
                code = frame.get_close_code().value or 1000
                transport.send_close(WSCloseCode(code), frame.get_close_message())
            self.closing()
            transport.disconnect()

    def _ping(self, transport: WSTransport, payload: bytes) -> None:
        if transport.is_close_frame_sent or self.stalled is not None:
            return
        if self._writing_paused:
            # The peer is not reading what we write: every pong now adds to a buffer that does not
            # drain. A few are fine (a slow link); a flood is a peer to give up on.
            self._unread_control += len(payload) + 6
            if self._unread_control > CONTROL_BACKLOG:
                self._stall()
                return
        transport.send_pong(payload)

    def _stall(self) -> None:
        self.stalled = (
            f"peer is not reading: {self._unread_control} bytes of control frames (pongs) piled up "
            "unsent behind a full write buffer"
        )
        self._failed = True
        ws = self.ws
        if ws is None:
            return
        if not ws.is_close_frame_sent:
            ws.send_close(WSCloseCode.POLICY_VIOLATION, b"peer not reading")
        ws.disconnect(graceful=False)

    def parser_failed(self) -> None:
        """picows' parser failed the connection and sent its close frame: read nothing more.

        (The message parsed just before the failing frame is still delivered: see _after_failure.)
        """
        ws = self.ws
        if ws is not None and not ws.is_disconnected and not self._reading_paused:
            self._reading_paused = True
            ws.underlying_transport.pause_reading()
        self.closing()

    def closing(self) -> None:
        """A close frame went out or came in: the socket is aborted if not closed within the timeout."""
        if self._close_timer is None and self.ws is not None and not self.ws.is_disconnected:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self._close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        ws = self.ws
        if ws is not None and not ws.is_disconnected:
            ws.disconnect(graceful=False)

    def _pong(self, payload: bytes) -> None:
        pings = self.pings
        if payload not in pings:
            return  # unsolicited pong: allowed by RFC 6455, ignored
        now = self._clock()
        # A pong acknowledges its ping and every earlier one, as in websockets.
        while pings:
            key, (future, sent_at) = next(iter(pings.items()))
            del pings[key]
            if not future.done():
                future.set_result(now - sent_at)
            if key == payload:
                break

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: close frame with ``code``, then drop the TCP connection."""
        self._failed = True
        ws = self.ws
        if ws is None:
            return
        if not ws.is_close_frame_sent:
            ws.send_close(WSCloseCode(code), reason.encode()[:123])
        self.closing()
        ws.disconnect()

    # -- delivery and backpressure ---------------------------------------------------------------

    def _block(self, wait: Awaitable[None]) -> None:
        pending = self._pending = asyncio.ensure_future(wait)
        # A coroutine became a task of ours: it must not outlive the pump (a future is the sink's).
        self._own_pending = pending is not wait
        pending.add_done_callback(self._drain)

    def _drain(self, _: object = None) -> None:
        """Deliver held messages until the sink asks to wait again, then resume reading."""
        self._pending = None
        sink = self._sink
        held = self._held
        if sink is None or held is None:
            return
        try:
            while held:
                wait = sink(held.popleft())
                if wait is not None:
                    self._block(wait)
                    return
        except Exception as exc:
            # The websockets backend lets a sink error out of pump(); so does this one, via the pump.
            self.error = exc
            self._fail(1011, "internal error")
        self._held = None
        self._update_direct()
        ws = self.ws
        if self._reading_paused and ws is not None and not ws.is_disconnected:
            self._reading_paused = False
            ws.underlying_transport.resume_reading()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _update_direct(self) -> None:
        if self._sink is not None and self._held is None and self._frag_type is None:
            self._direct = self._sink
        else:
            self._direct = None

    def _pause_reading(self) -> None:
        ws = self.ws
        if not self._reading_paused and ws is not None and not ws.is_disconnected:
            self._reading_paused = True
            ws.underlying_transport.pause_reading()

    def attach(self, sink: Sink, meter: InboundMeter | None) -> None:
        """Start delivering to ``sink``: first what was held since the handshake."""
        if meter is not None and meter is not self.meter:
            # What was read before the pump started counts too.
            early = self.meter
            meter.frames_in += early.frames_in
            meter.bytes_in += early.bytes_in
            if early.frames_in:
                meter.last_inbound = max(meter.last_inbound, early.last_inbound)
            self.meter = meter
            self._stamped_at = meter.frames_in
        self._sink = sink
        self._update_direct()
        if self._held is not None and self._pending is None:
            self._drain()

    def detach(self) -> None:
        """Stop delivering: later messages are held and reading pauses, until attach() again."""
        self._sink = None
        self._direct = None
        if self._held is None:
            self._held = deque()
        pending = self._pending
        if pending is not None:
            pending.remove_done_callback(self._drain)
            if self._own_pending:
                pending.cancel()
            self._pending = None
        drained = self._drained
        if drained is not None and not drained.done():
            drained.cancel()
        self._drained = None

    def discard(self) -> None:
        """Nobody will read any more: drop what is held and let reading run (to see the close)."""
        if self._sink is None:
            self._held = None
            self._sink = _DISCARD
            self._update_direct()
            ws = self.ws
            if self._reading_paused and ws is not None and not ws.is_disconnected:
                self._reading_paused = False
                ws.underlying_transport.resume_reading()

    async def drained(self) -> None:
        """Return once every held message has been delivered."""
        while self._held is not None:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def _writable(self) -> None:
        waiter = self.write_waiter
        self.write_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def closed(self) -> TransportClosed:
        """The TransportClosed describing how this connection ended (or is ending), as websockets does."""
        if self.stalled is not None:
            return PeerNotReading(WSCloseCode.POLICY_VIOLATION.value, self.stalled, by_peer=False)
        ws = self.ws
        handshake = ws.close_handshake if ws is not None else None
        if handshake is None:
            return TransportClosed(1006, "connection dropped without a close frame", by_peer=True)
        sent, rcvd = handshake.sent, handshake.recv
        text = self._redactor.text
        if sent is not None and not handshake.recv_then_sent and not self.app_closing:
            # We failed the connection (1002/1007/1009…): the peer's echo does not make it theirs.
            return TransportClosed(sent.code.value, text(sent.reason or ""), by_peer=False)
        if rcvd is not None:
            # A close frame without a code reads as 1005, as in websockets.
            return TransportClosed(rcvd.code.value or 1005, text(rcvd.reason or ""), by_peer=True)
        assert sent is not None
        return TransportClosed(sent.code.value, text(sent.reason or ""), by_peer=False)


class _Log(RedactingLogger):
    """picows' logger for one connection: masked, and watching for the parser's failure.

    When picows' parser fails (a frame over ``max_size``, bad framing) it sends its close frame, logs
    "WS parser error" and disconnects 10 ms later; meanwhile it keeps reading into a buffer that
    doubles with every read and is never parsed again (a server streaming after a 1 GiB frame header
    fills megabytes). That log line is the only signal picows gives: it makes the listener stop
    reading at once. The line itself goes to DEBUG: the client reports the close (1009, 1002…) itself.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(_logger, redactor)
        self.listener: _Listener | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and isinstance(msg, str) and msg.startswith("WS parser"):
            if self.listener is not None:
                self.listener.parser_failed()
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


def _discard(data: Data) -> None:
    return None


_DISCARD = as_sink(_discard)


class PicowsTransport:
    """A :class:`~wsclient.transport.base.Transport` over a picows connection."""

    __slots__ = ("_listener", "_subprotocol", "_ws")

    def __init__(self, ws: WSTransport, listener: _Listener, subprotocol: str | None) -> None:
        self._ws = ws
        self._listener = listener
        self._subprotocol = subprotocol

    @property
    def subprotocol(self) -> str | None:
        return self._subprotocol

    async def pump(self, sink: Sink | FrameSink, meter: InboundMeter | None = None) -> NoReturn:
        listener = self._listener
        listener.attach(as_sink(sink), meter)
        try:
            try:
                await self._ws.wait_disconnected()
            except WSProtocolError:
                pass  # picows' parser failed the connection: the close handshake says how
            except Exception as exc:
                # The sink raised inside on_ws_frame: picows failed the connection with 1011.
                listener.error = exc
            # Messages read before the connection ended still go out, in order, as with websockets.
            await listener.drained()
        finally:
            listener.detach()
        if listener.error is not None:
            raise listener.error
        raise listener.closed()

    async def send(self, data: Data) -> None:
        ws = self._ws
        listener = self._listener
        if ws.is_close_frame_sent or ws.is_disconnected:
            # picows would drop the frame silently; the interface says TransportClosed.
            raise listener.closed()
        ws.send(_TEXT if isinstance(data, str) else _BINARY, data)
        waiter = listener.write_waiter
        if waiter is not None:
            # Like websockets' drain(): a sender outrunning the link waits. Shielded, because the
            # future is shared by every sender and one cancelled sender must not cancel it for all.
            await asyncio.shield(waiter)
            if ws.is_disconnected:
                raise listener.closed()

    async def ping(self, payload: bytes) -> asyncio.Future[float]:
        return self.ping_nowait(payload)

    def send_nowait(self, data: Data) -> None:
        ws = self._ws
        if ws.is_close_frame_sent or ws.is_disconnected:
            raise self._listener.closed()
        ws.send(_TEXT if isinstance(data, str) else _BINARY, data)

    def ping_nowait(self, payload: bytes) -> asyncio.Future[float]:
        ws = self._ws
        listener = self._listener
        if ws.is_close_frame_sent or ws.is_disconnected:
            raise listener.closed()
        if payload in listener.pings:
            raise RuntimeError("already waiting for a pong with the same data")
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        listener.pings[payload] = (future, asyncio.get_running_loop().time())
        ws.send_ping(payload)
        return future

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ws = self._ws
        listener = self._listener
        if ws.is_disconnected:
            return
        listener.app_closing = True
        # Without a pump nobody reads: let the peer's close frame through.
        listener.discard()
        if not ws.is_close_frame_sent:
            ws.send_close(WSCloseCode(code), reason.encode())
        listener.closing()
        # The listener drops the TCP connection when the peer's close frame arrives.
        with contextlib.suppress(Exception):  # a local failure: the handshake is over either way
            await ws.wait_disconnected()

    def abort(self) -> None:
        if not self._ws.is_disconnected:
            self._ws.disconnect(graceful=False)

    def write_buffer_size(self) -> int:
        transport = self._ws.underlying_transport
        return int(transport.get_write_buffer_size()) + kernel_send_queue(transport.get_extra_info("socket"))

    def send_blocked(self) -> bool:
        # asyncio writes straight to the socket until the kernel refuses more; only then it buffers.
        return int(self._ws.underlying_transport.get_write_buffer_size()) > 0

    def inbound_pending(self) -> int:
        return kernel_recv_queue(self._ws.underlying_transport.get_extra_info("socket"))


class _Dialer:
    """picows' ``socket_factory``: connects the TCP socket, and remembers it for clean-up.

    ``ws_connect`` leaves the connection in place when it is cancelled during the opening
    handshake; :meth:`abandon` shuts the socket down so that the transport owning it closes.

    With a proxy, the socket is the tunnel :mod:`.proxy` opened (picows' own proxy support is not
    used: it reads no environment and puts no timeout on ``CONNECT``); picows runs TLS and the
    handshake over it as over any socket of its factory.
    """

    __slots__ = ("options", "sock")

    def __init__(self, options: ConnectOptions) -> None:
        self.sock: socket.socket | None = None
        self.options = options

    async def __call__(self, url: WSParsedURL) -> socket.socket:
        options = self.options
        if options.proxy is not None:
            # open_tunnel closes its socket itself when it fails or is cancelled.
            self.sock = await open_tunnel(options.proxy, options.url, user_agent=options.user_agent)
            return self.sock
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        errors: list[OSError] = []
        # One address after another, like loop.create_connection without happy eyeballs.
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            self.sock = sock
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except BaseException as exc:
                self.sock = None
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                errors.append(exc)
            else:
                return sock
        if len(errors) == 1:
            raise errors[0]
        if not errors:
            raise OSError(f"no address found for {url.host}")
        raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")

    def abandon(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None and sock.fileno() != -1:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


async def connect(options: ConnectOptions) -> PicowsTransport:
    """Open a connection with picows; errors are normalised as the interface says."""
    if options.compression is not None:
        raise ConfigError(
            "the picows transport does not support compression: use compression=None, "
            "or transport='websockets' for permessage-deflate"
        )
    headers = dict(options.headers)
    lowered = {k.lower() for k in headers}
    secrets = [*options.secrets, *connection_secrets(options.url, options.headers)]
    url = options.url
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # picows would put "user:password@" into the Host header. Like websockets, send the
        # credentials as HTTP Basic auth instead, unless an Authorization header is given.
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        if "authorization" not in lowered:
            headers["Authorization"] = build_authorization_basic(
                unquote(parts.username or ""), unquote(parts.password or "")
            )
            secrets.append(headers["Authorization"])
    if options.subprotocols:
        headers["Sec-WebSocket-Protocol"] = ", ".join(options.subprotocols)
    if "user-agent" not in lowered:
        headers["User-Agent"] = options.user_agent or "wsclient (picows)"
    ssl_context: ssl.SSLContext | None = None
    if parts.scheme == "wss":
        ssl_context = options.ssl_context if options.ssl_context is not None else ssl.create_default_context()
    max_size = options.max_size
    close_timeout = options.close_timeout
    redactor = Redactor(secrets)
    log = _Log(redactor)

    def make_listener() -> _Listener:
        listener = _Listener(max_size, close_timeout, redactor)
        log.listener = listener
        return listener

    dialer = _Dialer(options)
    try:
        async with asyncio.timeout(options.open_timeout):
            ws, listener = await ws_connect(
                make_listener,
                url,
                ssl_context=ssl_context,
                # open_timeout bounds the whole connect (above); this one also ends a handshake
                # that a cancellation left behind, should the shutdown below come too late.
                websocket_handshake_timeout=options.open_timeout,
                logger_name=log,
                # wsclient's heartbeat is the single source of truth for liveness.
                enable_auto_ping=False,
                # The listener answers pings itself, within a bound (see _Listener._ping).
                enable_auto_pong=False,
                max_redirects=0,
                # One frame over max_size fails at the parser, before it is buffered.
                max_frame_size=max_size if max_size is not None else sys.maxsize,
                extra_headers=headers,
                socket_factory=dialer,
            )
    except BaseException as exc:
        # Timed out, cancelled or failed: the half-open connection must not live on.
        dialer.abandon()
        if isinstance(exc, WSInvalidStatusError) and exc.response is not None:
            response = exc.response
            raise HandshakeRejected(
                int(response.status), dict(response.headers.items()), bytes(exc.raw_body or b"")
            ) from None
        if isinstance(exc, WSInvalidURL):
            # The URI itself stays out of the message: it may carry a token.
            raise ConfigError("url is not a valid WebSocket URI: use ws(s)://host[:port]/path") from None
        if isinstance(exc, WSHandshakeError):
            # The server's words may quote our own headers back: mask them.
            raise HandshakeFailed(redactor.text(f"invalid handshake: {exc}")) from None
        raise
    if not isinstance(listener, _Listener):
        # picows returns without a listener when the connection closed before the response.
        ws.disconnect(graceful=False)
        raise HandshakeFailed("invalid handshake: connection closed during the opening handshake")
    dialer.sock = None
    listener.ws = ws
    response = ws.response
    subprotocol: str | None = response.headers.get("Sec-WebSocket-Protocol") if response else None
    problem = None
    if subprotocol is not None and subprotocol not in options.subprotocols:
        problem = f"server chose subprotocol {subprotocol!r}, which was not offered"
    elif response is not None and response.headers.get("Sec-WebSocket-Extensions"):
        problem = "server negotiated an extension, which was not offered"
    if problem is not None:
        ws.disconnect(graceful=False)
        raise HandshakeFailed(redactor.text(f"invalid handshake: {problem}"))
    return PicowsTransport(ws, listener, subprotocol)
