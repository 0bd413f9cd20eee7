"""Tests for wsclient.testing.venue.VenueServer, driven by plain websockets clients."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from wsclient.testing.venue import VenueRules, VenueServer

TIMEOUT = 3.0
# Caps the number of frames a helper reads, so no read loop can run away.
MAX_FRAMES = 5000


@pytest.fixture
async def server() -> AsyncIterator[VenueServer]:
    """A server whose streams produce only on emit(): every test below is then exact."""
    async with VenueServer(rate=0) as venue:
        yield venue


def client(server: VenueServer, **kwargs: Any) -> connect:
    """A plain websockets client that never pings on its own."""
    kwargs.setdefault("ping_interval", None)
    return connect(server.url, proxy=None, open_timeout=TIMEOUT, close_timeout=1.0, **kwargs)


async def send(ws: ClientConnection, method: str, req_id: int | str | None = 1, **fields: Any) -> None:
    await ws.send(json.dumps({"method": method, "id": req_id, **fields}))


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


async def call(ws: ClientConnection, method: str, req_id: int, **fields: Any) -> list[dict[str, Any]]:
    """Send a request and read up to its answer; return the events before it, then the answer."""
    await send(ws, method, req_id, **fields)
    answer, before = await recv_until(ws, lambda m: m.get("id") == req_id and "e" not in m)
    return [*before, answer]


async def subscribe(ws: ClientConnection, *streams: str, req_id: int = 1) -> None:
    answer = (await call(ws, "SUBSCRIBE", req_id, params=list(streams)))[-1]
    assert answer == {"result": None, "id": req_id}


async def events_until_answer(ws: ClientConnection, req_id: int) -> list[dict[str, Any]]:
    """Events the server had queued for ``ws``, flushed by a request: outboxes are FIFO."""
    *before, answer = await call(ws, "LIST_SUBSCRIPTIONS", req_id)
    assert "result" in answer
    return before


async def read_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Drain the connection up to its end (flow control would hide the close frame otherwise)."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(MAX_FRAMES):
            try:
                messages.append(await recv_json(ws))
            except ConnectionClosed:
                return messages
    raise AssertionError("connection did not close")


async def conn_id(server: VenueServer, ws: ClientConnection) -> int:
    """The server's id of the connection ``ws``, found by the client's local port."""
    port = ws.local_address[1]

    def find() -> int | None:
        return next((c.id for c in server.connections.values() if c.remote[1] == port), None)

    await server.wait_until(lambda: find() is not None, TIMEOUT, what=f"the connection from port {port}")
    cid = find()
    assert cid is not None
    return cid


async def http_get(server: VenueServer, target: str) -> tuple[int, dict[str, str], bytes]:
    """A bare HTTP/1.1 GET; the server closes the connection after its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(TIMEOUT):
            raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def depth_snapshot(server: VenueServer, stream: str) -> dict[str, Any]:
    status, headers, body = await http_get(server, f"/depth?stream={stream}")
    assert status == 200
    assert headers["content-type"] == "application/json"
    snapshot = json.loads(body)
    assert isinstance(snapshot, dict)
    return snapshot


# -- protocol -------------------------------------------------------------------------


