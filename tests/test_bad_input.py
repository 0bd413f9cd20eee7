"""Bad input from the network: oversized, malformed and unusual frames, broken servers, slow links.

Most servers here are raw asyncio TCP servers on 127.0.0.1 that speak WebSocket by hand, because a
`websockets` server is too well-behaved to send invalid UTF-8, announce a 1 GiB frame or answer the
upgrade with a wrong accept key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from wsclient import (
    Client,
    ClientConfig,
    ConnectFailed,
    ConnectionState,
    Disconnected,
    Heartbeat,
    HeartbeatMissed,
    Reconnect,
)
from wsclient.testing import ChaosProxy

from .conftest import Recorder, poll_until
from .rawpeer import BINARY, CONTINUATION, PING, TEXT, MakeRaw, RawPeer, Script, frame

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

FAST = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, reset_after=0.5)


def config(**overrides: object) -> ClientConfig:
    values: dict[str, object] = {
        # The raw peers answer pings, but a heartbeat adds nothing to these tests: keep it slow.
        "heartbeat": Heartbeat(interval=5.0, timeout=5.0),
        "reconnect": FAST,
        "open_timeout": 0.5,
        "close_timeout": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)  # type: ignore[arg-type]


# -- oversized messages ----------------------------------------------------------------------------

LIMIT = 64 * 1024
ANNOUNCED = 2**30  # 1 GiB: a client that buffered it would be noticed


async def _oversized_single_frame(peer: RawPeer) -> None:
    # Announce 1 GiB, then stream zeros until the client gives up (16 MiB at most).
    peer.send(frame(BINARY, length=ANNOUNCED))
    await _stream_zeros(peer, lambda chunk: chunk)


async def _oversized_fragments(peer: RawPeer) -> None:
    # Each fragment is well under the limit; only the message as a whole is too big.
    peer.send(frame(BINARY, bytes(1024), fin=False))
    await _stream_zeros(peer, lambda chunk: frame(CONTINUATION, chunk, fin=False))


async def _stream_zeros(peer: RawPeer, wrap: Callable[[bytes], bytes]) -> None:
    chunk = wrap(bytes(16 * 1024))
    for _ in range(1024):
        if peer.close_code is not None or peer.writer.is_closing():
            return
        peer.send(chunk)
        await peer.writer.drain()


@pytest.mark.parametrize(
    "oversize", [_oversized_single_frame, _oversized_fragments], ids=["frame", "fragments"]
)
async def test_oversized_message_closes_1009_without_buffering_and_reconnects(
    raw_server: MakeRaw, oversize: Script
) -> None:
    """A message over ``max_size`` is refused as it streams in: close 1009, memory bounded, retry."""

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        serving = asyncio.create_task(peer.serve())
        try:
            await peer.wait_for(lambda: bool(peer.frames))  # the client is OPEN: it replayed "sub"
            if peer.attempt == 1:
                await oversize(peer)
            await serving
        finally:
            serving.cancel()

    server = await raw_server(script)
    client = Client(server.url, config=config(max_size=LIMIT))
    client.subscribe("sub")
    got: list[str | bytes] = []
    client.on_message(got.append)
    recorder = Recorder(client)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        async with client:
            await client.wait_open(2)
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            await server.wait_for_connections(2)
            peak = tracemalloc.get_traced_memory()[1] - baseline
            await client.wait_open(2)
    finally:
        if not tracing:
            tracemalloc.stop()
    first = server.peers[0]
    assert first.close_code == 1009, "the client must close with 1009 (message too big)"
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected)
    assert lost.code == 1009 and lost.will_retry and "1009" in lost.reason
    assert got == [], "no part of the oversized message is delivered"
    # The client and this server together allocated far less than the message: it was refused from
    # its first bytes, not assembled. (The server wrote up to 16 MiB meanwhile, or failed to.)
    assert peak < 2 * 1024 * 1024, f"traced memory peak grew by {peak} bytes"


# -- unusual but valid frames, and invalid UTF-8 ----------------------------------------------------


async def test_binary_and_fragmented_messages_with_interleaved_pings_are_delivered_intact(
    raw_server: MakeRaw,
) -> None:
    word = "wörld".encode()  # "ö" is two bytes: the fragments below split it in the middle

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        serving = asyncio.create_task(peer.serve())
        try:
            await peer.wait_for(lambda: bool(peer.frames))
            peer.send(frame(BINARY, b"\x00\x01\xfe\xff"))
            peer.send(frame(TEXT, b"hel", fin=False))
            peer.send(frame(PING, b"p1"))  # control frames may come between fragments
            peer.send(frame(CONTINUATION, b"lo " + word[:2], fin=False))
            peer.send(frame(PING, b"p2"))
            peer.send(frame(CONTINUATION, word[2:]))
            peer.send(frame(BINARY, b"\x80\x81", fin=False))
            peer.send(frame(PING, b"p3"))
            peer.send(frame(CONTINUATION, b"\x82"))
            peer.send(frame(TEXT, b'{"type":"after"}'))
            await serving
        finally:
            serving.cancel()

    server = await raw_server(script)
    client = Client(server.url, config=config())
    client.subscribe("sub")
    got: list[str | bytes] = []
    client.on_message(got.append)
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        await poll_until(lambda: len(got) == 4)
        peer = server.peers[0]
        await peer.wait_for(lambda: len(peer.pongs) == 3)
    assert got == [b"\x00\x01\xfe\xff", "hello wörld", b"\x80\x81\x82", '{"type":"after"}']
    assert peer.pongs == [b"p1", b"p2", b"p3"]
    assert recorder.of(Disconnected) == []
    assert client.stats.connects == 1 and len(server.peers) == 1


def _bad_utf8_script(bad: bytes) -> Script:
    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        serving = asyncio.create_task(peer.serve())
        try:
            await peer.wait_for(lambda: bool(peer.frames))
            if peer.attempt == 1:
                peer.send(frame(TEXT, b"before"))
                peer.send(bad)
                peer.send(frame(TEXT, b"after"))
            await serving
        finally:
            serving.cancel()

    return script


async def test_invalid_utf8_closes_1007_with_a_clear_outcome(raw_server: MakeRaw) -> None:
    """The client closes with 1007 and says why, at once; it never hangs nor delivers the frame.

    Whether it then retries is the policy's business: see the test below.
    """
    server = await raw_server(_bad_utf8_script(frame(TEXT, b"ok \xc3\x28")))
    client = Client(server.url, config=config())
    client.subscribe("sub")
    got: list[str | bytes] = []
    client.on_message(got.append)
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Disconnected, 1, timeout=2)
        await server.peers[0].wait_for(lambda: server.peers[0].close_code is not None)
        # Settled within a bound: either reconnected or given up, never stuck half-way.
        await client.wait_state(lambda s: s in (ConnectionState.OPEN, ConnectionState.FAILED), 2)
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected)
    assert lost.code == 1007 and "1007" in lost.reason and "invalid" in lost.reason.lower()
    assert server.peers[0].close_code == 1007
    assert got == ["before"]


# -- misbehaving servers ------------------------------------------------------------------------


async def _wrong_accept(peer: RawPeer) -> None:
    await peer.handshake(accept=base64.b64encode(b"not the right key!!!").decode())
    await peer.reader.read()


async def _never_answers(peer: RawPeer) -> None:
    await peer.read_request()
    await peer.reader.read()  # TCP accepted, request read, nothing ever sent: until the client hangs up


async def _garbage_instead_of_http(peer: RawPeer) -> None:
    await peer.read_request()
    peer.send(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \x01\x02\r\n\r\n")
    await peer.reader.read()


async def _hangs_up(peer: RawPeer) -> None:
    await peer.read_request()


MISBEHAVING = {
    "wrong accept key": (_wrong_accept, "invalid handshake", False),
    "handshake never completes": (_never_answers, "timed out", True),
    "garbage instead of HTTP": (_garbage_instead_of_http, "invalid handshake", False),
    "hangs up after the request": (_hangs_up, "invalid handshake", False),
}


@pytest.mark.parametrize("case", list(MISBEHAVING))
async def test_misbehaving_server_fails_the_attempt_clearly_and_is_retried(
    raw_server: MakeRaw, case: str
) -> None:
    script, reason, slow = MISBEHAVING[case]
    server = await raw_server(script)
    # Short only where the timeout is what is tested: elsewhere a loaded machine could let it
    # expire before the server's bad answer is read.
    open_timeout = 0.3 if slow else 3.0
    client = Client(server.url, config=config(open_timeout=open_timeout))
    recorder = Recorder(client)
    started = time.monotonic()
    async with client:
        await server.wait_for_connections(2, timeout=5)
        await recorder.wait_for(ConnectFailed, 1, timeout=5)
        assert client.state is not ConnectionState.OPEN
    assert time.monotonic() - started < 5
    failed = recorder.of(ConnectFailed)[0]
    assert isinstance(failed, ConnectFailed)
    assert failed.attempt == 1 and failed.will_retry and failed.status is None
    assert reason in failed.reason, failed.reason
    gap = server.accepted_at[1] - server.accepted_at[0]
    if slow:
        # Bounded by open_timeout, not by websockets' default of 10 s, nor by anything else.
        assert open_timeout * 0.9 <= gap < open_timeout + 2.0, gap
    assert client.stats.connects == 0


async def _garbage_after_handshake(peer: RawPeer) -> None:
    await peer.handshake()
    serving = asyncio.create_task(peer.serve())
    try:
        await peer.wait_for(lambda: bool(peer.frames))
        if peer.attempt == 1:
            peer.send(b"garbage\r\n\x00\x01")  # 'g' = 0x67: reserved bits set, no such opcode
        await serving
    finally:
        serving.cancel()


async def test_garbage_after_the_handshake_closes_1002_with_a_clear_outcome(raw_server: MakeRaw) -> None:
    server = await raw_server(_garbage_after_handshake)
    client = Client(server.url, config=config())
    client.subscribe("sub")
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Disconnected, 1, timeout=2)
        await client.wait_state(lambda s: s in (ConnectionState.OPEN, ConnectionState.FAILED), 2)
    assert server.peers[0].close_code == 1002
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected) and lost.code == 1002 and "1002" in lost.reason


@pytest.mark.parametrize(
    "script",
    [_bad_utf8_script(frame(TEXT, b"\xff")), _garbage_after_handshake],
    ids=["invalid-utf8-1007", "garbage-1002"],
)
async def test_close_sent_by_the_client_for_bad_server_bytes_is_retried(
    raw_server: MakeRaw, script: Script
) -> None:
    server = await raw_server(script)
    client = Client(server.url, config=config())
    client.subscribe("sub")
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Disconnected, 1, timeout=2)
        await client.wait_state(lambda s: s in (ConnectionState.OPEN, ConnectionState.FAILED), 2)
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected) and lost.will_retry, lost
    assert len(server.peers) == 2


# -- a large message on a slow link -------------------------------------------------------------

SIZE = 2 * 1024 * 1024
RATE = 512 * 1024
SLOW_HB = Heartbeat(interval=0.5, timeout=1.0)


class Sink:
    """A `websockets` server (no size limit) that hashes what it receives; optionally sends ticks."""

    def __init__(self, tick: float | None) -> None:
        self.tick = tick
        self.digests: list[str] = []
        self.arrived = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        ticker = asyncio.create_task(self._ticks(ws)) if self.tick is not None else None
        try:
            async for message in ws:
                data = message.encode() if isinstance(message, str) else message
                self.digests.append(hashlib.sha256(data).hexdigest())
                self.arrived.set()
        except ConnectionClosed:
            pass
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)

    async def _ticks(self, ws: ServerConnection) -> None:
        assert self.tick is not None
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send("tick")
                await asyncio.sleep(self.tick)  # the feed's own cadence


@contextlib.asynccontextmanager
async def slow_link(tick: float | None) -> AsyncIterator[tuple[Sink, ChaosProxy]]:
    sink = Sink(tick)
    async with serve(
        sink.handler, "127.0.0.1", 0, max_size=None, ping_interval=None, compression=None
    ) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with ChaosProxy("127.0.0.1", port) as proxy:
            proxy.bandwidth = RATE
            yield sink, proxy


def slow_client(proxy: ChaosProxy) -> Client:
    return Client(proxy.url("/"), config=config(heartbeat=SLOW_HB, open_timeout=2.0, max_size=None))


async def test_large_send_on_a_slow_link_with_a_live_feed_is_not_a_dead_link() -> None:
    """2 MB at 512 KiB/s (~4 s, the short version of 5 MB at 256 KiB/s) with pongs due within 1 s.

    The feed keeps sending ticks: the link is visibly alive, the overdue pongs are forgiven, the
    message arrives intact and the heartbeat measures round trips again afterwards.
    """
    payload = os.urandom(SIZE)
    async with slow_link(tick=0.1) as (sink, _proxy):
        client = slow_client(_proxy)
        recorder = Recorder(client)
        async with client:
            await client.wait_open(3)
            await client.send(payload)
            async with asyncio.timeout(SIZE / RATE + 5):
                await sink.arrived.wait()
            arrived_at = time.monotonic()
            await poll_until(
                lambda: (rtt := client.stats.last_rtt) is not None and rtt < SLOW_HB.timeout,
                timeout=2 * SLOW_HB.interval + 2,
            )
            resumed = time.monotonic() - arrived_at
            stats = client.stats
    assert sink.digests == [hashlib.sha256(payload).hexdigest()]
    assert stats.connects == 1
    assert [e for e in recorder.of(HeartbeatMissed) if e.fatal] == []  # type: ignore[attr-defined]
    assert recorder.of(HeartbeatMissed), "pongs queued behind 2 MB must have been overdue, then forgiven"
    assert resumed < 2 * SLOW_HB.interval + 2


async def test_large_send_on_a_slow_quiet_link_is_not_a_dead_link() -> None:
    """Like the test above, but the server sends nothing while the 2 MB trickle in."""
    payload = os.urandom(SIZE)
    async with slow_link(tick=None) as (sink, proxy):
        client = slow_client(proxy)
        recorder = Recorder(client)
        async with client:
            await client.wait_open(3)
            await client.send(payload)
            arrived = asyncio.create_task(sink.arrived.wait())
            lost = asyncio.create_task(recorder.wait_for(Disconnected, 1, timeout=SIZE / RATE + 5))
            await asyncio.wait({arrived, lost}, return_when=asyncio.FIRST_COMPLETED)
            for task in (arrived, lost):
                task.cancel()
            await asyncio.gather(arrived, lost, return_exceptions=True)
            stats = client.stats
    assert recorder.of(Disconnected) == []
    assert stats.connects == 1
    assert sink.digests == [hashlib.sha256(payload).hexdigest()]


async def test_large_send_on_a_link_that_stops_is_declared_dead_in_bounded_time() -> None:
    payload = os.urandom(SIZE)
    async with slow_link(tick=0.1) as (_sink, proxy):
        client = slow_client(proxy)
        recorder = Recorder(client)
        async with client:
            await client.wait_open(3)
            await client.send(payload)
            await poll_until(lambda: proxy.bytes_up > SIZE // 4, timeout=SIZE / RATE + 2)
            assert recorder.of(Disconnected) == [], "alive while the transfer progressed"
            proxy.blackhole(True)
            cut = time.monotonic()
            await recorder.wait_for(Disconnected, 1, timeout=10)
            detected = time.monotonic() - cut
            proxy.blackhole(False)
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected) and "no pong" in lost.reason and lost.will_retry
    assert detected < SLOW_HB.interval + SLOW_HB.timeout + 1.5, detected
