"""Tests for wsclient.testing.FeedServer, driven by a plain websockets client."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.protocol import State

from wsclient.testing import CHANNELS, Fault, FeedServer

# 100 messages/s per stream: a tick every 10 ms keeps every test well under a second.
RATE = 100.0
TIMEOUT = 3.0
# Caps the number of frames a helper reads, so no read loop can run away.
MAX_FRAMES = 2000


@pytest.fixture
async def server() -> AsyncIterator[FeedServer]:
    async with FeedServer(rate=RATE) as feed:
        yield feed


def client(server: FeedServer, key: str = "t1", **kwargs: Any) -> connect:
    """A plain websockets client that identifies itself and never pings on its own."""
    kwargs.setdefault("ping_interval", None)
    return connect(
        server.url,
        proxy=None,
        additional_headers={"X-Client-Id": key},
        open_timeout=TIMEOUT,
        close_timeout=1.0,
        **kwargs,
    )


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        raw = await ws.recv()
    assert isinstance(raw, str)
    message = json.loads(raw)
    assert isinstance(message, dict)
    return message


async def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read until a message matches; return it and the messages read before it."""
    skipped: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(MAX_FRAMES):
            message = await recv_json(ws)
            if predicate(message):
                return message, skipped
            skipped.append(message)
    raise AssertionError("no matching message")


async def subscribe(
    ws: ClientConnection, channel: str, symbol: str, req_id: int = 1, op: str = "subscribe"
) -> list[dict[str, Any]]:
    """(Un)subscribe and wait for the ack; return data messages that arrived before it."""
    await send(ws, op=op, channel=channel, symbol=symbol, id=req_id)
    ack, before = await recv_until(ws, lambda m: m.get("type") in ("ack", "error"))
    assert ack == {"type": "ack", "op": op, "id": req_id, "channel": channel, "symbol": symbol}
    return before