async def test_requests_answers_and_errors_leave_the_connection_open(server: VenueServer) -> None:
    assert server.url == f"ws://127.0.0.1:{server.port}/ws"
    async with client(server) as ws:
        await send(ws, "SUBSCRIBE", 7, params=["eth@trade", "btc@depth", "eth@trade"])
        assert await recv_json(ws) == {"result": None, "id": 7}
        await send(ws, "LIST_SUBSCRIPTIONS", 9)
        assert await recv_json(ws) == {"result": ["btc@depth", "eth@trade"], "id": 9}
        await send(ws, "UNSUBSCRIBE", 10, params=["eth@trade", "sol@trade"])
        assert await recv_json(ws) == {"result": None, "id": 10}
        await send(ws, "LIST_SUBSCRIPTIONS", "x")
        assert await recv_json(ws) == {"result": ["btc@depth"], "id": "x"}

        await send(ws, "PING", 11)
        assert await recv_json(ws) == {"error": {"code": -1, "msg": "unknown method 'PING'"}, "id": 11}
        await ws.send("{not json")
        assert await recv_json(ws) == {"error": {"code": -1, "msg": "invalid JSON"}, "id": None}
        await ws.send(b"\x00\x01")
        assert (await recv_json(ws))["error"]["code"] == -1
        await send(ws, "SUBSCRIBE", 12, params=["btc@kline"])
        assert (await recv_json(ws))["error"]["code"] == -1
        await send(ws, "SUBSCRIBE", 13, params="btc@trade")
        assert (await recv_json(ws))["error"]["code"] == -1
        # A message in fragments is one message.
        await ws.send(['{"method": "LIST_', 'SUBSCRIPTIONS", "id": 14}'])
        assert await recv_json(ws) == {"result": ["btc@depth"], "id": 14}

        info = server.connection(await conn_id(server, ws))
        assert info.messages_received == 10
        assert info.subscribe_messages == 3
        assert info.streams == ("btc@depth",)
    assert server.subscribe_messages_total == 3
    assert server.streams == ("btc@depth", "eth@trade")
    assert server.total_violations == 0


async def test_subscribers_get_the_same_contiguous_trades_from_their_ack_on() -> None:
    async with VenueServer(rate=200, seed=5) as server, client(server) as a, client(server) as b:
        await subscribe(a, "btc@trade")
        await server.wait_until(lambda: server.sent("btc@trade") >= 5, TIMEOUT)
        await subscribe(b, "btc@trade")
        target = server.sent("btc@trade") + 20
        got: dict[str, list[dict[str, Any]]] = {}
        for name, ws in (("a", a), ("b", b)):
            last, before = await recv_until(ws, lambda m: m["t"] >= target)
            got[name] = [*before, last]

    for events in got.values():
        ids = [e["t"] for e in events]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert all(e["e"] == "trade" and e["s"] == "btc@trade" for e in events)
    # a's subscription created the stream: a has had every trade.
    assert got["a"][0]["t"] == 1
    assert got["b"][0]["t"] > got["a"][0]["t"]
    by_id = {e["t"]: e for e in got["a"]}
    assert all(by_id[e["t"]] == e for e in got["b"])


async def test_content_is_a_function_of_seed_stream_and_sequence() -> None:
    def strip(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "E"} for e in events]

    runs: list[list[dict[str, Any]]] = []
    for _ in range(2):
        async with VenueServer(rate=0, seed=3) as server, client(server) as ws:
            await subscribe(ws, "btc@trade")
            server.emit("eth@trade", 2)  # another stream does not disturb this one
            server.emit("btc@trade", 4)
            runs.append(strip(await events_until_answer(ws, 2)))
    assert runs[0] == runs[1]
    assert [e["t"] for e in runs[0]] == [1, 2, 3, 4]
    assert all(Decimal(e["p"]) > 0 and Decimal(e["q"]) > 0 for e in runs[0])


async def test_a_reconnecting_client_sees_the_global_gap(server: VenueServer) -> None:
    async with client(server) as ws:
        await subscribe(ws, "btc@trade")
        server.emit("btc@trade", 3)
        assert [e["t"] for e in await events_until_answer(ws, 2)] == [1, 2, 3]
    server.emit("btc@trade", 4)  # nobody listens, the sequence goes on
    async with client(server) as ws:
        await subscribe(ws, "btc@trade")
        server.emit("btc@trade")
        assert [e["t"] for e in await events_until_answer(ws, 2)] == [8]
    assert server.sent("btc@trade") == 8


async def test_streams_advance_at_rate_with_nobody_listening() -> None:
    async with VenueServer(rate=100) as server:
        async with client(server) as ws:
            await subscribe(ws, "btc@trade")
        start = server.sent("btc@trade")
        await server.wait_until(lambda: server.sent("btc@trade") >= start + 5, TIMEOUT)
        server.rate = 0
        frozen = server.sent("btc@trade")
        server.emit("btc@trade", 2)
        assert server.sent("btc@trade") == frozen + 2


