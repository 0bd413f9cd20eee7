"""The transport interface the supervisor is written against.

A backend provides a :data:`Connector` (open a connection or raise) and a :class:`Transport` (one
open WebSocket). A connector never follows a redirect itself (:mod:`.redirect` does, the same way
for every backend). Backends normalise their library's errors into wsclient's:

* a rejected upgrade (a redirect included) raises :class:`~wsclient.errors.HandshakeRejected` with
  status, headers and body as received (the caller redacts them);
* a malformed handshake raises :class:`~wsclient.errors.HandshakeFailed`;
* a closed connection raises :class:`~wsclient.errors.TransportClosed` with the close code and the
  reason masked with the connection's secrets;
* ``OSError``, ``ssl.SSLError`` and ``TimeoutError`` pass through as they are.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

__all__ = [
    "CONTROL_BACKLOG",
    "ConnectOptions",
    "Connector",
    "Data",
    "FrameSink",
    "InboundMeter",
    "InlineTarget",
    "Meter",
    "Sink",
    "Transport",
    "as_sink",
    "kernel_recv_queue",
    "kernel_send_queue",
    "loop_clock",
]

Data = str | bytes

#: Bytes of automatic replies (pongs, a close echo) a backend lets pile up behind a write buffer that
#: is already above its high-water mark before it calls the peer unhealthy (it is not reading) and
#: fails the link with :class:`~wsclient.errors.PeerNotReading`. A well-behaved server pings every
#: few seconds: at 20 s per ping, this is more than a day of pongs to a peer that reads nothing.
CONTROL_BACKLOG = 256 * 1024

#: Called by :meth:`Transport.pump` for every inbound message, in order. It returns ``None`` to keep
#: reading, or an awaitable the pump must wait on before reading more (the inbound queue is full).
FrameSink = Callable[[Data], Awaitable[None] | None]


class InlineTarget(Protocol):
    """Whatever takes a message straight from the pump: the client's router, say."""

    dispatch: Callable[[Data], Awaitable[None] | None]
    """Deliver one message; never raises. Returns ``None``, or an awaitable for the rest of the work."""


class Sink(Protocol):
    """What :meth:`Transport.pump` delivers to: a :data:`FrameSink` with an optional shortcut.

    For every message the pump reads :attr:`inline`. When it is set, the pump calls
    ``inline.dispatch(data)`` itself and hands an awaitable it returns to :meth:`defer`, without
    waiting for it; otherwise it calls the sink. The shortcut saves one Python call per message,
    and the receiver switches it on and off as it pleases (the client: while nothing is queued).
    """

    inline: InlineTarget | None

    def __call__(self, data: Data) -> Awaitable[None] | None:
        """Take one message; return ``None``, or an awaitable to wait on before reading more."""

    def defer(self, pending: Awaitable[None]) -> None:
        """Take the awaitable that ``inline.dispatch`` returned; it must finish before later messages."""


class _CallableSink:
    """A plain :data:`FrameSink` as a :class:`Sink` without the shortcut."""

    __slots__ = ("_call", "inline")

    def __init__(self, call: FrameSink) -> None:
        self._call = call
        self.inline: InlineTarget | None = None

    def __call__(self, data: Data) -> Awaitable[None] | None:
        return self._call(data)

    def defer(self, pending: Awaitable[None]) -> None:
        raise RuntimeError("a plain sink has no inline target, so nothing can be deferred to it")


def as_sink(sink: Sink | FrameSink) -> Sink:
    """``sink`` itself if it is a :class:`Sink`, else the plain callable wrapped as one."""
    if hasattr(sink, "inline") and hasattr(sink, "defer"):
        return sink  # type: ignore[return-value]
    return _CallableSink(sink)


class InboundMeter(Protocol):
    """What a transport records about the messages it receives (the supervisor passes its Liveness).

    The backend keeps these up to date itself rather than leaving it to the sink: it can read the
    clock once per read of the socket instead of once per message, on the hot path.
    """

    frames_in: int
    """Messages received (control frames not included)."""
    bytes_in: int
    """Their total size as ``len()`` of the payload: bytes of binary messages, characters of text."""
    last_inbound: float
    """The event loop's time (``loop.time()``) when the latest read that carried a message was
    received: the clock the heartbeat's timers run on."""


