"""The picows backend against real `websockets` servers on 127.0.0.1, directly and through Client.

Frames a `websockets` server cannot produce (invalid UTF-8, a code point split across fragments, a
bare continuation, a close frame without a code) are written raw to the server's socket: a server
frame is unmasked, ``0x80 | opcode`` then the length (< 126) then the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme
from picows import PICOWS_DEBUG_LL
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.headers import build_authorization_basic
from websockets.http11 import Request, Response

from wsclient import (
    ClientConfig,
    ConfigError,
    HandshakeFailed,
    HandshakeRejected,
    Heartbeat,
    Reconnect,
    TransportClosed,
)
from wsclient.transport import get_connector
from wsclient.transport.base import ConnectOptions, Data, FrameSink, Meter
from wsclient.transport.picows import PicowsTransport
from wsclient.transport.picows import connect as picows_connect

from .conftest import TestServer, poll_until

MakeServer = Callable[..., Awaitable[TestServer]]

FAST = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, reset_after=0.5)
HB = Heartbeat(interval=0.05, timeout=0.1)


def fast_config(**overrides: Any) -> ClientConfig:
    values: dict[str, Any] = {
        "heartbeat": HB,
        "reconnect": FAST,
        "open_timeout": 1.0,
        "close_timeout": 0.2,
        "transport": "picows",
    }
    values.update(overrides)
    return ClientConfig(**values)


class Sink:
    """A pump sink that records messages; ``block`` makes it return a wait for chosen messages.

    It also checks the backpressure contract: it is never called while a wait it returned is pending.
    """

    def __init__(self, block: Callable[[Data], bool] = lambda data: False) -> None:
        self.frames: list[Data] = []
        self.block = block
        self.pending: asyncio.Future[None] | None = None
        self.called_while_pending = 0
        self._changed = asyncio.Event()

    def __call__(self, data: Data) -> asyncio.Future[None] | None:
        if self.pending is not None and not self.pending.done():
            self.called_while_pending += 1
        self.frames.append(data)
        self._changed.set()
        if self.block(data):
            self.pending = asyncio.get_running_loop().create_future()
            return self.pending
        return None

    def release(self) -> None:
        assert self.pending is not None
        self.pending.set_result(None)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Data]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.frames


def options(url: str, **overrides: Any) -> ConnectOptions:
    values: dict[str, Any] = {"open_timeout": 2.0, "close_timeout": 0.5}
    values.update(overrides)
    return ConnectOptions(url=url, **values)


@contextlib.asynccontextmanager
async def opened(
    url: str, sink: FrameSink, **overrides: Any
) -> AsyncIterator[tuple[PicowsTransport, asyncio.Task[Any]]]:
    transport = await picows_connect(options(url, **overrides))
    pump = asyncio.create_task(transport.pump(sink))
    try:
        yield transport, pump
    finally:
        transport.abort()
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)


async def ended(pump: asyncio.Task[Any]) -> TransportClosed:
    with pytest.raises(TransportClosed) as info:
        async with asyncio.timeout(5):
            await pump
    return info.value


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A raw, unmasked server frame (payload under 126 bytes)."""
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | opcode, len(payload)]) + payload


def raw_sender(*chunks: bytes) -> Callable[[TestServer, ServerConnection], Awaitable[None]]:
    """A handler that writes raw frames, then records the close code it ends with."""

    async def handler(server: TestServer, ws: ServerConnection) -> None:
        for chunk in chunks:
            ws.transport.write(chunk)
        await ws.wait_closed()
        server.received.append(f"closed {ws.close_code}")
        server.changed()

    return handler


# -- the backend on its own ---------------------------------------------------------------------


def test_registered_as_a_connector() -> None:
    assert get_connector("picows") is picows_connect


async def test_echo_text_and_binary(server: TestServer) -> None:
    sink = Sink()
    big = "é" * 50_000  # 100 kB: spans several reads
    async with opened(server.url, sink) as (transport, _):
        assert transport.subprotocol is None
        for message in ("héllo", b"\x00\x01", big, b""):
            await transport.send(message)
        got = await sink.wait_for(4)
    assert got == ["héllo", b"\x00\x01", big, b""]
    assert server.received == got


