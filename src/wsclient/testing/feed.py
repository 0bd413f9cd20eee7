"""A scriptable market-data WebSocket server for tests.

:class:`FeedServer` behaves like an exchange's streaming endpoint: clients subscribe to
``(channel, symbol)`` streams and receive deterministic, sequence-numbered JSON messages.
Every fault a resilient client must survive (close codes, dropped TCP, unanswered pings,
stalled data, rejected or redirected handshakes, idle cut-offs, restarts, a close frame with
no TCP close after it, a server that stops reading, a ping flood) can be triggered at run
time or scheduled up front, and the server keeps the accounting a test needs to check what a
client did.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import inspect
import json
import logging
import math
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, ClassVar, Final, Self
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.http11 import Request, Response

from wsclient.testing.waiters import Waiters

__all__ = [
    "CHANNELS",
    "DEFAULT_SYMBOLS",
    "REDIRECT_STATUSES",
    "Fault",
    "FeedServer",
    "Handshake",
    "ReceivedFrame",
]

logger = logging.getLogger(__name__)

CHANNELS: Final[tuple[str, ...]] = ("trades", "book", "ticker")
"""Channels a client may subscribe to."""

DEFAULT_SYMBOLS: Final[tuple[str, ...]] = ("BTC-USD", "ETH-USD", "SOL-USD")
"""Symbols served when none are given."""

ReceivedFrame = tuple[str, str | bytes]
"""``(client_key, frame)`` as recorded in :attr:`FeedServer.received`."""

StreamKey = tuple[str, str]

_MESSAGE_TYPES: Final[dict[str, str]] = {"trades": "trade", "book": "book", "ticker": "ticker"}
_BASE_PRICES: Final[dict[str, int]] = {"BTC-USD": 43_000, "ETH-USD": 2_300, "SOL-USD": 100}
_BOOK_DEPTH: Final = 5
# Server frames are unmasked and, with compression disabled, carry no RSV bits, so a
# serialized PONG frame always starts with exactly FIN | PONG.
_PONG_FIRST_BYTE: Final = bytes([0x80 | Opcode.PONG.value])
_ANONYMOUS: Final = "anonymous"
# A flood is written in batches of about this many bytes, each followed by a wait for the socket
# to drain below websockets' write limit, so the server itself never buffers more than a batch.
_FLOOD_BATCH: Final = 64 * 1024
_HANDSHAKES_KEPT: Final = 1000

REDIRECT_STATUSES: Final[frozenset[int]] = frozenset({301, 302, 303, 307, 308})
"""HTTP statuses :meth:`FeedServer.redirect` accepts."""


@dataclass(frozen=True)
class Fault:
    """One entry of a fault schedule passed as ``FeedServer(faults=[...])``.

    ``action`` is called with the server ``at`` seconds after :meth:`FeedServer.start`;
    if it returns an awaitable, the schedule awaits it before moving on. Example::

        FeedServer(faults=[Fault(0.5, lambda s: s.close_all(1012))])
    """

    at: float
    action: Callable[[FeedServer], object]


@dataclass(frozen=True, slots=True)
class Handshake:
    """One opening handshake as the server saw it, kept in :attr:`FeedServer.handshakes`."""

    port: int
    """Port of the listener that received it: :attr:`FeedServer.port` or :attr:`FeedServer.alt_port`."""
    path: str
    """Request path, with the query string."""
    key: str
    """The client's ``X-Client-Id`` (``"anonymous"`` without one)."""
    headers: tuple[tuple[str, str], ...]
    """Every request header, in order, as sent."""
    status: int
    """101 when the server went on with the upgrade, else the HTTP status it answered with."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None`` if it was not sent."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class _CloseAfter:
    messages: int | None
    seconds: float | None
    code: int
    reason: str


class _Stream:
    """Deterministic generator for one ``(channel, symbol)`` stream.

    Each stream owns its RNG so its content depends only on ``seed`` and its sequence
    number, never on which other streams exist or who listens.
    """

    def __init__(self, channel: str, symbol: str, seed: int) -> None:
        self.channel = channel
        self.symbol = symbol
        self.key: StreamKey = (channel, symbol)
        self.seq = 0
        self._rng = random.Random(f"{seed}:{channel}:{symbol}")
        base = _BASE_PRICES.get(symbol) or random.Random(f"{seed}:{symbol}").randint(10, 1000)
        # A tick of 5 units at the fifth significant digit, e.g. 0.5 for a 43000 price.
        self._tick = Decimal(5).scaleb(math.floor(math.log10(base)) - 5)
        self._mid = int(Decimal(base) / self._tick)

    def _price(self, ticks: int) -> str:
        return format(self._tick * ticks, "f")

    def _qty(self) -> str:
        return format(Decimal(self._rng.randint(1, 2000)).scaleb(-3), "f")

    def next(self, ts: float) -> dict[str, Any]:
        """Advance the stream by one message."""
        self.seq += 1
        # Floor at a few ticks so the bid side never reaches zero.
        self._mid = max(self._mid + self._rng.randint(-3, 3), _BOOK_DEPTH + 2)
        msg: dict[str, Any] = {"type": _MESSAGE_TYPES[self.channel], "symbol": self.symbol}
        if self.channel == "trades":
            side = "buy" if self._rng.random() < 0.5 else "sell"
            msg["price"] = self._price(self._mid + (1 if side == "buy" else -1))
            msg["qty"] = self._qty()
            msg["side"] = side
        elif self.channel == "book":
            msg["bids"] = [[self._price(self._mid - 1 - i), self._qty()] for i in range(_BOOK_DEPTH)]
            msg["asks"] = [[self._price(self._mid + 1 + i), self._qty()] for i in range(_BOOK_DEPTH)]
        else:
            msg["bid"] = self._price(self._mid - 1)
            msg["ask"] = self._price(self._mid + 1)
            msg["last"] = self._price(self._mid + self._rng.choice((-1, 1)))
        msg["seq"] = self.seq
        msg["ts"] = ts
        return msg


class _FeedConnection(ServerConnection):
    """Server connection that reports to its :class:`FeedServer`.

    ``serve()`` builds connections from a class, so each server binds itself through a
    one-off subclass (see :func:`_bind_connection_class`).
    """

    feed: ClassVar[FeedServer]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_rx = self.loop.time()
        self.lost = False
        self.reading_stopped = False
        """Set by :meth:`FeedServer.stop_reading`: the socket is not read at all."""
        self.discarding = False
        """Bytes read are thrown away unprocessed (after a hang or a flood)."""
        self.silenced = False
        """Nothing websockets wants to write reaches the socket any more (after a hang)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        size = self.feed.send_buffer
        sock = transport.get_extra_info("socket")
        if size is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        # websockets resumes reading by itself once its own receive queue drains; a connection
        # whose reading was stopped on purpose must stay stopped.
        self.recv_messages.resume = self._resume_unless_stopped

    def _resume_unless_stopped(self) -> None:
        if not self.reading_stopped:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        # Any bytes count as life, including protocol pings: that is what a reverse
        # proxy's read timeout sees.
        self.last_rx = self.loop.time()
        if self.discarding:
            return
        super().data_received(data)

    def send_data(self) -> None:
        if self.silenced:
            self.protocol.data_to_send()  # consumed, never written
            return
        # The sans-I/O protocol queues a PONG for every PING by itself; dropping the
        # serialized frame here is the one place that catches it before the socket.
        if self.feed.ignore_pings:
            writes = self.protocol.writes
            kept = [chunk for chunk in writes if not chunk.startswith(_PONG_FIRST_BYTE)]
            self.feed.pongs_suppressed += len(writes) - len(kept)
            writes[:] = kept
        super().send_data()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost = True
        # Accounting must change before the client can possibly reconnect, so it is
        # done here rather than when the handler task gets around to finishing.
        self.feed._on_connection_lost(self)