async def data(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    return [await recv_json(ws) for _ in range(n)]


async def read_until_closed(ws: ClientConnection) -> list[str | bytes]:
    """Drain the connection (flow control would hide the close frame otherwise)."""
    frames: list[str | bytes] = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(MAX_FRAMES):
            try:
                frames.append(await ws.recv())
            except ConnectionClosed:
                return frames
    raise AssertionError("connection did not close")


async def drain_quiet(ws: ClientConnection, quiet: float = 0.1) -> list[dict[str, Any]]:
    """Read until nothing arrives for ``quiet`` seconds."""
    messages: list[dict[str, Any]] = []
    for _ in range(MAX_FRAMES):
        try:
            messages.append(await recv_json(ws, timeout=quiet))
        except TimeoutError:
            return messages
    raise AssertionError("connection never went quiet")


def without_ts(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "ts"}


# -- protocol -------------------------------------------------------------------------


async def test_subscribe_acks_then_streams_in_seq_order(server: FeedServer) -> None:
    async with client(server) as ws:
        assert await subscribe(ws, "trades", "BTC-USD", req_id=7) == []
        trades = await data(ws, 10)

    seqs = [m["seq"] for m in trades]
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    assert seqs[0] >= 1
    for m in trades:
        assert m["type"] == "trade"
        assert m["symbol"] == "BTC-USD"
        assert m["side"] in ("buy", "sell")
        assert isinstance(m["price"], str)
        assert isinstance(m["qty"], str)
        assert Decimal(m["price"]) > 0
        assert Decimal(m["qty"]) > 0
        assert abs(m["ts"] - time.time()) < 5
    assert server.subscriptions("t1") == set()  # the connection is gone


async def test_book_and_ticker_messages(server: FeedServer) -> None:
    async with client(server) as ws:
        await subscribe(ws, "book", "ETH-USD", req_id=1)
        await subscribe(ws, "ticker", "SOL-USD", req_id=2)
        messages = await data(ws, 10)

    books = [m for m in messages if m["type"] == "book"]
    tickers = [m for m in messages if m["type"] == "ticker"]
    assert books
    assert tickers
    for book in books:
        assert book["symbol"] == "ETH-USD"
        bids = [Decimal(price) for price, _qty in book["bids"]]
        asks = [Decimal(price) for price, _qty in book["asks"]]
        assert bids == sorted(bids, reverse=True)
        assert asks == sorted(asks)
        assert bids[0] < asks[0]
    for ticker in tickers:
        assert ticker["symbol"] == "SOL-USD"
        assert Decimal(ticker["bid"]) < Decimal(ticker["ask"])
        assert Decimal(ticker["last"]) > 0


async def test_unsubscribe_stops_the_stream(server: FeedServer) -> None:
    async with client(server) as ws:
        await subscribe(ws, "trades", "BTC-USD", req_id=1)
        await subscribe(ws, "ticker", "BTC-USD", req_id=2)
        await data(ws, 4)
        await subscribe(ws, "trades", "BTC-USD", req_id=3, op="unsubscribe")
        after = await data(ws, 10)

    assert {m["type"] for m in after} == {"ticker"}
    seqs = [m["seq"] for m in after]
    assert seqs == list(range(seqs[0], seqs[0] + 10))


async def test_every_stream_advances_without_listeners_so_reconnect_sees_a_gap(
    server: FeedServer,
) -> None:
    async with client(server) as ws:
        await subscribe(ws, "trades", "SOL-USD")
        last_seen = (await data(ws, 3))[-1]["seq"]

    await server.wait_for_seq("trades", "SOL-USD", last_seen + 5)
    assert server.stream_seq("book", "ETH-USD") >= last_seen + 5  # nobody listens there

    async with client(server) as ws:
        await subscribe(ws, "trades", "SOL-USD")
        first_after = (await data(ws, 1))[0]["seq"]
    assert first_after > last_seen + 5


async def test_content_is_deterministic_per_seed() -> None:
    async def collect(seed: int) -> dict[int, dict[str, Any]]:
        feed = FeedServer(rate=200.0, seed=seed, symbols=("BTC-USD",))
        async with feed, client(feed) as ws:
            await subscribe(ws, "book", "BTC-USD")
            by_seq: dict[int, dict[str, Any]] = {}
            for _ in range(MAX_FRAMES):
                message = await recv_json(ws)
                by_seq[message["seq"]] = without_ts(message)
                if message["seq"] >= 40:
                    return by_seq
        raise AssertionError("unreachable")

    first, second, other = await collect(7), await collect(7), await collect(8)
    common = first.keys() & second.keys()
    assert common
    assert all(first[seq] == second[seq] for seq in common)
    assert any(first[seq] != other[seq] for seq in common & other.keys())


async def test_application_ping_time_and_text_ping(server: FeedServer) -> None:
    async with client(server) as ws:
        await send(ws, op="ping", id=5)
        assert await recv_json(ws) == {"type": "pong", "id": 5}
        before = time.time()
        await send(ws, op="time", id=6)
        reply = await recv_json(ws)
        assert reply["type"] == "time"
        assert reply["id"] == 6
        assert before - 1 <= reply["ts"] <= time.time() + 1
        await ws.send("ping")
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == "pong"


async def test_invalid_requests_get_errors_and_keep_the_connection(server: FeedServer) -> None:
    bad: list[tuple[str | bytes, Any]] = [
        ("{not json", None),
        ("[1, 2]", None),
        (json.dumps({"op": "dance", "id": 1}), 1),
        (json.dumps({"op": "subscribe", "channel": "candles", "symbol": "BTC-USD", "id": 2}), 2),
        (json.dumps({"op": "subscribe", "channel": "trades", "symbol": "DOGE-USD", "id": 3}), 3),
        (json.dumps({"op": "subscribe", "id": 4}), 4),
        (b"\x00\x01", None),
    ]
    async with client(server) as ws:
        for frame, req_id in bad:
            await ws.send(frame)
            reply = await recv_json(ws)
            assert reply["type"] == "error"
            assert reply["id"] == req_id
            assert reply["message"]
        await send(ws, op="ping", id=99)
        assert await recv_json(ws) == {"type": "pong", "id": 99}
    assert server.subscriptions("t1") == set()


async def test_received_frames_are_recorded_in_order_per_client(server: FeedServer) -> None:
    async with client(server, "a") as a, client(server, "b") as b:
        await a.send("ping")
        await b.send(json.dumps({"op": "ping", "id": 1}))
        await a.send(json.dumps({"op": "time", "id": 2}))
        await b.send(b"\x01")
        matched = await server.wait_received(lambda key, frame: key == "b" and frame == b"\x01")
        frames = await server.wait_received(4)

    assert matched == [("b", b"\x01")]
    assert [f for k, f in frames if k == "a"] == ["ping", '{"op": "time", "id": 2}']
    assert [f for k, f in frames if k == "b"] == ['{"op": "ping", "id": 1}', b"\x01"]


async def test_messages_sent_matches_what_the_client_received(server: FeedServer) -> None:
    server.close_after(messages=8, code=1012)
    async with client(server) as ws:
        await send(ws, op="subscribe", channel="ticker", symbol="ETH-USD", id=1)
        frames = await read_until_closed(ws)

    assert ws.close_code == 1012
    messages = [json.loads(f) for f in frames]
    assert len(messages) == 8
    assert messages[0]["type"] == "ack"
    assert server.responses_sent("t1") == 1
    assert server.messages_sent("t1") == 7
    assert server.messages_sent("t1", "ticker", "ETH-USD") == 7
    assert server.messages_sent(channel="trades") == 0


# -- faults ---------------------------------------------------------------------------


async def test_close_all_sends_the_close_code(server: FeedServer) -> None:
    async with client(server, "a") as a, client(server, "b") as b:
        await subscribe(a, "trades", "BTC-USD")
        await server.wait_for_connections(2)
        await server.close_all(4001, "maintenance")
        await read_until_closed(a)
        await read_until_closed(b)

    for ws in (a, b):
        assert ws.close_code == 4001
        assert ws.close_reason == "maintenance"
    assert server.current_connections("a") == 0
    assert server.current_connections("b") == 0


async def test_close_after_seconds(server: FeedServer) -> None:
    server.close_after(seconds=0.05, code=1013, reason="try again")
    started = time.monotonic()
    async with client(server) as ws:
        await read_until_closed(ws)
    assert time.monotonic() - started >= 0.05
    assert ws.close_code == 1013
    assert ws.close_reason == "try again"

    server.close_after()  # removed: the next connection stays open
    async with client(server) as ws:
        await send(ws, op="ping", id=1)
        assert await recv_json(ws) == {"type": "pong", "id": 1}


async def test_drop_all_aborts_without_close_frame(server: FeedServer) -> None:
    async with client(server) as ws:
        await subscribe(ws, "trades", "ETH-USD")
        await server.drop_all()
        assert server.current_connections("t1") == 0
        await read_until_closed(ws)
        with pytest.raises(ConnectionClosedError):
            await ws.recv()
    assert ws.protocol.close_rcvd is None
    assert ws.close_code == 1006


async def test_ignore_pings_swallows_protocol_pongs(server: FeedServer) -> None:
    async with client(server) as ws:
        latency = await (await ws.ping())
        assert latency >= 0

        server.ignore_pings = True
        unanswered = await ws.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(unanswered), 0.2)
        # Application traffic is unaffected.
        await send(ws, op="ping", id=1)
        assert await recv_json(ws) == {"type": "pong", "id": 1}
        assert server.pongs_suppressed >= 1

        server.ignore_pings = False
        async with asyncio.timeout(TIMEOUT):
            await (await ws.ping())
            # A pong acknowledges every earlier ping too.
            assert unanswered.done()


