"""An exchange-like WebSocket server that enforces a venue's client limits, for tests.

:class:`VenueServer` speaks a Binance-like protocol (JSON text frames, ``SUBSCRIBE`` /
``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS``, ``<name>@trade`` and ``<name>@depth`` streams, an HTTP
depth snapshot on the same port) and enforces the limits real venues put on clients, described
by :class:`VenueRules`: streams per connection, messages per second, connection attempts per
window and a maximum connection age. A violation gets the venue's answer (an error frame, a
close with 1008, an HTTP 429 with ``Retry-After``) and is counted, so a test can check that a
client, or a pool of connections, stays within the rules and recovers when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import inspect
import json
import math
import random
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event

from wsclient.routing import Message
from wsclient.testing.waiters import Waiters

__all__ = ["VenueConnectionInfo", "VenueRules", "VenueServer", "VenueTrade"]


class VenueTrade(Message):
    """A trade event of :class:`VenueServer`, as a typed message (tag field ``e``: use
    ``ClientConfig(discriminator="e")``); ``dedup_key=lambda m: (m.s, m.t)``."""

    e: Literal["trade"]
    s: str
    """The stream, e.g. ``"btc@trade"``."""
    t: int
    """The trade id, contiguous per stream."""
    p: Decimal
    q: Decimal
    E: int
    """Event time, milliseconds."""


_STREAM_NAME: Final = re.compile(r"[^@\s]{1,100}@(trade|depth)")
# Every live stream is advanced on every tick, so their number is what bounds the generator's work.
_MAX_STREAMS: Final = 1000
_BOOK_LEVELS: Final = 20
_HISTORY_KEPT: Final = 1000
# After a stall (a debugger, a loaded machine) streams resume their cadence instead of bursting more
# than this many seconds of events at once.
_MAX_CATCH_UP: Final = 1.0
_COUNTED_CONTROL: Final = frozenset({Opcode.PING, Opcode.PONG})


@dataclass(frozen=True)
class VenueRules:
    """Limits a :class:`VenueServer` enforces; every limit is optional (``None`` = unlimited).

    A server's rules may be replaced at run time (``server.rules = VenueRules(...)``); each check
    uses the rules current at that moment, except the age limit, which a connection takes from
    the rules in force when it opened.
    """

    streams_per_connection: int | None = None
    """Most streams one connection may be subscribed to. A ``SUBSCRIBE`` that would go over gets
    ``{"error": {"code": -2, "msg": "too many streams"}, "id": ...}``, subscribes nothing, and the
    connection is closed with 1008 ``"too many streams"`` (``violations["streams"]``)."""
    messages_per_second: int | None = None
    """Most messages a client may send on one connection in any sliding one-second window. The
    message that goes over is not processed and the connection is closed with 1008
    ``"too many messages"`` (``violations["rate"]``)."""
    count_control_frames: bool = False
    """Whether the client's ping and pong frames count as messages for ``messages_per_second``
    (a venue that counts them, as Binance does); close frames never count."""
    connects_per_window: int | None = None
    """Most WebSocket handshakes (accepted or refused) the whole server takes in any sliding
    ``connect_window``; every loopback client shares one address, so this is the venue's per-IP
    limit. The handshake that goes over gets HTTP 429 with ``Retry-After`` (whole seconds until
    a handshake would be accepted, at least 1) (``violations["connects"]``)."""
    connect_window: float = 1.0
    """Length in seconds of the window of ``connects_per_window``."""
    max_connection_age: float | None = None
    """Seconds after its handshake at which a connection is cut (counted in
    :attr:`VenueServer.age_cuts`, not a violation)."""
    age_cut: Literal["close", "abort"] = "close"
    """How the age limit cuts: ``"close"`` sends 1001 ``"connection age limit"``; ``"abort"``
    resets the TCP connection with no close frame."""

    def __post_init__(self) -> None:
        for name in ("streams_per_connection", "messages_per_second", "connects_per_window"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not self.connect_window > 0:
            raise ValueError(f"connect_window must be positive, got {self.connect_window!r}")
        if self.max_connection_age is not None and not self.max_connection_age > 0:
            raise ValueError(f"max_connection_age must be positive or None, got {self.max_connection_age!r}")
        if self.age_cut not in ("close", "abort"):
            raise ValueError(f"age_cut must be 'close' or 'abort', got {self.age_cut!r}")


@dataclass(frozen=True)
class VenueConnectionInfo:
    """A snapshot of one connection's state and accounting, from :attr:`VenueServer.connections`."""

    id: int
    """Server-assigned id, 1 for the first connection accepted, never reused."""
    remote: tuple[str, int]
    """The client's ``(host, port)``: a client finds its own connection by its local address."""
    opened_at: float
    """Event-loop time (``loop.time()``) of the handshake."""
    closed_at: float | None
    """Event-loop time at which the TCP connection ended, ``None`` while it is open."""
    streams: tuple[str, ...]
    """Streams subscribed to, sorted."""
    muted: tuple[str, ...]
    """Streams muted for this connection only (see :meth:`VenueServer.mute`), sorted."""
    messages_received: int
    """Data messages received (text or binary, a fragmented one once), the one over the rate limit
    included; nothing more is counted once the connection is being cut."""
    control_frames_received: int
    """Ping and pong frames received."""
    subscribe_messages: int
    """``SUBSCRIBE`` requests received."""
    events_sent: Mapping[str, int]
    """Stream events written to the connection, per stream."""
    last_sent: Mapping[str, int]
    """Sequence (trade id or last update id) of the last event written, per stream."""


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