async def test_fragmented_messages_are_reassembled(make_server: MakeServer) -> None:
    async def fragments(server: TestServer, ws: ServerConnection) -> None:
        await ws.send(["a", "b", "c"])
        await ws.send([b"x", b"yz"])
        # "é" split across two fragments, then a ping between the fragments of one message.
        ws.transport.write(frame(0x1, b"\xc3", fin=False) + frame(0x0, b"\xa9"))
        ws.transport.write(frame(0x1, b"p", fin=False) + frame(0x9, b"") + frame(0x0, b"q"))
        await ws.send("after")
        await ws.wait_closed()

    server = await make_server(fragments)
    sink = Sink()
    async with opened(server.url, sink):
        got = await sink.wait_for(5)
    assert got == ["abc", b"xyz", "é", "pq", "after"]


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
async def test_message_over_max_size_closes_with_1009(make_server: MakeServer, fragmented: bool) -> None:
    async def oversized(server: TestServer, ws: ServerConnection) -> None:
        await ws.send("x" * 100)  # exactly max_size: fine
        await ws.send(["y" * 60, "y" * 60] if fragmented else "y" * 101)
        await ws.send("never delivered")
        await ws.wait_closed()
        server.received.append(f"closed {ws.close_code}")
        server.changed()

    server = await make_server(oversized)
    sink = Sink()
    async with opened(server.url, sink, max_size=100) as (_, pump):
        closed = await ended(pump)
    assert (closed.code, closed.by_peer) == (1009, False)
    assert sink.frames == ["x" * 100]
    await server.wait_until(lambda: server.received == ["closed 1009"])


@pytest.mark.parametrize(
    ("chunks", "code"),
    [
        ((frame(0x1, b"\xff\xfe"),), 1007),
        ((frame(0x1, b"\xc3", fin=False), frame(0x0, b"A")), 1007),
        ((frame(0x0, b"a"),), 1002),
        ((frame(0x1, b"a", fin=False), frame(0x1, b"b")), 1002),
    ],
    ids=["invalid-utf8", "invalid-utf8-fragmented", "bare-continuation", "missing-continuation"],
)
async def test_invalid_frames_fail_the_connection(
    make_server: MakeServer, chunks: tuple[bytes, ...], code: int
) -> None:
    server = await make_server(raw_sender(*chunks))
    sink = Sink()
    async with opened(server.url, sink) as (_, pump):
        closed = await ended(pump)
    assert (closed.code, closed.by_peer) == (code, False)
    assert sink.frames == []
    await server.wait_until(lambda: server.received == [f"closed {code}"])


@pytest.mark.parametrize(
    ("code", "reason"), [(4000, "bye"), (1001, "going away"), (1012, ""), (1011, "oops")]
)
async def test_peer_close_code_and_reason(make_server: MakeServer, code: int, reason: str) -> None:
    async def close(server: TestServer, ws: ServerConnection) -> None:
        await ws.send("last words")
        await ws.close(code, reason)

    server = await make_server(close)
    sink = Sink()
    async with opened(server.url, sink) as (_, pump):
        closed = await ended(pump)
    assert (closed.code, closed.reason, closed.by_peer) == (code, reason, True)
    assert sink.frames == ["last words"]
    assert server.connections[0].close_code == code  # our close frame echoed the code


async def test_peer_close_without_code_reads_1005(make_server: MakeServer) -> None:
    server = await make_server(raw_sender(frame(0x8, b"")))
    async with opened(server.url, Sink()) as (_, pump):
        closed = await ended(pump)
    assert (closed.code, closed.reason, closed.by_peer) == (1005, "", True)