async def test_silent_stops_data_but_keeps_the_socket(server: FeedServer) -> None:
    async with client(server) as ws:
        await subscribe(ws, "trades", "BTC-USD")
        await data(ws, 2)
        server.silent = True
        silenced_at = server.stream_seq("trades", "BTC-USD")
        await send(ws, op="ping", id=1)
        await server.wait_for_seq("trades", "BTC-USD", silenced_at + 10)

        # Only messages generated before the switch may still be in flight.
        leftovers = await drain_quiet(ws)
        assert all(m["type"] == "trade" and m["seq"] <= silenced_at for m in leftovers)

        async with asyncio.timeout(TIMEOUT):
            await (await ws.ping())  # protocol pings are still answered
        assert ws.state is State.OPEN

        server.silent = False
        resumed = (await data(ws, 1))[0]
        assert resumed["seq"] > silenced_at + 10


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(401, None), (429, 7), (503, "30")],
)
async def test_reject_handshakes(server: FeedServer, status: int, retry_after: Any) -> None:
    server.reject(status, retry_after=retry_after)
    with pytest.raises(InvalidStatus) as info:
        await client(server)
    response = info.value.response
    assert response.status_code == status
    if retry_after is None:
        assert "Retry-After" not in response.headers
    else:
        assert response.headers["Retry-After"] == str(retry_after)
    assert server.rejected_handshakes == 1
    assert server.total_connections == 0

    server.reject(None)
    async with client(server):
        pass
    assert server.total_connections == 1