# -- limits ---------------------------------------------------------------------------


async def test_too_many_streams_gets_error_then_1008() -> None:
    async with VenueServer(VenueRules(streams_per_connection=2), rate=0) as server, client(server) as ws:
        await subscribe(ws, "a@trade", "b@depth")
        await subscribe(ws, "a@trade", req_id=2)  # already subscribed: still two streams
        await send(ws, "SUBSCRIBE", 3, params=["c@trade"])
        assert await read_until_closed(ws) == [{"error": {"code": -2, "msg": "too many streams"}, "id": 3}]
        assert ws.close_code == 1008
        assert ws.close_reason == "too many streams"
    assert server.violations == {"streams": 1}
    assert server.total_violations == 1
    assert "c@trade" not in server.streams


async def test_the_message_over_the_rate_is_refused_with_1008() -> None:
    async with VenueServer(VenueRules(messages_per_second=5), rate=0) as server, client(server) as ws:
        await ws.send("{not json")  # errors count too
        for req_id in range(1, 6):
            await send(ws, "LIST_SUBSCRIPTIONS", req_id)
        answers = await read_until_closed(ws)
        # Everything accepted before the violation is answered before the close.
        assert answers[0]["id"] is None
        assert [a["id"] for a in answers[1:]] == [1, 2, 3, 4]
        assert ws.close_code == 1008
        assert ws.close_reason == "too many messages"
    assert server.violations == {"rate": 1}


async def test_the_rate_window_slides() -> None:
    async with VenueServer(VenueRules(messages_per_second=3), rate=0) as server, client(server) as ws:
        for req_id in range(1, 4):
            await call(ws, "LIST_SUBSCRIPTIONS", req_id)
        # Server and client share the loop's clock, and every message was received before its answer
        # arrived: a second from now (and a margin for the timer's resolution) all three have left.
        await asyncio.sleep(1.01)
        for req_id in range(4, 7):
            await call(ws, "LIST_SUBSCRIPTIONS", req_id)
        await send(ws, "LIST_SUBSCRIPTIONS", 7)
        assert await read_until_closed(ws) == []
        assert ws.close_code == 1008
    assert server.violations == {"rate": 1}


async def test_control_frames_count_when_the_venue_counts_them() -> None:
    rules = VenueRules(messages_per_second=4, count_control_frames=True)
    async with VenueServer(rules, rate=0) as server, client(server) as ws:
        await call(ws, "LIST_SUBSCRIPTIONS", 1)
        await ws.pong(b"unsolicited")
        pong = await ws.ping(b"1")
        async with asyncio.timeout(TIMEOUT):
            await pong
        await ws.ping(b"2")  # the fourth message: still within the limit
        await ws.ping(b"3")  # the fifth
        assert await read_until_closed(ws) == []
        assert ws.close_code == 1008
        assert ws.close_reason == "too many messages"
    assert server.violations == {"rate": 1}
    assert server.connection(1).control_frames_received == 4


async def test_control_frames_are_free_by_default() -> None:
    async with VenueServer(VenueRules(messages_per_second=3), rate=0) as server, client(server) as ws:
        for n in range(20):
            pong = await ws.ping(str(n).encode())
            async with asyncio.timeout(TIMEOUT):
                await pong
        await ws.pong(b"unsolicited")
        for req_id in range(1, 4):
            await call(ws, "LIST_SUBSCRIPTIONS", req_id)
        assert server.total_violations == 0
        await send(ws, "LIST_SUBSCRIPTIONS", 4)
        assert await read_until_closed(ws) == []
        assert ws.close_code == 1008
    assert server.violations == {"rate": 1}
    info = server.connection(1)
    assert info.control_frames_received == 21
    assert info.messages_received == 4