async def test_client_close_code_and_reason(server: TestServer) -> None:
    sink = Sink()
    async with opened(server.url, sink) as (transport, pump):
        await transport.send("x")
        await sink.wait_for(1)
        async with asyncio.timeout(2):
            await transport.close(4001, "done")
        closed = await ended(pump)
        with pytest.raises(TransportClosed):
            await transport.send("too late")
        with pytest.raises(TransportClosed):
            await transport.ping(b"late")
        await transport.close()  # idempotent
    assert (closed.code, closed.reason, closed.by_peer) == (4001, "done", True)
    await server.wait_until(lambda: server.connections[0].close_code is not None)
    assert (server.connections[0].close_code, server.connections[0].close_reason) == (4001, "done")


async def test_drop_without_close_frame_is_1006(server: TestServer) -> None:
    async with opened(server.url, Sink()) as (transport, pump):
        await server.wait_until(lambda: server.current == 1)
        await server.drop_all()
        closed = await ended(pump)
        with pytest.raises(TransportClosed) as info:
            await transport.send("x")
    assert (closed.code, closed.by_peer) == (1006, True)
    assert info.value.code == 1006


async def test_abort_drops_the_connection_at_once(server: TestServer) -> None:
    async with opened(server.url, Sink()) as (transport, pump):
        await server.wait_until(lambda: server.current == 1)
        transport.abort()
        transport.abort()  # idempotent
        closed = await ended(pump)
        await server.wait_until(lambda: server.current == 0)
    assert closed.code == 1006
    assert server.connections[0].close_code == 1006  # no close frame reached the server


async def test_ping_resolves_to_the_round_trip_time(server: TestServer) -> None:
    async with opened(server.url, Sink()) as (transport, _):
        pong = await transport.ping(b"abcd")
        with pytest.raises(RuntimeError, match="same data"):
            await transport.ping(b"abcd")
        async with asyncio.timeout(2):
            rtt = await pong
        again = await transport.ping(b"abcd")  # the payload is free again
        async with asyncio.timeout(2):
            await again
    assert 0 <= rtt < 2


async def test_a_pong_acknowledges_earlier_pings_and_pings_fail_on_close(make_server: MakeServer) -> None:
    go = asyncio.Event()

    async def deaf_then_pong(server: TestServer, ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # the server's protocol never sees (nor answers) our pings
        await go.wait()
        ws.transport.write(frame(0xA, b"p2"))
        await ws.wait_closed()

    server = await make_server(deaf_then_pong)
    async with opened(server.url, Sink()) as (transport, pump):
        await server.wait_until(lambda: server.current == 1)  # the server has stopped reading
        p1, p2, p3 = [await transport.ping(p) for p in (b"p1", b"p2", b"p3")]
        go.set()
        async with asyncio.timeout(2):
            rtts = await asyncio.gather(p1, p2)
        assert all(r >= 0 for r in rtts) and not p3.done()
        await server.drop_all()
        await ended(pump)
        with pytest.raises(TransportClosed):
            await p3


@pytest.mark.parametrize(("status", "headers"), [(401, {}), (429, {"Retry-After": "7"}), (503, {})])
async def test_rejected_handshake(server: TestServer, status: int, headers: dict[str, str]) -> None:
    server.reject = (status, headers)
    with pytest.raises(HandshakeRejected) as info:
        await picows_connect(options(server.url))
    assert info.value.status == status
    assert info.value.retry_after == (7.0 if headers else None)
    assert info.value.body.startswith(b"rejected")


async def test_connect_errors_are_normalised() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await picows_connect(options(f"ws://127.0.0.1:{port}/"))
    with pytest.raises(ConfigError, match="not a valid WebSocket URI"):
        await picows_connect(options("ws:///nohost"))
    with pytest.raises(ConfigError, match="compression"):
        await picows_connect(options(f"ws://127.0.0.1:{port}/", compression="deflate"))


@contextlib.asynccontextmanager
async def recording_server(**kwargs: Any) -> AsyncIterator[tuple[str, list[Request]]]:
    """A plain echo server that records handshake requests; ``kwargs`` go to ``serve()``."""
    requests: list[Request] = []

    def process_request(connection: ServerConnection, request: Request) -> None:
        requests.append(request)

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, process_request=process_request, **kwargs) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/feed?x=1", requests