async def test_unknown_path_is_404(server: FeedServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(server.url.replace("/stream", "/nope"), proxy=None)
    assert info.value.response.status_code == 404


async def test_idle_cutoff_aborts_quiet_clients_only(server: FeedServer) -> None:
    async with client(server, "idle") as idle, client(server, "busy") as busy:
        await server.wait_for_connections(2)
        server.idle_cutoff = 0.1  # applies to connections already open

        async def keep_busy() -> None:
            # Pacing, not waiting: protocol pings at a third of the cutoff.
            for _ in range(10):
                await (await busy.ping())
                await asyncio.sleep(0.03)

        keep_busy_task = asyncio.create_task(keep_busy())
        await read_until_closed(idle)
        await keep_busy_task

        assert idle.close_code == 1006
        assert busy.state is State.OPEN
        assert server.idle_cuts == 1
        server.idle_cutoff = None


async def test_accept_then_close(server: FeedServer) -> None:
    server.accept_then_close(4003, "not today")
    async with client(server) as ws:
        await read_until_closed(ws)
    assert ws.close_code == 4003
    assert ws.close_reason == "not today"
    assert server.total_connections == 1

    server.accept_then_close(None)
    async with client(server) as ws:
        await send(ws, op="ping", id=1)
        assert await recv_json(ws) == {"type": "pong", "id": 1}


async def test_restart_closes_with_1012_and_listens_on_the_same_port(server: FeedServer) -> None:
    port, url = server.port, server.url
    async with client(server) as ws:
        await subscribe(ws, "trades", "BTC-USD")
        last_seen = (await data(ws, 2))[-1]["seq"]
        await server.restart()
        await read_until_closed(ws)
    assert ws.close_code == 1012
    assert server.port == port
    assert server.url == url

    async with client(server) as ws:
        await subscribe(ws, "trades", "BTC-USD")
        assert (await data(ws, 1))[0]["seq"] > last_seen  # streams continue, never reset
    assert server.total_connections == 2


async def test_stop_then_start_again(server: FeedServer) -> None:
    async with client(server) as ws:
        await server.stop()
        await read_until_closed(ws)
    assert ws.close_code == 1001
    assert not server.running
    frozen = server.stream_seq("ticker", "BTC-USD")
    with pytest.raises(ConnectionRefusedError):
        await client(server)
    assert server.stream_seq("ticker", "BTC-USD") == frozen  # no ticks while stopped

    await server.start()
    async with client(server) as ws:
        await send(ws, op="ping", id=1)
        assert await recv_json(ws) == {"type": "pong", "id": 1}


async def test_fault_schedule() -> None:
    # Same time, so they run in list order: new handshakes are refused before the close.
    faults = [
        Fault(0.3, lambda s: s.reject(503, retry_after=1)),
        Fault(0.3, lambda s: s.close_all(4004, "scheduled")),
    ]
    async with FeedServer(rate=RATE, faults=faults) as feed:
        async with client(feed) as ws:
            await read_until_closed(ws)
        assert ws.close_code == 4004
        with pytest.raises(InvalidStatus) as info:
            await client(feed)
        assert info.value.response.status_code == 503
        assert feed.schedule_errors == []


async def test_slow_consumer_is_dropped_with_1008() -> None:
    async with FeedServer(rate=500.0, max_buffer=20, send_buffer=4096) as feed:
        sock = socket.socket()
        # Tiny kernel buffers on both ends make the backlog reach the outbox quickly.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", feed.port))
        async with connect(feed.url, proxy=None, sock=sock, max_queue=1) as ws:
            for i, symbol in enumerate(feed.symbols):
                await send(ws, op="subscribe", channel="book", symbol=symbol, id=i)
            # Not reading is the point; the server must notice on its own.
            await feed.wait_until(lambda: feed.slow_consumer_drops == 1)
            await read_until_closed(ws)
        assert ws.close_code == 1008
        assert ws.close_reason == "slow consumer"


# -- accounting and lifecycle ---------------------------------------------------------


async def test_peak_and_current_connections(server: FeedServer) -> None:
    for _ in range(3):
        async with client(server, "serial"):
            await server.wait_until(lambda: server.current_connections("serial") == 1)
    await server.wait_until(lambda: server.current_connections("serial") == 0)
    assert server.peak_connections("serial") == 1
    assert server.connections_by_client["serial"] == 3

    async with client(server, "twice"), client(server, "twice"):
        await server.wait_for_connections(5)
        assert server.current_connections("twice") == 2
    assert server.peak_connections("twice") == 2

    async with connect(server.url, proxy=None):
        await server.wait_for_connections(6)
        assert server.current_connections() == 1  # no X-Client-Id header
    assert server.total_connections == 6


async def test_wait_for_subscriptions(server: FeedServer) -> None:
    async with client(server, "sub") as ws:
        for i, channel in enumerate(CHANNELS):
            await send(ws, op="subscribe", channel=channel, symbol="ETH-USD", id=i)
        await server.wait_for_subscriptions("sub", 3)
        assert server.subscriptions("sub") == {(c, "ETH-USD") for c in CHANNELS}


async def test_waits_time_out(server: FeedServer) -> None:
    with pytest.raises(TimeoutError, match="connections"):
        await server.wait_for_connections(1, timeout=0.02)
    with pytest.raises(TimeoutError):
        await server.wait_received(1, timeout=0.02)


async def test_stop_leaves_no_tasks_behind() -> None:
    before = asyncio.all_tasks()
    feed = FeedServer(rate=RATE, faults=[Fault(60.0, lambda s: s.reject(503))])
    await feed.start()
    feed.idle_cutoff = 30.0
    feed.close_after(seconds=30.0)
    async with client(feed) as ws:
        await subscribe(ws, "trades", "BTC-USD")
        await data(ws, 2)
        await feed.stop()
        await read_until_closed(ws)
    assert ws.close_code == 1001
    assert asyncio.all_tasks() - before == set()
    await feed.stop()  # idempotent


async def test_ipv6_loopback() -> None:
    try:
        feed = FeedServer(host="::1", rate=RATE)
        await feed.start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        assert feed.url == f"ws://[::1]:{feed.port}/stream"
        async with client(feed) as ws:
            await send(ws, op="ping", id=1)
            assert await recv_json(ws) == {"type": "pong", "id": 1}
    finally:
        await feed.stop()


# -- redirects, a close frame with no TCP close, a server that stops reading, ping floods ----


async def _raw_connect(
    feed: FeedServer, key: str = "raw"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client written by hand: it sees every frame, pings included, and answers none."""
    reader, writer = await asyncio.open_connection(feed.host, feed.port)
    writer.write(
        f"GET {feed.path} HTTP/1.1\r\nHost: {feed.host}:{feed.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nX-Client-Id: {key}\r\n\r\n".encode()
    )
    async with asyncio.timeout(TIMEOUT):
        response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response
    return reader, writer


def _masked_text(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message).encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload  # an all-zero mask key


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    async with asyncio.timeout(TIMEOUT):
        first, second = await reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        return first & 0x0F, await reader.readexactly(n)


async def _nothing_more(reader: asyncio.StreamReader, within: float = 0.1) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(within):
            await reader.read(1)


async def test_redirect_sends_clients_to_the_second_listener() -> None:
    async with FeedServer(rate=RATE, alt_port=0) as feed:
        assert feed.alt_port not in (None, 0, feed.port)
        assert feed.alt_url == f"ws://127.0.0.1:{feed.alt_port}/stream"
        feed.redirect(307)
        headers = {"X-Client-Id": "t1", "X-Api-Key": "k-123"}
        async with connect(
            feed.url + "?v=1",
            proxy=None,
            additional_headers=headers,
            ping_interval=None,
            open_timeout=TIMEOUT,
        ) as ws:
            await subscribe(ws, "trades", "BTC-USD")  # the same feed, on the other port
            await data(ws, 1)
            assert feed.current_connections("t1") == 1
        redirected, followed = feed.handshakes
        assert (redirected.port, redirected.status, redirected.path) == (feed.port, 307, "/stream?v=1")
        assert (followed.port, followed.status, followed.path) == (feed.alt_port, 101, "/stream?v=1")
        assert redirected.header("x-api-key") == "k-123" and followed.key == "t1"
        assert feed.redirected_handshakes == 1

        # The Location as sent, with an explicit target.
        feed.redirect(301, location="ws://127.0.0.1:9/elsewhere")
        reader, writer = await asyncio.open_connection(feed.host, feed.port)
        writer.write(f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1:{feed.port}\r\n\r\n".encode())
        async with asyncio.timeout(TIMEOUT):
            response = (await reader.readuntil(b"\r\n\r\n")).decode()
        writer.close()
        assert (
            response.startswith("HTTP/1.1 301") and "\r\nLocation: ws://127.0.0.1:9/elsewhere\r\n" in response
        )

        feed.redirect(None)
        feed.handshakes.clear()
        async with client(feed):
            pass
        assert [(h.port, h.status) for h in feed.handshakes] == [(feed.port, 101)]

        alt = feed.alt_port
        await feed.restart()
        assert feed.alt_port == alt  # both listeners come back where they were
        async with connect(feed.alt_url or "", proxy=None, open_timeout=TIMEOUT) as ws:
            await send(ws, op="ping", id=1)
            assert await recv_json(ws) == {"type": "pong", "id": 1}

        with pytest.raises(ValueError, match="status must be one of"):
            feed.redirect(200)
    with pytest.raises(ValueError, match="alt_port"):
        FeedServer().redirect(307)


async def test_close_and_hang_sends_a_close_frame_then_nothing_and_never_closes(server: FeedServer) -> None:
    reader, writer = await _raw_connect(server)
    try:
        writer.write(_masked_text({"op": "subscribe", "channel": "trades", "symbol": "BTC-USD", "id": 1}))
        await server.wait_for_subscriptions("raw", 1)
        assert server.close_and_hang(1011, "bye", key="raw") == 1
        for _ in range(MAX_FRAMES):
            opcode, payload = await _read_frame(reader)
            if opcode == 0x8:
                break
            assert opcode == 0x1  # data written before the close frame
        assert payload == (1011).to_bytes(2, "big") + b"bye"
        # The feed goes on, but nothing more is written to this client, and the socket stays open.
        sent = server.messages_sent("raw")
        await server.wait_for_seq("trades", "BTC-USD", server.stream_seq("trades", "BTC-USD") + 5)
        await _nothing_more(reader)
        assert server.messages_sent("raw") == sent
        assert not reader.at_eof()
        # Nothing it sends is read either: not the close echo, not a request.
        writer.write(_masked_text({"op": "ping", "id": 2}) + bytes([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xF3]))
        await _nothing_more(reader)
        assert server.received == [
            ("raw", '{"op": "subscribe", "channel": "trades", "symbol": "BTC-USD", "id": 1}')
        ]
        assert (server.current_connections("raw"), server.hung_connections) == (1, 1)
    finally:
        writer.transport.abort()  # what a client does once its close timeout has passed
    # The server notices the client's abort only once it reads again (and discards what it reads).
    assert server.resume_reading("raw") == 1
    await server.wait_until(lambda: server.current_connections("raw") == 0)
    assert len(server.received) == 1


async def test_stop_reading_keeps_feeding_then_resume_reads_or_discards(server: FeedServer) -> None:
    async with client(server) as ws:
        await subscribe(ws, "trades", "BTC-USD")
        assert server.stop_reading("t1") == 1
        await send(ws, op="ping", id=1)
        assert all(m["type"] == "trade" for m in await data(ws, 3))  # streams flow, the ping waits
        assert len(server.received) == 1
        assert server.resume_reading("t1") == 1
        pong, _ = await recv_until(ws, lambda m: m.get("type") == "pong")
        assert pong == {"type": "pong", "id": 1}

        server.stop_reading("t1")
        await send(ws, op="ping", id=2)
        await data(ws, 2)
        server.resume_reading("t1", discard=True)  # the ping was never read: it is lost
        await server.wait_for_seq("trades", "BTC-USD", server.stream_seq("trades", "BTC-USD") + 3)
        ws.transport.abort()
    await server.wait_until(lambda: server.current_connections("t1") == 0)
    assert [json.loads(frame)["op"] for _, frame in server.received] == ["subscribe", "ping"]
    assert server.resume_reading("t1") == 0


async def test_flood_pings_writes_whole_ping_frames_between_data_and_reads_nothing(
    server: FeedServer,
) -> None:
    reader, writer = await _raw_connect(server)
    try:
        writer.write(_masked_text({"op": "subscribe", "channel": "trades", "symbol": "BTC-USD", "id": 1}))
        assert json.loads((await _read_frame(reader))[1])["type"] == "ack"
        ping = 2 + 125
        assert server.flood_pings("raw", max_bytes=300 * ping + 50, duration=TIMEOUT) == 1
        writer.write(_masked_text({"op": "ping", "id": 2}))  # unread while flooding
        pings, trades = 0, []
        for _ in range(MAX_FRAMES):
            opcode, payload = await _read_frame(reader)
            if opcode == 0x9:
                assert payload == (b"flood" * 25)[:125]
                pings += 1
            else:
                message = json.loads(payload)
                assert message["type"] == "trade"  # whole data frames, never the pong
                trades.append(message["seq"])
            if pings == 300 and len(trades) >= 3:
                break
        assert trades == list(range(trades[0], trades[0] + len(trades)))
        assert server.ping_flood_bytes == 300 * ping  # whole frames only, within max_bytes
        assert len(server.received) == 1
        # Reading again ends the flood; the request sent meanwhile is read and answered now.
        assert server.resume_reading("raw") == 1
        for _ in range(MAX_FRAMES):
            opcode, payload = await _read_frame(reader)
            if opcode == 0x1 and json.loads(payload)["type"] == "pong":
                break
        assert server.ping_flood_bytes == 300 * ping
    finally:
        writer.transport.abort()

    with pytest.raises(ValueError, match="payload_size"):
        server.flood_pings(payload_size=126)
    with pytest.raises(ValueError, match="max_bytes"):
        server.flood_pings(max_bytes=10)