async def test_pongs_to_server_pings_are_acknowledged_and_may_count() -> None:
    # Uncounted: the server's keepalive sees every pong (else it would close with 1011).
    async with VenueServer(rate=0, ping_interval=0.02, ping_timeout=0.2) as server, client(server) as ws:
        await server.wait_until(lambda: server.connection(1).control_frames_received >= 8, TIMEOUT)
        await call(ws, "LIST_SUBSCRIPTIONS", 1)
    assert ws.close_code == 1000
    # Counted: the client's automatic pongs alone exceed the rate.
    rules = VenueRules(messages_per_second=3, count_control_frames=True)
    async with VenueServer(rules, rate=0, ping_interval=0.02) as server, client(server) as ws:
        assert await read_until_closed(ws) == []
        assert ws.close_code == 1008
    assert server.violations == {"rate": 1}


async def test_connect_over_the_window_gets_429_with_retry_after() -> None:
    rules = VenueRules(connects_per_window=3, connect_window=0.5)
    async with VenueServer(rules, rate=0) as server:
        for _ in range(3):
            async with client(server):
                pass
        await http_get(server, "/depth?stream=x@depth")  # REST calls are no handshakes
        with pytest.raises(InvalidStatus) as refused:
            async with client(server):
                pass
        response = refused.value.response
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert server.violations == {"connects": 1}
        assert (server.connects_total, server.accepted_total) == (4, 3)

        # A slot frees once the window slid past the oldest handshakes.
        slot = server.next_connect_slot()
        assert 0 < slot <= 0.5
        await asyncio.sleep(slot)
        async with client(server):
            pass
        assert server.accepted_total == 4
    assert server.violations == {"connects": 1}


async def test_retry_after_rounds_up_and_refusals_count() -> None:
    rules = VenueRules(connects_per_window=1, connect_window=2.5)
    async with VenueServer(rules, rate=0) as server:
        async with client(server):
            pass
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                async with client(server):
                    pass
            assert refused.value.response.status_code == 429
            # Hammering keeps the client out: each refusal restarts the wait.
            assert refused.value.response.headers["Retry-After"] == "3"
        assert server.violations == {"connects": 2}
        assert server.next_connect_slot() > 2.0


async def test_max_age_closes_with_1001() -> None:
    rules = VenueRules(max_connection_age=0.15)
    async with VenueServer(rules, rate=0) as server, client(server) as ws:
        await subscribe(ws, "btc@trade")
        await read_until_closed(ws)
        # The age counts from the server's accept, which a loaded client learns of later: it is
        # checked on the server's side below, not from here.
        assert ws.close_code == 1001
        assert ws.close_reason == "connection age limit"
    assert server.age_cuts == 1
    assert server.total_violations == 0
    await server.wait_until(lambda: server.connection(1).closed_at is not None, TIMEOUT)
    info = server.connection(1)
    assert info.closed_at is not None
    assert info.closed_at - info.opened_at >= 0.15


async def test_max_age_abort_sends_no_close_frame() -> None:
    rules = VenueRules(max_connection_age=0.1, age_cut="abort")
    async with VenueServer(rules, rate=0) as server, client(server) as ws:
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        assert closed.value.rcvd is None
        assert ws.close_code == 1006
    assert server.age_cuts == 1


async def test_slow_consumer_is_closed_with_1008() -> None:
    async with VenueServer(rate=0, max_buffer=5) as server, client(server) as ws:
        await subscribe(ws, "btc@trade")
        server.emit("btc@trade", 6)  # all queued at once: the sixth overflows
        await read_until_closed(ws)
        assert ws.close_code == 1008
        assert ws.close_reason == "slow consumer"
    assert server.slow_consumer_drops == 1
    assert server.total_violations == 0


# -- faults ---------------------------------------------------------------------------