# (text, stream or None for a response, sequence of the event or 0)
_Out = tuple[str, str | None, int]


class _Stream:
    """One stream: its sequence and its deterministic content.

    Each stream owns its random generators, so what it produces depends only on ``seed``, its
    name and its sequence, never on other streams, timing or who listens.
    """

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.seq = 0
        """Trade id of the last trade, or id of the last book update."""
        self.carry = 0.0
        """Fraction of an event owed by the generator's previous ticks."""
        self._rng = random.Random(f"{seed}:{name}")
        base = random.Random(f"{seed}:{name}:base").randint(10, 60_000)
        # A tick of 5 units at the fifth significant digit, e.g. 0.5 for a 43000 price.
        self._tick = Decimal(5).scaleb(math.floor(math.log10(base)) - 5)
        self._mid = int(Decimal(base) / self._tick)

    def _price(self, ticks: int) -> str:
        return format(self._tick * ticks, "f")

    def _qty(self) -> str:
        return format(Decimal(self._rng.randint(1, 5000)).scaleb(-3), "f")

    def next_event(self) -> dict[str, Any]:
        """Advance by one event and return it."""
        raise NotImplementedError

    def advance(self, n: int) -> None:
        """Advance the sequence by ``n`` without producing events."""
        raise NotImplementedError


class _TradeStream(_Stream):
    def next_event(self) -> dict[str, Any]:
        self.seq += 1
        self._mid = max(self._mid + self._rng.randint(-2, 2), 10)
        return {
            "e": "trade",
            "s": self.name,
            "t": self.seq,
            "p": self._price(self._mid),
            "q": self._qty(),
            "E": int(time.time() * 1000),
        }

    def advance(self, n: int) -> None:
        # Drawn and thrown away, so that trade t has the same content with or without skips.
        for _ in range(n):
            self.next_event()


class _DepthStream(_Stream):
    """An order book around a fixed mid price, so that it never crosses.

    Each update id changes one level, drawn from the stream's own generator, so the book after
    update N depends only on N; how updates are grouped into events uses a second generator.
    """

    def __init__(self, name: str, seed: int) -> None:
        super().__init__(name, seed)
        self._groups = random.Random(f"{seed}:{name}:groups")
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        for offset in range(1, _BOOK_LEVELS + 1):
            self.bids[self._price(self._mid - offset)] = self._qty()
            self.asks[self._price(self._mid + offset)] = self._qty()

    def _update(self) -> tuple[bool, str, str]:
        self.seq += 1
        is_bid = self._rng.random() < 0.5
        offset = self._rng.randint(1, _BOOK_LEVELS)
        qty = "0" if self._rng.random() < 0.3 else self._qty()
        price = self._price(self._mid - offset if is_bid else self._mid + offset)
        book = self.bids if is_bid else self.asks
        if qty == "0":
            book.pop(price, None)
        else:
            book[price] = qty
        return is_bid, price, qty

    def next_event(self) -> dict[str, Any]:
        first = self.seq + 1
        bids: dict[str, str] = {}
        asks: dict[str, str] = {}
        for _ in range(self._groups.randint(1, 3)):
            is_bid, price, qty = self._update()
            # A level changed twice in one event is listed once, with its final quantity.
            (bids if is_bid else asks)[price] = qty
        return {
            "e": "depthUpdate",
            "s": self.name,
            "U": first,
            "u": self.seq,
            "b": [[p, q] for p, q in bids.items()],
            "a": [[p, q] for p, q in asks.items()],
        }

    def advance(self, n: int) -> None:
        for _ in range(n):
            self._update()

    def snapshot(self) -> dict[str, Any]:
        return {
            "lastUpdateId": self.seq,
            "bids": [[p, self.bids[p]] for p in sorted(self.bids, key=Decimal, reverse=True)],
            "asks": [[p, self.asks[p]] for p in sorted(self.asks, key=Decimal)],
        }


