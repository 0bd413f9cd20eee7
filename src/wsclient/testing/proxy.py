"""A fault-injecting TCP proxy for exercising WebSocket clients against a broken network.

:class:`ChaosProxy` sits between a client and a real server and forwards bytes verbatim.
From a test, at any moment, it can add latency, cap bandwidth, silently black-hole the
link, stall the client-to-server direction (a server that stopped reading), reset or drop
every connection, cut idle connections the way a reverse proxy would, or refuse new
connections. Every mode applies to live connections as well as new ones.

Example::

    async with ChaosProxy("127.0.0.1", server_port) as proxy:
        async with connect(proxy.url("/feed"), proxy=None) as ws:
            proxy.blackhole(True)
            ...  # the client should detect the dead link on its own
            proxy.blackhole(False)
            await proxy.reset()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import math
import socket
import struct
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

__all__ = ["ChaosProxy"]

_log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# Bounds what a stalled direction buffers (up to 4 MiB) while still letting
# latency * throughput worth of data be in flight.
_QUEUE_CHUNKS = 64
# Receive buffer of the proxy's client-side sockets.
_KERNEL_BUFFER = 64 * 1024
# Chunks read ahead of a bandwidth-limited direction.
_SLOW_READ_AHEAD = 2
# Bandwidth is released in slices of 1/50 s worth of bytes so the receiver sees data
# trickle in at the configured rate instead of arriving in bursts.
_SLICES_PER_SECOND = 50
_CONNECT_TIMEOUT = 10.0
# How long a FIN close may wait for a peer to take our buffered data before we give up
# and abort; stop() must not hang on a client that stopped reading.
_CLOSE_GRACE = 1.0


class _Marker(enum.Enum):
    EOF = "eof"
    RESET = "reset"


class _Outcome(enum.Enum):
    FIN = "fin"
    RESET = "reset"


_Item = tuple[float, "bytes | _Marker"]
_Coro = Coroutine[Any, Any, None]


class _Signal:
    """Broadcast wake-up: notify() releases everyone currently waiting."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        # A fresh event per generation means waiters never miss a notification and
        # never see a stale one.
        self._event = asyncio.Event()

    async def wait(self, at_most: float | None = None) -> None:
        event = self._event
        if at_most is None:
            await event.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await event.wait()


class _TokenBucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp: float | None = None


class _Connection:
    """One proxied client connection and everything it owns."""

    def __init__(
        self, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, now: float
    ) -> None:
        self.id = cid
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.up_queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
        self.down_queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
        self.children: set[asyncio.Task[None]] = set()
        self.runner: asyncio.Task[None] | None = None
        self.outcome: _Outcome | None = None
        self.done = asyncio.Event()
        self.sockets_closed = False
        self.last_upstream_rx = now
        self._half_closed = 0

    def finish(self, outcome: _Outcome) -> None:
        # The first reason to end a connection decides how it ends.
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()

    def escalate(self) -> None:
        """Make the connection end with a RST, even if a FIN close is already under way."""
        if self.outcome is None:
            self.finish(_Outcome.RESET)
            return
        self.outcome = _Outcome.RESET
        if self.sockets_closed:
            # A FIN close may still be waiting for the peer to take buffered data.
            for writer in self.writers():
                _abort_with_rst(writer)

    def half_closed(self) -> None:
        self._half_closed += 1
        if self._half_closed == 2:
            self.finish(_Outcome.FIN)

    def writers(self) -> list[asyncio.StreamWriter]:
        if self.upstream_writer is None:
            return [self.client_writer]
        return [self.client_writer, self.upstream_writer]


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns close() into a RST, which is what a crashed peer or a
        # middlebox dropping state looks like; abort() alone would send a FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close_with_fin(writer: asyncio.StreamWriter) -> None:
    # Shut down the write side first so the peer sees the FIN even if unread input
    # makes the kernel follow it with a RST when the socket is closed.
    with contextlib.suppress(OSError):
        writer.write_eof()
    writer.close()