async def test_headers_user_agent_and_subprotocol_reach_the_server() -> None:
    async with recording_server(subprotocols=["v2.feed"]) as (url, requests):
        headers = {"X-Api-Key": "k-123", "Authorization": "Bearer t"}
        sink = Sink()
        async with opened(url, sink, headers=headers, subprotocols=("v1.feed", "v2.feed")) as (t, _):
            assert t.subprotocol == "v2.feed"
            await t.send("ping")
            await sink.wait_for(1)
    async with recording_server() as (url, more), opened(url, Sink(), user_agent="bot/1.0"):
        pass
    (first,), (second,) = requests, more
    assert first.path == "/feed?x=1"
    assert first.headers["X-Api-Key"] == "k-123"
    assert first.headers["Authorization"] == "Bearer t"
    assert first.headers["Sec-WebSocket-Protocol"] == "v1.feed, v2.feed"
    assert first.headers["User-Agent"] == "wsclient (picows)"
    assert second.headers["User-Agent"] == "bot/1.0"
    assert "Sec-WebSocket-Protocol" not in second.headers


async def test_credentials_go_to_basic_auth_and_stay_out_of_debug_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cr3t-T0KEN"
    caplog.set_level(PICOWS_DEBUG_LL)  # picows logs the upgrade request below DEBUG
    async with recording_server() as (url, requests):
        userinfo_url = url.replace("ws://", f"ws://user:{secret}@").replace("x=1", f"token={secret}")
        async with opened(userinfo_url, Sink(), headers={"Cookie": f"sid={secret}"}):
            pass
    (request,) = requests
    assert request.headers["Authorization"] == build_authorization_basic("user", secret)
    assert request.headers["Host"] == url.split("/")[2]  # no "user:password@" in it
    lines = [r.getMessage() for r in caplog.records if r.name == "wsclient.transport.picows"]
    assert any("Send upgrade request" in line and "token=***" in line for line in lines)
    assert not any(secret in line for line in lines)
    assert not any(request.headers["Authorization"] in line for line in lines)