async def test_mute_one_connection_then_all_then_unmute(server: VenueServer) -> None:
    async with client(server) as a, client(server) as b:
        await subscribe(a, "btc@trade")
        await subscribe(b, "btc@trade")
        a_id = await conn_id(server, a)
        server.emit("btc@trade")

        server.mute("btc@trade", connection=a_id)
        server.emit("btc@trade", 2)
        assert [e["t"] for e in await events_until_answer(a, 2)] == [1]
        assert [e["t"] for e in await events_until_answer(b, 2)] == [1, 2, 3]
        # Still subscribed, as far as anyone can tell.
        assert await call(a, "LIST_SUBSCRIPTIONS", 3) == [{"result": ["btc@trade"], "id": 3}]
        assert server.connection(a_id).muted == ("btc@trade",)

        server.unmute("btc@trade", connection=a_id)
        server.mute("btc@trade")
        server.emit("btc@trade")
        assert await events_until_answer(a, 4) == []
        assert await events_until_answer(b, 4) == []

        server.unmute("btc@trade")
        server.emit("btc@trade")
        assert [e["t"] for e in await events_until_answer(a, 5)] == [5]
        assert [e["t"] for e in await events_until_answer(b, 5)] == [5]
        assert server.connection(a_id).events_sent == {"btc@trade": 2}
        assert server.connection(a_id).last_sent == {"btc@trade": 5}


async def test_skip_forces_a_gap(server: VenueServer) -> None:
    async with client(server) as ws:
        await subscribe(ws, "btc@trade", "eth@depth")
        server.emit("btc@trade")
        server.skip("btc@trade", 5)
        server.emit("btc@trade")
        assert [e["t"] for e in await events_until_answer(ws, 2)] == [1, 7]
        assert server.sent("btc@trade") == 7

        server.emit("eth@depth")
        before = server.book("eth@depth")
        server.skip("eth@depth", 4)  # update ids: the book still changes
        after = server.book("eth@depth")
        server.emit("eth@depth")
        first, second = await events_until_answer(ws, 3)
        assert second["U"] == first["u"] + 5
        assert after[0] == before[0] + 4
        assert (after[1], after[2]) != (before[1], before[2])


async def test_restart_drops_abruptly_and_listens_on_the_same_port() -> None:
    async with VenueServer(rate=100) as server:
        port = server.port
        async with client(server) as ws:
            await subscribe(ws, "btc@trade")
            before, _ = await recv_until(ws, lambda m: "t" in m)
            restart = asyncio.create_task(server.restart(down_for=0.2))
            await server.wait_until(lambda: not server.listening, TIMEOUT)
            down_at = server.sent("btc@trade")
            await server.wait_until(lambda: server.sent("btc@trade") >= down_at + 3, TIMEOUT)
            await read_until_closed(ws)
            assert ws.protocol.close_rcvd is None  # no close frame
            assert ws.close_code == 1006
            await restart
        assert server.listening
        assert server.port == port
        async with client(server) as ws:
            await subscribe(ws, "btc@trade")
            after, _ = await recv_until(ws, lambda m: "t" in m)
        assert after["t"] > down_at + 3 > before["t"]
        assert server.accepted_total == 2


async def test_close_drop_and_kill(server: VenueServer) -> None:
    async with client(server) as a, client(server) as b, client(server) as c:
        await server.close_connection(await conn_id(server, c), 4000, "bye")
        assert await read_until_closed(c) == []
        assert (c.close_code, c.close_reason) == (4000, "bye")
        await server.drop_connection(await conn_id(server, a))
        with pytest.raises(ConnectionClosedError):
            await recv_json(a)
        await call(b, "LIST_SUBSCRIPTIONS", 1)
        await server.kill()
        with pytest.raises(ConnectionClosedError) as closed:
            await recv_json(b)
        assert closed.value.rcvd is None
    assert not server.running
    assert not server.listening


# -- depth ----------------------------------------------------------------------------


def apply(book: dict[str, str], levels: list[list[str]]) -> None:
    for price, qty in levels:
        if Decimal(qty) == 0:
            book.pop(price, None)
        else:
            book[price] = qty