class Meter:
    """An :class:`InboundMeter` on its own, for a pump whose caller passes none."""

    __slots__ = ("bytes_in", "frames_in", "last_inbound")

    def __init__(self) -> None:
        self.frames_in = 0
        self.bytes_in = 0
        self.last_inbound = 0.0


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """What a backend needs to open one connection."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocols: Sequence[str] = ()
    ssl_context: ssl.SSLContext | None = None
    open_timeout: float = 10.0
    close_timeout: float = 2.0
    max_size: int | None = 2**20
    compression: str | None = None
    user_agent: str | None = None
    proxy: str | None = None
    """The proxy to tunnel through (a URL :class:`~wsclient.transport.proxy.ProxyURL` accepts), chosen
    by :func:`~wsclient.transport.redirect.open_connection` for this URL; None: connect directly.
    A backend opens the tunnel with :func:`~wsclient.transport.proxy.open_tunnel` and runs TLS and
    the handshake over it."""
    secrets: tuple[str, ...] = ()
    """Strings the backend masks in its library's logs, in close reasons and handshake errors
    (:class:`~wsclient.redact.Redactor`); :func:`~wsclient.redact.connection_secrets` of the URL and
    headers are always masked too."""


class Transport(Protocol):
    """One open WebSocket connection."""

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, if any."""

    async def pump(self, sink: Sink | FrameSink, meter: InboundMeter | None = None) -> NoReturn:
        """Read whole messages forever and hand each to ``sink``; raise TransportClosed at the end.

        A :class:`Sink`'s inline target is used whenever it is set; a plain callable is just called.

        Every message is counted in ``meter`` when it is read (before the sink sees it, even if it
        is held back), and ``meter.last_inbound`` is stamped at least once per read of the socket
        that carries a message; control frames alone neither count nor stamp. The pump owns the
        receive loop so that a backend can deliver frames with no per-message coroutine switch of
        its own (the hot path).
        """

    async def send(self, data: Data) -> None:
        """Send one message: ``str`` as a text frame, ``bytes`` as a binary frame."""

    async def ping(self, payload: bytes) -> asyncio.Future[float]:
        """Send a protocol ping; return a future of the round-trip time in seconds.

        The future is the caller's: cancelling it or giving up on it affects nothing else. It fails
        with :class:`~wsclient.errors.TransportClosed` if the connection closes first.
        """

    def ping_nowait(self, payload: bytes) -> asyncio.Future[float]:
        """:meth:`ping` without waiting: the frame is written at once, never held behind a full send
        buffer (a heartbeat must not wait behind data). Raises TransportClosed if closed."""

    def send_nowait(self, data: Data) -> None:
        """Write one message at once, without waiting for the send buffer to drain (the heartbeat's
        application pings). Raises TransportClosed if closed."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the close handshake (the caller bounds it in time)."""

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake. Idempotent."""

    def write_buffer_size(self) -> int:
        """Bytes written but not yet sent by the kernel: shrinking means the link makes progress."""

    def send_blocked(self) -> bool:
        """Whether the kernel's send buffer is full, so that written bytes wait in user space.

        Lasting, with nothing draining, it means the peer reads nothing of what the client writes.
        """

    def inbound_pending(self) -> int:
        """Bytes the kernel has received on this socket that nobody has read yet (0 where unknown).

        Non-zero while the event loop was busy elsewhere (a handler blocking it) or reading is held
        back: the link delivers, the application is behind. The heartbeat asks before it declares a
        link dead.
        """


Connector = Callable[[ConnectOptions], Awaitable[Transport]]


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The loop's clock as the cheapest callable: ``time.monotonic`` itself when that is what
    ``loop.time()`` returns (asyncio's own loops), saving a Python call per message on the hot path;
    ``loop.time`` otherwise (a virtual clock in tests, another loop implementation)."""
    # Through the bound method: a clock patched on the instance (a virtual one) is seen too.
    if getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def kernel_recv_queue(sock: object) -> int:
    """Bytes waiting in ``sock``'s receive queue, not read yet (``FIONREAD``); 0 where unknown."""
    return _queue_ioctl(sock, "FIONREAD")


def kernel_send_queue(sock: object) -> int:
    """Bytes the kernel still holds in ``sock``'s send queue (Linux ``SIOCOUTQ``); 0 where unknown.

    An upload on a slow link sits mostly in the kernel, not in asyncio's buffer: watching this queue
    shrink is how the heartbeat tells a busy link from a dead one.
    """
    return _queue_ioctl(sock, "TIOCOUTQ")


def _queue_ioctl(sock: object, request: str) -> int:
    if not sys.platform.startswith("linux"):
        return 0
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return 0
    try:
        import fcntl
        import termios

        raw = fcntl.ioctl(fileno(), getattr(termios, request), b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value