class _VenueConnection(ServerConnection):
    """Server connection that hands every frame to its :class:`VenueServer` as it is parsed.

    ``serve()`` builds connections from a class, so each server binds itself through a one-off
    subclass (see :func:`_bind_connection_class`).
    """

    venue: ClassVar[VenueServer]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cid = 0
        """0 until registered by the server."""
        self.opened_at = 0.0
        self.closed_at: float | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.streams: dict[str, None] = {}
        self.muted: set[str] = set()
        self.outbox: deque[_Out | _Close] = deque()
        self.wakeup = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.recent: deque[float] = deque()
        """Arrival times of the counted messages of the last second, for the rate limit."""
        self.messages_received = 0
        self.control_frames_received = 0
        self.subscribe_messages = 0
        self.events_sent: Counter[str] = Counter()
        self.last_sent: dict[str, int] = {}
        self.fragments: list[bytes] | None = None
        self.fragmented_text = False
        self.doomed = False
        """Being cut (a violation, a slow consumer, the age limit): it is fed and read no more."""
        self.lost = False

    def process_event(self, event: Event) -> None:
        # Frames are taken here, as the protocol parses them, rather than from recv(): this is the
        # one place that sees control frames, and it keeps the rate limit on arrival time and
        # every answer in arrival order, without a reader task in between.
        if self.request is None or not isinstance(event, Frame):
            super().process_event(event)
            return
        self.venue._on_frame(self, event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost = True
        # Accounting must change before the client can possibly reconnect, so it is done here
        # rather than when the handler task gets around to finishing.
        self.venue._on_connection_lost(self)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def info(self) -> VenueConnectionInfo:
        return VenueConnectionInfo(
            id=self.cid,
            remote=self.remote,
            opened_at=self.opened_at,
            closed_at=self.closed_at,
            streams=tuple(sorted(self.streams)),
            muted=tuple(sorted(self.muted)),
            messages_received=self.messages_received,
            control_frames_received=self.control_frames_received,
            subscribe_messages=self.subscribe_messages,
            events_sent=dict(self.events_sent),
            last_sent=dict(self.last_sent),
        )


def _bind_connection_class(venue: VenueServer) -> type[_VenueConnection]:
    class _BoundVenueConnection(_VenueConnection):
        pass

    _BoundVenueConnection.venue = venue
    return _BoundVenueConnection


class VenueServer:
    """A Binance-like market-data endpoint that enforces :class:`VenueRules`, for tests.

    Protocol (JSON text frames on ``ws://127.0.0.1:<port>/ws``, any path accepted)::

        -> {"method": "SUBSCRIBE", "params": ["btc@trade", "eth@depth"], "id": 7}
        <- {"result": null, "id": 7}
        -> {"method": "UNSUBSCRIBE", "params": ["btc@trade"], "id": 8}
        <- {"result": null, "id": 8}
        -> {"method": "LIST_SUBSCRIPTIONS", "id": 9}
        <- {"result": ["eth@depth"], "id": 9}
        <- {"e": "trade", "s": "btc@trade", "t": 17, "p": "43001.5", "q": "0.013", "E": 1700000000000}
        <- {"e": "depthUpdate", "s": "eth@depth", "U": 41, "u": 43, "b": [["2299.5", "1.2"]],
            "a": [["2300.5", "0"]]}

    An unknown method, invalid JSON or invalid params get ``{"error": {"code": -1, "msg": ...},
    "id": <id or null>}`` and the connection stays open (the message still counts for the rate
    limit). Subscribing twice, or unsubscribing from a stream not subscribed, is harmless.

    A stream is any ``<name>@trade`` or ``<name>@depth``; it comes into being at its first
    subscription and from then on produces ``rate`` events per second while the server runs,
    listened to or not (also while :meth:`restart` has it down), so its sequence is global and a
    client that was away sees a real gap. Trade ids ``t`` count from 1 without holes; a depth
    event covers 1 to 3 update ids (``U`` is the previous ``u`` + 1) of a book of up to 20 levels
    a side, where quantity ``"0"`` removes a level. Content is a deterministic function of
    ``seed``, the stream's name and its sequence (only ``E`` is wall-clock). Every connection
    subscribed to a stream receives the same events, byte for byte, from its subscription's
    acknowledgement on, in order, unless muted.

    ``GET /depth?stream=<name>@depth`` on the same port answers the full book after update
    ``lastUpdateId``: ``{"lastUpdateId": N, "bids": [[p, q], ...], "asks": [[p, q], ...]}``, bids
    from the best down, asks from the best up (404 for a stream that does not exist yet, 400 for
    a name that is not a depth stream). A snapshot plus the events that follow it, synchronized
    by Binance's rule, reproduce :meth:`book`.

    One generator task drives all streams every ``tick`` seconds. Each connection has an outbox
    of at most ``max_buffer`` frames drained by its own writer task, so a slow client never
    delays the others; a connection whose outbox overflows is closed with 1008
    ``"slow consumer"`` and counted in :attr:`slow_consumer_drops`.

    Use as ``async with VenueServer(rules=VenueRules(...)) as server:`` or call :meth:`start` /
    :meth:`stop`.
    """

    def __init__(
        self,
        rules: VenueRules | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float = 50.0,
        seed: int = 1,
        tick: float = 0.01,
        max_buffer: int = 1000,
        ping_interval: float | None = None,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 2.0,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`.

        Args:
            rules: The limits to enforce; ``None`` enforces none.
            host: Interface to bind, ``127.0.0.1`` in tests.
            port: TCP port; 0 picks a free one, which is then kept across restarts.
            rate: Events per second per stream; 0 makes streams produce only on :meth:`emit`.
                May be changed at run time (``server.rate = 0`` freezes every stream).
            seed: Seed of the deterministic stream content.
            tick: Period of the generator, in seconds.
            max_buffer: Bound of each connection's outbox, in frames.
            ping_interval: Interval of the server's keepalive pings; ``None`` (the default)
                never pings. Their pongs count as messages under ``count_control_frames``.
            ping_timeout: Timeout of those keepalive pings.
            close_timeout: How long a closing handshake may take before the server aborts the
                TCP connection.
        """
        if rate < 0:
            raise ValueError(f"rate must not be negative, got {rate!r}")
        if not tick > 0:
            raise ValueError(f"tick must be positive, got {tick!r}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, got {max_buffer!r}")
        self.rules = rules if rules is not None else VenueRules()
        """The limits enforced; may be replaced at run time."""
        self.host = host
        self.rate = rate
        """Events per second per stream; may be changed at run time."""
        self.seed = seed
        self.tick = tick
        self.max_buffer = max_buffer
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout

        self.violations: Counter[str] = Counter()
        """Rule violations by kind: ``"streams"``, ``"rate"``, ``"connects"``."""
        self.age_cuts = 0
        """Connections cut by ``max_connection_age``."""
        self.slow_consumer_drops = 0
        """Connections closed with 1008 because their outbox overflowed (not a violation)."""
        self.connects_total = 0
        """WebSocket handshakes received, refused ones included (``/depth`` requests are not)."""
        self.accepted_total = 0
        """WebSocket connections accepted."""
        self.subscribe_messages_total = 0
        """``SUBSCRIBE`` requests received on all connections."""
        self.depth_requests_total = 0
        """``GET /depth`` requests received."""

        self._port = port
        self._streams: dict[str, _Stream] = {}
        self._subscribers: dict[str, dict[_VenueConnection, None]] = {}
        self._muted: set[str] = set()
        self._live: dict[int, _VenueConnection] = {}
        self._history: dict[int, VenueConnectionInfo] = {}
        self._next_id = 1
        self._connect_times: deque[float] = deque()
        self._waiters = Waiters()
        self._conn_class = _bind_connection_class(self)
        self._ws_server: Server | None = None
        self._generator: asyncio.Task[None] | None = None
        # Set while the listener goes down, so that a handshake completing meanwhile is dropped.
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Bound TCP port (0 before the first :meth:`start` when constructed with 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/ws``, the WebSocket endpoint."""
        return f"ws://{self._netloc()}/ws"

    @property
    def http_url(self) -> str:
        """``http://host:port``, the base of the REST endpoint (``/depth``)."""
        return f"http://{self._netloc()}"

    def depth_url(self, stream: str) -> str:
        """``http://host:port/depth?stream=<stream>``, the snapshot of a depth stream."""
        return f"{self.http_url}/depth?stream={stream}"

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the server was started and not stopped (streams advance meanwhile)."""
        return self._generator is not None

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections right now (false while :meth:`restart` is down)."""
        return self._ws_server is not None

    async def start(self) -> None:
        """Listen and start the stream generator; does nothing if already running."""
        if self._generator is not None:
            return
        await self._listen()
        self._generator = asyncio.get_running_loop().create_task(self._generate())

    async def stop(self) -> None:
        """Close every connection with 1001 ``"going away"``, stop listening and end every task.

        Streams pause (their sequences do not advance) until the next :meth:`start`. Idempotent.
        """
        await self._stop_generator()
        await self._unlisten(graceful=True)

    async def kill(self) -> None:
        """Stop like :meth:`stop`, but reset every connection with no close frame (a crash)."""
        await self._stop_generator()
        await self._unlisten(graceful=False)

    async def restart(self, *, down_for: float = 0.0) -> None:
        """Reset every connection with no close frame, stay down ``down_for`` seconds, listen
        again on the same port.

        Streams keep advancing while the server is down, so reconnecting clients see real gaps.

        Raises:
            RuntimeError: If the server is not running.
        """
        if self._generator is None:
            raise RuntimeError("restart() needs a running server")
        await self._unlisten(graceful=False)
        if down_for > 0:
            await asyncio.sleep(down_for)
        if self._generator is not None:  # stop() may have been called meanwhile
            await self._listen()

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

    async def _listen(self) -> None:
        self._stopping = False
        self._ws_server = await serve(
            self._handle,
            self.host,
            self._port,
            compression=None,
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            open_timeout=5.0,
            create_connection=self._conn_class,
        )
        self._port = self._ws_server.sockets[0].getsockname()[1]
        self._waiters.notify()

    async def _unlisten(self, *, graceful: bool) -> None:
        ws_server, self._ws_server = self._ws_server, None
        if ws_server is None:
            return
        self._stopping = True
        # Connections are closed here rather than by websockets, whose own close path has no bound
        # on a blocked drain: a client that stopped reading could hang stop() forever.
        ws_server.close(close_connections=False)
        conns = list(self._live.values())
        if graceful:
            await asyncio.gather(*(self._close(c, 1001, "going away") for c in conns))
        else:
            for conn in conns:
                conn.transport.abort()
        await ws_server.wait_closed()
        self._waiters.notify()

    async def _stop_generator(self) -> None:
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.cancel()
            await asyncio.gather(generator, return_exceptions=True)

    # -- controls ----------------------------------------------------------------------

    def emit(self, stream: str, n: int = 1) -> None:
        """Produce ``n`` events of ``stream`` now, to every subscriber not muted.

        The stream is created if it does not exist yet. Works whatever ``rate`` is.

        Raises:
            ValueError: If ``stream`` is not a valid stream name or ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n!r}")
        self._produce(self._stream(stream), n)
        self._waiters.notify()

    def skip(self, stream: str, n: int) -> None:
        """Advance ``stream``'s sequence by ``n`` without sending anything: a forced gap.

        For a trade stream that is ``n`` trade ids; for a depth stream ``n`` update ids, which
        still change the book (a snapshot taken afterwards includes them).

        Raises:
            ValueError: If ``stream`` is not a valid stream name or ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n!r}")
        self._stream(stream).advance(n)
        self._waiters.notify()

    def mute(self, stream: str, *, connection: int | None = None) -> None:
        """Silently stop sending ``stream`` to every connection, or to connection ``connection``.

        The connections stay subscribed (``LIST_SUBSCRIPTIONS`` still lists it) and the stream
        keeps advancing: a venue that silently dropped a subscription. Events produced before
        the call may still be on their way.

        Raises:
            KeyError: If ``connection`` is given and no live connection has that id.
        """
        if connection is None:
            self._muted.add(stream)
        else:
            self._live_connection(connection).muted.add(stream)

    def unmute(self, stream: str, *, connection: int | None = None) -> None:
        """Send ``stream`` again: with no ``connection``, to everyone (every mute of the stream,
        global or per connection, is lifted); else to that connection only.

        Subscribers resume with the next event produced; what was produced meanwhile is lost.
        """
        if connection is None:
            self._muted.discard(stream)
            for conn in self._live.values():
                conn.muted.discard(stream)
        else:
            self._live_connection(connection).muted.discard(stream)

    async def drop_connection(self, connection: int) -> None:
        """Reset one connection's TCP connection, no close frame, and wait until it is gone.

        Raises:
            KeyError: If no live connection has that id.
        """
        conn = self._live_connection(connection)
        conn.transport.abort()
        await conn.wait_closed()

    async def close_connection(self, connection: int, code: int = 1000, reason: str = "") -> None:
        """Close one connection with ``code`` and ``reason`` and wait until it is closed.

        Raises:
            KeyError: If no live connection has that id.
        """
        await self._close(self._live_connection(connection), code, reason)

    def _live_connection(self, cid: int) -> _VenueConnection:
        try:
            return self._live[cid]
        except KeyError:
            raise KeyError(f"no live connection {cid}") from None

    # -- accounting --------------------------------------------------------------------

    @property
    def total_violations(self) -> int:
        """Sum of :attr:`violations`."""
        return sum(self.violations.values())

    @property
    def connections(self) -> dict[int, VenueConnectionInfo]:
        """Live connections by id, oldest first (a snapshot)."""
        return {cid: conn.info() for cid, conn in self._live.items()}

    def connection(self, cid: int) -> VenueConnectionInfo:
        """Connection ``cid``, live or among the last 1000 closed.

        Raises:
            KeyError: For an unknown (or long forgotten) id.
        """
        conn = self._live.get(cid)
        if conn is not None:
            return conn.info()
        return self._history[cid]

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream that exists, sorted."""
        return tuple(sorted(self._streams))

    def sent(self, stream: str) -> int:
        """Sequence of the last event ``stream`` produced (sent or not): its last trade id, or
        last update id for a depth stream; 0 before the first, or if the stream does not exist."""
        found = self._streams.get(stream)
        return 0 if found is None else found.seq

    def subscribers(self, stream: str) -> tuple[int, ...]:
        """Ids of the live connections subscribed to ``stream``, muted or not."""
        return tuple(c.cid for c in self._live.values() if stream in c.streams)

    def book(self, stream: str) -> tuple[int, dict[str, str], dict[str, str]]:
        """``(last_update_id, bids, asks)`` of a depth stream's book, price -> quantity (copies).

        Raises:
            KeyError: If the depth stream does not exist.
        """
        found = self._streams.get(stream)
        if not isinstance(found, _DepthStream):
            raise KeyError(f"no depth stream {stream!r}")
        return found.seq, dict(found.bids), dict(found.asks)

    def next_connect_slot(self) -> float:
        """Seconds until a handshake would pass ``connects_per_window`` (0.0 if it would now)."""
        limit = self.rules.connects_per_window
        if limit is None:
            return 0.0
        now = asyncio.get_running_loop().time()
        times = self._prune_connects(now)
        if len(times) < limit:
            return 0.0
        # A handshake passes once all but limit - 1 of the recorded ones have left the window.
        return max(0.0, times[len(times) - limit] + self.rules.connect_window - now)

    # -- event-driven waits ------------------------------------------------------------

    async def wait_until(
        self, condition: Callable[[], bool], timeout: float = 5.0, *, what: str | None = None
    ) -> None:
        """Wait until ``condition()`` holds, e.g. ``lambda: server.age_cuts == 1``.

        The condition is checked now and again on every server event: handshakes, frames,
        connections ending, events produced and written, restarts.

        Raises:
            TimeoutError: After ``timeout`` seconds, naming ``what`` (by default the source of
                ``condition``).
        """
        await self._waiters.wait(condition, timeout, what or _describe(condition))

    # -- handshakes and HTTP ------------------------------------------------------------

    def _prune_connects(self, now: float) -> deque[float]:
        times = self._connect_times
        window = self.rules.connect_window
        while times and times[0] <= now - window:
            times.popleft()
        return times

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        try:
            url = urlsplit(request.path)
            if url.path == "/depth":
                return self._depth(conn, url.query)
            return self._admit(conn)
        finally:
            self._waiters.notify()

    def _admit(self, conn: ServerConnection) -> Response | None:
        self.connects_total += 1
        limit = self.rules.connects_per_window
        if limit is None:
            return None
        now = asyncio.get_running_loop().time()
        times = self._prune_connects(now)
        # Refused handshakes count too, as at a venue: hammering keeps a client locked out.
        times.append(now)
        if len(times) <= limit:
            return None
        self.violations["connects"] += 1
        wait = times[len(times) - limit] + self.rules.connect_window - now
        response = conn.respond(http.HTTPStatus.TOO_MANY_REQUESTS, "Too Many Requests\n")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    def _depth(self, conn: ServerConnection, query: str) -> Response:
        self.depth_requests_total += 1
        names = parse_qs(query).get("stream", [])
        if len(names) != 1 or not names[0].endswith("@depth") or not _STREAM_NAME.fullmatch(names[0]):
            return _json_response(conn, 400, {"code": -1100, "msg": "stream must name one <name>@depth"})
        stream = self._streams.get(names[0])
        if not isinstance(stream, _DepthStream):
            return _json_response(conn, 404, {"code": -1121, "msg": f"unknown stream {names[0]!r}"})
        return _json_response(conn, 200, stream.snapshot())

    # -- connections -------------------------------------------------------------------

    def _register(self, conn: _VenueConnection) -> None:
        if conn.cid:
            return
        conn.cid = self._next_id
        self._next_id += 1
        conn.opened_at = conn.loop.time()
        remote = conn.remote_address
        conn.remote = (str(remote[0]), int(remote[1])) if remote else ("", 0)
        self._live[conn.cid] = conn
        self.accepted_total += 1
        self._waiters.notify()

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, _VenueConnection)
        if ws.lost:
            return
        self._register(ws)
        try:
            if self._stopping:
                ws.transport.abort()
                return
            ws.spawn(self._write(ws))
            age = self.rules.max_connection_age
            if age is not None:
                ws.spawn(self._cut_at_age(ws, age, self.rules.age_cut))
            # Frames are handled by process_event; the handler only has to outlive the connection.
            await ws.wait_closed()
        finally:
            tasks = list(ws.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_connection_lost(self, conn: _VenueConnection) -> None:
        conn.closed_at = conn.loop.time()
        conn.wakeup.set()  # lets the writer see the connection is gone
        for stream in conn.streams:
            self._subscribers[stream].pop(conn, None)
        if self._live.pop(conn.cid, None) is not None:
            self._history[conn.cid] = conn.info()
            if len(self._history) > _HISTORY_KEPT:
                del self._history[next(iter(self._history))]
        self._waiters.notify()

    async def _close(self, conn: _VenueConnection, code: int, reason: str) -> None:
        try:
            # Bounded separately from close_timeout: websockets waits for a drain with no deadline
            # before it even sends the close frame.
            async with asyncio.timeout(self.close_timeout):
                await conn.close(code, reason)
        except TimeoutError:
            conn.transport.abort()

    async def _cut_at_age(self, conn: _VenueConnection, age: float, how: Literal["close", "abort"]) -> None:
        await asyncio.sleep(max(0.0, conn.opened_at + age - conn.loop.time()))
        if conn.lost or conn.doomed:
            return
        self.age_cuts += 1
        self._doom(conn)
        conn.outbox.clear()
        if how == "abort":
            conn.transport.abort()
        else:
            await self._close(conn, 1001, "connection age limit")
        self._waiters.notify()

    async def _write(self, conn: _VenueConnection) -> None:
        # Bounded by the connection: connection_lost sets the wakeup and the loop ends.
        while not conn.lost:
            if not conn.outbox:
                conn.wakeup.clear()
                await conn.wakeup.wait()
                continue
            item = conn.outbox.popleft()
            if isinstance(item, _Close):
                await self._close(conn, item.code, item.reason)
                return
            text, stream, seq = item
            try:
                await conn.send(text)
            except ConnectionClosed:
                return
            if stream is not None:
                conn.events_sent[stream] += 1
                conn.last_sent[stream] = seq
                if self._waiters:
                    self._waiters.notify()

    def _enqueue(self, conn: _VenueConnection, frame: _Out) -> None:
        if conn.doomed:
            return
        if len(conn.outbox) >= self.max_buffer:
            self.slow_consumer_drops += 1
            self._doom(conn)
            conn.outbox.clear()
            # Not through the outbox: its writer may be blocked on a client that does not read.
            conn.spawn(self._close(conn, 1008, "slow consumer"))
            self._waiters.notify()
            return
        conn.outbox.append(frame)
        conn.wakeup.set()

    def _doom(self, conn: _VenueConnection) -> None:
        conn.doomed = True
        for stream in conn.streams:
            self._subscribers[stream].pop(conn, None)

    def _violate(self, conn: _VenueConnection, kind: str, reason: str) -> None:
        """Count a violation, then close with 1008 once what is queued (the error included) is out."""
        self.violations[kind] += 1
        if conn.doomed:  # the error frame overflowed the outbox: already being closed
            return
        self._doom(conn)
        conn.outbox.append(_Close(1008, reason))
        conn.wakeup.set()

    # -- protocol ----------------------------------------------------------------------

    def _on_frame(self, conn: _VenueConnection, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            # websockets matches pongs to its own keepalive pings; closes it handles by itself.
            ServerConnection.process_event(conn, frame)
        if conn.doomed:
            return
        self._register(conn)
        counted = opcode is Opcode.TEXT or opcode is Opcode.BINARY
        if opcode in _COUNTED_CONTROL:
            conn.control_frames_received += 1
            counted = self.rules.count_control_frames
        elif counted:
            conn.messages_received += 1
        try:
            if counted and not self._within_rate(conn):
                self._violate(conn, "rate", "too many messages")
                return
            self._assemble(conn, frame)
        finally:
            self._waiters.notify()

    def _within_rate(self, conn: _VenueConnection) -> bool:
        limit = self.rules.messages_per_second
        if limit is None:
            return True
        now = conn.loop.time()
        recent = conn.recent
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= limit:
            return False
        recent.append(now)
        return True

    def _assemble(self, conn: _VenueConnection, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._dispatch(conn, bytes(frame.data), opcode is Opcode.TEXT)
                return
            # websockets' protocol checks fragment order and bounds the message size by max_size.
            conn.fragments = [bytes(frame.data)]
            conn.fragmented_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT and conn.fragments is not None:
            conn.fragments.append(bytes(frame.data))
            if frame.fin:
                data, conn.fragments = b"".join(conn.fragments), None
                self._dispatch(conn, data, conn.fragmented_text)

    def _respond(self, conn: _VenueConnection, message: dict[str, Any]) -> None:
        self._enqueue(conn, (_dumps(message), None, 0))

    def _dispatch(self, conn: _VenueConnection, data: bytes, is_text: bool) -> None:
        if not is_text:
            self._respond(conn, _error(None, "binary frames are not supported"))
            return
        try:
            request = json.loads(data.decode())
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            self._respond(conn, _error(None, "invalid JSON"))
            return
        if not isinstance(request, dict):
            self._respond(conn, _error(None, "a request is a JSON object"))
            return
        req_id = request.get("id")
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, int | str)):
            self._respond(conn, _error(None, "id must be an integer, a string or null"))
            return
        method = request.get("method")
        if method == "SUBSCRIBE" or method == "UNSUBSCRIBE":
            self._subscription(conn, method, req_id, request.get("params"))
        elif method == "LIST_SUBSCRIPTIONS":
            self._respond(conn, {"result": sorted(conn.streams), "id": req_id})
        else:
            self._respond(conn, _error(req_id, f"unknown method {method!r}"))

    def _subscription(self, conn: _VenueConnection, method: str, req_id: object, params: object) -> None:
        if method == "SUBSCRIBE":
            self.subscribe_messages_total += 1
            conn.subscribe_messages += 1
        if not isinstance(params, list) or not all(
            isinstance(p, str) and _STREAM_NAME.fullmatch(p) for p in params
        ):
            self._respond(conn, _error(req_id, "params must be a list of <name>@trade or <name>@depth"))
            return
        names: list[str] = list(dict.fromkeys(params))
        if method == "UNSUBSCRIBE":
            for name in names:
                conn.streams.pop(name, None)
                if name in self._subscribers:
                    self._subscribers[name].pop(conn, None)
            self._respond(conn, {"result": None, "id": req_id})
            return
        limit = self.rules.streams_per_connection
        if limit is not None and len(conn.streams.keys() | set(names)) > limit:
            self._respond(conn, {"error": {"code": -2, "msg": "too many streams"}, "id": req_id})
            self._violate(conn, "streams", "too many streams")
            return
        if len(self._streams.keys() | set(names)) > _MAX_STREAMS:
            self._respond(conn, _error(req_id, f"the server holds at most {_MAX_STREAMS} streams"))
            return
        # No await between subscribing and queueing the ack, so the ack sits exactly at the boundary
        # of the stream's events in this connection's outbox.
        for name in names:
            self._stream(name)
            conn.streams[name] = None
            self._subscribers[name][conn] = None
        self._respond(conn, {"result": None, "id": req_id})

    # -- generation --------------------------------------------------------------------

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is not None:
            return stream
        match = _STREAM_NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"not a stream name: {name!r} (want <name>@trade or <name>@depth)")
        stream = _TradeStream(name, self.seed) if match.group(1) == "trade" else _DepthStream(name, self.seed)
        self._streams[name] = stream
        self._subscribers[name] = {}
        return stream

    def _produce(self, stream: _Stream, n: int) -> None:
        subscribers = self._subscribers[stream.name]
        for _ in range(n):
            event = stream.next_event()
            if not subscribers or stream.name in self._muted:
                continue
            frame: _Out = (_dumps(event), stream.name, stream.seq)
            # _enqueue may drop a slow consumer, which unsubscribes it: iterate over a copy.
            for conn in list(subscribers):
                if stream.name not in conn.muted:
                    self._enqueue(conn, frame)

    async def _generate(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        # Ends when stop() or kill() cancels it.
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            elapsed = min(now - last, _MAX_CATCH_UP)
            last = now
            rate = self.rate
            for stream in list(self._streams.values()):
                stream.carry += rate * elapsed
                count = int(stream.carry)
                stream.carry -= count
                if count:
                    self._produce(stream, count)
            if self._waiters:
                self._waiters.notify()


def _dumps(message: object) -> str:
    return json.dumps(message, separators=(",", ":"))


def _error(req_id: object, msg: str) -> dict[str, Any]:
    return {"error": {"code": -1, "msg": msg}, "id": req_id}


def _json_response(conn: ServerConnection, status: int, body: object) -> Response:
    response = conn.respond(status, _dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


def _describe(condition: Callable[[], bool]) -> str:
    with contextlib.suppress(OSError, TypeError):
        return inspect.getsource(condition).strip()
    return repr(condition)
