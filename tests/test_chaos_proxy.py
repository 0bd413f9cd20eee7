"""ChaosProxy between a real websockets server and client (plus raw TCP for wire details)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake
from websockets.protocol import State

from wsclient.testing import ChaosProxy

# Timers may fire up to a clock tick early; timing lower bounds allow for that.
SLACK = 0.005


async def _handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    try:
        if ws.request.path == "/ticks":
            while True:
                await ws.send("tick")
                await asyncio.sleep(0.03)
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


def _port(server: Any) -> int:
    return int(server.sockets[0].getsockname()[1])


def _proxy_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("ChaosProxy")]


@pytest.fixture
async def upstream() -> AsyncIterator[Server]:
    async with serve(_handler, "127.0.0.1", 0, ping_interval=None, close_timeout=0.5) as server:
        yield server


@pytest.fixture
async def proxy(upstream: Server) -> AsyncIterator[ChaosProxy]:
    async with ChaosProxy("127.0.0.1", _port(upstream)) as chaos:
        yield chaos
    assert _proxy_tasks() == []
    assert chaos.connections == 0


def _connect(proxy: ChaosProxy, path: str = "/", **kwargs: Any) -> connect:
    options: dict[str, Any] = {"ping_interval": None, "close_timeout": 0.5, "open_timeout": 2}
    options.update(kwargs)
    return connect(proxy.url(path), proxy=None, **options)


async def _recv(ws: ClientConnection, within: float = 2.0) -> str | bytes:
    async with asyncio.timeout(within):
        return await ws.recv()


async def _echo(ws: ClientConnection, message: str | bytes, within: float = 2.0) -> str | bytes:
    await ws.send(message)
    return await _recv(ws, within)


# -- raw TCP upstream, to observe FIN versus RST and to count tasks exactly ---------------


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, server: _RawEcho) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._server.accepted.append(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


class _RawEcho:
    """A task-free TCP echo server: asyncio.all_tasks() sees only what the proxy does."""

    def __init__(self) -> None:
        self.accepted: list[_EchoProtocol] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _EchoProtocol(self), "127.0.0.1", 0)
        return _port(self.server)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for protocol in self.accepted:
            assert protocol.transport is not None
            protocol.transport.abort()
            await protocol.lost
        await self.server.wait_closed()


@pytest.fixture
async def raw_echo() -> AsyncIterator[_RawEcho]:
    echo = _RawEcho()
    await echo.start()
    yield echo
    await echo.close()


@pytest.fixture
async def raw_proxy(raw_echo: _RawEcho) -> AsyncIterator[ChaosProxy]:
    assert raw_echo.server is not None
    async with ChaosProxy("127.0.0.1", _port(raw_echo.server)) as chaos:
        yield chaos
    assert _proxy_tasks() == []


async def _open(proxy: ChaosProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(2):
            await writer.wait_closed()
    except OSError:
        pass


# -- tests --------------------------------------------------------------------------------


async def test_pass_through_echo(proxy: ChaosProxy) -> None:
    async with _connect(proxy) as ws:
        await proxy.wait_for_connections(1, timeout=1)
        assert proxy.connections == 1
        assert await _echo(ws, "hello") == "hello"
        blob = random.randbytes(200_000)
        assert await _echo(ws, blob) == blob
    assert proxy.total_connections == 1
    assert proxy.bytes_up > 200_000
    assert proxy.bytes_down > 200_000


async def test_wait_for_connections_times_out_with_a_clear_message(proxy: ChaosProxy) -> None:
    expected = r"expected at least 1 connection\(s\) within 0.05 s, got 0"
    with pytest.raises(TimeoutError, match=expected):
        await proxy.wait_for_connections(1, timeout=0.05)


async def test_latency_delays_each_direction(proxy: ChaosProxy) -> None:
    loop = asyncio.get_running_loop()
    async with _connect(proxy) as ws:
        assert await _echo(ws, "warm-up") == "warm-up"
        proxy.latency = 0.05
        start = loop.time()
        assert await _echo(ws, "x") == "x"
        assert loop.time() - start >= 2 * 0.05 - SLACK


async def test_latency_keeps_order_without_serialising_chunks(
    raw_proxy: ChaosProxy,
) -> None:
    loop = asyncio.get_running_loop()
    raw_proxy.latency = 0.2
    reader, writer = await _open(raw_proxy)
    sent = b"".join(bytes([i]) * 10 for i in range(10))
    start = loop.time()
    for i in range(10):
        writer.write(bytes([i]) * 10)
        await writer.drain()
        await asyncio.sleep(0.01)  # separate chunks, not a timing assertion
    # 10 chunks each delayed 0.2 s per direction would need >= 4 s if sleeps were serialised.
    async with asyncio.timeout(2):
        received = await reader.readexactly(len(sent))
    assert received == sent
    assert loop.time() - start >= 2 * 0.2 - SLACK
    await _close(writer)


async def test_bandwidth_limits_throughput_and_keeps_data_intact(proxy: ChaosProxy) -> None:
    loop = asyncio.get_running_loop()
    payload = random.randbytes(256 * 1024)
    async with _connect(proxy) as ws:
        proxy.bandwidth = 1024 * 1024
        start = loop.time()
        echoed = await _echo(ws, payload, within=5)
        elapsed = loop.time() - start
    assert echoed == payload
    # 256 KiB up then 256 KiB down at 1 MiB/s: about 0.23 s each after the first slice.
    assert elapsed >= 0.4
    assert proxy.bytes_up >= len(payload)
    assert proxy.bytes_down >= len(payload)


async def test_bandwidth_delivers_large_writes_progressively(raw_proxy: ChaosProxy) -> None:
    loop = asyncio.get_running_loop()
    raw_proxy.bandwidth = 256 * 1024
    reader, writer = await _open(raw_proxy)
    payload = random.randbytes(64 * 1024)
    start = loop.time()
    writer.write(payload)
    pieces: list[bytes] = []
    async with asyncio.timeout(3):
        while sum(map(len, pieces)) < len(payload):
            pieces.append(await reader.read(len(payload)))
            assert pieces[-1]
    assert b"".join(pieces) == payload
    assert len(pieces) >= 2  # data trickled in rather than arriving in one burst
    assert loop.time() - start >= 0.2
    await _close(writer)


async def test_blackhole_swallows_traffic_without_closing(proxy: ChaosProxy) -> None:
    async with _connect(proxy) as ws:
        assert await _echo(ws, "before") == "before"
        proxy.blackhole(True)
        assert proxy.blackholed
        pong = await ws.ping()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pong
        assert ws.state is State.OPEN
        assert proxy.connections == 1

        proxy.blackhole(False)
        assert await _echo(ws, "after") == "after"
        pong = await ws.ping()
        async with asyncio.timeout(2):
            await pong


async def test_blackhole_accepts_new_connections_but_never_answers(proxy: ChaosProxy) -> None:
    proxy.blackhole(True)
    with pytest.raises(TimeoutError):
        async with _connect(proxy, open_timeout=0.2):
            pass
    assert proxy.total_connections == 1
    proxy.blackhole(False)
    async with _connect(proxy) as ws:
        assert await _echo(ws, "hi") == "hi"


async def test_stall_holds_the_uplink_while_the_downlink_flows(proxy: ChaosProxy) -> None:
    async with _connect(proxy, "/ticks") as ws:
        assert await _recv(ws) == "tick"
        proxy.stall(True)
        assert proxy.stalled
        pong = await ws.ping()  # held at the proxy: the server never sees it
        ticks = [await _recv(ws) for _ in range(3)]  # while the server's traffic still arrives
        assert ticks == ["tick"] * 3
        assert not pong.done()
        assert ws.state is State.OPEN and proxy.connections == 1

        proxy.stall(False)
        async with asyncio.timeout(2):
            await pong


async def test_stall_backs_the_sender_up_and_loses_nothing(raw_proxy: ChaosProxy, raw_echo: _RawEcho) -> None:
    reader, writer = await _open(raw_proxy)
    writer.write(b"before")
    async with asyncio.timeout(2):
        assert await reader.readexactly(6) == b"before"
    raw_proxy.stall(True)
    payload = random.randbytes(8 * 1024 * 1024)  # more than the socket buffers on the way take
    writer.write(payload)
    drained = asyncio.ensure_future(writer.drain())
    try:
        # The sender's buffer does not drain: nothing of it reaches the echo server meanwhile.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await asyncio.shield(drained)
        assert raw_proxy.bytes_up == 6
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await reader.read(1)
        raw_proxy.stall(False)
        async with asyncio.timeout(5):
            echoed = await reader.readexactly(len(payload))
            await drained
    finally:
        drained.cancel()
    assert echoed == payload  # in order, nothing lost
    await _close(writer)


async def test_reset_aborts_live_connections(proxy: ChaosProxy) -> None:
    async with _connect(proxy) as ws:
        assert await _echo(ws, "hi") == "hi"
        await proxy.reset()
        assert proxy.connections == 0
        with pytest.raises(ConnectionClosedError):
            await _recv(ws, within=1)
        assert ws.close_code == 1006


async def test_reset_sends_rst_to_both_sides(raw_proxy: ChaosProxy, raw_echo: _RawEcho) -> None:
    reader, writer = await _open(raw_proxy)
    writer.write(b"ping")
    async with asyncio.timeout(2):
        assert await reader.readexactly(4) == b"ping"
    await raw_proxy.reset()
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(1):
            await reader.read()
    async with asyncio.timeout(1):
        assert isinstance(await raw_echo.accepted[0].lost, ConnectionResetError)
    await _close(writer)


async def test_drop_all_closes_with_fin(raw_proxy: ChaosProxy, raw_echo: _RawEcho) -> None:
    reader, writer = await _open(raw_proxy)
    writer.write(b"ping")
    async with asyncio.timeout(2):
        assert await reader.readexactly(4) == b"ping"
    await raw_proxy.drop_all()
    assert raw_proxy.connections == 0
    async with asyncio.timeout(1):
        assert await reader.read() == b""
        assert await raw_echo.accepted[0].lost is None
    await _close(writer)


async def test_idle_timeout_cuts_only_silent_connections(proxy: ChaosProxy) -> None:
    proxy.idle_timeout = 0.15
    async with _connect(proxy, "/") as idle, _connect(proxy, "/ticks") as busy:
        with pytest.raises(ConnectionClosedError):
            await _recv(idle, within=2)
        assert idle.close_code == 1006  # no close frame: the TCP connection was just closed
        assert proxy.idle_cuts == 1
        # The busy connection outlives several more idle windows.
        for _ in range(8):
            assert await _recv(busy) == "tick"
        assert busy.state is State.OPEN
    assert proxy.idle_cuts == 1


async def test_refuse_rejects_new_connections_only(proxy: ChaosProxy) -> None:
    async with _connect(proxy) as live:
        proxy.refuse(True)
        with pytest.raises((OSError, InvalidHandshake)):
            async with _connect(proxy):
                pass
        assert proxy.refused_connections == 1
        assert proxy.total_connections == 1
        assert await _echo(live, "still here") == "still here"
        proxy.refuse(False)
        async with _connect(proxy) as ws:
            assert await _echo(ws, "back") == "back"
    assert proxy.total_connections == 2


async def test_set_upstream_applies_to_new_connections(
    raw_proxy: ChaosProxy,
    raw_echo: _RawEcho,
) -> None:
    other = _RawEcho()
    other_port = await other.start()
    try:
        old_reader, old_writer = await _open(raw_proxy)
        old_writer.write(b"a")
        async with asyncio.timeout(2):
            assert await old_reader.readexactly(1) == b"a"
        raw_proxy.set_upstream("127.0.0.1", other_port)
        assert raw_proxy.upstream == ("127.0.0.1", other_port)
        reader, writer = await _open(raw_proxy)
        writer.write(b"b")
        old_writer.write(b"c")
        async with asyncio.timeout(2):
            assert await reader.readexactly(1) == b"b"
            assert await old_reader.readexactly(1) == b"c"
        assert len(raw_echo.accepted) == 1
        assert len(other.accepted) == 1
        await _close(writer)
        await _close(old_writer)
        await raw_proxy.drop_all()
    finally:
        await other.close()


async def test_unreachable_upstream_resets_the_client(raw_proxy: ChaosProxy) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    raw_proxy.set_upstream("127.0.0.1", dead_port)
    reader, writer = await _open(raw_proxy)
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(2):
            await reader.read()
    await _close(writer)


async def test_stop_leaves_no_tasks_and_closes_connections(raw_echo: _RawEcho) -> None:
    before = asyncio.all_tasks()
    assert raw_echo.server is not None
    proxy = ChaosProxy("127.0.0.1", _port(raw_echo.server))
    await proxy.start()
    clients = [await _open(proxy) for _ in range(3)]
    await proxy.wait_for_connections(3, timeout=1)
    # Leave connections in different states: idle, data held by latency, black-holed.
    proxy.latency = 5
    clients[1][1].write(b"in flight")
    await clients[1][1].drain()
    assert asyncio.all_tasks() - before
    await proxy.stop()
    assert asyncio.all_tasks() == before
    assert proxy.connections == 0
    for reader, writer in clients:
        async with asyncio.timeout(1):
            assert await reader.read() == b""
        await _close(writer)
    await proxy.stop()  # idempotent


async def test_restart_rebinds_the_same_port(proxy: ChaosProxy) -> None:
    port = proxy.port
    await proxy.stop()
    await proxy.start()
    assert proxy.port == port
    async with _connect(proxy) as ws:
        assert await _echo(ws, "again") == "again"


def test_url_and_validation() -> None:
    proxy = ChaosProxy("::1", 9, host="::1", port=12345)
    assert proxy.url("feed") == "ws://[::1]:12345/feed"
    assert proxy.url(scheme="wss") == "wss://[::1]:12345/"
    with pytest.raises(RuntimeError):
        _ = ChaosProxy("127.0.0.1", 9).port
    with pytest.raises(ValueError, match="latency"):
        proxy.latency = -1
    with pytest.raises(ValueError, match="bandwidth"):
        proxy.bandwidth = 0
    with pytest.raises(ValueError, match="idle_timeout"):
        proxy.idle_timeout = 0