async def _wait_closed(writers: list[asyncio.StreamWriter]) -> None:
    try:
        async with asyncio.timeout(_CLOSE_GRACE):
            for writer in writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        for writer in writers:
            writer.transport.abort()
        # After abort() the transport closes on the next loop iteration.
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class ChaosProxy:
    """A TCP proxy that injects network faults between a client and an upstream server.

    In its default mode the proxy forwards bytes unchanged in both directions. Faults are
    switched at run time through the properties and methods below; each one takes effect
    on live connections as well as new ones and can be combined with the others.

    Args:
        upstream_host: Address of the real server.
        upstream_port: Port of the real server.
        host: Address to listen on.
        port: Port to listen on; ``0`` picks a free port, readable from :attr:`port`
            after :meth:`start`. A restarted proxy binds the same port again, so clients
            find it where they left it.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._host = host
        self._requested_port = port
        self._bound_port: int | None = None
        self._server: asyncio.Server | None = None
        self._accepting = False

        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 0
        self._changed = _Signal()
        self._accepted = _Signal()

        self._latency = 0.0
        self._bandwidth: int | None = None
        self._blackholed = False
        self._stalled = False
        self._refusing = False
        self._idle_timeout: float | None = None
        self._idle_armed_at = -math.inf

        self._total_connections = 0
        self._refused_connections = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._idle_cuts = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listening socket and start accepting connections.

        Raises:
            RuntimeError: If the proxy is already running.
            OSError: If the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("ChaosProxy is already running")
        port = self._bound_port if self._bound_port is not None else self._requested_port
        self._accepting = True
        try:
            self._server = await asyncio.start_server(self._on_accept, self._host, port)
        except BaseException:
            self._accepting = False
            raise
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        for sock in self._server.sockets:
            # Accepted sockets inherit this. Loopback would otherwise let the kernel absorb
            # megabytes ahead of a bandwidth limit, hiding from the client how slowly its upload
            # really drains; a modest buffer is what a real slow link looks like from the sender.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _KERNEL_BUFFER)

    async def stop(self) -> None:
        """Stop listening, close every live connection with a FIN and wait until all the
        proxy's tasks have finished. Idempotent."""
        server = self._server
        if server is None:
            return
        self._accepting = False
        self._server = None
        server.close()
        await self._finish_all(_Outcome.FIN)
        # Connections clean up after themselves; this only catches what a bug left over.
        leftovers = list(self._tasks)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE):
                await server.wait_closed()

    async def __aenter__(self) -> ChaosProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addressing -----------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port the proxy listens on (the real one once started).

        Raises:
            RuntimeError: If the port was ``0`` and the proxy has never been started.
        """
        if self._bound_port is not None:
            return self._bound_port
        if self._requested_port:
            return self._requested_port
        raise RuntimeError("ChaosProxy has no port yet: call start() first")

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        """Return a URL pointing at the proxy, e.g. ``ws://127.0.0.1:54321/feed``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        if not path.startswith("/"):
            path = "/" + path
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def upstream(self) -> tuple[str, int]:
        """The ``(host, port)`` new connections are forwarded to."""
        return self._upstream

    def set_upstream(self, host: str, port: int) -> None:
        """Forward connections accepted from now on to another server.

        Live connections keep their current upstream.
        """
        self._upstream = (host, port)

    # -- fault modes ----------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds added to every chunk in each direction (``0`` by default).

        A chunk is delivered at its arrival time plus the current latency, in order, so
        a round trip grows by twice this value while throughput is unaffected.
        """
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number >= 0, got {seconds!r}")
        self._latency = float(seconds)
        self._changed.notify()

    @property
    def bandwidth(self) -> int | None:
        """Bytes per second allowed per direction per connection; ``None`` is unlimited."""
        return self._bandwidth

    @bandwidth.setter
    def bandwidth(self, bytes_per_second: int | None) -> None:
        if bytes_per_second is not None and int(bytes_per_second) <= 0:
            raise ValueError(f"bandwidth must be >= 1 byte/s or None, got {bytes_per_second!r}")
        self._bandwidth = None if bytes_per_second is None else int(bytes_per_second)
        self._changed.notify()

    @property
    def idle_timeout(self) -> float | None:
        """Close a connection whose upstream has sent nothing for this many seconds.

        Mimics a reverse proxy's read timeout (nginx ``proxy_read_timeout``): both sides
        get a plain FIN, with no WebSocket close frame, and :attr:`idle_cuts` goes up.
        Silence is measured from the later of the last upstream data and the moment the
        timeout was set; data discarded by :meth:`blackhole` does not count. ``None`` (the
        default) disables it.
        """
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float | None) -> None:
        if seconds is not None and (not math.isfinite(seconds) or seconds <= 0):
            raise ValueError(f"idle_timeout must be a finite number > 0 or None, got {seconds!r}")
        self._idle_timeout = None if seconds is None else float(seconds)
        with contextlib.suppress(RuntimeError):
            self._idle_armed_at = asyncio.get_running_loop().time()
        self._changed.notify()

    @property
    def blackholed(self) -> bool:
        """Whether the link is currently black-holed (see :meth:`blackhole`)."""
        return self._blackholed

    def blackhole(self, on: bool = True) -> None:
        """Silently stop forwarding in both directions, like a dead route.

        Nothing is closed: no FIN, no RST. Data arriving while black-holed, or still in
        flight when it started, is discarded. New connections are accepted, but the
        upstream is not contacted until the black hole is lifted. A close (FIN or RST)
        from either side is held back and delivered once the black hole is lifted, as
        TCP would eventually retransmit it. Turning it off resumes forwarding of new
        data; since bytes were lost, a stream may be corrupt afterwards unless the lost
        data were whole messages.
        """
        self._blackholed = on
        self._changed.notify()

    @property
    def stalled(self) -> bool:
        """Whether the client-to-server direction is stalled (see :meth:`stall`)."""
        return self._stalled

    def stall(self, on: bool = True) -> None:
        """Stop reading from clients while still forwarding the server's traffic to them.

        That is a server whose reader hung, or a congested uplink: what a client sends piles up
        in its socket buffers until its own sends block on backpressure, while data (and pongs
        already on their way) keep reaching it. Nothing is closed, and nothing the client sends
        is looked at, not even a FIN or RST: at most the chunk being read when the stall began
        is held back too (the proxy's socket reader still buffers up to 128 KiB ahead, as a
        kernel would). A new connection is accepted, but its handshake waits likewise. Lifting
        it resumes reading where it stopped, in order, nothing lost: whatever the client sent
        before it went away is forwarded, then its FIN or RST.
        """
        self._stalled = on
        self._changed.notify()

    @property
    def refusing(self) -> bool:
        """Whether new connections are being refused (see :meth:`refuse`)."""
        return self._refusing

    def refuse(self, on: bool = True) -> None:
        """Reset new connections as soon as they are accepted, as if the server were down.

        Live connections are unaffected. Refused connections are counted in
        :attr:`refused_connections`, not in :attr:`total_connections`.
        """
        self._refusing = on

    async def reset(self) -> None:
        """Abort every live connection on both sides with a TCP RST.

        Returns once all of them are closed.
        """
        await self._finish_all(_Outcome.RESET)

    async def drop_all(self) -> None:
        """Close every live connection on both sides with a FIN (no RST).

        Returns once all of them are closed.
        """
        await self._finish_all(_Outcome.FIN)

    # -- observability --------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Number of connections currently open through the proxy."""
        return len(self._conns)

    @property
    def total_connections(self) -> int:
        """Number of connections accepted and proxied since creation."""
        return self._total_connections

    @property
    def refused_connections(self) -> int:
        """Number of connections reset on accept by :meth:`refuse`."""
        return self._refused_connections

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded from clients to the upstream."""
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded from the upstream to clients."""
        return self._bytes_down

    @property
    def idle_cuts(self) -> int:
        """Number of connections closed by :attr:`idle_timeout`."""
        return self._idle_cuts

    async def wait_for_connections(self, n: int, timeout: float) -> None:
        """Wait until :attr:`total_connections` reaches at least ``n``.

        Raises:
            TimeoutError: If that does not happen within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                while self._total_connections < n:
                    await self._accepted.wait()
        except TimeoutError:
            raise TimeoutError(
                f"ChaosProxy on port {self._bound_port}: expected at least {n} connection(s) "
                f"within {timeout} s, got {self._total_connections}"
            ) from None

    # -- internals ------------------------------------------------------------------

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback rather than a coroutine: asyncio would otherwise create a
        # handler task that the proxy does not own.
        if not self._accepting or self._refusing:
            if self._accepting:
                self._refused_connections += 1
            _abort_with_rst(writer)
            return
        loop = asyncio.get_running_loop()
        conn = _Connection(self._next_id, reader, writer, loop.time())
        self._next_id += 1
        self._conns.add(conn)
        self._total_connections += 1
        conn.runner = self._track(loop.create_task(self._run(conn), name=self._name(conn, "run")))
        self._accepted.notify()

    def _name(self, conn: _Connection, role: str) -> str:
        return f"ChaosProxy:{self._bound_port}:conn{conn.id}:{role}"

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _child(self, conn: _Connection, coro: _Coro, role: str) -> None:
        loop = asyncio.get_running_loop()
        task = self._track(loop.create_task(coro, name=self._name(conn, role)))
        conn.children.add(task)
        task.add_done_callback(functools.partial(self._child_done, conn))

    @staticmethod
    def _child_done(conn: _Connection, task: asyncio.Task[None]) -> None:
        conn.children.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if not isinstance(exc, OSError):
            _log.error("ChaosProxy: internal error on connection %d", conn.id, exc_info=exc)
        conn.finish(_Outcome.RESET)

    async def _finish_all(self, outcome: _Outcome) -> None:
        conns = list(self._conns)
        for conn in conns:
            if outcome is _Outcome.RESET:
                conn.escalate()
            else:
                conn.finish(outcome)
        runners = [conn.runner for conn in conns if conn.runner is not None]
        if runners:
            # asyncio.wait, unlike gather, does not cancel the runners if we are cancelled.
            await asyncio.wait(runners)

    async def _run(self, conn: _Connection) -> None:
        try:
            # Read the client right away, so that data sent while black-holed is discarded
            # rather than left in the kernel buffer to be forwarded later.
            self._child(
                conn,
                self._pump_in(conn, conn.client_reader, conn.up_queue, from_upstream=False),
                "client-in",
            )
            self._child(conn, self._connect(conn), "connect")
            await conn.done.wait()
        finally:
            await self._teardown(conn)

    async def _teardown(self, conn: _Connection) -> None:
        children = list(conn.children)
        for task in children:
            task.cancel()
        if children:
            await asyncio.wait(children)
        writers = conn.writers()
        conn.sockets_closed = True
        for writer in writers:
            if conn.outcome is _Outcome.RESET:
                _abort_with_rst(writer)
            else:
                _close_with_fin(writer)
        await _wait_closed(writers)
        self._conns.discard(conn)

    async def _connect(self, conn: _Connection) -> None:
        await self._until_open()
        host, port = self._upstream
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
        except OSError:  # includes TimeoutError
            # Forward the failure as abruptly as it happened.
            conn.finish(_Outcome.RESET)
            return
        loop = asyncio.get_running_loop()
        conn.upstream_writer = writer
        conn.last_upstream_rx = loop.time()
        up_out = self._pump_out(conn, conn.up_queue, writer, up=True)
        down_in = self._pump_in(conn, reader, conn.down_queue, from_upstream=True)
        down_out = self._pump_out(conn, conn.down_queue, conn.client_writer, up=False)
        self._child(conn, up_out, "upstream-out")
        self._child(conn, down_in, "upstream-in")
        self._child(conn, down_out, "client-out")
        self._child(conn, self._watch_idle(conn), "idle")

    async def _pump_in(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[_Item],
        *,
        from_upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item: bytes | _Marker
            try:
                item = await reader.read(_CHUNK)
            except OSError:
                item = _Marker.RESET
            if not from_upstream:
                # Checked after the read rather than before: a read pending when the stall
                # began would otherwise let one more chunk through.
                await self._until_unstalled()
            now = loop.time()
            if isinstance(item, _Marker) or not item:
                await queue.put((now, item or _Marker.EOF))
                return
            if self._blackholed:
                continue
            if from_upstream:
                conn.last_upstream_rx = now
            await queue.put((now, item))
            # A bandwidth-limited link does not swallow megabytes ahead of its rate: keep the
            # read-ahead small, so the sender's own buffers fill and drain at the link's pace.
            while self._bandwidth is not None and queue.qsize() >= _SLOW_READ_AHEAD:
                await self._changed.wait(0.01)

    async def _pump_out(
        self,
        conn: _Connection,
        queue: asyncio.Queue[_Item],
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        bucket = _TokenBucket()
        while True:
            arrived, item = await queue.get()
            await self._hold(arrived)
            if isinstance(item, _Marker):
                await self._until_open()
                if item is _Marker.RESET:
                    conn.finish(_Outcome.RESET)
                else:
                    writer.write_eof()
                    conn.half_closed()
                return
            if not self._blackholed:
                await self._forward(writer, item, bucket, up=up)

    async def _forward(
        self, writer: asyncio.StreamWriter, data: bytes, bucket: _TokenBucket, *, up: bool
    ) -> None:
        view = memoryview(data)
        while view:
            rate = self._bandwidth
            if rate is None:
                size = len(view)
            else:
                size = min(len(view), max(1, rate // _SLICES_PER_SECOND))
                await self._throttle(bucket, size)
                if self._blackholed:
                    return
            writer.write(view[:size])
            if up:
                self._bytes_up += size
            else:
                self._bytes_down += size
            view = view[size:]
            await writer.drain()

    async def _throttle(self, bucket: _TokenBucket, size: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            rate = self._bandwidth
            if rate is None:
                return
            now = loop.time()
            # The bucket holds at most one slice, so an idle connection cannot save up
            # a burst; max() keeps a slice cut under a higher rate passable.
            capacity = max(rate // _SLICES_PER_SECOND, size)
            if bucket.stamp is None:
                bucket.tokens = capacity
            else:
                bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens >= size - 1e-6:
                bucket.tokens -= size
                return
            await self._changed.wait((size - bucket.tokens) / rate)

    async def _hold(self, arrived: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            remaining = arrived + self._latency - loop.time()
            if remaining <= 0:
                return
            await self._changed.wait(remaining)

    async def _until_open(self) -> None:
        while self._blackholed:
            await self._changed.wait()

    async def _until_unstalled(self) -> None:
        while self._stalled:
            await self._changed.wait()

    async def _watch_idle(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = self._idle_timeout
            if timeout is None:
                await self._changed.wait()
                continue
            since = max(conn.last_upstream_rx, self._idle_armed_at)
            remaining = since + timeout - loop.time()
            if remaining <= 0:
                self._idle_cuts += 1
                conn.finish(_Outcome.FIN)
                return
            await self._changed.wait(remaining)