def _bind_connection_class(feed: FeedServer) -> type[_FeedConnection]:
    class _BoundFeedConnection(_FeedConnection):
        pass

    _BoundFeedConnection.feed = feed
    return _BoundFeedConnection


@dataclass(eq=False)
class _Client:
    key: str
    conn: _FeedConnection
    close_after: _CloseAfter | None
    outbox: deque[tuple[str, StreamKey | None]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    subscriptions: dict[StreamKey, None] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    sent: int = 0
    dropping: bool = False
    hung: bool = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class FeedServer:
    """A market-data WebSocket endpoint with scriptable faults, for tests.

    Protocol (JSON text frames)::

        -> {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD", "id": 1}
        <- {"type": "ack", "op": "subscribe", "id": 1, "channel": "trades", "symbol": "BTC-USD"}
        <- {"type": "trade", "symbol": "BTC-USD", "price": "43001.5", "qty": "0.013",
            "side": "buy", "seq": 17, "ts": 1700000000.0}
        -> {"op": "ping", "id": 2}    <- {"type": "pong", "id": 2}
        -> {"op": "time", "id": 3}    <- {"type": "time", "id": 3, "ts": ...}
        -> ping (plain text)          <- pong (plain text)

    ``unsubscribe`` is acknowledged the same way; both are idempotent. Anything invalid is
    answered with ``{"type": "error", "id": ..., "message": ...}`` and never closes the
    connection.

    Every ``(channel, symbol)`` stream produces ``rate`` messages per second while the
    server runs, whether or not anyone listens, so its ``seq`` is global: a client that
    reconnects sees a real gap. Content is a deterministic function of ``seed`` and
    ``seq`` (only ``ts`` is wall-clock). A subscriber receives every message of its
    streams from the acknowledgement on, in order, unless the server is :attr:`silent`.

    One generator task drives all streams; each client has a bounded outbox drained by
    its own writer, so a slow client never delays the others. A client whose outbox
    exceeds ``max_buffer`` is closed with 1008 ``"slow consumer"`` and counted in
    :attr:`slow_consumer_drops`.

    Clients are identified by their ``X-Client-Id`` request header (``"anonymous"``
    without one).

    With ``alt_port``, the same feed is also served on a second port: another origin for a
    client (same host, other port), e.g. the target of :meth:`redirect`. Both listeners share
    the streams, the accounting and every fault except the redirect itself.

    Use as ``async with FeedServer() as server:`` or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        rate: float = 20.0,
        seed: int = 1,
        path: str = "/stream",
        ping_interval: float | None = None,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 2.0,
        max_buffer: int = 1000,
        send_buffer: int | None = None,
        faults: Iterable[Fault] = (),
        alt_port: int | None = None,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`.

        Args:
            host: Interface to bind, ``127.0.0.1`` or ``::1`` in tests.
            port: TCP port; 0 picks a free one, which is then kept across restarts.
            symbols: Symbols offered on every channel.
            rate: Messages per second per stream.
            seed: Seed for the deterministic stream content.
            path: Request path served; other paths get HTTP 404.
            ping_interval: Interval of the server's own keepalive pings; ``None`` (the
                default) never pings.
            ping_timeout: Timeout for those keepalive pings.
            close_timeout: How long a closing handshake may take before the server
                aborts the TCP connection.
            max_buffer: Bound of each client's outbox, in messages.
            send_buffer: ``SO_SNDBUF`` for client sockets. The kernel default can absorb
                megabytes, so a slow-consumer test sets a few KiB to overflow quickly.
            faults: Schedule run once after every :meth:`start`.
            alt_port: Also serve the feed on this second port (0 picks a free one, then kept
                across restarts); ``None`` (the default) has no second listener.
        """
        if rate <= 0:
            raise ValueError("rate must be positive")
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.host = host
        self.path = path
        self.rate = rate
        self.seed = seed
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_buffer = max_buffer
        self.send_buffer = send_buffer
        self.faults: tuple[Fault, ...] = tuple(sorted(faults, key=lambda f: f.at))

        self.ignore_pings = False
        """While true, RFC 6455 pings from clients get no pong."""

        self.received: list[ReceivedFrame] = []
        """Every data frame received, with the sender's client key, in arrival order."""
        self.total_connections = 0
        """WebSocket connections accepted (handshake completed) since construction."""
        self.connections_by_client: Counter[str] = Counter()
        """Accepted connections per client key."""
        self.slow_consumer_drops = 0
        """Clients closed with 1008 because their outbox overflowed."""
        self.idle_cuts = 0
        """Connections aborted by :attr:`idle_cutoff`."""
        self.rejected_handshakes = 0
        """Handshakes refused by :meth:`reject` or a wrong path."""
        self.pongs_suppressed = 0
        """PONG frames swallowed while :attr:`ignore_pings` was set."""
        self.schedule_errors: list[BaseException] = []
        """Exceptions raised by scheduled :class:`Fault` actions."""
        self.handshakes: deque[Handshake] = deque(maxlen=_HANDSHAKES_KEPT)
        """The latest opening handshakes on either listener (up to 1000), oldest first; a test
        may clear it to look at what comes next."""
        self.redirected_handshakes = 0
        """Handshakes answered with a redirect by :meth:`redirect`."""
        self.hung_connections = 0
        """Connections left hanging after a close frame by :meth:`close_and_hang`."""
        self.ping_flood_bytes = 0
        """Bytes of ping frames written by :meth:`flood_pings`."""
        self.close_codes: list[int] = []
        """The close code of the close frame each ended connection received from its client, in the
        order they ended (1006: none came, the TCP connection was dropped or aborted)."""

        self._port = port
        self._alt_port = alt_port
        self._streams: dict[StreamKey, _Stream] = {
            (channel, symbol): _Stream(channel, symbol, seed)
            for channel in CHANNELS
            for symbol in self.symbols
        }
        self._subscribers: dict[StreamKey, dict[_Client, None]] = {k: {} for k in self._streams}
        self._clients: dict[_FeedConnection, _Client] = {}
        self._current: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._sent: Counter[tuple[str, str, str]] = Counter()
        self._responses_sent: Counter[str] = Counter()
        self._silent = False
        self._idle_cutoff: float | None = None
        self._idle_changed = asyncio.Event()
        self._reject: tuple[int, str | None] | None = None
        self._redirect: tuple[int, str | None] | None = None
        self._accept_then_close: tuple[int, str] | None = None
        self._close_after: _CloseAfter | None = None
        self._waiters = Waiters()

        self._conn_class = _bind_connection_class(self)
        self._ws_server: Server | None = None
        self._alt_server: Server | None = None
        self._generator: asyncio.Task[None] | None = None
        self._schedule: asyncio.Task[None] | None = None
        # Set while stopping so a handshake that slips in is closed, not left serving.
        self._closing: tuple[int, str] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Bound TCP port (0 before the first :meth:`start` when constructed with 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/path`` of the endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self._port}{self.path}"

    @property
    def alt_port(self) -> int | None:
        """Port of the second listener (see ``alt_port``), ``None`` without one."""
        return self._alt_port

    @property
    def alt_url(self) -> str | None:
        """``ws://host:alt_port/path`` of the second listener, ``None`` without one."""
        if self._alt_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self._alt_port}{self.path}"

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._ws_server is not None

    async def start(self) -> None:
        """Listen, start the stream generator and (re)run the fault schedule.

        Does nothing if already running.
        """
        if self._ws_server is not None:
            return
        await self._start_serving()
        if self.faults:
            self._schedule = asyncio.get_running_loop().create_task(self._run_schedule())

    async def stop(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every client with ``code``, stop listening and end all server tasks.

        Streams pause (their ``seq`` does not advance) until the next :meth:`start`.
        """
        schedule, self._schedule = self._schedule, None
        if schedule is not None and schedule is not asyncio.current_task():
            schedule.cancel()
            await asyncio.gather(schedule, return_exceptions=True)
        await self._stop_serving(code, reason)

    async def restart(self) -> None:
        """Close every client with 1012 (service restart) and listen again on the same port.

        A running fault schedule keeps running.
        """
        await self._stop_serving(1012, "service restart")
        await self._start_serving()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _listen(self, port: int, *, main: bool) -> Server:
        return await serve(
            self._handle,
            self.host,
            port,
            compression=None,
            process_request=functools.partial(self._process_request, main=main),
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            open_timeout=5.0,
            create_connection=self._conn_class,
        )

    async def _start_serving(self) -> None:
        self._closing = None
        self._ws_server = await self._listen(self._port, main=True)
        self._port = self._ws_server.sockets[0].getsockname()[1]
        if self._alt_port is not None:
            try:
                self._alt_server = await self._listen(self._alt_port, main=False)
            except BaseException:
                ws_server, self._ws_server = self._ws_server, None
                ws_server.close()
                await ws_server.wait_closed()
                raise
            self._alt_port = self._alt_server.sockets[0].getsockname()[1]
        self._generator = asyncio.get_running_loop().create_task(self._generate())

    async def _stop_serving(self, code: int, reason: str) -> None:
        ws_server, self._ws_server = self._ws_server, None
        if ws_server is None:
            return
        alt_server, self._alt_server = self._alt_server, None
        self._closing = (code, reason)
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.cancel()
            await asyncio.gather(generator, return_exceptions=True)
        # Close clients ourselves: websockets' own close path has no bound on a
        # blocked drain, so a client that stopped reading could hang stop() forever.
        servers = [ws_server] if alt_server is None else [ws_server, alt_server]
        for server in servers:
            server.close(close_connections=False)
        await asyncio.gather(*(self._close(c.conn, code, reason) for c in self._snapshot()))
        for server in servers:
            await server.wait_closed()

    async def _run_schedule(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for fault in self.faults:
            await asyncio.sleep(max(0.0, t0 + fault.at - loop.time()))
            if self._schedule is not asyncio.current_task():
                return  # stop() was called by the previous action
            try:
                result = fault.action(self)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                logger.exception("scheduled fault at %.3fs failed", fault.at)
                self.schedule_errors.append(exc)

    # -- faults ------------------------------------------------------------------------

    @property
    def silent(self) -> bool:
        """While true, no stream data and no responses are sent; the socket stays open.

        Protocol pings are still answered (unless :attr:`ignore_pings`). Messages
        generated meanwhile are lost, so the client sees a ``seq`` gap afterwards.
        """
        return self._silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self._silent = value
        if value:
            # Discard what is queued, so that nothing generated before the switch
            # trickles out after it.
            for client in self._clients.values():
                client.outbox.clear()

    @property
    def idle_cutoff(self) -> float | None:
        """Abort (no close frame) connections that sent nothing for this many seconds.

        Like a reverse proxy's read timeout; any received byte, ping included, counts.
        ``None`` disables it. Cut connections are counted in :attr:`idle_cuts`.
        """
        return self._idle_cutoff

    @idle_cutoff.setter
    def idle_cutoff(self, value: float | None) -> None:
        self._idle_cutoff = value
        changed, self._idle_changed = self._idle_changed, asyncio.Event()
        changed.set()

    def reject(self, status: int | None, retry_after: int | str | None = None) -> None:
        """Refuse new handshakes with HTTP ``status`` (e.g. 401, 429, 503).

        ``retry_after`` adds a ``Retry-After`` header. ``reject(None)`` accepts again.
        """
        self._reject = None if status is None else (status, _header(retry_after))

    def redirect(self, status: int | None, location: str | None = None) -> None:
        """Answer new handshakes on the main port with HTTP ``status`` and a ``Location`` header.

        ``status`` is one of :data:`REDIRECT_STATUSES` (301, 302, 303, 307, 308); ``location``
        defaults to the second listener (see ``alt_port``) with the request's own path and
        query, which is the same feed on another origin. The second listener is never
        redirected, so a client that follows the redirect connects there. Redirects are counted
        in :attr:`redirected_handshakes`; :attr:`handshakes` shows what each listener received
        (whether credentials followed the client, say). ``redirect(None)`` stops redirecting.

        Raises:
            ValueError: For another status, or with no ``location`` and no second listener.
        """
        if status is None:
            self._redirect = None
            return
        if status not in REDIRECT_STATUSES:
            raise ValueError(f"status must be one of {sorted(REDIRECT_STATUSES)}, got {status!r}")
        if location is None and self._alt_port is None:
            raise ValueError("redirect() needs a location, or a FeedServer with an alt_port")
        self._redirect = (status, location)

    def accept_then_close(self, code: int | None, reason: str = "") -> None:
        """Close every new connection with ``code`` right after its handshake.

        ``None`` stops doing so.
        """
        self._accept_then_close = None if code is None else (code, reason)

    def close_after(
        self,
        messages: int | None = None,
        seconds: float | None = None,
        code: int = 1012,
        reason: str = "",
    ) -> None:
        """Close each connection accepted from now on after a budget, with ``code``.

        ``messages`` counts everything the server sends on that connection (acks,
        responses and data); ``seconds`` runs from the handshake. With neither, the
        budget is removed. Connections already open keep the budget they started with.
        """
        if messages is None and seconds is None:
            self._close_after = None
        else:
            self._close_after = _CloseAfter(messages, seconds, code, reason)

    async def close_all(self, code: int, reason: str = "") -> None:
        """Close every client with ``code``/``reason`` and wait until they are closed."""
        await asyncio.gather(*(self._close(c.conn, code, reason) for c in self._snapshot()))

    async def drop_all(self) -> None:
        """Abort every client's TCP connection without a close frame (client sees 1006)."""
        conns = [c.conn for c in self._snapshot()]
        for conn in conns:
            conn.transport.abort()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))

    def stop_reading(self, key: str | None = None) -> int:
        """Stop reading from the open connections of client ``key`` (of every client if ``None``).

        Like a server whose reader hung: nothing the client sends is read any more (no frame,
        no ping, not even a FIN), so it piles up in the socket buffers until the client's own
        sends block. Streams keep flowing to the client. Connections opened later are read as
        usual. :meth:`resume_reading` undoes it. Returns the number of connections stopped.
        """
        stopped = 0
        for client in self._snapshot():
            if (key is None or client.key == key) and not client.conn.lost:
                if not client.conn.reading_stopped:
                    client.conn.reading_stopped = True
                    client.conn.transport.pause_reading()
                stopped += 1
        return stopped

    def resume_reading(self, key: str | None = None, *, discard: bool = False) -> int:
        """Read again from connections stopped by :meth:`stop_reading`, :meth:`close_and_hang`
        or :meth:`flood_pings` (of client ``key``, or all); this also ends their ping floods.

        With ``discard``, and always for a connection left hanging, whatever is read from them
        from now on is thrown away unprocessed: the frames the client sent meanwhile were never
        read by the server, so they are lost, never recorded in :attr:`received`. A FIN or RST
        from the client is noticed again, which ends the connection. Returns the number of
        connections resumed.
        """
        resumed = 0
        for client in self._snapshot():
            conn = client.conn
            if (key is None or client.key == key) and conn.reading_stopped and not conn.lost:
                conn.discarding = conn.discarding or discard or client.hung
                conn.reading_stopped = False
                conn.transport.resume_reading()
                resumed += 1
        self._waiters.notify()
        return resumed

    def close_and_hang(self, code: int = 1001, reason: str = "", key: str | None = None) -> int:
        """Send a close frame to the open connections of client ``key`` (every client if
        ``None``), then leave them hanging: never close the TCP connection, never read from
        it, never write to it again (no data, no close reply, no pong).

        That is a server that crashed in the middle of its closing handshake, or a middlebox
        that swallowed the FIN. Only the client can end such a connection, by aborting it once
        its close timeout has passed. :meth:`resume_reading` lets the server notice that (what
        it reads is discarded); :meth:`drop_all` aborts the connections from this side. Counted
        in :attr:`hung_connections`; returns the number of connections left hanging.

        Raises:
            ValueError: If ``reason`` is longer than 123 bytes in UTF-8.
        """
        encoded = reason.encode()
        if len(encoded) > 123:
            raise ValueError("a close reason is at most 123 bytes in UTF-8")
        # Written straight to the transport: websockets writes whole frames, one write each,
        # so between two event-loop steps the stream always sits at a frame boundary.
        close_frame = bytes([0x80 | Opcode.CLOSE.value, 2 + len(encoded)])
        close_frame += code.to_bytes(2, "big") + encoded
        hung = 0
        for client in self._snapshot():
            conn = client.conn
            if (key is not None and client.key != key) or conn.lost or client.hung:
                continue
            self._mute(client)
            conn.silenced = True
            if not conn.reading_stopped:
                conn.reading_stopped = True
                conn.transport.pause_reading()
            conn.transport.write(close_frame)
            hung += 1
        self.hung_connections += hung
        self._waiters.notify()
        return hung

    def flood_pings(
        self,
        key: str | None = None,
        *,
        max_bytes: int = 4 * 2**20,
        duration: float = 5.0,
        payload_size: int = 125,
    ) -> int:
        """Flood the open connections of client ``key`` (every client if ``None``) with ping
        frames, and stop reading from them (:meth:`stop_reading`).

        Each ping asks for a pong that the server never reads: a client that answers them all
        buffers its pongs, and everything else it sends, behind a peer that is not reading.
        Streams keep flowing meanwhile. Pings are written as fast as the connection takes them
        (the server waits for its socket to drain, so it never holds more than about 64 KiB of
        them) until ``max_bytes`` of pings were written to that connection, ``duration``
        seconds have passed, the connection ends, or :meth:`resume_reading` is called on it.
        Counted in :attr:`ping_flood_bytes`; returns the number of connections flooded.

        Raises:
            ValueError: If ``payload_size`` is not within 0..125, or ``max_bytes`` is below one
                ping frame.
        """
        if not 0 <= payload_size <= 125:
            raise ValueError(f"payload_size must be within 0..125, got {payload_size!r}")
        ping = bytes([0x80 | Opcode.PING.value, payload_size]) + (b"flood" * 25)[:payload_size]
        if max_bytes < len(ping):
            raise ValueError(f"max_bytes must hold at least one ping frame ({len(ping)} bytes)")
        deadline = asyncio.get_running_loop().time() + duration
        flooded = 0
        for client in self._snapshot():
            if (key is not None and client.key != key) or client.conn.lost or client.hung:
                continue
            if not client.conn.reading_stopped:
                client.conn.reading_stopped = True
                client.conn.transport.pause_reading()
            client.spawn(self._flood(client.conn, ping, max_bytes, deadline))
            flooded += 1
        return flooded

    async def _flood(self, conn: _FeedConnection, ping: bytes, max_bytes: int, deadline: float) -> None:
        per_batch = max(1, _FLOOD_BATCH // len(ping))
        written = 0
        # A reset ends the flood with the connection; the task set forgets finished tasks, so an
        # exception left in one would never be retrieved.
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout_at(deadline):
                while conn.reading_stopped and not conn.lost and not conn.transport.is_closing():
                    count = min(per_batch, (max_bytes - written) // len(ping))
                    if count <= 0:
                        return
                    # Whole frames only, written between two event-loop steps: the stream data
                    # written by the connection's own writer stays intact around them.
                    conn.transport.write(ping * count)
                    written += count * len(ping)
                    self.ping_flood_bytes += count * len(ping)
                    await conn.drain()  # websockets' flow control: returns once the socket takes more
                    await asyncio.sleep(0)  # the rest of the loop runs between two batches

    def _mute(self, client: _Client) -> None:
        """Feed this client nothing more: no stream data, no response."""
        client.hung = True
        for stream in client.subscriptions:
            self._subscribers[stream].pop(client, None)
        client.outbox.clear()

    # -- accounting --------------------------------------------------------------------

    def current_connections(self, key: str = _ANONYMOUS) -> int:
        """Connections of client ``key`` open right now."""
        return self._current[key]

    def peak_connections(self, key: str = _ANONYMOUS) -> int:
        """Most connections client ``key`` ever held open at the same time."""
        return self._peak[key]

    def subscriptions(self, key: str = _ANONYMOUS) -> set[StreamKey]:
        """``(channel, symbol)`` streams client ``key`` is subscribed to on open connections."""
        return {s for c in self._clients.values() if c.key == key for s in c.subscriptions}

    def messages_sent(
        self, key: str | None = None, channel: str | None = None, symbol: str | None = None
    ) -> int:
        """Stream data messages written to clients, filtered by any of the arguments.

        Counted when written to the connection, so this is what the client can have
        received; acks and responses are in :meth:`responses_sent`.
        """
        return sum(
            n
            for (k, c, s), n in self._sent.items()
            if (key is None or k == key)
            and (channel is None or c == channel)
            and (symbol is None or s == symbol)
        )

    def responses_sent(self, key: str | None = None) -> int:
        """Acks, errors and request responses written to client ``key`` (or to anyone)."""
        if key is None:
            return sum(self._responses_sent.values())
        return self._responses_sent[key]

    def stream_seq(self, channel: str, symbol: str) -> int:
        """Sequence number of the last message the stream generated (0 before the first)."""
        return self._streams[(channel, symbol)].seq

    # -- event-driven waits ------------------------------------------------------------

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Wait until :attr:`total_connections` reaches ``n``."""
        await self._waiters.wait(lambda: self.total_connections >= n, timeout, f"{n} connections")

    async def wait_for_subscriptions(self, key: str, n: int, timeout: float = 5.0) -> None:
        """Wait until client ``key`` has ``n`` subscriptions on open connections."""
        await self._waiters.wait(
            lambda: len(self.subscriptions(key)) >= n, timeout, f"{n} subscriptions of {key!r}"
        )

    async def wait_for_seq(
        self,
        channel: str,
        symbol: str,
        seq: int,
        timeout: float = 5.0,
    ) -> None:
        """Wait until the stream has generated message number ``seq``."""
        stream = self._streams[(channel, symbol)]
        await self._waiters.wait(lambda: stream.seq >= seq, timeout, f"{channel}/{symbol} seq {seq}")

    async def wait_received(
        self,
        predicate_or_count: int | Callable[[str, str | bytes], bool],
        timeout: float = 5.0,
    ) -> list[ReceivedFrame]:
        """Wait until ``count`` frames were received, or one matches ``predicate(key, frame)``.

        Returns the frames received so far (for a count) or those matching.
        """
        if isinstance(predicate_or_count, int):
            count = predicate_or_count
            await self._waiters.wait(lambda: len(self.received) >= count, timeout, f"{count} frames")
            return list(self.received)
        predicate = predicate_or_count
        await self._waiters.wait(
            lambda: any(predicate(k, f) for k, f in self.received), timeout, "a matching frame"
        )
        return [(k, f) for k, f in self.received if predicate(k, f)]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds, e.g. ``lambda: server.idle_cuts == 1``.

        The condition is re-checked on every server event: connections, frames,
        subscriptions, faults and generator ticks.
        """
        await self._waiters.wait(condition, timeout, "condition")

    # -- connections -------------------------------------------------------------------

    def _snapshot(self) -> list[_Client]:
        return list(self._clients.values())

    def _process_request(self, conn: ServerConnection, request: Request, *, main: bool) -> Response | None:
        response = self._answer(conn, request, main=main)
        port = self._port if main else self._alt_port
        assert port is not None
        self.handshakes.append(
            Handshake(
                port=port,
                path=request.path,
                key=request.headers.get("X-Client-Id") or _ANONYMOUS,
                headers=tuple(request.headers.raw_items()),
                status=101 if response is None else response.status_code,
            )
        )
        self._waiters.notify()
        return response

    def _answer(self, conn: ServerConnection, request: Request, *, main: bool) -> Response | None:
        if urlsplit(request.path).path != self.path:
            self.rejected_handshakes += 1
            return conn.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        if main and self._redirect is not None:
            status, location = self._redirect
            if location is None:
                host = f"[{self.host}]" if ":" in self.host else self.host
                location = f"ws://{host}:{self._alt_port}{request.path}"
            self.redirected_handshakes += 1
            response = conn.respond(status, f"{http.HTTPStatus(status).phrase}\n")
            response.headers["Location"] = location
            return response
        if self._reject is None:
            return None
        status, retry_after = self._reject
        self.rejected_handshakes += 1
        try:
            text = f"{http.HTTPStatus(status).phrase}\n"
        except ValueError:
            text = f"HTTP {status}\n"
        response = conn.respond(status, text)
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, _FeedConnection)
        if ws.lost:
            return
        request = ws.request
        assert request is not None
        key = request.headers.get("X-Client-Id") or _ANONYMOUS
        client = _Client(key, ws, self._close_after)
        self._clients[ws] = client
        self.total_connections += 1
        self.connections_by_client[key] += 1
        self._current[key] += 1
        self._peak[key] = max(self._peak[key], self._current[key])
        self._waiters.notify()
        try:
            immediate_close = self._closing or self._accept_then_close
            if immediate_close is not None:
                await self._close(ws, *immediate_close)
                return
            client.spawn(self._write(client))
            client.spawn(self._watch_idle(client))
            if client.close_after is not None and client.close_after.seconds is not None:
                client.spawn(self._close_later(client, client.close_after))
            with contextlib.suppress(ConnectionClosed):
                async for frame in ws:
                    self._on_frame(client, frame)
        finally:
            received = ws.protocol.close_rcvd
            self.close_codes.append(received.code if received is not None else 1006)
            self._unregister(ws)
            tasks = list(client.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_connection_lost(self, conn: _FeedConnection) -> None:
        self._unregister(conn)

    def _unregister(self, conn: _FeedConnection) -> None:
        client = self._clients.pop(conn, None)
        if client is None:
            return
        for stream in client.subscriptions:
            self._subscribers[stream].pop(client, None)
        self._current[client.key] -= 1
        self._waiters.notify()

    async def _close(self, conn: ServerConnection, code: int, reason: str) -> None:
        try:
            # Bounded separately from close_timeout: websockets waits for a drain with
            # no deadline before it even sends the close frame.
            async with asyncio.timeout(self.close_timeout):
                await conn.close(code, reason)
        except TimeoutError:
            conn.transport.abort()

    async def _close_later(self, client: _Client, budget: _CloseAfter) -> None:
        assert budget.seconds is not None
        await asyncio.sleep(budget.seconds)
        await self._close(client.conn, budget.code, budget.reason)

    async def _watch_idle(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        conn = client.conn
        while not conn.lost:
            changed = self._idle_changed
            cutoff = self._idle_cutoff
            if cutoff is None:
                await changed.wait()
                continue
            deadline = conn.last_rx + cutoff
            if loop.time() >= deadline:
                self.idle_cuts += 1
                conn.transport.abort()
                self._waiters.notify()
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await changed.wait()

    async def _write(self, client: _Client) -> None:
        conn = client.conn
        budget = client.close_after
        while not conn.lost:
            if not client.outbox:
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            text, stream = client.outbox.popleft()
            try:
                await conn.send(text)
            except ConnectionClosed:
                return
            client.sent += 1
            if stream is None:
                self._responses_sent[client.key] += 1
            else:
                self._sent[(client.key, *stream)] += 1
            if budget is not None and budget.messages is not None and client.sent >= budget.messages:
                await self._close(conn, budget.code, budget.reason)
                return

    def _enqueue(self, client: _Client, text: str, stream: StreamKey | None) -> None:
        if client.dropping or client.hung:
            return
        if len(client.outbox) >= self.max_buffer:
            self._drop_slow(client)
            return
        client.outbox.append((text, stream))
        client.wakeup.set()

    def _drop_slow(self, client: _Client) -> None:
        client.dropping = True
        self.slow_consumer_drops += 1
        for stream in client.subscriptions:
            self._subscribers[stream].pop(client, None)
        client.outbox.clear()
        client.spawn(self._close(client.conn, 1008, "slow consumer"))
        self._waiters.notify()

    # -- protocol ----------------------------------------------------------------------

    def _respond(self, client: _Client, message: dict[str, Any]) -> None:
        if not self._silent:
            self._enqueue(client, json.dumps(message, separators=(",", ":")), None)

    def _on_frame(self, client: _Client, frame: str | bytes) -> None:
        self.received.append((client.key, frame))
        try:
            self._dispatch(client, frame)
        finally:
            self._waiters.notify()

    def _dispatch(self, client: _Client, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self._respond(client, _error(None, "binary frames are not supported"))
            return
        if frame == "ping":
            if not self._silent:
                self._enqueue(client, "pong", None)
            return
        try:
            request = json.loads(frame)
        except (ValueError, RecursionError):
            self._respond(client, _error(None, "invalid JSON"))
            return
        if not isinstance(request, dict):
            self._respond(client, _error(None, "request must be a JSON object"))
            return
        req_id = request.get("id")
        op = request.get("op")
        if op == "ping":
            self._respond(client, {"type": "pong", "id": req_id})
        elif op == "time":
            self._respond(client, {"type": "time", "id": req_id, "ts": time.time()})
        elif op in ("subscribe", "unsubscribe"):
            self._subscription(client, op, req_id, request.get("channel"), request.get("symbol"))
        else:
            self._respond(client, _error(req_id, f"unknown op: {op!r}"))

    def _subscription(
        self, client: _Client, op: str, req_id: object, channel: object, symbol: object
    ) -> None:
        if channel not in CHANNELS:
            self._respond(client, _error(req_id, f"unknown channel: {channel!r}"))
            return
        if symbol not in self.symbols:
            self._respond(client, _error(req_id, f"unknown symbol: {symbol!r}"))
            return
        assert isinstance(channel, str)
        assert isinstance(symbol, str)
        stream = (channel, symbol)
        # No await between the (un)subscription and queueing the ack, so the ack sits
        # exactly at the boundary of the stream's messages in this client's outbox.
        if op == "subscribe":
            client.subscriptions[stream] = None
            if not client.dropping and not client.hung:
                self._subscribers[stream][client] = None
        else:
            client.subscriptions.pop(stream, None)
            self._subscribers[stream].pop(client, None)
        self._respond(
            client,
            {"type": "ack", "op": op, "id": req_id, "channel": channel, "symbol": symbol},
        )

    # -- generation --------------------------------------------------------------------

    async def _generate(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate
        next_tick = loop.time()
        while self._ws_server is not None:
            next_tick += interval
            now = loop.time()
            # After a long stall, resume the cadence instead of bursting to catch up.
            if next_tick < now - 1.0:
                next_tick = now
            await asyncio.sleep(max(0.0, next_tick - now))
            self._tick()

    def _tick(self) -> None:
        ts = time.time()
        for stream in self._streams.values():
            message = stream.next(ts)
            subscribers = self._subscribers[stream.key]
            if not subscribers or self._silent:
                continue
            text = json.dumps(message, separators=(",", ":"))
            # _enqueue may unsubscribe a slow client, so iterate over a copy.
            for client in list(subscribers):
                self._enqueue(client, text, stream.key)
        if self._waiters:
            self._waiters.notify()


def _error(req_id: object, message: str) -> dict[str, Any]:
    return {"type": "error", "id": req_id, "message": message}


def _header(value: int | str | None) -> str | None:
    return None if value is None else str(value)
