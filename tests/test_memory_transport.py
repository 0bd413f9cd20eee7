"""The in-memory transport keeps the Transport contract (transport/base.py) the way the socket backends do.

Socket-free and on looptime's virtual clock: every duration asserted here is loop time, exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from wsclient.errors import HandshakeFailed, HandshakeRejected, PeerNotReading, TransportClosed
from wsclient.redact import Redactor
from wsclient.transport import ConnectOptions, Meter
from wsclient.transport.base import CONTROL_BACKLOG, Data
from wsclient.transport.memory import HOLD_LIMIT, MemoryConnection, MemoryServer, MemoryTransport
from wsclient.transport.redirect import open_connection

pytestmark = pytest.mark.looptime

URL = "ws://feed.test/ws"


def now() -> float:
    return asyncio.get_running_loop().time()


async def open_pair(
    server: MemoryServer | None = None, **options: Any
) -> tuple[MemoryServer, MemoryTransport, MemoryConnection]:
    server = server if server is not None else MemoryServer()
    options.setdefault("open_timeout", 5.0)
    options.setdefault("close_timeout", 2.0)
    transport = await server.connect(ConnectOptions(url=URL, **options))
    return server, transport, server.connections[-1]


class Frames:
    """A plain sink: records what the pump hands it; returns ``hold`` (once) for the frame ``block``."""

    def __init__(self) -> None:
        self.frames: list[Data] = []
        self.hold: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()

    def __call__(self, data: Data) -> Awaitable[None] | None:
        self.frames.append(data)
        self._changed.set()
        if data == "block":
            self.hold = asyncio.get_running_loop().create_future()
            return self.hold
        return None

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Data]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:  # bounded by the timeout
                self._changed.clear()
                await self._changed.wait()
        return self.frames


async def run_pump(transport: MemoryTransport, sink: Any, meter: Meter | None = None) -> asyncio.Task[Any]:
    task = asyncio.create_task(transport.pump(sink, meter))
    await asyncio.sleep(0)
    return task


async def pump_end(task: asyncio.Task[Any], timeout: float = 10.0) -> BaseException | None:
    """Wait for the pump to end; return what it raised."""
    async with asyncio.timeout(timeout):
        await asyncio.gather(task, return_exceptions=True)
    return asyncio.CancelledError() if task.cancelled() else task.exception()


async def settle() -> None:
    """Let the loop run every ready callback (reads, the server's reads) without moving the clock."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- reads, the meter and the sink ---------------------------------------------------------------------------


async def test_the_meter_counts_messages_when_read_and_stamps_once_per_read_with_loop_time() -> None:
    _, transport, conn = await open_pair()
    meter = Meter()
    got = Frames()
    pump = await run_pump(transport, got, meter)
    conn.send("héllo", b"\x00\x01\x02")  # one read carrying two messages
    assert await got.wait_for(2) == ["héllo", b"\x00\x01\x02"]
    first = meter.last_inbound
    assert (meter.frames_in, meter.bytes_in) == (2, len("héllo") + 3)  # len(): characters of text
    assert first == pytest.approx(now())

    await asyncio.sleep(3.0)
    conn.ping(b"server")  # a control frame alone is no inbound traffic
    rtt = await (await transport.ping(b"client"))
    assert rtt == 0.0
    await settle()
    assert (meter.frames_in, meter.last_inbound) == (2, first)
    assert conn.pongs == [b"server"]

    conn.send("again")
    await got.wait_for(3)
    assert meter.frames_in == 3
    assert meter.last_inbound - first == pytest.approx(3.0)
    pump.cancel()
    assert isinstance(await pump_end(pump), asyncio.CancelledError)


class InlineSink:
    """A Sink whose inline target records what the pump hands it directly."""

    def __init__(self) -> None:
        self.inline: InlineSink | None = self
        self.direct: list[Data] = []
        self.called: list[Data] = []
        self.deferred: list[asyncio.Future[None]] = []

    def dispatch(self, data: Data) -> asyncio.Future[None] | None:
        self.direct.append(data)
        if data == "slow":
            return asyncio.get_running_loop().create_future()  # never done: the pump must not wait
        return None

    def __call__(self, data: Data) -> None:
        self.called.append(data)

    def defer(self, pending: asyncio.Future[None]) -> None:
        self.deferred.append(pending)


async def test_the_inline_target_gets_messages_directly_and_the_pump_never_waits_on_it() -> None:
    _, transport, conn = await open_pair()
    sink = InlineSink()
    meter = Meter()
    pump = await run_pump(transport, sink, meter)
    conn.send("a")
    conn.send("slow", "b")
    await settle()
    assert sink.direct == ["a", "slow", "b"]  # "b" came although "slow" is still pending
    assert sink.called == []
    assert len(sink.deferred) == 1 and not sink.deferred[0].done()

    sink.inline = None  # switched off: the sink itself is called
    conn.send("c")
    await settle()
    assert sink.called == ["c"]
    assert meter.frames_in == 4
    pump.cancel()
    await pump_end(pump)


async def test_a_sink_that_waits_holds_reading_back_and_what_follows_waits_in_the_kernel() -> None:
    _, transport, conn = await open_pair()
    meter = Meter()
    got = Frames()
    pump = await run_pump(transport, got, meter)
    conn.send("block")
    for i in range(HOLD_LIMIT + 4):
        conn.send(f"m{i:02d}")  # one read each
    conn.ping(b"behind")  # queued behind the data: unread while reading is paused
    await settle()
    assert got.frames == ["block"]
    assert meter.frames_in == 1 + HOLD_LIMIT  # counted when read, though held back
    assert transport.inbound_pending() > 0  # four reads and the ping wait "in the kernel"
    assert conn.pongs == []

    assert got.hold is not None
    got.hold.set_result(None)
    frames = await got.wait_for(1 + HOLD_LIMIT + 4)
    assert frames[1:] == [f"m{i:02d}" for i in range(HOLD_LIMIT + 4)]
    await settle()
    assert meter.frames_in == 1 + HOLD_LIMIT + 4
    assert transport.inbound_pending() == 0
    assert conn.pongs == [b"behind"]
    pump.cancel()
    await pump_end(pump)


async def test_messages_read_before_the_pump_starts_count_in_its_meter_and_come_first() -> None:
    _, transport, conn = await open_pair()
    conn.send("early-1", "early-2")
    await settle()
    meter = Meter()
    got = Frames()
    pump = await run_pump(transport, got, meter)
    conn.send("late")
    assert await got.wait_for(3) == ["early-1", "early-2", "late"]
    assert meter.frames_in == 3
    pump.cancel()
    await pump_end(pump)


async def test_a_second_pump_at_once_is_refused() -> None:
    _, transport, _ = await open_pair()
    pump = await run_pump(transport, Frames())
    with pytest.raises(RuntimeError, match="already running"):
        await transport.pump(Frames())
    pump.cancel()
    await pump_end(pump)


# -- pings ---------------------------------------------------------------------------------------------------


async def test_the_round_trip_time_is_measured_on_the_loop_clock() -> None:
    _, transport, conn = await open_pair(MemoryServer(pong_delay=0.25))
    pump = await run_pump(transport, Frames())
    rtt = await transport.ping_nowait(b"one")
    assert rtt == pytest.approx(0.25)
    assert conn.pings == [b"one"]
    pump.cancel()
    await pump_end(pump)


async def test_pongs_are_matched_by_payload_and_acknowledge_earlier_pings() -> None:
    _, transport, conn = await open_pair()
    conn.auto_pong = False
    pump = await run_pump(transport, Frames())
    first = transport.ping_nowait(b"first")
    second = transport.ping_nowait(b"second")
    with pytest.raises(RuntimeError, match="same data"):
        transport.ping_nowait(b"first")
    with pytest.raises(ValueError, match="125"):
        transport.ping_nowait(bytes(126))
    await asyncio.sleep(1.0)
    conn.pong(b"stranger")  # unsolicited: ignored
    await settle()
    assert not first.done() and not second.done()

    conn.pong(b"second")  # acknowledges "first" too
    await settle()
    assert first.result() == pytest.approx(1.0)
    assert second.result() == pytest.approx(1.0)

    third = transport.ping_nowait(b"third")
    third.cancel()  # the caller's own future: giving up on it disturbs nothing
    conn.answer_pings()
    await settle()
    assert conn.pings == [b"first", b"second", b"third"]
    pump.cancel()
    await pump_end(pump)


async def test_a_pending_ping_fails_with_transport_closed_when_the_link_ends() -> None:
    _, transport, conn = await open_pair()
    conn.auto_pong = False
    pump = await run_pump(transport, Frames())
    pong = transport.ping_nowait(b"lost")
    conn.drop()
    with pytest.raises(TransportClosed) as raised:
        await pong
    assert raised.value.code == 1006
    await pump_end(pump)
    with pytest.raises(TransportClosed):
        transport.ping_nowait(b"after")


# -- sending -------------------------------------------------------------------------------------------------


async def test_text_and_binary_reach_the_server_in_order_with_their_type() -> None:
    server, transport, conn = await open_pair()
    await transport.send("one")
    transport.send_nowait(b"\x02")
    await transport.send(bytearray(b"three"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await transport.send(3)  # type: ignore[arg-type]
    assert await conn.wait_received(3) == ["one", b"\x02", b"three"]
    assert transport.write_buffer_size() == 0
    assert not transport.send_blocked()
    assert server.open_connections == [conn]


async def test_a_server_that_stops_reading_fills_the_buffer_then_sends_wait_for_it() -> None:
    server = MemoryServer(send_buffer=1000, write_limit=1000)
    _, transport, conn = await open_pair(server)
    conn.stop_reading()
    payload = "x" * 300  # 308 bytes on the wire
    sent = 0
    async with asyncio.timeout(1.0):
        # Up to send_buffer + write_limit, a send returns at once. Bounded: 308 bytes more each pass.
        while transport.write_buffer_size() + 308 <= 1000 + 1000:
            await transport.send(payload)
            sent += 1
    assert sent == 6 and transport.send_blocked()
    blocked = asyncio.create_task(transport.send(payload))
    await asyncio.sleep(5.0)
    assert not blocked.done()  # waits on backpressure, for as long as the server reads nothing
    transport.send_nowait("urgent")  # the heartbeat's kind of write never waits
    assert conn.received == []

    conn.resume_reading()
    async with asyncio.timeout(1.0):
        await blocked
    assert conn.received == [payload] * (sent + 1) + ["urgent"]
    assert transport.write_buffer_size() == 0


async def test_a_send_waiting_on_backpressure_raises_when_the_link_ends() -> None:
    server = MemoryServer(send_buffer=0, write_limit=10)
    _, transport, conn = await open_pair(server)
    conn.stop_reading()
    blocked = asyncio.create_task(transport.send("x" * 100))
    await asyncio.sleep(1.0)
    assert not blocked.done()
    transport.abort()
    with pytest.raises(TransportClosed) as raised:
        await blocked
    assert raised.value.code == 1006
    assert conn.received == []  # it was never sent


async def test_pongs_to_a_peer_that_reads_nothing_fail_the_link_with_peer_not_reading() -> None:
    server = MemoryServer(send_buffer=0, write_limit=10)
    _, transport, conn = await open_pair(server)
    conn.stop_reading()
    transport.send_nowait("x" * 100)  # the write buffer is over its limit from now on
    pump = await run_pump(transport, Frames())
    flood = CONTROL_BACKLOG // 131 + 1  # each pong is 125 bytes of payload, 131 on the wire
    for _ in range(flood):
        conn.ping(bytes(125))
    exc = await pump_end(pump)
    assert isinstance(exc, PeerNotReading)
    assert (exc.code, exc.by_peer) == (1008, False)
    assert not conn.open


# -- closing -------------------------------------------------------------------------------------------------


async def test_the_client_close_handshake_completes_at_once_with_a_willing_server() -> None:
    _, transport, conn = await open_pair()
    started = now()
    await transport.close(4000, "bye")
    assert now() == started
    assert (conn.close_code, conn.close_reason) == (4000, "bye")
    assert not conn.open
    with pytest.raises(TransportClosed) as raised:
        await transport.send("late")
    assert raised.value.code == 4000
    await transport.close()  # closed already: returns


async def test_a_server_that_never_answers_the_close_frame_is_aborted_after_close_timeout() -> None:
    _, transport, conn = await open_pair(close_timeout=2.0)
    conn.echo_close = False
    pump = await run_pump(transport, Frames())
    started = now()
    await transport.close(1000)
    assert now() - started == pytest.approx(2.0)
    assert conn.close_code == 1000
    exc = await pump_end(pump)
    assert isinstance(exc, TransportClosed)
    assert (exc.code, exc.by_peer) == (1000, False)  # we sent it, none came back


async def test_a_server_close_reaches_the_pump_with_its_code_and_a_masked_reason() -> None:
    token = "sekrit-token-0123456789"
    _, transport, conn = await open_pair(headers={"Authorization": f"Bearer {token}"})
    got = Frames()
    pump = await run_pump(transport, got)
    conn.send("before")
    conn.close(1008, f"bad token {token}")
    with pytest.raises(ConnectionError):
        conn.send("after")  # the close frame is the last one a peer sends
    exc = await pump_end(pump)
    assert isinstance(exc, TransportClosed)
    assert (exc.code, exc.by_peer) == (1008, True)
    assert token not in exc.reason and "bad token" in exc.reason
    assert exc.reason == Redactor([f"Bearer {token}", token]).text(f"bad token {token}")
    assert got.frames == ["before"]
    assert conn.close_code == 1008  # the client's echo


async def test_a_close_handshake_the_server_never_finishes_ends_after_close_timeout() -> None:
    _, transport, conn = await open_pair(close_timeout=3.0)
    pump = await run_pump(transport, Frames())
    started = now()
    conn.close(1001, "going away", finish=False)
    exc = await pump_end(pump)
    assert now() - started == pytest.approx(3.0)
    assert isinstance(exc, TransportClosed) and exc.code == 1001
    assert conn.close_code == 1001


async def test_a_close_frame_without_a_code_reads_as_1005() -> None:
    _, transport, conn = await open_pair()
    pump = await run_pump(transport, Frames())
    conn.close(None)
    exc = await pump_end(pump)
    assert isinstance(exc, TransportClosed) and exc.code == 1005


async def test_a_dropped_link_ends_with_1006_after_what_was_sent() -> None:
    _, transport, conn = await open_pair()
    got = Frames()
    pump = await run_pump(transport, got)
    conn.send("last words")
    conn.drop()
    exc = await pump_end(pump)
    assert isinstance(exc, TransportClosed)
    assert (exc.code, exc.by_peer) == (1006, True)
    assert got.frames == ["last words"]
    assert not conn.open
    with pytest.raises(ConnectionError):
        conn.send("to nobody")


async def test_abort_is_idempotent_and_the_server_sees_the_end() -> None:
    server, transport, conn = await open_pair()
    pump = await run_pump(transport, Frames())
    transport.abort()
    transport.abort()
    exc = await pump_end(pump)
    assert isinstance(exc, TransportClosed) and exc.code == 1006
    await conn.wait_closed(timeout=0.1)
    assert server.open_connections == []
    assert conn.ended_at == pytest.approx(now())


async def test_an_oversized_message_fails_the_link_with_1009_after_what_came_before() -> None:
    _, transport, conn = await open_pair(max_size=10)
    got = Frames()
    pump = await run_pump(transport, got)
    conn.send("small", "x" * 11, "never")
    exc = await pump_end(pump)
    assert isinstance(exc, TransportClosed)
    assert (exc.code, exc.by_peer) == (1009, False)
    assert got.frames == ["small"]
    assert conn.close_code == 1009


async def test_a_black_holed_link_carries_nothing_either_way() -> None:
    _, transport, conn = await open_pair()
    meter = Meter()
    pump = await run_pump(transport, Frames(), meter)
    conn.blackhole()
    conn.send("lost downstream")
    await transport.send("lost upstream")
    pong = transport.ping_nowait(b"anyone?")
    await asyncio.sleep(30.0)
    assert meter.frames_in == 0
    assert conn.received == [] and conn.pings == []
    assert not pong.done()
    assert transport.write_buffer_size() > 0  # never acknowledged, never drained
    assert not transport.send_blocked()  # a few bytes fit in the kernel's buffer
    conn.drop()  # the end does not get through either
    await settle()
    assert conn.open
    transport.abort()
    assert isinstance(await pump_end(pump), TransportClosed)


# -- handshakes ----------------------------------------------------------------------------------------------


async def test_the_handshake_script_runs_in_order_then_the_default() -> None:
    server = MemoryServer()
    server.refuse()
    server.reject(503, {"Retry-After": "7"}, b"busy")
    server.hang()
    options = ConnectOptions(url=URL, headers={"X-Trace": "1"}, open_timeout=4.0)
    with pytest.raises(ConnectionRefusedError):
        await server.connect(options)
    with pytest.raises(HandshakeRejected) as rejected:
        await server.connect(options)
    assert (rejected.value.status, rejected.value.retry_after, rejected.value.body) == (503, 7.0, b"busy")
    started = now()
    with pytest.raises(TimeoutError):
        await server.connect(options)
    assert now() - started == pytest.approx(4.0)
    transport = await server.connect(options)
    assert [h.outcome for h in server.handshakes] == ["refused", "rejected", "hung", "accepted"]
    assert [h.status for h in server.handshakes] == [None, 503, None, 101]
    assert server.handshakes[0].headers == {"X-Trace": "1"}
    assert server.connections[0].transport is transport

    server.refuse(times=None)  # from now on
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            await server.connect(options)
    server.accept(times=None)
    await server.connect(options)
    assert [c.id for c in server.connections] == [1, 2]
    assert [h.open_connections for h in server.handshakes] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert server.peak_open == 2
    with pytest.raises(ValueError, match="times"):
        server.refuse(times=0)


async def test_a_handshake_given_up_during_its_delay_leaves_no_connection() -> None:
    server = MemoryServer(handshake_delay=1.5)
    started = now()
    await server.connect(ConnectOptions(url=URL))
    assert now() - started == pytest.approx(1.5)
    attempt = asyncio.create_task(server.connect(ConnectOptions(url=URL)))
    await asyncio.sleep(1.0)
    attempt.cancel()
    await asyncio.gather(attempt, return_exceptions=True)
    assert len(server.connections) == 1
    assert [h.outcome for h in server.handshakes] == ["accepted", "abandoned"]


async def test_subprotocols_are_negotiated_and_one_not_offered_fails_the_handshake() -> None:
    server = MemoryServer(subprotocols=("v2", "v1"))
    _, transport, conn = await open_pair(server, subprotocols=("v1", "v2"))
    assert transport.subprotocol == conn.subprotocol == "v1"  # the client's preference first
    _, transport, _ = await open_pair(server, subprotocols=("v3",))
    assert transport.subprotocol is None
    server.accept(subprotocol="v9")
    with pytest.raises(HandshakeFailed, match="v9"):
        await server.connect(ConnectOptions(url=URL, subprotocols=("v1",)))
    assert server.handshakes[-1].outcome == "failed"


async def test_a_redirect_is_followed_by_open_connection_and_credentials_stay_home() -> None:
    server = MemoryServer()
    server.redirect("/moved", status=301)
    server.redirect("ws://elsewhere.test/ws", status=307)
    options = ConnectOptions(url=URL, headers={"Authorization": "Bearer abcdefgh12345678"})
    opened = await open_connection(server.connect, options, max_redirects=5, redactor=Redactor())
    assert opened.url == "ws://elsewhere.test/ws" and opened.redirects == 2
    assert [h.url for h in server.handshakes] == [URL, "ws://feed.test/moved", "ws://elsewhere.test/ws"]
    assert "Authorization" in server.handshakes[1].headers  # same origin
    assert "Authorization" not in server.handshakes[2].headers  # another origin
    assert opened.transport is server.connections[0].transport


def test_scripting_mistakes_are_refused_at_once() -> None:
    server = MemoryServer()
    with pytest.raises(ValueError, match="redirect"):
        server.redirect("/x", status=200)
    with pytest.raises(ValueError, match="101"):
        server.reject(101)
    with pytest.raises(ValueError, match="send_buffer"):
        MemoryServer(send_buffer=-1)