async def test_depth_snapshot_plus_deltas_reproduce_the_book() -> None:
    async with VenueServer(rate=300, seed=9) as server, client(server) as ws:
        await subscribe(ws, "btc@depth")
        # Binance's procedure: buffer events, fetch the snapshot, then synchronize.
        buffered, _ = await recv_until(ws, lambda m: m.get("e") == "depthUpdate")
        events = [buffered]
        snapshot = await depth_snapshot(server, "btc@depth")
        await server.wait_until(lambda: server.sent("btc@depth") > snapshot["lastUpdateId"] + 10, TIMEOUT)
        server.rate = 0  # freeze the book so it can be compared
        final = server.sent("btc@depth")
        last, more = await recv_until(ws, lambda m: m["u"] == final)
        events += [*more, last]

        last_id = snapshot["lastUpdateId"]
        assert last_id > 0
        bids = {p: q for p, q in snapshot["bids"]}
        asks = {p: q for p, q in snapshot["asks"]}
        assert [Decimal(p) for p, _ in snapshot["bids"]] == sorted(map(Decimal, bids), reverse=True)
        assert [Decimal(p) for p, _ in snapshot["asks"]] == sorted(map(Decimal, asks))
        previous: int | None = None
        for event in events:
            assert event["e"] == "depthUpdate"
            assert event["s"] == "btc@depth"
            assert 1 <= event["u"] - event["U"] + 1 <= 3
            if event["u"] <= last_id:
                continue
            if previous is None:
                assert event["U"] <= last_id + 1 <= event["u"]
            else:
                assert event["U"] == previous + 1
            apply(bids, event["b"])
            apply(asks, event["a"])
            previous = event["u"]
        assert previous == final
        assert server.book("btc@depth") == (final, bids, asks)
        assert max(map(Decimal, bids)) < min(map(Decimal, asks))


async def test_depth_snapshot_refusals(server: VenueServer) -> None:
    status, _, body = await http_get(server, "/depth?stream=nope@depth")
    assert status == 404
    assert json.loads(body)["code"] == -1121
    server.emit("btc@trade")
    for target in ("/depth?stream=btc@trade", "/depth"):
        status, _, _ = await http_get(server, target)
        assert status == 400
    server.emit("btc@depth")
    assert server.depth_url("btc@depth") == f"{server.http_url}/depth?stream=btc@depth"
    snapshot = await depth_snapshot(server, "btc@depth")
    last_id, bids, asks = server.book("btc@depth")
    assert snapshot["lastUpdateId"] == last_id
    assert dict(snapshot["bids"]) == bids
    assert dict(snapshot["asks"]) == asks
    assert server.depth_requests_total == 4
    assert server.connects_total == 0


# -- lifecycle and waits --------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_nothing_is_left_after_stop(how: str) -> None:
    before = asyncio.all_tasks()
    rules = VenueRules(max_connection_age=30.0, messages_per_second=100)
    server = VenueServer(rules, rate=100)
    await server.start()
    port = server.port
    async with client(server) as ws:
        await subscribe(ws, "btc@trade", "btc@depth")
        await recv_until(ws, lambda m: m.get("e") == "depthUpdate")
        await (server.stop() if how == "stop" else server.kill())
        await read_until_closed(ws)
    assert ws.close_code == (1001 if how == "stop" else 1006)
    assert asyncio.all_tasks() - before == set()
    assert server.connections == {}
    # Nothing listens on the port any more.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
    await server.stop()  # idempotent


async def test_wait_until_names_what_it_waited_for(server: VenueServer) -> None:
    with pytest.raises(TimeoutError, match=r"server\.age_cuts == 1"):
        await server.wait_until(lambda: server.age_cuts == 1, 0.05)
    with pytest.raises(TimeoutError, match="nothing"):
        await server.wait_until(lambda: False, 0.05, what="nothing")


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="streams_per_connection"):
        VenueRules(streams_per_connection=0)
    with pytest.raises(ValueError, match="connect_window"):
        VenueRules(connects_per_window=3, connect_window=0)
    with pytest.raises(ValueError, match="age_cut"):
        VenueRules(age_cut="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream name"):
        VenueServer().emit("btc")