async def test_a_subprotocol_that_was_not_offered_fails_the_handshake() -> None:
    def process_response(connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["Sec-WebSocket-Protocol"] = "evil"

    async with recording_server(process_response=process_response) as (url, _):
        with pytest.raises(HandshakeFailed, match="evil"):
            await picows_connect(options(url, subprotocols=("good",)))


@pytest.fixture(scope="module")
def tls() -> tuple[trustme.CA, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    return ca, server_context


async def test_tls_verifies_by_default_and_takes_a_custom_context(
    tls: tuple[trustme.CA, ssl.SSLContext],
) -> None:
    ca, server_context = tls
    async with recording_server(ssl=server_context) as (url, requests):
        url = url.replace("ws://", "wss://")
        with pytest.raises(ssl.SSLCertVerificationError):
            await picows_connect(options(url))
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        sink = Sink()
        async with opened(url, sink, ssl_context=client_context) as (transport, _):
            await transport.send("over tls")
            assert await sink.wait_for(1) == ["over tls"]
    assert len(requests) == 1  # the unverified attempt never got as far as the handshake


async def test_backpressure_pauses_reading_until_the_wait_completes(make_server: MakeServer) -> None:
    total = 60

    async def burst(server: TestServer, ws: ServerConnection) -> None:
        for i in range(total):
            await ws.send(str(i))
        server.received.append("sent")
        server.changed()
        await ws.wait_closed()

    server = await make_server(burst)
    sink = Sink(block=lambda data: data in ("0", "30"))
    async with opened(server.url, sink) as (transport, _):
        reading = transport._ws.underlying_transport.is_reading
        await sink.wait_for(1)
        await server.wait_until(lambda: server.received == ["sent"])
        # Held back: the sink has seen only the message that asked to wait, and reading stopped.
        assert sink.frames == ["0"] and not reading()
        sink.release()
        await sink.wait_for(31)
        assert len(sink.frames) == 31 and not reading()
        sink.release()
        got = await sink.wait_for(total)
        await poll_until(reading)
    assert got == [str(i) for i in range(total)]
    assert sink.called_while_pending == 0


async def test_a_sink_may_return_any_awaitable(server: TestServer) -> None:
    got: list[Data] = []
    gate = asyncio.Event()

    def sink(data: Data) -> Awaitable[bool] | None:
        got.append(data)
        return gate.wait() if data == "0" else None  # a coroutine, not a future

    async with opened(server.url, sink) as (transport, _):
        for i in range(5):
            await transport.send(str(i))
        await server.wait_until(lambda: len(server.received) == 5)
        await poll_until(lambda: len(got) > 0)
        assert got == ["0"]  # the others wait, read or not, until the coroutine finishes
        gate.set()
        await poll_until(lambda: len(got) == 5)
    assert got == [str(i) for i in range(5)]


async def test_held_messages_are_delivered_before_the_close(make_server: MakeServer) -> None:
    total = 30

    async def burst_then_close(server: TestServer, ws: ServerConnection) -> None:
        for i in range(total):
            await ws.send(str(i))
        await ws.close(4000, "done")

    server = await make_server(burst_then_close)
    sink = Sink(block=lambda data: data == "0")
    async with opened(server.url, sink) as (_, pump):
        # Usually the whole burst and the close frame arrive in one read: the close is answered at
        # once while 29 messages are held; either way they all come before TransportClosed.
        await sink.wait_for(1)
        sink.release()
        closed = await ended(pump)
    assert sink.frames == [str(i) for i in range(total)]
    assert (closed.code, closed.reason) == (4000, "done")


async def test_send_waits_while_the_peer_does_not_read(make_server: MakeServer) -> None:
    resume = asyncio.Event()

    async def slow_reader(server: TestServer, ws: ServerConnection) -> None:
        ws.transport.pause_reading()
        await resume.wait()
        ws.transport.resume_reading()
        async for message in ws:
            server.received.append(message)
            server.changed()

    server = await make_server(slow_reader)
    chunk = b"z" * 2**20
    async with opened(server.url, Sink(), max_size=None) as (transport, _):
        await server.wait_until(lambda: server.current == 1)
        sender = asyncio.create_task(_send_many(transport, chunk, 32))
        # The kernel buffers fill, then the transport's: send() waits instead of buffering it all.
        await poll_until(lambda: transport._listener.write_waiter is not None)
        assert not sender.done() and transport.write_buffer_size() > 0
        resume.set()
        async with asyncio.timeout(10):
            await sender
        await server.wait_until(lambda: len(server.received) == 32, timeout=10)


async def _send_many(transport: PicowsTransport, chunk: bytes, count: int) -> None:
    for _ in range(count):
        await transport.send(chunk)


async def test_a_sender_waiting_on_a_dead_link_gets_transport_closed(make_server: MakeServer) -> None:
    async def deaf(server: TestServer, ws: ServerConnection) -> None:
        ws.transport.pause_reading()
        await ws.wait_closed()

    server = await make_server(deaf)
    async with opened(server.url, Sink(), max_size=None) as (transport, _):
        await server.wait_until(lambda: server.current == 1)
        sender = asyncio.create_task(_send_many(transport, b"z" * 2**20, 64))
        await poll_until(lambda: transport._listener.write_waiter is not None)
        await server.drop_all()
        with pytest.raises(TransportClosed):
            async with asyncio.timeout(5):
                await sender


async def test_a_sink_error_ends_the_pump_with_that_error(server: TestServer) -> None:
    def sink(data: Data) -> None:
        if data == "boom":
            raise ValueError("sink failed")

    transport = await picows_connect(options(server.url))
    pump = asyncio.create_task(transport.pump(sink))
    try:
        await transport.send("boom")
        with pytest.raises(ValueError, match="sink failed"):
            async with asyncio.timeout(5):
                await pump
    finally:
        transport.abort()


async def test_messages_before_pump_are_held_in_order(make_server: MakeServer) -> None:
    total = 40

    async def welcome(server: TestServer, ws: ServerConnection) -> None:
        for i in range(total):
            await ws.send(f"w{i}")
        server.received.append("sent")
        server.changed()
        await ws.wait_closed()

    server = await make_server(welcome)
    transport = await picows_connect(options(server.url))
    try:
        await server.wait_until(lambda: server.received == ["sent"])
        # Nobody reads yet: after a few held messages the backend stops reading from the socket.
        await poll_until(lambda: not transport._ws.underlying_transport.is_reading())
        sink = Sink()
        meter = Meter()
        pump = asyncio.create_task(transport.pump(sink, meter))
        got = await sink.wait_for(total)
        assert got == [f"w{i}" for i in range(total)]
        # Counted when read, before the pump existed: the pump's meter took those counts over.
        assert meter.frames_in == total
        assert meter.bytes_in == sum(len(f"w{i}") for i in range(total))
        assert meter.last_inbound > 0
        await poll_until(transport._ws.underlying_transport.is_reading)
    finally:
        transport.abort()
    await ended(pump)


async def test_open_timeout_leaves_no_orphan_connection() -> None:
    """A connect that times out mid-handshake must not complete the upgrade later on its own."""
    release = asyncio.Event()
    seen: list[ServerConnection] = []

    async def slow_handshake(connection: ServerConnection, request: Request) -> None:
        seen.append(connection)
        await release.wait()

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=slow_handshake) as srv:
        port = srv.sockets[0].getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await picows_connect(options(f"ws://127.0.0.1:{port}/", open_timeout=0.2))
        assert time.monotonic() - started < 1.5
        assert len(seen) == 1
        release.set()
        # The server answers 101 now; the abandoned client side must already be gone.
        async with asyncio.timeout(3):
            await seen[0].wait_closed()


def test_config_checks_that_picows_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ClientConfig(transport="picows").transport == "picows"
    with pytest.raises(ValueError, match="compression"):
        ClientConfig(transport="picows", compression="deflate")
    monkeypatch.setitem(sys.modules, "picows", None)  # what find_spec reports when it is absent
    with pytest.raises(ValueError, match=r"pip install 'wsclient\[fast\]'"):
        ClientConfig(transport="picows")


# The client's behaviours on picows (reconnect and replay, half-open links, slow handlers, close
# codes, handshake and TLS failures, missed pongs) are covered by the parametrised suite: every test
# of test_client.py, test_typed.py and the real-peer modules runs on both backends.


_QUIET_SCRIPT = r"""
import asyncio, base64, hashlib
from wsclient import Client, ClientConfig, Disconnected, Heartbeat, Reconnect

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

async def accept(reader, writer):
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key"))
    accept_key = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept_key + b"\r\n\r\n")
    writer.write(bytes([0x82, 127]) + (2**30).to_bytes(8, "big"))  # 1 GiB frame: a parser error
    await writer.drain()
    await reader.read()
    writer.close()

async def main():
    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = ClientConfig(transport="picows", max_size=65536, close_timeout=0.2,
                          heartbeat=Heartbeat(mode="off"),
                          reconnect=Reconnect(initial_delay=0.01, max_delay=0.02, jitter=0))
    client = Client(f"ws://127.0.0.1:{port}/", config=config)
    lost = asyncio.Event()
    client.on_event(lambda e: lost.set() if isinstance(e, Disconnected) else None)
    async with client:
        await asyncio.wait_for(lost.wait(), 5)
    server.close()
    print("done")

asyncio.run(main())
"""


async def test_a_parser_error_prints_nothing_when_logging_is_not_configured() -> None:
    """picows logs its parser errors at ERROR; with no logging set up, Python's last-resort handler
    would print them on stderr. They go to the wsclient logger (which has a NullHandler) instead."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _QUIET_SCRIPT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert out.decode().strip() == "done", err.decode()
    assert err.decode() == ""
